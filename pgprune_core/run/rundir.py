"""The run directory: every file a run reads back or writes, how a run is recognised, and
its status.  Nothing else writes into a run directory.

``run.json`` marks a directory as a pgprune run (format, version, status, the digest of
its configuration, accumulated wall time); ``config.yaml`` is the resolved configuration
that ``pgprune resume`` re-reads; ``dense.json`` and ``init_scores.pt`` are the saved
results of the first phases; ``policy.pt`` the loop's checkpoint and ``metrics.jsonl`` its
log; ``masks.json``, ``model/``, ``metrics.json``, ``report.md`` and the plots are the
results.  Every file is written atomically (a killed run leaves the old file or the new).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pgprune_core.config.resolve import dump_config, load_config_file, validate_config
from pgprune_core.config.sections import RunConfig
from pgprune_core.errors import RunDirError, first_line
from pgprune_core.model.export import ExportResult, export_pruned
from pgprune_core.optim.checkpoint import Checkpoint, checkpoint_from_payload, checkpoint_payload
from pgprune_core.report.markdown import render_report
from pgprune_core.report.plots import plot_loss, plot_sparsity
from pgprune_core.run.artifacts import atomic_path, atomic_write_json, atomic_write_text

FORMAT = "pgprune-run/1"
FINETUNE_FORMAT = "pgprune-finetune/1"


#: settings of how a run executes, not of what it learns: they may differ on resume (say, on
#: another machine), and the digests of runs made before they existed stay valid
EXECUTION_KEYS = ("output", "training.threads", "training.snapshot_every",
                  "training.collective_timeout_s", "training.skip_pruned")
#: keys added after runs existed, with the value that means what those runs did: left out of
#: the digest at that value, so the digests of older runs stay valid
LATER_KEYS = {"pruning.shape": "free", "pruning.channel_multiple": 1, "training.objective": "ce",
              "estimator.advantage_scale": "none", "estimator.scale_window": 50,
              "estimator.preset": "pgprune"}


def config_digest(config: RunConfig) -> str:
    """What determines the learned masks: everything but :data:`EXECUTION_KEYS`."""
    data = json.loads(config.model_dump_json())
    for key in EXECUTION_KEYS:
        *parents, last = key.split(".")
        section = data
        for part in parents:
            section = section.get(part, {})
        section.pop(last, None)
    for key, default in LATER_KEYS.items():
        section_name, _, name = key.partition(".")
        if data.get(section_name, {}).get(name) == default:
            data[section_name].pop(name)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class _Directory:
    """What a run directory and a fine-tune directory share: the marker with its status,
    ``config.yaml``, the log ``metrics.jsonl``, the results ``metrics.json``, ``report.md``,
    ``loss.png`` and ``model/``."""

    path: Path

    #: the ``format`` field of the marker
    FORMAT = FORMAT

    @property
    def marker(self) -> Path:
        raise NotImplementedError

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_log(self) -> Path:
        return self.path / "metrics.jsonl"

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
    def loss_plot(self) -> Path:
        return self.path / "loss.png"

    def write_marker(self, **fields: Any) -> None:
        data = self.read_marker() if self.marker.exists() else {
            "format": self.FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        from pgprune_core import __version__

        data.update(fields, pgprune_version=__version__)
        atomic_write_json(self.marker, data)

    def mark_status(self, status: str, wall_s: float) -> None:
        """Record how a session ended (``failed``, ``interrupted``) and the wall time so
        far; ``pgprune resume`` accepts any status but ``done``."""
        if self.marker.exists():
            self.write_marker(status=status, wall_s=round(wall_s, 3),
                              ended=time.strftime("%Y-%m-%dT%H:%M:%S"))

    def read_marker(self) -> dict[str, Any]:
        try:
            data = json.loads(self.marker.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RunDirError(f"{self.marker} is unreadable or corrupt: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != self.FORMAT:
            raise RunDirError(f"{self.marker} is not a {self.FORMAT} marker")
        return data

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

    def read_json(self, path: Path) -> Any:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RunDirError(f"{path} is unreadable or corrupt: {exc}") from None

    def append_record(self, record: dict[str, Any]) -> None:
        """One line of ``metrics.jsonl`` (the loop's log; a torn last line is dropped on
        resume by :meth:`truncate_log`)."""
        with self.metrics_log.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def clear_log(self) -> None:
        self.metrics_log.unlink(missing_ok=True)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        atomic_write_json(self.metrics, metrics)

    def read_metrics(self) -> dict[str, Any]:
        return self.read_json(self.metrics)


@dataclass(frozen=True)
class RunDir(_Directory):
    """A pruning run's directory (``pgprune run``)."""

    # files
    @property
    def marker(self) -> Path:
        return self.path / "run.json"

    @property
    def checkpoint(self) -> Path:
        return self.path / "policy.pt"

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
    def snapshots(self) -> Path:
        """``snapshots/step-NNNNNN.pt``: the probabilities every ``training.snapshot_every``
        steps, with the step's record (time, forward passes), for time-to-quality curves."""
        return self.path / "snapshots"

    @property
    def sparsity_plot(self) -> Path:
        return self.path / "sparsity.png"

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
        if self.snapshots.is_dir():
            for old in self.snapshots.glob("step-*.pt"):
                old.unlink()
        atomic_write_text(self.config, dump_config(config))
        self.write_marker(status="running", digest=config_digest(config), wall_s=0.0)

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

    # what the phases save and read back
    def write_dense(self, dense: dict[str, Any]) -> None:
        atomic_write_json(self.dense_metrics, dense)

    def read_dense(self) -> dict[str, Any] | None:
        return self.read_json(self.dense_metrics) if self.dense_metrics.exists() else None

    def write_scores(self, scores: torch.Tensor) -> None:
        with atomic_path(self.scores) as tmp:
            torch.save(scores, tmp)

    def read_scores(self) -> torch.Tensor | None:
        if not self.scores.exists():
            return None
        return torch.load(self.scores, weights_only=True)

    def adopt(self, source: Path, target: Path) -> None:
        """Give this run a result computed elsewhere (``compare``'s shared dense metrics and
        scores), unless it has its own already."""
        if target.parent != self.path:
            raise ValueError(f"{target} is not a file of {self.path}")
        if not target.exists():
            with atomic_path(target) as tmp:
                tmp.write_bytes(source.read_bytes())

    def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        with atomic_path(self.checkpoint) as tmp:
            torch.save(checkpoint_payload(checkpoint), tmp)

    def load_checkpoint(self) -> Checkpoint:
        """Read ``policy.pt`` without unpickling arbitrary objects; one-line errors."""
        if not self.checkpoint.is_file():
            raise RunDirError(f"no checkpoint at {self.checkpoint}")
        try:
            payload = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise RunDirError(
                f"checkpoint {self.checkpoint} is corrupt or not a pgprune checkpoint: "
                f"{first_line(exc)}"
            ) from None
        return checkpoint_from_payload(payload, self.checkpoint)

    def save_snapshot(self, probs: torch.Tensor, record: dict[str, Any]) -> None:
        """``snapshots/step-NNNNNN.pt`` = ``{"probs": float64 [n], "record": {...}}``
        (the loop's record of that step; a resumed run rewrites the same files)."""
        self.snapshots.mkdir(exist_ok=True)
        target = self.snapshots / f"step-{int(record['step']):06d}.pt"
        with atomic_path(target) as tmp:
            torch.save({"probs": probs.detach().to(torch.float64).cpu().clone(),
                        "record": dict(record)}, tmp)

    def read_snapshots(self) -> list[tuple[torch.Tensor, dict[str, Any]]]:
        """The saved snapshots in step order: ``(probs, record)`` each."""
        out = []
        for path in sorted(self.snapshots.glob("step-*.pt")):
            try:
                payload = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:
                raise RunDirError(f"snapshot {path} is unreadable: {first_line(exc)}") from None
            out.append((payload["probs"], payload["record"]))
        return out

    # results
    def write_masks(self, masks: dict[str, Any]) -> None:
        atomic_write_json(self.masks, masks)

    def save_model(self, model: Any, tokenizer: Any, fmt: str = "pgprune", **metadata: Any) -> ExportResult:
        """The pruned model under ``model/``, in ``fmt`` (see
        :func:`pgprune_core.model.export.export_pruned`); a previous attempt's is replaced."""
        if fmt != "pgprune" and self.model.exists():
            shutil.rmtree(self.model)
        return export_pruned(model, tokenizer, self.model, fmt, **metadata)

    def write_plots(self, *, kinds: Sequence[str], layers: Sequence[int], keep: Sequence[int],
                    n_layers: int, title: str) -> None:
        """``sparsity.png`` (kept units per layer) and, when the loop logged, ``loss.png``."""
        plot_sparsity(kinds=kinds, layers=layers, keep=keep, n_layers=n_layers,
                      path=self.sparsity_plot, title=title)
        if self.metrics_log.exists() and self.metrics_log.stat().st_size:
            plot_loss(self.metrics_log, self.loss_plot)

    def write_report(self, metrics: dict[str, Any], config: RunConfig | None = None) -> Path:
        """``report.md``, embedding the plots that exist beside it."""
        pictures = (("pruned fraction per layer", self.sparsity_plot),
                    ("optimisation", self.loss_plot))
        images = [(alt, file.name) for alt, file in pictures if file.exists()]
        return atomic_write_text(self.report, render_report(metrics, config, images))


@dataclass(frozen=True)
class FinetuneDir(_Directory):
    """A recovery fine-tune's directory (``pgprune finetune``): ``finetune.json`` (marker),
    ``config.yaml``, ``trainer.pt`` (adapters, optimiser, scheduler, generator state, data
    position), ``metrics.jsonl``, ``before.json`` (the metrics before training),
    ``metrics.json``, ``report.md``, ``loss.png``, ``model/`` (the adapters merged, in the
    input model's format) and ``adapter/`` (the unmerged adapters, peft's files)."""

    FORMAT = FINETUNE_FORMAT

    @property
    def marker(self) -> Path:
        return self.path / "finetune.json"

    @property
    def checkpoint(self) -> Path:
        return self.path / "trainer.pt"

    @property
    def before(self) -> Path:
        return self.path / "before.json"

    @property
    def adapter(self) -> Path:
        return self.path / "adapter"

    def is_finetune(self) -> bool:
        return self.marker.is_file()

    def create(self, config_text: str, digest: str, *, overwrite: bool) -> None:
        """Start a fine-tune here (``config_text``: its resolved ``config.yaml``)."""
        if self.marker.exists() and not overwrite:
            raise RunDirError(f"{self.path} already holds a fine-tune; continue it with "
                              f"`pgprune resume {self.path}` or pass --output.overwrite true")
        if self.path.exists() and not self.marker.exists() and any(self.path.iterdir()) \
                and not overwrite:
            raise RunDirError(f"{self.path} exists and is not empty; choose another --out")
        self.path.mkdir(parents=True, exist_ok=True)
        for stale in (self.checkpoint, self.metrics_log, self.before, self.metrics):
            stale.unlink(missing_ok=True)
        atomic_write_text(self.config, config_text)
        self.write_marker(status="running", digest=digest, wall_s=0.0)

    def config_data(self) -> dict[str, Any]:
        """The fine-tune's configuration as saved (validated by the caller, who also checks
        it against the marker's digest)."""
        if not self.path.is_dir():
            raise RunDirError(f"no such fine-tune directory: {self.path}")
        if not self.marker.is_file():
            raise RunDirError(f"{self.path} is not a pgprune fine-tune directory (no finetune.json)")
        self.read_marker()
        if not self.config.is_file():
            raise RunDirError(f"{self.path} has no config.yaml; it cannot be resumed")
        return load_config_file(self.config)

    def write_before(self, metrics: dict[str, Any]) -> None:
        atomic_write_json(self.before, metrics)

    def read_before(self) -> dict[str, Any] | None:
        return self.read_json(self.before) if self.before.exists() else None

    def save_checkpoint(self, payload: dict[str, Any]) -> None:
        with atomic_path(self.checkpoint) as tmp:
            torch.save(payload, tmp)

    def load_checkpoint(self) -> dict[str, Any] | None:
        """``trainer.pt`` (tensors and plain data only), or None when there is none yet."""
        if not self.checkpoint.is_file():
            return None
        try:
            payload = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise RunDirError(f"checkpoint {self.checkpoint} is corrupt: {first_line(exc)}") from None
        if not isinstance(payload, dict) or "step" not in payload:
            raise RunDirError(f"{self.checkpoint} is not a fine-tune checkpoint")
        return payload

    def save_model(self, model: Any, tokenizer: Any, fmt: str, **extra: Any) -> ExportResult:
        """The merged model under ``model/`` in ``fmt`` (the input's format); a previous
        attempt's is replaced."""
        from pgprune_core.model.export import save_in_format

        if self.model.exists():
            shutil.rmtree(self.model)
        return save_in_format(model, tokenizer, self.model, fmt, extra=extra)

    def save_adapter(self, peft_model: Any) -> Path:
        """peft's ``save_pretrained`` of the unmerged adapters under ``adapter/``."""
        from pgprune_core.run.artifacts import atomic_dir

        if self.adapter.exists():
            shutil.rmtree(self.adapter)
        with atomic_dir(self.adapter) as tmp:
            peft_model.save_pretrained(str(tmp))
        return self.adapter

    def write_loss_plot(self) -> None:
        if self.metrics_log.exists() and self.metrics_log.stat().st_size:
            plot_loss(self.metrics_log, self.loss_plot, title="recovery fine-tuning",
                      loss_label="training loss")

    def write_report(self, metrics: dict[str, Any], config_text: str) -> Path:
        from pgprune_core.report.markdown import render_finetune_report

        images = [("training loss", self.loss_plot.name)] if self.loss_plot.exists() else []
        return atomic_write_text(self.report, render_finetune_report(metrics, config_text, images))
