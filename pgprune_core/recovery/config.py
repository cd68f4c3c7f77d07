"""The configuration of ``pgprune finetune``: pydantic sections like a run's
(:mod:`pgprune_core.config.sections`), resolved the same way: defaults < a YAML/JSON file <
flags < dotted overrides (``--lora.r 16 --training.lr 1e-4``).

``model.path``, ``model.format`` and ``model.teacher`` are filled in from the command's
``RUN_DIR|PRUNED_MODEL_DIR`` argument (:func:`pgprune_core.recovery.pipeline.locate`), so
the ``config.yaml`` of a fine-tune directory says exactly what ``pgprune resume`` continues.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from pgprune_core.config.resolve import (
    format_validation_error,
    load_config_file,
    merge_file,
    merge_flags,
)
from pgprune_core.config.sections import DtypeName, ModelSection, Section
from pgprune_core.errors import ConfigError

#: the LoRA targets when none are named: these projections, where every layer has them
DEFAULT_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj",
                                    "gate_proj", "up_proj", "down_proj")


class FinetuneModelSection(Section):
    """The pruned model (the student) and the dense model it is distilled from."""

    #: the pruned model's directory (a run directory's model/ when a run was given)
    path: str | None = None
    #: its format: pgprune, decilm or hf; the merged model is saved in the same one
    format: Literal["pgprune", "decilm", "hf"] = "pgprune"
    #: the dense model (HF directory or hub id) for objective kl/mix; None = the base model
    #: recorded by the run or by the pruned model's pgprune section
    teacher: str | None = None
    dtype: DtypeName = "float32"
    device: str = "cpu"

    _device = field_validator("device")(ModelSection._device.__func__)  # type: ignore[attr-defined]


class LoraSection(Section):
    """The LoRA adapters (peft's ``LoraConfig``)."""

    r: int = Field(default=8, gt=0)
    alpha: float = Field(default=16.0, gt=0)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    #: module names (the last part, e.g. q_proj) to adapt; None = the attention and MLP
    #: projections that exist, with a non-empty weight, in every layer
    target_modules: list[str] | None = None

    @field_validator("target_modules", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list) and not value:
            raise ValueError("name at least one target module (or leave the key unset)")
        return value


class FinetuneDataSection(Section):
    """The training text and the evaluation text."""

    #: .json/.jsonl(.gz) of Alpaca records (instruction, input, output), or plain text in
    #: any format `pgprune run --calib-file` reads (.txt, .json/.jsonl(.gz), .parquet)
    train_file: str | None = None
    #: auto: alpaca when the records have "instruction" and "output", else text
    format: Literal["auto", "alpaca", "text"] = "auto"
    #: documents of a text file to train on, Python slice syntax ("1800:2000")
    train_slice: str | None = None
    #: field holding the text in json/jsonl/parquet text files
    text_field: str = "text"
    #: alpaca: the loss covers the response tokens only; false: every token
    response_only: bool = True
    #: tokens per training sequence (alpaca examples are truncated and padded to it)
    seq_len: int = Field(default=128, gt=1)
    #: evaluation text files (perplexity before and after); none = no evaluation
    eval_files: list[str] = Field(default_factory=list)
    cache_dir: str | None = None


class FinetuneTrainingSection(Section):
    """The optimisation: AdamW on the LoRA parameters."""

    #: optimiser steps; None = `epochs` passes over the training examples
    steps: int | None = Field(default=None, gt=0)
    #: passes over the examples when steps is None (default 1)
    epochs: float | None = Field(default=None, gt=0)
    batch_size: int = Field(default=4, gt=0)
    #: micro-batches per optimiser step
    grad_accum: int = Field(default=1, gt=0)
    #: AdamW learning rate (docs/finetune.md, "What to choose": 5e-3 measured best on
    #: models of <= 135M parameters; 2e-4 barely moved them)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    #: cosine: decays to 0 after the warmup; constant: stays at lr after the warmup
    schedule: Literal["cosine", "constant"] = "cosine"
    #: linear warmup from 0 over this many steps
    warmup_steps: int = Field(default=0, ge=0)
    #: clip the gradient norm (None = no clipping)
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    #: recompute activations in the backward pass (less memory, ~30% slower)
    gradient_checkpointing: bool = False
    seed: int = 0
    checkpoint_every: int = Field(default=50, gt=0)
    log_every: int = Field(default=1, gt=0)
    #: torch intra-op CPU threads (None = torch's default)
    threads: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_length(self) -> FinetuneTrainingSection:
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give --steps or --epochs, not both")
        return self


class ObjectiveSection(Section):
    """What the student minimises."""

    #: ce: next-token cross-entropy; kl: KL(dense || student) of the next-token
    #: distributions; mix: (1 - kl_weight) ce + kl_weight kl
    name: Literal["ce", "kl", "mix"] = "ce"
    kl_weight: float = Field(default=0.5, ge=0, le=1)
    #: distillation temperature (the KL is scaled by its square)
    temperature: float = Field(default=1.0, gt=0)

    @property
    def weight(self) -> float:
        """The weight of the KL term."""
        return {"ce": 0.0, "kl": 1.0}.get(self.name, self.kl_weight)


class FinetuneEvalSection(Section):
    """Perplexity before and after (the perplexity evaluator)."""

    seq_len: int = Field(default=128, gt=1)
    batch_size: int = Field(default=8, gt=0)
    #: score only the first N windows of each file; None = all
    max_windows: int | None = Field(default=None, gt=0)
    #: also measure the dense teacher, when there is one
    teacher: bool = True


class FinetuneOutputSection(Section):
    dir: str | None = None
    overwrite: bool = False


class FinetuneConfig(Section):
    """The whole configuration of one fine-tune."""

    model: FinetuneModelSection = Field(default_factory=FinetuneModelSection)
    lora: LoraSection = Field(default_factory=LoraSection)
    data: FinetuneDataSection = Field(default_factory=FinetuneDataSection)
    training: FinetuneTrainingSection = Field(default_factory=FinetuneTrainingSection)
    objective: ObjectiveSection = Field(default_factory=ObjectiveSection)
    evaluation: FinetuneEvalSection = Field(default_factory=FinetuneEvalSection)
    output: FinetuneOutputSection = Field(default_factory=FinetuneOutputSection)


#: keys that say how a fine-tune executes, not what it learns (may differ on resume)
EXECUTION_KEYS = ("output", "training.threads", "model.device")


def validate_finetune(data: Mapping[str, Any]) -> FinetuneConfig:
    try:
        return FinetuneConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, data, None, FinetuneConfig)) from None


def resolve_finetune(file: str | Path | None = None, flags: Mapping[str, Any] | None = None,
                     overrides: Mapping[str, Any] | None = None) -> FinetuneConfig:
    """Defaults < file < flags < dotted overrides, validated."""
    data: dict[str, Any] = json.loads(FinetuneConfig().model_dump_json())
    if file is not None:
        merge_file(data, load_config_file(file))
    return validate_finetune(merge_flags(data, flags, overrides))


def dump_finetune(config: FinetuneConfig) -> str:
    return yaml.safe_dump(json.loads(config.model_dump_json()), sort_keys=False)


def load_finetune(path: Path) -> FinetuneConfig:
    return validate_finetune(load_config_file(path))


def finetune_digest(config: FinetuneConfig) -> str:
    """What determines the trained adapters: everything but :data:`EXECUTION_KEYS`."""
    data = copy.deepcopy(json.loads(config.model_dump_json()))
    for key in EXECUTION_KEYS:
        section, _, name = key.partition(".")
        if name:
            data.get(section, {}).pop(name, None)
        else:
            data.pop(section, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
