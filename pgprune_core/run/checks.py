"""Cheap checks of a run's configuration, made before anything expensive (loading the
model, tokenizing, downloading) and before the run directory is created.

Each raises a one-line :class:`~pgprune_core.errors.ConfigError` for a mistake the user can
fix; the later, authoritative checks stay where they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pgprune_core.config.sections import RunConfig
from pgprune_core.errors import ConfigError, DistributedError
from pgprune_core.parallel import Ranks
from pgprune_core.plugin.registry import Registry


def check_device(device: str) -> None:
    """``cuda``/``cuda:N``/``mps`` must exist on this machine."""
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: CUDA is not available on this machine; "
                              f"use --device cpu")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} "
                              f"CUDA device(s)")
    elif device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps: MPS is not available on this machine; use --device cpu")


def check_files(config: RunConfig) -> None:
    """Local files named by the config exist."""
    data = config.data
    if data.calib_file is not None and not Path(data.calib_file).expanduser().is_file():
        raise ConfigError(f"calibration file not found: {data.calib_file}")
    for name in data.eval_files:
        if not Path(name).expanduser().is_file():
            raise ConfigError(f"evaluation file not found: {name}")
    model = config.model.name_or_path
    if model is not None:
        path = Path(model).expanduser()
        looks_local = model.startswith((".", "/", "~")) or model.count("/") > 1
        if not path.exists() and looks_local:
            raise ConfigError(f"model directory not found: {model}")
        if path.is_dir() and not (path / "config.json").is_file():
            raise ConfigError(f"{model} has no config.json; is it a Hugging Face model directory?")


def check_initializer(config: RunConfig, registry: Registry) -> None:
    """The initializer can score every selected granularity; name those that can."""
    cls: Any = registry.cls("initializer", config.init.name)
    wanted = set(config.pruning.granularity)
    unsupported = sorted(wanted - set(cls.kinds))
    if not unsupported:
        return
    able = sorted((name for name in registry.names("initializer")
                   if wanted <= set(registry.cls("initializer", name).kinds)),
                  key=lambda name: len(registry.cls("initializer", name).kinds))
    hint = f"; initializers that can: {', '.join(able)}" if able else ""
    alone = [name for name in registry.names("initializer")
             if set(unsupported) <= set(registry.cls("initializer", name).kinds)
             and not wanted <= set(registry.cls("initializer", name).kinds)]
    if not able and alone:
        hint = f"; prune {', '.join(unsupported)} alone with --init {alone[0]}"
    elif alone:
        hint += f" (or --granularity {','.join(unsupported)} --init {alone[0]})"
    raise ConfigError(
        f"initializer '{config.init.name}' cannot score {', '.join(unsupported)} units "
        f"(it scores {', '.join(sorted(cls.kinds))}){hint}"
    )


#: the shapes each output format needs when heads / channels are pruned
FORMAT_SHAPES = {"hf": ("uniform",), "decilm": ("uniform-heads", "uniform")}


def check_output_format(config: RunConfig) -> None:
    """The saved model's format can express the shapes the budget allows (a refusal at the
    end of an expensive run would waste it)."""
    pruning, fmt = config.pruning, config.output.format
    shapes = FORMAT_SHAPES.get(fmt)
    if shapes is None or not config.output.save_model:
        return
    blocks = sorted({"attention", "mlp"} & set(pruning.granularity))
    if fmt == "hf" and blocks:
        raise ConfigError(f"--output.format hf cannot express a layer without its "
                          f"{' or '.join(blocks)} block (--granularity {','.join(blocks)}); use "
                          f"--output.format decilm, which writes such blocks as no_op")
    if pruning.shape in shapes:
        return
    needs = {"hf": {"channel", "head"}, "decilm": {"head"}}[fmt]
    pruned = sorted(needs & set(pruning.granularity))
    if pruned:
        raise ConfigError(f"--output.format {fmt} cannot express per-layer {' and '.join(pruned)} "
                          f"counts, which --pruning.shape {pruning.shape} allows; use "
                          f"--pruning.shape {shapes[0]}")


def check_placement(config: RunConfig) -> None:
    """``max_memory`` and ``offload_folder`` belong to a device map, and the GPUs that
    ``max_memory`` names must exist on this machine."""
    model = config.model
    if model.device_map is None:
        named = [key for key in ("max_memory", "offload_folder") if getattr(model, key) is not None]
        if named:
            raise ConfigError(f"model.{named[0]} needs model.device_map (e.g. --device-map auto)")
        return
    gpus = [int(key.rpartition(":")[2]) for key in model.max_memory or {}
            if key.startswith("cuda") or key.isdigit()]
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    missing = [index for index in gpus if index >= available]
    if missing:
        raise ConfigError(f"model.max_memory names cuda:{missing[0]}, but this machine has "
                          f"{available} CUDA device(s)")


def preflight(config: RunConfig, registry: Registry) -> None:
    """Every cheap check, in the order a user would want to hear about them."""
    check_files(config)
    check_output_format(config)
    check_placement(config)
    if config.model.device_map is None:
        check_device(config.model.device)
    check_initializer(config, registry)


def check_loaded_model(config: RunConfig, prep: Any, registry: Registry) -> None:
    """What only the loaded model tells: whether the initializer can use its weights
    (offloaded ones cannot hold gradients)."""
    from pgprune_core.initializers.base import check_weights_reachable

    check_weights_reachable(registry.cls("initializer", config.init.name), prep.loaded.model)


def check_launch(config: RunConfig, ranks: Ranks) -> None:
    """Under ``torchrun`` every rank holds the whole model on its own device."""
    if not ranks.distributed:
        return
    if config.model.device_map is not None:
        raise DistributedError(
            f"--device-map {config.model.device_map} spreads one model over several devices; "
            f"under torchrun every rank holds its own copy: drop --device-map (or run one "
            f"process with --device-map)"
        )
    device = config.model.device
    if device.startswith("cuda:"):
        raise DistributedError(
            f"--device {device} puts every rank on one GPU; under torchrun use --device cuda "
            f"(rank r takes the GPU of its LOCAL_RANK)"
        )


def check_rate_leaves_units(config: RunConfig, prep: Any) -> None:
    """Refuse a rate that would remove every unit of a kind (per-type and local budgets fix
    each kind's count; the other budgets trade kinds against each other)."""
    if config.pruning.budget not in ("per-type", "local"):
        return
    keep = prep.budget.final_mask(torch.zeros(len(prep.layout), dtype=torch.float64))
    for kind, kept in prep.layout.split(keep).items():
        if len(kept) and not bool(kept.any()):
            raise ConfigError(
                f"--prune-rate {config.pruning.prune_rate} leaves no {kind} unit "
                f"(of {len(kept)}); lower the rate or drop {kind} from --granularity"
            )
