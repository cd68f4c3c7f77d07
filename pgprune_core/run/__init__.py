"""One run from configuration to saved model: the pipeline's phases (``pipeline``), the run
directory that owns every artifact (``rundir``), atomic file writes (``artifacts``) and
derived seeds (``seeding``).
"""
