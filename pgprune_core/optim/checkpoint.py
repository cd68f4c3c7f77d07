"""Checkpoints of the optimisation loop: everything needed to continue bit-identically.

Saved with ``torch.save`` and read with ``torch.load(weights_only=True)``, so a checkpoint
holds only tensors, numbers, strings, lists and dicts (never pickled objects).  Written
atomically: a killed process leaves either the previous checkpoint or the new one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from pgprune_core.errors import RunDirError
from pgprune_core.run.artifacts import atomic_path

FORMAT = "pgprune-checkpoint/1"


@dataclass
class LoopState:
    """Where the loop is.  ``step`` counts steps over all stages; ``position`` is the
    calibration stream's batch index (the data position)."""

    step: int = 0
    stage: int = 0
    stage_step: int = 0
    position: int = 0
    optimize_s: float = 0.0
    forward_passes: int = 0
    backward_passes: int = 0
    skipped_steps: int = 0
    finished: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Checkpoint:
    state: LoopState
    probs: torch.Tensor
    fixed: torch.Tensor
    generator_state: torch.Tensor
    estimator: dict[str, Any]
    config_digest: str


def save_checkpoint(path: Path, ckpt: Checkpoint) -> None:
    payload = {
        "format": FORMAT,
        "state": asdict(ckpt.state),
        "probs": ckpt.probs.detach().cpu().clone(),
        "fixed": ckpt.fixed.detach().cpu().clone(),
        "generator_state": ckpt.generator_state.clone(),
        "estimator": ckpt.estimator,
        "config_digest": ckpt.config_digest,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint without unpickling arbitrary objects; one-line errors."""
    if not path.is_file():
        raise RunDirError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunDirError(f"checkpoint {path} is corrupt or not a pgprune checkpoint: {reason}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise RunDirError(f"checkpoint {path} is not a {FORMAT} file")
    try:
        state = LoopState(**payload["state"])
        return Checkpoint(
            state=state,
            probs=payload["probs"],
            fixed=payload["fixed"],
            generator_state=payload["generator_state"],
            estimator=payload["estimator"],
            config_digest=str(payload["config_digest"]),
        )
    except (KeyError, TypeError) as exc:
        raise RunDirError(f"checkpoint {path} is incomplete: {exc}") from None
