"""Generic machinery for llama-family Hugging Face decoders, parameterised by adapter plugins.

An adapter plugin (``pgprune-llama``, ``pgprune-mistral``, ``pgprune-qwen2``, ...) subclasses :class:`HFDecoderAdapter`
and states what it knows about its architecture: the ``model_type`` values it handles, the
transformers class (a dotted path, imported only when a model is loaded, so that listing
plugins stays fast) and the attribute names of the blocks (:class:`ModuleNames`).  Loading,
describing and error reporting are the same for all of them and live here once.

:func:`resolve_adapter` picks the adapter for a model from its config alone (through the
``pgprune_resolve_adapter`` hook), without loading any weights.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, cast

import torch
from torch import nn

from pgprune_core.config.sections import TORCH_DTYPES
from pgprune_core.errors import MissingPluginError, ModelError, first_line
from pgprune_core.interfaces import LoadedModel, ModelAdapter, ModelSource
from pgprune_core.model import pruned_modeling
from pgprune_core.model.pruned_modeling import import_object
from pgprune_core.model.structure import (
    AttentionSite,
    ExpertSite,
    LayerSite,
    MlpSite,
    ModelStructure,
    ModuleNames,
    text_config,
)
from pgprune_core.plugin.registry import (
    ADAPTER_FOR_MODEL_TYPE,
    PROVIDED_BY,
    Registry,
    get_registry,
)

DTYPES = TORCH_DTYPES


def load_model_config(name_or_path: str, *, revision: str | None = None,
                      trust_remote_code: bool = False) -> Any:
    """The transformers config of a hub id or local directory, or a one-line ModelError
    that names the directory, file or id that failed."""
    from transformers import AutoConfig

    path = Path(name_or_path)
    if path.is_dir() and not (path / "config.json").is_file():
        raise ModelError(f"{path} has no config.json; is it a Hugging Face model directory?")
    if not path.exists() and (name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1):
        raise ModelError(f"model directory not found: {name_or_path}")
    try:
        return AutoConfig.from_pretrained(name_or_path, revision=revision,
                                          trust_remote_code=trust_remote_code)
    except Exception as exc:  # transformers raises OSError, ValueError, JSON errors, ...
        where = path / "config.json" if path.is_dir() else f"hub id '{name_or_path}'"
        raise ModelError(f"cannot read the model config from {where}: {first_line(exc)}") from exc


def accelerate_max_memory(max_memory: Mapping[str, int | str]) -> dict[int | str, int | str]:
    """``{"cuda:0": "20GiB", "cpu": "64GiB"}`` as accelerate wants it: GPUs by index."""
    return {int(key.rpartition(":")[2]) if key.startswith("cuda") or key.isdigit() else key: size
            for key, size in max_memory.items()}


def _adapter_label(name: str, cls: type[ModelAdapter]) -> str:
    """``gemma3 (model type gemma3_text)``: an adapter and, when they differ from its name,
    the model types it handles."""
    types = tuple(cls.model_types)
    if types == (name,) or not types:
        return name
    return f"{name} (model type {'/'.join(types)})"


def adapter_for_config(model_config: Any, registry: Registry | None = None) -> str:
    """The name of the adapter that handles ``model_config`` (a transformers config)."""
    registry = registry or get_registry()
    name = registry.resolve_adapter(model_config)
    if name is None:
        model_type = getattr(model_config, "model_type", None)
        known = ADAPTER_FOR_MODEL_TYPE.get(str(model_type))
        if known is not None and known not in registry.names("adapter"):
            raise MissingPluginError("adapter", known, PROVIDED_BY[("adapter", known)])
        supported = ", ".join(_adapter_label(name, cls) for name, cls in
                              sorted(registry.classes("adapter").items()))
        raise ModelError(f"model type {model_type!r} is not supported; supported: "
                         f"{supported or '(no adapter plugin installed)'}")
    return name


def claim(model_config: Any, *adapters: type[ModelAdapter]) -> str | None:
    """The name of the first of ``adapters`` that handles ``model_config`` (None: none
    does): what an adapter plugin's ``pgprune_resolve_adapter`` returns."""
    return next((cls.name for cls in adapters if cls().handles(model_config)), None)


def resolve_adapter(name_or_path: str, *, registry: Registry | None = None,
                    revision: str | None = None, trust_remote_code: bool = False) -> str:
    """The adapter for a hub id or local directory, from its config alone."""
    config = load_model_config(name_or_path, revision=revision,
                               trust_remote_code=trust_remote_code)
    try:
        return adapter_for_config(config, registry)
    except ModelError as exc:
        raise ModelError(f"{name_or_path}: {exc}") from None


class HFDecoderAdapter(ModelAdapter):
    """Loads and describes a llama-family decoder (subclasses name the architecture)."""

    #: dotted path of the transformers class, e.g. ``"transformers.LlamaForCausalLM"``
    model_class: ClassVar[str]
    #: attribute names of the blocks inside a decoder layer
    names: ClassVar[ModuleNames] = ModuleNames()

    def pruned_model_class(self) -> str:
        return self.model_class

    def check_config(self, model_config: Any) -> None:
        """Refuse a config this adapter does not understand, naming what it does."""
        if not self.handles(model_config):
            model_type = getattr(model_config, "model_type", None)
            raise ModelError(
                f"adapter '{self.name}' does not handle model type {model_type!r}; "
                f"supported: {', '.join(self.model_types)}"
            )

    # -- loading ----------------------------------------------------------------------
    def load(self, source: ModelSource) -> LoadedModel:
        """Model (eval mode, gradients off) and tokenizer of a hub id or local directory;
        a directory saved by pgprune's ``save_pruned`` is rebuilt with its pruned shapes.

        With ``device_map`` the model is dispatched by accelerate (``max_memory`` caps each
        device; what does not fit is offloaded to the CPU, then to disk; see
        :mod:`pgprune_core.model.placement`)."""
        from transformers import AutoTokenizer

        name = source.name_or_path
        config = load_model_config(name, revision=source.revision,
                                   trust_remote_code=source.trust_remote_code)
        self.check_config(config)
        if source.dtype not in DTYPES:
            raise ModelError(f"dtype must be one of {', '.join(DTYPES)}, got {source.dtype!r}")
        kwargs: dict[str, Any] = {"config": config, "dtype": DTYPES[source.dtype],
                                  "revision": source.revision,
                                  "trust_remote_code": source.trust_remote_code}
        device: torch.device | None = None
        if source.device_map is not None:
            if importlib.util.find_spec("accelerate") is None:
                raise ModelError(f"device_map={source.device_map!r} needs the accelerate "
                                 f"package: pip install accelerate")
            kwargs["device_map"] = source.device_map
            if source.max_memory is not None:
                kwargs["max_memory"] = accelerate_max_memory(source.max_memory)
            if source.offload_folder is not None:
                kwargs["offload_folder"] = source.offload_folder
        elif source.max_memory is not None or source.offload_folder is not None:
            raise ModelError("max_memory and offload_folder need a device_map (e.g. auto)")
        else:
            try:
                device = torch.device(source.device)
            except RuntimeError as exc:
                raise ModelError(f"invalid device {source.device!r}: {first_line(exc)}") from exc
        # a model pruned and saved by pgprune is rebuilt with its per-layer shapes
        pruned = isinstance(getattr(config, pruned_modeling.SECTION, None), dict)
        try:
            cls = pruned_modeling.pruned_class(config) if pruned else import_object(self.model_class)
            model = cls.from_pretrained(name, **kwargs)
            if device is not None:
                model = model.to(device)
        except Exception as exc:  # missing/corrupt weights, unreachable hub, no CUDA, ...
            raise ModelError(f"cannot load the model weights from {name}: {first_line(exc)}") from exc
        model.eval()
        model.requires_grad_(False)
        try:
            tokenizer = AutoTokenizer.from_pretrained(name, revision=source.revision,
                                                      trust_remote_code=source.trust_remote_code)
        except Exception as exc:
            raise ModelError(f"cannot load the tokenizer from {name}: {first_line(exc)}") from exc
        return LoadedModel(model=model, tokenizer=tokenizer, source=source)

    # -- describing -------------------------------------------------------------------
    def describe_model(self, model: nn.Module) -> ModelStructure:
        """Sites of every decoder layer; head counts and widths are read from the module
        shapes (not the config), so an already pruned model is described as it is."""
        self.check_config(model.config)
        config = text_config(model.config)
        names = self.names
        try:
            layer_list = cast(nn.ModuleList, model.get_submodule(names.layers))
        except AttributeError as exc:
            raise ModelError(f"adapter '{self.name}': the model has no '{names.layers}'") from exc
        default_head_dim = getattr(config, "head_dim", None) or (
            config.hidden_size // config.num_attention_heads)
        layers = []
        for index, layer in enumerate(layer_list):
            attention = getattr(layer, names.attention)
            head_dim = int(getattr(attention, "head_dim", None) or default_head_dim)
            o = getattr(attention, names.o_proj)
            n_heads = o.in_features // head_dim
            if names.qkv_proj:  # fused: n_heads query rows, then n_kv key and n_kv value rows
                qkv = getattr(attention, names.qkv_proj)
                q = k = v = qkv
                n_kv = (qkv.out_features - n_heads * head_dim) // (2 * head_dim)
            else:
                qkv = None
                q, k, v = (getattr(attention, n) for n in (names.q_proj, names.k_proj, names.v_proj))
                n_kv = k.out_features // head_dim
            layers.append(LayerSite(
                index=index,
                module=layer,
                attention=AttentionSite(
                    layer=index, module=attention, q_proj=q, k_proj=k, v_proj=v, o_proj=o,
                    n_heads=n_heads, n_kv_heads=n_kv, head_dim=head_dim, qkv_proj=qkv,
                ),
                mlp=self.mlp_site(index, layer),
                experts=self.expert_site(index, layer),
            ))
        return ModelStructure(model=model, layers=layers, layer_list=layer_list,
                              hidden_size=int(config.hidden_size), names=names,
                              architecture=self.name)

    def mlp_site(self, index: int, layer: nn.Module) -> MlpSite | None:
        """The dense gated MLP of decoder layer ``index`` (``names.mlp``, a path inside the
        layer), or ``None`` when the layer has none (adapters of sparse models override)."""
        names = self.names
        mlp = layer.get_submodule(names.mlp)
        if names.gate_up_proj:  # fused: the gate rows, then the up rows
            gate_up = getattr(mlp, names.gate_up_proj)
            gate = up = gate_up
        else:
            gate_up = None
            gate, up = getattr(mlp, names.gate_proj), getattr(mlp, names.up_proj)
        down = getattr(mlp, names.down_proj)
        return MlpSite(layer=index, module=mlp, gate_proj=gate, up_proj=up, down_proj=down,
                       intermediate_size=down.in_features, gate_up_proj=gate_up)

    def expert_site(self, index: int, layer: nn.Module) -> ExpertSite | None:
        """The routed experts of decoder layer ``index``; ``None`` (dense models)."""
        return None
