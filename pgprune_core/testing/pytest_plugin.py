"""pgprune's test fixtures as a pytest plugin (entry point ``pytest11: pgprune``).

Installed with pgprune, so a plugin distribution's tests run from its own folder
(``cd pgprune-myplugin && python -m pytest tests``) with the fixtures the core's tests use:

- ``_fresh_registry`` (autouse): every test starts from a plugin registry built from the
  current environment (``PGPRUNE_DISABLE_PLUGINS`` unset) and leaves none behind;
- ``registry``: that registry (:class:`pgprune_core.plugin.registry.Registry`);
- ``shared`` / ``shared_asset("models", "proxy-llama-7m")``: the shared assets folder (the
  ``PGPRUNE_SHARED`` environment variable, else the first ``shared/`` folder beside the
  rootdir or one of its parents); the test is skipped, with the reason, when it is absent;
- ``quadratic_oracle(a, b=None, offset=0.0)``: a
  :class:`~pgprune_core.testing.oracles.QuadraticOracle` (a loss with a known expectation).

The session also runs torch on one intra-op thread (tiny test models gain nothing from
more, and lose a lot on a loaded machine) and keeps the Hugging Face libraries offline.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

#: where the shared assets are looked for first
SHARED_ENV = "PGPRUNE_SHARED"


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(1)


def shared_dir(rootpath: Path) -> Path | None:
    """The shared assets folder for a session rooted at ``rootpath`` (None: not found)."""
    env = os.environ.get(SHARED_ENV)
    if env:
        return Path(env)
    for parent in rootpath.resolve().parents:
        if (parent / "shared").is_dir():
            return parent / "shared"
    return None


@pytest.fixture(autouse=True)
def _fresh_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts from a registry built from the current environment."""
    from pgprune_core.plugin.registry import reset_registry

    monkeypatch.delenv("PGPRUNE_DISABLE_PLUGINS", raising=False)
    reset_registry()
    yield
    reset_registry()


@pytest.fixture
def registry() -> Any:
    """The process's plugin registry (fresh for each test)."""
    from pgprune_core.plugin.registry import get_registry

    return get_registry()


@pytest.fixture
def shared(pytestconfig: pytest.Config) -> Path:
    """The shared assets folder; the test is skipped (with the reason) when it is absent."""
    path = shared_dir(pytestconfig.rootpath)
    if path is None or not path.is_dir():
        pytest.skip(f"shared assets not found (set {SHARED_ENV}); looked at {path}")
    return path


@pytest.fixture
def shared_asset(pytestconfig: pytest.Config) -> Callable[..., Path]:
    """``shared_asset("models", "proxy-llama-7m")``: a path under the shared folder, or skip."""
    root = shared_dir(pytestconfig.rootpath)

    def get(*parts: str) -> Path:
        if root is None:
            pytest.skip(f"shared assets not found (set {SHARED_ENV})")
        path = root.joinpath(*parts)
        if not path.exists():
            pytest.skip(f"shared asset missing: {path}")
        return path

    return get


@pytest.fixture
def quadratic_oracle() -> Callable[..., Any]:
    """``quadratic_oracle(a, b=None, offset=0.0)``: a QuadraticOracle."""
    from pgprune_core.testing.oracles import QuadraticOracle

    return QuadraticOracle
