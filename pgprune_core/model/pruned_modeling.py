"""Modeling code for a model pruned by pgprune: per-layer head counts, MLP widths and
expert counts.

After global pruning every decoder layer has its own number of attention heads and MLP
channels, and some layers may be gone; a stock ``from_pretrained`` builds equal layers and
cannot load such weights.  This file is copied verbatim beside the weights of every saved
pruned model (as ``modeling_pgprune.py``) and named in ``config.json``'s ``auto_map``, so::

    AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)

rebuilds the model, and ``pgprune_core.load_pruned(path)`` uses the very same code.  It
imports only torch and transformers and knows no architecture: the ``pgprune`` section of
the config names the transformers class to subclass (``base_class``), the attribute names
of the blocks (``module_names``) and the shape of every layer (``layers``).  The base class
builds the model with the dense shapes of ``config`` (whose ``num_hidden_layers`` already
counts only the kept layers); the linear layers (and, in a mixture-of-experts layer, the
per-expert parameters and router rows) are then replaced by ones of the pruned shapes
before the weights are loaded into them.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

import torch
from torch import nn

#: the key of the config section this file reads
SECTION = "pgprune"
#: keyword names under which decoder layers and attention blocks receive the KV cache
CACHE_KWARGS = ("cache", "past_key_values", "past_key_value")
#: config attributes a pruned attention block overrides with its own head counts
HEAD_COUNT_FIELDS = ("num_attention_heads", "num_key_value_heads")


def cache_argument(kwargs: dict[str, Any]) -> Any:
    """The KV cache among a forward's keyword arguments (None: not caching)."""
    return next((kwargs[key] for key in CACHE_KWARGS if kwargs.get(key) is not None), None)


def import_object(dotted: str) -> Any:
    """``"package.module.ClassName"`` -> the class (imported on demand)."""
    module_name, _, attr = dotted.rpartition(".")
    return getattr(importlib.import_module(module_name), attr)


def record_empty_step(cache: Any, layer_idx: int, hidden_states: torch.Tensor, head_dim: int) -> None:
    """Append zero-head keys/values for this step to ``cache`` (if any), so that a layer
    without attention still advances the cache's length: generation reads the position of
    the next token from there."""
    if cache is None:
        return
    batch, length = hidden_states.shape[:2]
    empty = hidden_states.new_zeros(batch, 0, length, head_dim)
    cache.update(empty, empty, layer_idx)


class LayerConfig:
    """The model's config as one attention block sees it: its own head counts, everything
    else read from (and written to) the shared config.  For blocks whose forward reads the
    head counts from the config (e.g. to split a fused query/key/value projection at
    ``config.num_attention_heads * head_dim``)."""

    def __init__(self, base: Any, **overrides: int) -> None:
        object.__setattr__(self, "_base", base)
        object.__setattr__(self, "_overrides", dict(overrides))

    def __getattr__(self, name: str) -> Any:
        if name in ("_base", "_overrides"):  # not yet set (copy, unpickling)
            raise AttributeError(name)
        overrides = self._overrides
        return overrides[name] if name in overrides else getattr(self._base, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._overrides:
            self._overrides[name] = value
        else:
            setattr(self._base, name, value)


def set_head_counts(attention: nn.Module, n_heads: int, n_kv_heads: int) -> None:
    """Update the head-count attributes an attention module reads in its forward (and the
    head counts of the config it holds, when they differ from the shared config's)."""
    if n_kv_heads and hasattr(attention, "num_key_value_groups"):
        setattr(attention, "num_key_value_groups", n_heads // n_kv_heads)  # noqa: B010
    for name, value in (("num_heads", n_heads), ("num_key_value_heads", n_kv_heads)):
        if hasattr(attention, name):
            setattr(attention, name, value)
    config = getattr(attention, "config", None)
    if config is None or not hasattr(config, HEAD_COUNT_FIELDS[0]):
        return
    base = config._base if isinstance(config, LayerConfig) else config
    counts = dict(zip(HEAD_COUNT_FIELDS, (n_heads, n_kv_heads), strict=True))
    same = all(getattr(base, key, None) == value for key, value in counts.items())
    setattr(attention, "config", base if same else LayerConfig(base, **counts))  # noqa: B010


def set_intermediate_size(mlp: nn.Module, size: int) -> None:
    """Update the width attribute an MLP module carries (informational in transformers)."""
    if hasattr(mlp, "intermediate_size"):
        setattr(mlp, "intermediate_size", size)  # noqa: B010


def expert_parameters(experts: nn.Module, n_experts: int) -> tuple[str, ...]:
    """Names of the parameters of a fused experts module that hold one slice per expert
    (first dimension ``n_experts``: transformers' ``gate_up_proj`` and ``down_proj``)."""
    return tuple(name for name, param in experts.named_parameters(recurse=False)
                 if param.dim() >= 2 and param.shape[0] == n_experts)


def set_expert_count(router: nn.Module, experts: nn.Module, n_experts: int) -> None:
    """Update the expert-count attributes the router and the experts read in their forward."""
    for module in (router, experts):
        if hasattr(module, "num_experts"):
            setattr(module, "num_experts", n_experts)  # noqa: B010


def resize_experts(block: nn.Module, names: dict[str, str], n_experts: int) -> None:
    """Give a sparse block ``n_experts`` routed experts: per-expert parameters and router
    rows of the new count (their values are loaded afterwards)."""
    router = getattr(block, names.get("router", "gate"))
    experts = getattr(block, names.get("experts", "experts"))
    for name in expert_parameters(experts, int(getattr(experts, "num_experts"))):  # noqa: B009
        old = getattr(experts, name)
        setattr(experts, name, nn.Parameter(old.new_empty(n_experts, *old.shape[1:]),
                                            requires_grad=old.requires_grad))
    for name in ("weight", "bias"):
        old = getattr(router, name, None)
        if isinstance(old, nn.Parameter):
            setattr(router, name, nn.Parameter(old.new_empty(n_experts, *old.shape[1:]),
                                               requires_grad=old.requires_grad))
    set_expert_count(router, experts, n_experts)


class EmptyAttention(nn.Module):
    """An attention block whose heads were all pruned: it adds nothing to the residual
    stream but the output projection's bias (if any), and still records the step in the KV
    cache.  It takes over the original block's submodules and parameters (projections with
    zero rows/columns, per-head norms shared by all heads), so the weight names and the
    parameter count are those of the original block, and its plain attributes (the layer's
    kind: ``layer_type``, ``sliding_window``, ...)."""

    def __init__(self, original: nn.Module, o_proj: str, head_dim: int, layer_idx: int) -> None:
        super().__init__()
        for name, value in vars(original).items():
            if not name.startswith("_") and name != "training" and (
                    value is None or isinstance(value, (bool, int, float, str))):
                setattr(self, name, value)
        for name, module in original.named_children():
            self.add_module(name, module)
        for name, param in original.named_parameters(recurse=False):
            self.register_parameter(name, param)
        self.o_proj_name = o_proj
        self.head_dim = head_dim
        self.layer_idx = layer_idx

    def forward(self, hidden_states: torch.Tensor, *args: Any,
                **kwargs: Any) -> tuple[torch.Tensor, None]:
        record_empty_step(cache_argument(kwargs), self.layer_idx, hidden_states, self.head_dim)
        o_proj = getattr(self, self.o_proj_name)
        return o_proj(hidden_states.new_zeros(*hidden_states.shape[:-1], 0)), None


def _linear_like(old: nn.Linear, in_features: int, out_features: int) -> nn.Linear:
    """A linear layer of the new shape on ``old``'s device and dtype (weights are loaded
    afterwards; zero-sized ones are legal and initialise to nothing)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        return nn.Linear(in_features, out_features, bias=old.bias is not None,
                         device=old.weight.device, dtype=old.weight.dtype)


def _resize(parent: nn.Module, name: str, *, inputs: int | None = None,
            outputs: int | None = None) -> nn.Linear:
    old = getattr(parent, name)
    new = _linear_like(old, old.in_features if inputs is None else inputs,
                       old.out_features if outputs is None else outputs)
    setattr(parent, name, new)
    return new


def rebuild_layers(model: nn.Module, section: dict[str, Any]) -> None:
    """Give every decoder layer of ``model`` the shapes recorded in ``section``."""
    names = section["module_names"]
    layers: Any = model.get_submodule(names["layers"])
    shapes = section["layers"]
    if len(layers) != len(shapes):
        raise ValueError(f"the model has {len(layers)} layers but the pgprune section "
                         f"describes {len(shapes)}")
    for index, (layer, shape) in enumerate(zip(layers, shapes, strict=True)):
        attention = getattr(layer, names["attention"])
        head_dim, n_heads, n_kv = shape["head_dim"], shape["n_heads"], shape["n_kv_heads"]
        if names.get("qkv_proj"):
            _resize(attention, names["qkv_proj"], outputs=(n_heads + 2 * n_kv) * head_dim)
        else:
            _resize(attention, names["q_proj"], outputs=n_heads * head_dim)
            _resize(attention, names["k_proj"], outputs=n_kv * head_dim)
            _resize(attention, names["v_proj"], outputs=n_kv * head_dim)
        _resize(attention, names["o_proj"], inputs=n_heads * head_dim)
        if n_heads == 0:
            setattr(layer, names["attention"],
                    EmptyAttention(attention, names["o_proj"], head_dim, index))
        else:
            set_head_counts(attention, n_heads, n_kv)
        width = shape.get("intermediate_size")
        if width is not None:  # None: a sparse layer without a dense MLP
            mlp = layer.get_submodule(names["mlp"])
            if names.get("gate_up_proj"):
                _resize(mlp, names["gate_up_proj"], outputs=2 * width)
            else:
                _resize(mlp, names["gate_proj"], outputs=width)
                _resize(mlp, names["up_proj"], outputs=width)
            _resize(mlp, names["down_proj"], inputs=width)
            set_intermediate_size(mlp, width)
        if shape.get("n_experts") is not None:
            resize_experts(layer.get_submodule(names.get("moe", "mlp")), names, shape["n_experts"])


_CLASSES: dict[type, type] = {}


def pruned_class(config: Any) -> Any:
    """The subclass of the config's ``base_class`` that builds the pruned shapes."""
    section = getattr(config, SECTION, None)
    if not isinstance(section, dict) or "base_class" not in section:
        raise ValueError(f"the config has no '{SECTION}' section naming the base class")
    base = import_object(section["base_class"])
    cls = _CLASSES.get(base)
    if cls is None:

        def __init__(self: Any, config: Any, *args: Any, **kwargs: Any) -> None:
            base.__init__(self, config, *args, **kwargs)
            rebuild_layers(self, getattr(config, SECTION))

        cls = type(f"Pgprune{base.__name__}", (base,), {
            "__init__": __init__,
            "__module__": __name__,
            "__doc__": f"{base.__name__} with per-layer shapes from the '{SECTION}' config section.",
        })
        _CLASSES[base] = cls
    return cls


class PgpruneForCausalLM:
    """What ``auto_map`` names: picks the pruned subclass of the base class recorded in the
    config, then lets it load exactly as the base class would."""

    @classmethod
    def register_for_auto_class(cls, auto_class: Any = "AutoModelForCausalLM") -> None:
        """Nothing to register: the real class is made per base class by :func:`pruned_class`."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *model_args: Any,
                        config: Any = None, **kwargs: Any) -> Any:
        if config is None:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(pretrained_model_name_or_path)
        return pruned_class(config).from_pretrained(
            pretrained_model_name_or_path, *model_args, config=config, **kwargs
        )

    @classmethod
    def _from_config(cls, config: Any, **kwargs: Any) -> Any:
        return pruned_class(config)._from_config(config, **kwargs)
