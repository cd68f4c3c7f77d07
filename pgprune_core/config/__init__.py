"""The run's configuration: the plugin options base (``base``), the nine sections of a run
and their validation (``sections``), and how a file, flags and dotted overrides resolve into
one :class:`~pgprune_core.config.sections.RunConfig` (``resolve``).
"""
