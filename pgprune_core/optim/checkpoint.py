"""Checkpoints of the optimisation loop: everything needed to continue bit-identically.

This module turns a :class:`Checkpoint` into plain tensors, numbers, strings, lists and dicts
and back (never pickled objects); the run directory writes them with ``torch.save``,
atomically, and reads them with ``torch.load(weights_only=True)``
(:meth:`pgprune_core.run.rundir.RunDir.save_checkpoint`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from pgprune_core.errors import RunDirError

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


@dataclass
class Checkpoint:
    state: LoopState
    probs: torch.Tensor
    fixed: torch.Tensor
    generator_state: torch.Tensor
    estimator: dict[str, Any]
    config_digest: str


def checkpoint_payload(ckpt: Checkpoint) -> dict[str, Any]:
    """The plain tensors and dicts ``torch.save`` writes (readable with ``weights_only``)."""
    return {
        "format": FORMAT,
        "state": asdict(ckpt.state),
        "probs": ckpt.probs.detach().cpu().clone(),
        "fixed": ckpt.fixed.detach().cpu().clone(),
        "generator_state": ckpt.generator_state.clone(),
        "estimator": ckpt.estimator,
        "config_digest": ckpt.config_digest,
    }


def checkpoint_from_payload(payload: Any, path: Path) -> Checkpoint:
    """The checkpoint ``torch.load`` read from ``path``; one-line errors naming the file."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise RunDirError(f"checkpoint {path} is not a {FORMAT} file")
    try:
        known = {f.name for f in fields(LoopState)}
        # checkpoints of earlier versions carry an always-empty ``extra`` entry
        state = LoopState(**{k: v for k, v in payload["state"].items() if k in known})
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
