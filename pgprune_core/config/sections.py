"""The run configuration: pydantic v2 models, assembled with the plugins' own ``Config``s.

Static sections (model, data, pruning, training, evaluation, output) are defined here.
The plugin sections (``init``, ``estimator``, ``projector`` and each entry of
``evaluation.evaluators``) are discriminated unions over the ``Config`` classes of every
registered plugin of that kind, built *after* plugins load (:func:`run_config_model`), so a
third-party estimator's options validate exactly like a built-in's.

How a file, flags and dotted overrides become one of these: :mod:`pgprune_core.config.resolve`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

import torch
from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from pgprune_core.config.base import InitializerConfig, PluginConfig
from pgprune_core.plugin.registry import Registry, get_registry

#: config section -> plugin kind, for the sections that are plugin unions
DtypeName = Literal["float32", "bfloat16", "float16"]
#: the model dtypes a run and ``pgprune eval`` accept, by name (the one table of them)
TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
DTYPES: tuple[str, ...] = tuple(TORCH_DTYPES)

#: a memory size as accelerate reads it: bytes, or a number with a unit (500MB, 20GiB)
MEMORY_SIZE = r"\d+(\.\d+)?\s*([KMGT]i?B)?"

#: the evaluators of a run (and of ``pgprune eval``) when none is named
DEFAULT_EVALUATORS: tuple[str, ...] = ("perplexity", "efficiency")

PLUGIN_SECTIONS = {"estimator": "estimator", "init": "initializer", "projector": "projector"}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(Section):
    """Which model to prune and how to load it."""

    #: HF hub id or local directory; None = pgprune's built-in demo model
    name_or_path: str | None = None
    #: adapter name; None = auto-detect from the model's config
    adapter: str | None = None
    dtype: DtypeName = "float32"
    device: str = "cpu"
    #: e.g. "auto" (needs accelerate) to spread a large model over GPUs; overrides device
    device_map: str | None = None
    #: with device_map: the most memory per device, e.g. {"cuda:0": "20GiB", "cpu": "64GiB"}
    #: (or "cuda:0=20GiB,cpu=64GiB"); what does not fit goes to the CPU, then to disk
    max_memory: dict[str, int | str] | None = None
    #: with device_map: where weights offloaded to disk are written when they must be
    #: (a .bin checkpoint; a safetensors checkpoint is read in place)
    offload_folder: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", value):
            raise ValueError(f"device must be cpu, mps, cuda or cuda:N, got {value!r}")
        return value

    @field_validator("max_memory", mode="before")
    @classmethod
    def _max_memory(cls, value: Any) -> Any:
        if isinstance(value, str):  # the flag's form: "cuda:0=20GiB,cpu=64GiB"
            pairs = [part.partition("=") for part in value.split(",") if part.strip()]
            if any(not sep for _, sep, _ in pairs):
                raise ValueError(f"max_memory must look like cuda:0=20GiB,cpu=64GiB, got {value!r}")
            value = {key.strip(): size.strip() for key, _, size in pairs}
        if isinstance(value, dict):
            for key, size in value.items():
                if not re.fullmatch(r"cpu|mps|\d+|cuda:\d+", str(key)):
                    raise ValueError(f"max_memory devices are cpu, mps, N or cuda:N, got {key!r}")
                if not (isinstance(size, int) and size > 0) and not (
                        isinstance(size, str) and re.fullmatch(MEMORY_SIZE, size.strip())):
                    raise ValueError(f"max_memory[{key!r}] must be bytes or a size like 20GiB "
                                     f"or 500MB, got {size!r}")
            return {str(key): size for key, size in value.items()}
        return value


class DataSection(Section):
    """Calibration text (what the policy is optimised on) and evaluation text."""

    #: named calibration corpus (c4, wikitext2); ignored when calib_file is set
    calib: str | None = "c4"
    #: local calibration file: .txt, .json/.jsonl(.gz), .parquet
    calib_file: str | None = None
    #: documents to use from the calibration corpus, Python slice syntax ("1800:2000")
    calib_slice: str | None = None
    #: number of calibration segments (the paper: 120000); None = steps x batch size when
    #: training.steps is set, else the paper's 120000 (one batch for --estimator none)
    n_segments: int | None = Field(default=None, gt=0)
    #: tokens per calibration segment (the paper: 128)
    seq_len: int = Field(default=128, gt=1)
    #: "random": windows at random offsets (the paper); "sequential": non-overlapping windows
    sampling: Literal["random", "sequential"] = "random"
    #: named evaluation corpora
    eval: list[str] = Field(default_factory=lambda: ["wikitext2"])
    #: local evaluation files (each becomes an evaluation set named after its file stem)
    eval_files: list[str] = Field(default_factory=list)
    #: field holding the text in json/jsonl/parquet files
    text_field: str = "text"
    #: where tokenized corpora are cached; None = the user cache directory
    cache_dir: str | None = None


class PruningSection(Section):
    """What to prune and how much."""

    granularity: list[str] = Field(default_factory=lambda: ["channel", "head"])
    #: fraction of the budget to remove, in (0, 1)
    prune_rate: float = 0.3
    #: per-type: one constraint per granularity (authors' code); global: one over all units
    #: (paper text); params: one on parameter count; local: the same rate in every layer
    budget: Literal["per-type", "global", "params", "local"] = "per-type"
    #: keep the first and the last N layers whole (LLM-Pruner's protection: [4, 2])
    protect_layers: tuple[int, int] = (0, 0)
    #: free: any per-layer counts; uniform-heads: every layer keeps the same number of KV
    #: groups (the decilm format's global query-head count); uniform: the same number of
    #: heads and MLP channels in every layer (the hf format). Needs budget per-type or local
    shape: Literal["free", "uniform-heads", "uniform"] = "free"
    #: every pruned layer keeps a multiple of N MLP channels (256: widths that the decilm
    #: format's ffn_mult expresses exactly in every engine). Needs budget per-type or local
    channel_multiple: int = Field(default=1, ge=1)

    @field_validator("prune_rate")
    @classmethod
    def _rate(cls, value: float) -> float:
        if not 0.0 < value < 1.0:
            raise ValueError(f"the prune rate must lie in the open interval (0, 1), got {value}")
        return value

    @field_validator("granularity", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list) and len(set(value)) != len(value):
            raise ValueError(f"a granularity is listed twice: {value}")
        if isinstance(value, list) and not value:
            raise ValueError("at least one granularity is needed")
        return value

    @field_validator("protect_layers", mode="before")
    @classmethod
    def _protect(cls, value: Any) -> Any:
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",")]
            if len(parts) != 2 or not all(p.isdigit() for p in parts):
                raise ValueError(f"expected FIRST,LAST (e.g. 4,2), got {value!r}")
            value = (int(parts[0]), int(parts[1]))
        if isinstance(value, (list, tuple)) and any(int(v) < 0 for v in value):
            raise ValueError(f"layer counts must be >= 0, got {value}")
        return value


class TrainingSection(Section):
    """The optimisation loop."""

    #: optimisation steps; None = `epochs` passes over the calibration segments
    steps: int | None = Field(default=None, ge=0)
    epochs: float = Field(default=1.0, gt=0)
    batch_size: int = Field(default=8, gt=0)
    seed: int = 0
    #: write a checkpoint every this many steps (and on SIGINT/SIGTERM)
    checkpoint_every: int = Field(default=200, gt=0)
    #: append to metrics.jsonl every this many steps
    log_every: int = Field(default=10, gt=0)
    #: keep the probabilities every this many steps (and at the last) in snapshots/, for
    #: time-to-quality curves (tests/bench/time_to_quality.py); None = none kept
    snapshot_every: int | None = Field(default=None, gt=0)
    #: "fixed": optimise at the target rate; "random-progressive": random start at
    #: `progressive_start`, the rate raised by `progressive_step` per stage (paper A.12)
    schedule: Literal["fixed", "random-progressive"] = "fixed"
    progressive_start: float = Field(default=0.05, gt=0, lt=1)
    progressive_step: float = Field(default=0.05, gt=0, lt=1)
    #: fraction of an epoch spent at each progressive rate (the paper: 1/3)
    progressive_stage_epochs: float = Field(default=1 / 3, gt=0)
    #: at most this many sequences in one batched masked forward (None = N_s x batch)
    max_rows: int | None = Field(default=None, gt=0)
    #: with sampled (hard) masks, compute only the channels and heads each mask keeps
    #: instead of masking the others: "auto" where it pays, "on" in every block that prunes
    #: a unit, "off" never (the same losses within fp32 rounding; soft masks always mask)
    skip_pruned: Literal["auto", "on", "off"] = "auto"
    #: what the estimators minimise: "ce", the masked model's next-token cross-entropy
    #: (paper); "kl", the KL divergence of the masked model's next-token distribution from
    #: the dense model's (distillation; one extra dense forward per batch)
    objective: Literal["ce", "kl"] = "ce"
    #: torch intra-op CPU threads during the run (None = torch's default: every core);
    #: on a machine shared with other jobs, 1 is often faster for small models
    threads: int | None = Field(default=None, gt=0)
    #: under torchrun: the longest a rank waits for the others in one collective (a step's
    #: all-gather, or rank 0's evaluation of the dense model) before the run ends with an
    #: error instead of hanging
    collective_timeout_s: float = Field(default=1800.0, gt=0)


class OutputSection(Section):
    """Where the run directory goes and what it holds."""

    #: run directory; None = runs/<model>-<estimator>-<rate>pct-<timestamp>
    dir: str | None = None
    overwrite: bool = False
    save_model: bool = True
    #: format of the saved model/: pgprune (any per-layer shapes; load_pruned or
    #: trust_remote_code), hf (a vanilla transformers class; implies pruning.shape uniform
    #: unless set), decilm (NVIDIA Nemotron-NAS DeciLMForCausalLM, served by vLLM/SGLang)
    format: Literal["pgprune", "hf", "decilm"] = "pgprune"


class RunConfig(Section):
    """The whole configuration of one run (plugin sections typed by the subclass that
    :func:`run_config_model` builds)."""

    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    pruning: PruningSection = Field(default_factory=PruningSection)
    init: InitializerConfig
    estimator: PluginConfig
    projector: PluginConfig
    training: TrainingSection = Field(default_factory=TrainingSection)
    evaluation: Any
    output: OutputSection = Field(default_factory=OutputSection)


#: defaults of the plugin sections (plain data, validated like user input)
DEFAULTS: dict[str, Any] = {
    "init": {"name": "wanda-sp"},
    "estimator": {"name": "reinforce"},
    "projector": {"name": "bisection"},
    "evaluation": {"evaluators": [{"name": name} for name in DEFAULT_EVALUATORS]},
}


def _union(registry: Registry, kind: str) -> Any:
    classes = tuple(spec.cls.Config for spec in registry.specs(kind).values())
    if not classes:
        return PluginConfig
    if len(classes) == 1:
        return classes[0]
    return Annotated[Union[classes], Field(discriminator="name")]  # noqa: UP007


def run_config_model(registry: Registry | None = None) -> type[RunConfig]:
    """The :class:`RunConfig` subclass whose plugin sections accept exactly the registered
    plugins' options."""
    registry = registry or get_registry()
    evaluator = _union(registry, "evaluator")

    class EvaluationSection(Section):
        """Which evaluators measure the dense and the pruned model, and how."""

        evaluators: list[evaluator] = Field(  # type: ignore[valid-type]
            default_factory=lambda: [{"name": name} for name in DEFAULT_EVALUATORS]
        )
        #: also measure the dense model (for the dense-vs-pruned table)
        dense: bool = True
        seq_len: int = Field(default=128, gt=1)
        batch_size: int = Field(default=8, gt=0)

        @field_validator("evaluators", mode="before")
        @classmethod
        def _names(cls, value: Any) -> Any:
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if isinstance(value, list):
                value = [{"name": v} if isinstance(v, str) else v for v in value]
            return value

    model = create_model(
        "RunConfig",
        __base__=RunConfig,
        init=(_union(registry, "initializer"), ...),
        estimator=(_union(registry, "estimator"), ...),
        projector=(_union(registry, "projector"), ...),
        evaluation=(EvaluationSection, Field(default_factory=EvaluationSection)),
    )
    return model
