"""Built-in initializers: metric scores that start the policy and serve as baselines.

One module per metric (``random_scores``, ``uniform``, ``magnitude``, ``wanda_sp``,
``layerwise_ppl``, ``taylor``); the pieces they share live in ``base`` (argument checks,
calibration batches), ``unit_params`` (which weights belong to which unit) and
``activations`` (the layer-by-layer calibration pass).  They are registered as plugins by
:mod:`pgprune_core.initializers`.
"""
