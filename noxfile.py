"""Developer sessions: ``nox -s tests lint typecheck bench plugins``.

Every session installs torch's CPU wheel first (``pip install torch==2.13.0``; set
``PGPRUNE_TORCH`` to another requirement, e.g. ``torch`` on a GPU machine), then the core
and every plugin distribution in ``plugins/`` in editable mode.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

ROOT = Path(__file__).parent
PLUGINS = sorted(p for p in (ROOT / "plugins").iterdir() if (p / "pyproject.toml").exists())
TORCH = os.environ.get("PGPRUNE_TORCH", "torch==2.13.0")

nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True


def _install(session: nox.Session) -> None:
    session.install(TORCH)
    session.install("-r", "requirements-dev.txt")


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite (core and plugins), as CI runs it."""
    _install(session)
    session.run("python", "-m", "pytest", "-q", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and format check."""
    session.install("ruff")
    session.run("ruff", "check", "pgprune_core", "plugins", "tests", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy on the core and every plugin package."""
    _install(session)
    packages = [str(p / p.name.replace("-", "_")) for p in PLUGINS]
    session.run("mypy", "pgprune_core", *[p for p in packages if Path(p).exists()])


@nox.session
def plugins(session: nox.Session) -> None:
    """Install every plugin as a third party would and run each plugin's own tests."""
    session.install(TORCH)
    session.install("-e", ".")
    for plugin in PLUGINS:
        session.install("-e", str(plugin))
    for plugin in PLUGINS:
        if (plugin / "tests").exists():
            session.run("python", "-m", "pytest", "-q", str(plugin / "tests"))


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks in tests/bench (JSON on stdout; results go into docs/benchmarks.md)."""
    _install(session)
    scripts = sorted((ROOT / "tests" / "bench").glob("*.py"))
    selected = [s for s in scripts if not session.posargs or s.stem in session.posargs]
    for script in selected:
        if script.name.startswith("_"):
            continue
        session.run("python", str(script))
