"""The run directory: what a run writes, how a run is recognised, and its status.

``run.json`` marks a directory as a pgprune run (format, version, status, the digest of
its configuration, accumulated wall time); ``config.yaml`` is the resolved configuration
that ``pgprune resume`` re-reads.  Every file is written atomically.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgprune_core.config.resolve import dump_config, load_config_file, validate_config
from pgprune_core.config.sections import RunConfig
from pgprune_core.errors import RunDirError
from pgprune_core.run.artifacts import atomic_write_json, atomic_write_text

FORMAT = "pgprune-run/1"


#: settings of how a run executes, not of what it learns: they may differ on resume (say, on
#: another machine), and the digests of runs made before they existed stay valid
EXECUTION_KEYS = ("output", "training.threads")


def config_digest(config: RunConfig) -> str:
    """What determines the learned masks: everything but :data:`EXECUTION_KEYS`."""
    data = json.loads(config.model_dump_json())
    for key in EXECUTION_KEYS:
        *parents, last = key.split(".")
        section = data
        for part in parents:
            section = section.get(part, {})
        section.pop(last, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunDir:
    path: Path

    # files
    @property
    def marker(self) -> Path:
        return self.path / "run.json"

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def checkpoint(self) -> Path:
        return self.path / "policy.pt"

    @property
    def metrics_log(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def dense_metrics(self) -> Path:
        return self.path / "dense.json"

    @property
    def scores(self) -> Path:
        return self.path / "init_scores.pt"

    @property
    def masks(self) -> Path:
        return self.path / "masks.json"

    @property
    def model(self) -> Path:
        return self.path / "model"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def report(self) -> Path:
        return self.path / "report.md"

    @property
    def sparsity_plot(self) -> Path:
        return self.path / "sparsity.png"

    @property
    def loss_plot(self) -> Path:
        return self.path / "loss.png"

    # lifecycle
    def create(self, config: RunConfig, *, overwrite: bool) -> None:
        """Start a new run here; refuse to clobber another run unless told to."""
        if self.marker.exists() and not overwrite:
            raise RunDirError(
                f"{self.path} already holds a pgprune run; continue it with "
                f"`pgprune resume {self.path}` or pass --output.overwrite true"
            )
        if (self.path.exists() and not self.marker.exists() and any(self.path.iterdir())
                and not overwrite):
            raise RunDirError(f"{self.path} exists and is not empty; choose another --out")
        self.path.mkdir(parents=True, exist_ok=True)
        for stale in (self.checkpoint, self.metrics_log, self.dense_metrics, self.scores,
                      self.masks, self.metrics):
            stale.unlink(missing_ok=True)
        atomic_write_text(self.config, dump_config(config))
        self.write_marker(status="running", digest=config_digest(config), wall_s=0.0)

    def write_marker(self, **fields: Any) -> None:
        data = self.read_marker() if self.marker.exists() else {
            "format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        from pgprune_core import __version__

        data.update(fields, pgprune_version=__version__)
        atomic_write_json(self.marker, data)

    def mark_status(self, status: str, wall_s: float) -> None:
        """Record how a session ended (``failed``, ``interrupted``) and the run's wall time
        so far; ``pgprune resume`` accepts any status but ``done``."""
        if self.marker.exists():
            self.write_marker(status=status, wall_s=round(wall_s, 3),
                              ended=time.strftime("%Y-%m-%dT%H:%M:%S"))

    def read_marker(self) -> dict[str, Any]:
        try:
            data = json.loads(self.marker.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RunDirError(f"{self.marker} is unreadable or corrupt: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise RunDirError(f"{self.marker} is not a {FORMAT} marker")
        return data

    def load_config(self) -> RunConfig:
        """The configuration a run was started with (for resume)."""
        if not self.path.is_dir():
            raise RunDirError(f"no such run directory: {self.path}")
        if not self.marker.is_file():
            raise RunDirError(f"{self.path} is not a pgprune run directory (no run.json)")
        marker = self.read_marker()
        if not self.config.is_file():
            raise RunDirError(f"{self.path} has no config.yaml; it cannot be resumed")
        config = validate_config(load_config_file(self.config))
        if marker.get("digest") and marker["digest"] != config_digest(config):
            raise RunDirError(
                f"{self.config} was edited after the run started (digest differs); "
                f"start a new run instead"
            )
        return config

    def truncate_log(self, last_step: int) -> None:
        """Drop ``metrics.jsonl`` records written after the checkpoint we resume from."""
        if not self.metrics_log.exists():
            return
        kept = []
        for line in self.metrics_log.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= last_step:
                    kept.append(line)
            except ValueError:
                break  # a torn last line from a kill
        atomic_write_text(self.metrics_log, "".join(f"{line}\n" for line in kept))
