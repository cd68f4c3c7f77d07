"""Plugins that ship inside the core; registered exactly like third-party plugins."""
