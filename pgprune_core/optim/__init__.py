"""The optimisation: Bernoulli keep-probabilities (``policy``), budgets and their projection
(``budget``, ``projection``), baselines, step sizes and schedules, the skipping of
non-finite steps, the shared skeleton of sampled-loss estimators (``sampled``), the loop
and its checkpoints.  Estimator plugins build on this package.
"""
