"""The built-in kinds of structural units: MLP channels, attention heads (KV groups), a
layer's whole attention or MLP block, whole decoder layers, and the routed experts of
mixture-of-experts layers.

Each kind lives in its own module and is registered as a plugin by
:mod:`pgprune_core.model.granularity`; the helpers they share (per-row masks, slicing
linear layers) live beside them.  They work from :class:`~pgprune_core.model.structure.ModelStructure`
only, so every adapter gets all the kinds its model has without architecture code of its own.
"""
