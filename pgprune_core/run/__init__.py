"""One run from configuration to saved model: the pipeline's phases (``pipeline``), the run
directory that owns every artifact (``rundir``), atomic file writes (``artifacts``) and
derived seeds (``seeding``).
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _CallablePackage(types.ModuleType):
    """Importing this package binds ``pgprune_core.run`` to it, over the function
    :func:`pgprune_core.run`; calling the package calls that function, so
    ``pgprune_core.run(config, **overrides)`` works whatever was imported before."""

    def __call__(self, config: Any = None, **overrides: Any) -> Any:
        from pgprune_core import _run_function

        return _run_function(config, **overrides)


sys.modules[__name__].__class__ = _CallablePackage
