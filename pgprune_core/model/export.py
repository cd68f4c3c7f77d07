"""Writing a pruned model in a format that serving engines load.

============  ==========================================================================
format        what is written
============  ==========================================================================
``pgprune``   :func:`~pgprune_core.model.surgery.save_pruned`'s directory: any per-layer
              shapes, loads with ``load_pruned`` or ``trust_remote_code``
``hf``        a vanilla transformers directory (the adapter's class, e.g.
              ``LlamaForCausalLM``; no remote code): every layer must have the same
              number of heads, KV heads and MLP width (``--pruning.shape uniform``)
``decilm``    NVIDIA's Nemotron-NAS ``DeciLMForCausalLM`` (``block_configs``), which vLLM
              and SGLang serve: per-layer MLP widths and KV heads, attention or MLP
              blocks (and dropped layers) as ``no_op``; the query-head count is global
============  ==========================================================================

Every check runs before anything is written, and a refusal is one line
(:class:`~pgprune_core.errors.ExportError`) that says what differs and how to get a
shape the format can express.  The fields and rounding of the ``decilm`` format follow the
engines' sources (see ``docs/serving.md``): :mod:`pgprune_core.model.decilm_modeling`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from pgprune_core.errors import ExportError
from pgprune_core.interfaces import ModelAdapter
from pgprune_core.model import decilm_modeling, pruned_modeling
from pgprune_core.model.placement import full_state_dict
from pgprune_core.model.structure import ModelStructure, ModuleNames
from pgprune_core.model.surgery import (
    SECTION,
    layer_origins,
    layer_shapes,
    load_pruned,
    save_pruned,
)
from pgprune_core.run.artifacts import atomic_dir

EXPORT_FORMATS: tuple[str, ...] = ("pgprune", "hf", "decilm")
#: file name of the DeciLM modeling code inside an exported directory
DECILM_MODELING_FILE = "modeling_decilm.py"
DECILM_AUTO_MAP = {
    "AutoConfig": "modeling_decilm.DeciLMConfig",
    "AutoModelForCausalLM": "modeling_decilm.DeciLMForCausalLM",
}
#: transformers classes whose layers the DeciLM format describes (LLaMA decoders)
LLAMA_CLASS, MISTRAL_CLASS = "transformers.LlamaForCausalLM", "transformers.MistralForCausalLM"
DECILM_BASES = (LLAMA_CLASS, MISTRAL_CLASS)
#: the MLP-width multiple that makes an ``ffn_mult`` exact in every engine
FFN_MULTIPLE = decilm_modeling.FFN_MULTIPLE


@dataclass
class ExportResult:
    path: Path
    format: str
    #: parameters of the exported model (what loading it gives)
    params: int
    #: one line each: what a user should know about the written directory
    notes: list[str] = field(default_factory=list)


def _layers_text(layers: list[int]) -> str:
    return ("layer " if len(layers) == 1 else "layers ") + ", ".join(map(str, layers))


def _groups(values: list[Any], origins: list[int]) -> str:
    """``"4 in layers 0, 2; 2 in layer 1"`` (layers numbered as in the original model)."""
    where: dict[Any, list[int]] = {}
    for origin, value in zip(origins, values, strict=True):
        where.setdefault(value, []).append(origin)
    return "; ".join(f"{value} in {_layers_text(layers)}" for value, layers in where.items())


# -- checks -------------------------------------------------------------------------------
def check_shapes(fmt: str, shapes: list[dict[str, Any]], origins: list[int] | None = None) -> None:
    """Refuse, from the per-layer shapes alone (:func:`~pgprune_core.model.surgery.layer_shapes`,
    also in a saved model's config), what ``fmt`` cannot express; cheap, so it runs before
    any weight is loaded.  ``origins``: the layers' indices in the original model, which
    the messages name (default: their positions)."""
    origins = list(range(len(shapes))) if origins is None else origins
    if fmt in ("hf", "decilm") and any(s.get("n_experts") is not None for s in shapes):
        raise ExportError(f"cannot export a mixture-of-experts model as {fmt} (its per-layer "
                          f"expert counts have no field there); export --format pgprune")
    if fmt == "hf":
        check_hf(shapes, origins)
    elif fmt == "decilm":
        check_query_heads(shapes, origins)


def check_query_heads(shapes: list[dict[str, int]], origins: list[int]) -> None:
    heads = {s["n_heads"] for s in shapes if s["n_heads"]}
    if len(heads) > 1:
        raise ExportError(
            f"cannot export as decilm: its query-head count is global (num_attention_heads; "
            f"n_heads_in_group = query heads per KV head) but layers keep different numbers of "
            f"query heads ({_groups([s['n_heads'] for s in shapes], origins)}); prune with "
            f"--pruning.shape uniform-heads"
        )


def check_hf(shapes: list[dict[str, int]], origins: list[int]) -> None:
    """Refuse a model whose layers a single transformers config cannot describe."""
    empty_attention = [o for o, s in zip(origins, shapes, strict=True) if s["n_heads"] == 0]
    empty_mlp = [o for o, s in zip(origins, shapes, strict=True) if s["intermediate_size"] == 0]
    hint = ("prune with --pruning.shape uniform (or export --format decilm, which expresses "
            "per-layer shapes)")
    if empty_attention or empty_mlp:
        what = []
        if empty_attention:
            what.append(f"no attention heads left in {_layers_text(empty_attention)}")
        if empty_mlp:
            what.append(f"no MLP channels left in {_layers_text(empty_mlp)}")
        raise ExportError(f"cannot export as hf: {' and '.join(what)}; a transformers config "
                          f"cannot express an empty block: export --format decilm or pgprune")
    for key, label in (("n_heads", "attention heads"), ("n_kv_heads", "KV heads"),
                       ("intermediate_size", "MLP width")):
        values = [s[key] for s in shapes]
        if len(set(values)) > 1:
            raise ExportError(f"cannot export as hf: layers differ in {label} ({_groups(values, origins)}); "
                              f"a transformers config has one shape for every layer: {hint}")


def _bias(linear: nn.Linear) -> bool:
    return linear.bias is not None


def decilm_blocks(structure: ModelStructure, origins: list[int], original_count: int
                  ) -> tuple[int, list[dict[str, Any]], list[str]]:
    """The global query-head count, one block config per original layer, and notes; raises
    :class:`ExportError` for what the format cannot express."""
    if structure.names != ModuleNames():
        raise ExportError("cannot export as decilm: the format names LLaMA's modules "
                          "(model.layers.N.self_attn.q_proj, ...), this model's differ")
    hidden = structure.hidden_size
    shapes = layer_shapes(structure)
    check_query_heads(shapes, origins)
    heads = [s["n_heads"] for s in shapes if s["n_heads"]]
    blocks: list[dict[str, Any]] = [
        {"attention": {"no_op": True, "replace_with_linear": False},
         "ffn": {"no_op": True, "replace_with_linear": False}}
        for _ in range(original_count)
    ]
    inexact: list[int] = []
    window = getattr(structure.model.config, "sliding_window", None)
    for site, origin in zip(structure.layers, origins, strict=True):
        attention, mlp = site.attention, site.dense_mlp()
        block = blocks[origin]
        if attention.n_heads:
            block["attention"] = {"no_op": False, "replace_with_linear": False,
                                  "n_heads_in_group": attention.n_heads // attention.n_kv_heads}
            if window:
                block["attention"]["window_length"] = int(window)
        elif _bias(attention.o_proj):
            raise ExportError(f"cannot export as decilm: layer {origin} has no heads left but its "
                              f"o_proj bias still adds to the residual; a no_op block cannot")
        width = mlp.intermediate_size
        if width:
            ffn: dict[str, Any] = {"no_op": False, "replace_with_linear": False}
            mult = round(3 * width / (2 * hidden), 6)
            if decilm_modeling.ffn_mult_to_intermediate_size(mult, hidden) == width:
                ffn["ffn_mult"] = mult
            else:
                ffn["intermediate_size"] = width
                inexact.append(origin)
            block["ffn"] = ffn
        elif _bias(mlp.down_proj):
            raise ExportError(f"cannot export as decilm: layer {origin} has no MLP channels left "
                              f"but its down_proj bias still adds to the residual; a no_op block "
                              f"cannot")
    notes = []
    if inexact:
        notes.append(
            f"MLP widths of {_layers_text(inexact)} are not multiples of {FFN_MULTIPLE}, which "
            f"ffn_mult cannot express (engines round its width up to a multiple of "
            f"{FFN_MULTIPLE}): they are written as intermediate_size, which vLLM and "
            f"transformers read but SGLang does not; prune with --pruning.channel_multiple "
            f"{FFN_MULTIPLE} for a directory every engine loads"
        )
    if window:
        notes.append(f"sliding window {window}: vLLM's and SGLang's DeciLM read no window; serve "
                     f"with a context of at most {window} tokens there")
    n_heads = heads[0] if heads else int(cast(Any, structure.model.config).num_attention_heads)
    return n_heads, blocks, notes


# -- writing ------------------------------------------------------------------------------
def _check_target(path: Path) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ExportError(f"refusing to write into {path}: it exists and is not empty")


def _vanilla_config(model: nn.Module) -> dict[str, Any]:
    config = cast(Any, model.config).to_dict()
    for key in (SECTION, "auto_map", "architectures", "transformers_version", "_name_or_path"):
        config.pop(key, None)
    return config


def _meta_model(cls: Any, config: Any) -> Any:
    """``cls(config)`` without allocating or initialising weights (they are assigned)."""
    with torch.device("meta"):
        return cls(config)


def _save_with_weights(target_model: Any, state: Mapping[str, torch.Tensor], tmp: Path,
                       tokenizer: Any) -> int:
    """Assign ``state`` to ``target_model`` (built on the meta device; every tensor must fit
    a parameter of the same name and shape) and save both."""
    target_model.load_state_dict(dict(state), strict=True, assign=True)
    target_model.tie_weights()  # assignment replaced the tied parameters one by one
    target_model.save_pretrained(tmp)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    return sum(p.numel() for p in target_model.parameters())


def _export_hf(model: nn.Module, tokenizer: Any, target: Path, structure: ModelStructure,
               base_class: str) -> ExportResult:
    check_hf(layer_shapes(structure), layer_origins(model.config, structure.n_layers)[0])
    shape = layer_shapes(structure)[0]
    cls = pruned_modeling.import_object(base_class)
    notes = []
    if base_class == LLAMA_CLASS and structure.hidden_size % shape["n_heads"]:
        # transformers' LlamaConfig refuses a hidden size that is not a multiple of the
        # head count (even with an explicit head_dim); Mistral's computes the same decoder
        # (no sliding window) with an explicit head_dim and no such check
        site = structure.layers[0]
        biases = [_bias(p) for p in (site.attention.q_proj, site.attention.o_proj,
                                     site.dense_mlp().gate_proj, site.dense_mlp().down_proj)]
        if any(biases):
            raise ExportError(
                f"cannot export as hf: transformers' LlamaConfig needs hidden_size "
                f"({structure.hidden_size}) to be a multiple of num_attention_heads "
                f"({shape['n_heads']}) and MistralConfig has no biases; export --format decilm"
            )
        cls = pruned_modeling.import_object(MISTRAL_CLASS)
        notes.append(f"written as {cls.__name__} (the same decoder, no sliding window): "
                     f"transformers' LlamaConfig refuses {shape['n_heads']} heads for hidden size "
                     f"{structure.hidden_size}")
    config = cls.config_class(**{
        **_vanilla_config(model),
        "num_attention_heads": shape["n_heads"],
        "num_key_value_heads": shape["n_kv_heads"],
        "head_dim": shape["head_dim"],
        "intermediate_size": shape["intermediate_size"],
        "num_hidden_layers": structure.n_layers,
    })
    if cls.__name__ == "MistralForCausalLM" and base_class != MISTRAL_CLASS:
        config.sliding_window = None
    config.architectures = [cls.__name__]
    with atomic_dir(target) as tmp:
        params = _save_with_weights(_meta_model(cls, config), full_state_dict(model), tmp,
                                    tokenizer)
    return ExportResult(target, "hf", params, notes)


def _renumbered(model: nn.Module, origins: list[int], dropped: set[str]) -> dict[str, torch.Tensor]:
    """The state dict with layer ``i`` renamed to its original index; tensors whose name
    starts with one of ``dropped`` (already renumbered) left out."""
    prefix = ModuleNames().layers + "."
    out = {}
    for name, tensor in full_state_dict(model).items():
        if name.startswith(prefix):
            index, _, rest = name[len(prefix):].partition(".")
            name = f"{prefix}{origins[int(index)]}.{rest}"
        if not any(name.startswith(d) for d in dropped):
            out[name] = tensor
    return out


def _export_decilm(model: nn.Module, tokenizer: Any, target: Path, structure: ModelStructure,
                   base_class: str) -> ExportResult:
    if base_class not in DECILM_BASES:
        raise ExportError(f"cannot export as decilm: the format describes LLaMA decoders "
                          f"({', '.join(DECILM_BASES)}), this model is {base_class}")
    origins, original_count = layer_origins(model.config, structure.n_layers)
    n_heads, blocks, notes = decilm_blocks(structure, origins, original_count)
    head_dim = structure.layers[0].attention.head_dim if structure.layers else None
    values = _vanilla_config(model)
    for key in ("model_type", "layer_types", "num_key_value_heads"):
        values.pop(key, None)
    values.update(num_attention_heads=n_heads, num_hidden_layers=original_count,
                  head_dim=head_dim or values.get("head_dim"), block_configs=blocks)
    config = decilm_modeling.DeciLMConfig(**values)
    config.architectures = [decilm_modeling.DeciLMForCausalLM.__name__]
    config.auto_map = dict(DECILM_AUTO_MAP)
    prefix = ModuleNames().layers
    dropped = set()
    for index, block in enumerate(blocks):
        if block["attention"]["no_op"]:
            dropped |= {f"{prefix}.{index}.self_attn.", f"{prefix}.{index}.input_layernorm."}
        if block["ffn"]["no_op"]:
            dropped |= {f"{prefix}.{index}.mlp.", f"{prefix}.{index}.post_attention_layernorm."}
    state = _renumbered(model, origins, dropped)
    with atomic_dir(target) as tmp:
        params = _save_with_weights(_meta_model(decilm_modeling.DeciLMForCausalLM, config),
                                    state, tmp, tokenizer)
        _add_decilm_files(tmp)
    return ExportResult(target, "decilm", params, notes)


def _add_decilm_files(tmp: Path) -> None:
    """The modeling code beside a saved DeciLM directory, and ``auto_map`` pointing at it."""
    shutil.copyfile(decilm_modeling.__file__, tmp / DECILM_MODELING_FILE)
    config_file = tmp / "config.json"
    written = json.loads(config_file.read_text(encoding="utf-8"))
    written["auto_map"] = dict(DECILM_AUTO_MAP)
    config_file.write_text(json.dumps(written, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def export_pruned(model: nn.Module, tokenizer: Any, path: str | Path, fmt: str, *,
                  adapter_name: str, base_model: str | Path,
                  extra: Mapping[str, Any] | None = None) -> ExportResult:
    """Write ``model`` (pruned by :func:`~pgprune_core.model.surgery.prune_model`, or
    loaded with ``load_pruned``) to ``path`` in format ``fmt``; nothing is written when the
    format cannot express the model."""
    from pgprune_core.plugin.registry import get_registry

    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    target = Path(path)
    if fmt == "pgprune":
        save_pruned(model, tokenizer, target, adapter_name=adapter_name, base_model=base_model,
                    extra=extra)
        return ExportResult(target, fmt, sum(p.numel() for p in model.parameters()))
    _check_target(target)
    adapter = cast(ModelAdapter, get_registry().cls("adapter", adapter_name)())
    structure = adapter.describe_model(model)
    base_class = adapter.pruned_model_class()
    check_shapes(fmt, layer_shapes(structure),
                 layer_origins(model.config, structure.n_layers)[0])
    if fmt == "hf":
        return _export_hf(model, tokenizer, target, structure, base_class)
    return _export_decilm(model, tokenizer, target, structure, base_class)


def save_in_format(model: nn.Module, tokenizer: Any, path: str | Path, fmt: str, *,
                   extra: Mapping[str, Any] | None = None) -> ExportResult:
    """Write a model loaded from a directory of format ``fmt`` (``load_pruned``,
    ``load_decilm`` or a plain transformers class), with its weights changed, back in that
    format: what the same loader reads.  ``extra`` joins a pgprune model's ``extra``."""
    target = Path(path)
    if fmt == "pgprune":
        section = getattr(model.config, SECTION)
        save_pruned(model, tokenizer, target, adapter_name=section["adapter"],
                    base_model=section.get("base_model", ""),
                    extra={**(section.get("extra") or {}), **(extra or {})})
        return ExportResult(target, fmt, sum(p.numel() for p in model.parameters()))
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    _check_target(target)
    with atomic_dir(target) as tmp:
        cast(Any, model).save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if fmt == "decilm":
            _add_decilm_files(tmp)
    return ExportResult(target, fmt, sum(p.numel() for p in model.parameters()))


def export_directory(source: str | Path, path: str | Path, fmt: str) -> ExportResult:
    """Export a model directory saved by pgprune (``save_pruned``) to ``path``."""
    from transformers import AutoTokenizer

    source = Path(source)
    target = Path(path)
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    if target.resolve() == source.resolve():
        raise ExportError(f"refusing to export {source} onto itself")
    _check_target(target)
    try:
        section = json.loads((source / "config.json").read_text(encoding="utf-8"))[SECTION]
        shapes, origins = section["layers"], section.get("original_layers")
    except (OSError, ValueError, KeyError, TypeError):
        shapes = None  # load_pruned names what is wrong with the directory
    if shapes is not None:
        valid = isinstance(origins, list) and len(origins) == len(shapes)
        check_shapes(fmt, shapes, origins if valid else None)
    model = load_pruned(source)
    section = getattr(model.config, SECTION)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except Exception:  # a model saved without its tokenizer exports without one
        tokenizer = None
    return export_pruned(model, tokenizer, target, fmt, adapter_name=section["adapter"],
                         base_model=section.get("base_model", str(source)),
                         extra=section.get("extra"))


def is_decilm_dir(path: str | Path) -> bool:
    """Whether ``path`` holds a ``decilm`` export (its config's model type is Nemotron-NAS's
    and pgprune's modeling file is beside it)."""
    path = Path(path)
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (isinstance(config, dict)
            and config.get("model_type") == decilm_modeling.DeciLMConfig.model_type
            and (path / DECILM_MODELING_FILE).is_file())


def load_decilm(path: str | Path, *, dtype: torch.dtype | None = None,
                device: str | torch.device = "cpu") -> nn.Module:
    """A ``decilm`` export loaded with pgprune's own copy of its modeling code (no remote
    code runs), in eval mode with gradients off."""
    try:
        model: Any = decilm_modeling.DeciLMForCausalLM.from_pretrained(path, dtype=dtype or "auto")
    except Exception as exc:
        raise ExportError(f"cannot load the decilm model in {path}: {exc}") from exc
    model = model.to(device)
    model.eval()
    model.requires_grad_(False)
    return cast(nn.Module, model)
