"""The six plugin interfaces.  Each plugin class carries a ``name`` and a pydantic
``Config`` (see :class:`~pgprune_core.config.base.PluginConfig`) and is constructed with
an instance of that ``Config``.

Data flow of one run (docs/architecture.md)::

    adapter.load -> adapter.describe -> granularity.units -> UnitLayout
    initializer.scores -> transform -> projector            (initial probabilities s0)
    loop: estimator.step(StepContext)                        (updates the policy in place)
    final mask -> granularity.remove (surgery) -> evaluator.evaluate
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

from pgprune_core.config.base import PluginConfig, declares_name, with_name_literal
from pgprune_core.parallel import SINGLE, Ranks

if TYPE_CHECKING:  # pragma: no cover - typing only
    from pgprune_core.model.structure import ModelStructure, UnitLayout, UnitSet
    from pgprune_core.optim.policy import BernoulliPolicy


class Plugin:
    """Base of all plugin classes."""

    name: ClassVar[str]
    Config: ClassVar[type[PluginConfig]] = PluginConfig

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A plugin states its name once: when its ``Config`` does not declare the ``name``
        literal, it is derived here from ``cls.name``."""
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name", getattr(cls, "name", None))
        config = cls.__dict__.get("Config", getattr(cls, "Config", None))
        if not isinstance(name, str) or not name or not isinstance(config, type):
            return
        if not issubclass(config, PluginConfig) or declares_name(config):
            return
        cls.Config = with_name_literal(config, name, f"{cls.__qualname__}.Config", cls.__module__)

    def __init__(self, config: PluginConfig | None = None) -> None:
        # the defaults (a plugin's Config defaults its ``name``; the base's is required)
        self.config = config if config is not None else self.Config.model_validate({})

    @classmethod
    def describe(cls) -> str:
        """One line for ``pgprune plugins``: the first line of the class docstring."""
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


class Handle(Protocol):
    """Something installed into a model that can be taken out again (like a torch hook)."""

    def remove(self) -> None: ...


# -- the loss oracle --------------------------------------------------------------------


@runtime_checkable
class LossOracle(Protocol):
    """What estimators (and initializers) call to get losses of masked models.

    The core's implementation is :class:`pgprune_core.model.masking.LossOracle`; tests use
    :class:`pgprune_core.testing.oracles.QuadraticOracle`.  Any object with these members
    works.

    - ``losses(batch, masks)``: ``batch`` int64 [B, T] token ids (T >= 2), ``masks``
      [N, n] over the run's :class:`~pgprune_core.model.structure.UnitLayout` (hard 0/1
      or soft values in [0, 1]).  Returns a 1-D tensor of shape [N], one loss per mask
      (the mean next-token cross-entropy over the batch), floating point (float32 for the
      core's oracle), on the device of ``masks``; forward only, no autograd graph.
      Callers must not rely on the dtype or device: the shared skeleton
      (:mod:`pgprune_core.optim.sampled`) moves the losses to float64 on the CPU.
    - ``loss(batch, soft_masks)``: the same values, differentiable w.r.t. ``soft_masks``
      (for estimators that back-propagate, such as ``gumbel``).
    - ``forward_passes``: masks evaluated so far (one per mask and batch, counted by
      ``losses`` and ``loss``); ``backward_passes``: backward passes through the model,
      recorded by the estimator with ``count_backward(n)`` after it back-propagates.
    """

    forward_passes: int
    backward_passes: int

    def losses(self, batch: torch.Tensor, masks: torch.Tensor) -> torch.Tensor: ...

    def loss(self, batch: torch.Tensor, soft_masks: torch.Tensor) -> torch.Tensor: ...

    def count_backward(self, n: int = 1) -> None: ...


# -- model adapters ---------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSource:
    """Where and how to load a model (from ``RunConfig.model``)."""

    name_or_path: str
    dtype: str = "float32"
    device: str = "cpu"
    device_map: str | None = None
    #: with ``device_map``: the most memory per device (``{"cpu": "8GiB", "cuda:0": "20GiB"}``);
    #: what does not fit is offloaded (to the CPU, then to ``offload_folder`` on disk)
    max_memory: Mapping[str, int | str] | None = None
    offload_folder: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: Any
    source: ModelSource


class ModelAdapter(Plugin):
    """Architecture knowledge: loads a model family and describes it as sites."""

    #: ``config.model_type`` values this adapter understands.
    model_types: ClassVar[tuple[str, ...]] = ()

    def handles(self, model_config: Any) -> bool:
        return getattr(model_config, "model_type", None) in self.model_types

    @abc.abstractmethod
    def load(self, source: ModelSource) -> LoadedModel:
        """Load model and tokenizer (hub id or local directory), in eval mode."""

    @abc.abstractmethod
    def describe_model(self, model: nn.Module) -> ModelStructure:
        """Describe a loaded (possibly already pruned) model as sites."""

    @abc.abstractmethod
    def pruned_model_class(self) -> str:
        """Dotted path of the transformers class a saved pruned model subclasses,
        e.g. ``"transformers.LlamaForCausalLM"``."""


# -- granularities ----------------------------------------------------------------------


class Granularity(Plugin):
    """A kind of structural unit (``channel``, ``head``, ``layer``): what the units are,
    how a mask on them enters a forward pass, and how to cut them out physically."""

    #: Granularities are cut in ascending ``surgery_order`` (layers last: removing a
    #: layer renumbers the others).
    surgery_order: ClassVar[int] = 0

    @abc.abstractmethod
    def units(self, structure: ModelStructure) -> UnitSet:
        """The units of this kind with their exact parameter costs."""

    @abc.abstractmethod
    def install(
        self, structure: ModelStructure, units: UnitSet, row_masks: torch.Tensor
    ) -> list[Handle]:
        """Make the next forward passes use ``row_masks`` ([rows, n_kind], hard or soft,
        one row per row of the input batch).  Must not copy weights; soft masks must stay
        differentiable.  Returns handles that undo the installation."""

    @abc.abstractmethod
    def remove(self, structure: ModelStructure, units: UnitSet, keep: torch.Tensor) -> None:
        """Physically remove the units where ``keep`` (bool [n_kind]) is False."""


# -- initializers -----------------------------------------------------------------------


@dataclass
class InitContext:
    """What an initializer may use to score units."""

    model: nn.Module
    structure: ModelStructure
    layout: UnitLayout
    granularities: Mapping[str, Granularity]
    device: torch.device
    seed: int
    #: ``calibration(n_sequences, seq_len)``: a fresh, deterministic iterator over batches
    #: (int64 [B, seq_len]) holding ``n_sequences`` calibration windows in all; None when
    #: the run has no calibration data.
    calibration: Callable[[int, int], Iterator[torch.Tensor]] | None = None
    #: Evaluates losses of masked models without autograd (a :class:`LossOracle`).
    oracle: LossOracle | None = None
    #: the processes of a ``torchrun`` launch: an initializer that reads calibration data
    #: itself scores its share of the windows (``calibration_batches(..., shard=True)``)
    #: and sums its statistics over the ranks (``ranks.all_reduce_sum``), so that every
    #: rank ends with the one-process scores; the oracle already shares its forwards
    ranks: Ranks = SINGLE


class Initializer(Plugin):
    """Scores every unit (higher = more important) to start the policy or prune alone."""

    #: granularity kinds this initializer can score
    kinds: ClassVar[frozenset[str]] = frozenset({"channel", "head", "layer"})
    needs_calibration: ClassVar[bool] = False
    #: back-propagates into the weights (offloaded weights, which live on ``meta`` between
    #: forwards, cannot hold gradients: such a model is refused before any work)
    needs_weight_gradients: ClassVar[bool] = False

    @abc.abstractmethod
    def scores(self, ctx: InitContext) -> torch.Tensor:
        """float [n] over ``ctx.layout``: larger means keep."""


# -- estimators -------------------------------------------------------------------------


@dataclass
class StepContext:
    """One optimisation step's inputs.  The estimator updates ``policy`` in place, using
    ``project`` to map its proposal back onto the feasible set."""

    policy: BernoulliPolicy
    batch: torch.Tensor
    oracle: LossOracle
    project: Callable[[torch.Tensor], torch.Tensor]
    step: int
    total_steps: int
    generator: torch.Generator
    #: the length, in steps, of the run this stage belongs to, as estimators that scale
    #: their step size to the run length should see it: ``total_steps`` for a fixed-rate
    #: run; for a Random-Progressive stage (a fraction of an epoch) the stage length
    #: divided by that fraction, so each stage moves as far as the paper's stages do
    reference_steps: int | None = None

    @property
    def run_steps(self) -> int:
        return self.reference_steps or self.total_steps


@dataclass
class StepStats:
    """What one step did, for progress bars and ``metrics.jsonl``."""

    loss: float
    baseline: float | None = None
    skipped: bool = False
    extra: dict[str, float] = field(default_factory=dict)


class Estimator(Plugin):
    """Learns the keep-probabilities from losses of sampled masks."""

    #: False for ``none``: prune from the initial scores without optimising.
    optimises: ClassVar[bool] = True

    @property
    def forwards_per_step(self) -> int | None:
        """Forward passes of the batch one :meth:`step` costs (masks evaluated per step).
        Default: the Config's ``n_samples``; 0 for an estimator that does not optimise;
        None when unknown.  Override when a step evaluates another number of masks;
        ``pgprune compare --equal-forwards`` reads it to give every estimator the same
        forward budget."""
        if not self.optimises:
            return 0
        value = getattr(self.config, "n_samples", None)
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else None

    def start(self, policy: BernoulliPolicy, total_steps: int) -> None:
        """Reset internal state before the first step of a (stage of a) run."""

    @abc.abstractmethod
    def step(self, ctx: StepContext) -> StepStats:
        """Take one step; update ``ctx.policy`` in place."""

    def state_dict(self) -> dict[str, Any]:
        """Checkpointable state: tensors, numbers, strings, lists thereof."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


# -- projectors -------------------------------------------------------------------------


@dataclass(frozen=True)
class Constraint:
    """``weights @ s[indices] <= capacity`` (and ``0 <= s <= 1`` everywhere)."""

    indices: torch.Tensor  # int64 [k]
    weights: torch.Tensor  # float64 [k], > 0
    capacity: float


class Projector(Plugin):
    """Maps a vector onto C = {c^T s <= K for every constraint, 0 <= s <= 1}."""

    @abc.abstractmethod
    def project(self, z: torch.Tensor, constraints: Sequence[Constraint]) -> torch.Tensor:
        """Euclidean projection of ``z`` (float [n]) onto the feasible set; the constraints'
        index sets are disjoint; entries outside all of them are clipped to [0, 1]."""


# -- evaluators -------------------------------------------------------------------------


@dataclass
class EvalContext:
    """A model to measure and the data to measure it on."""

    model: nn.Module
    tokenizer: Any
    device: torch.device
    label: str  # "dense" or "pruned" (or a model path for `pgprune eval`)
    #: evaluation corpora by name -> object with ``.texts() -> list[str]``
    datasets: Mapping[str, Any] = field(default_factory=dict)
    seq_len: int = 128
    batch_size: int = 8
    seed: int = 0
    #: metrics of the dense model, when measuring the pruned one (for ratios)
    reference: Mapping[str, Any] | None = None
    #: directory the model is saved in, if any (for size on disk)
    model_path: Path | None = None
    #: progress of long loops (a ``pgprune_core.report.progress.Reporter``); None = silent
    reporter: Any = None


class Evaluator(Plugin):
    """Turns a model into named metrics (perplexity, zero-shot accuracy, latency, ...)."""

    @abc.abstractmethod
    def evaluate(self, ctx: EvalContext) -> dict[str, Any]:
        """JSON-able metrics, merged into one side of ``metrics.json``."""
