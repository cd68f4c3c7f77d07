"""What a run tells its user: progress (``progress``: the silent and the Rich reporter),
report.md (``markdown``) and the figures (``plots``).
"""
