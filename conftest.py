"""Shared fixtures: a fresh plugin registry per test, and the ../shared assets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from pgprune_core.plugin.registry import get_registry, reset_registry

SHARED = Path(__file__).resolve().parent.parent / "shared"


@pytest.fixture(autouse=True)
def _fresh_registry(monkeypatch):
    """Every test starts from a registry built from the current environment."""
    monkeypatch.delenv("PGPRUNE_DISABLE_PLUGINS", raising=False)
    reset_registry()
    yield
    reset_registry()


@pytest.fixture
def registry():
    return get_registry()


@pytest.fixture
def shared() -> Path:
    """The ../shared assets; the test is skipped (with the reason) when they are absent."""
    if not SHARED.is_dir():
        pytest.skip(f"shared assets not found at {SHARED}")
    return SHARED


@pytest.fixture
def shared_asset():
    """``shared_asset("models", "proxy-llama-7m")``: a path under ../shared, or skip."""

    def get(*parts: str) -> Path:
        path = SHARED.joinpath(*parts)
        if not path.exists():
            pytest.skip(f"shared asset missing: {path}")
        return path

    return get


# Tiny test models gain nothing from intra-op threads, and on a loaded 2-core machine
# two threads per process make every small matmul wait for a busy core (40x slower here).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
