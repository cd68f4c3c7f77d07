"""Where the tensors of a dispatched model live: accelerate device maps and offload.

A model loaded with ``model.device_map`` (accelerate's big-model dispatch) carries an
``AlignDevicesHook`` on its modules.  A module whose weights are *offloaded* (to the CPU
when the model computes on a GPU, or to disk) holds them on the ``meta`` device: the hook
reads the real values from its ``weights_map`` before each forward of the module, moves
them to the module's execution device, and drops them again afterwards.  Forwards
therefore just work; what reads weights outside a forward, or changes them, must go
through this module:

- :func:`input_device`: where input ids go (the embeddings' execution device, never
  ``meta``); :func:`module_device`: where one module computes;
- :func:`onloaded`: the real weights of a module (and of its submodules) for the duration
  of a block, on their execution device (the initializers that read weights);
- :func:`editing`: the same on the CPU, and whatever the module holds at the end of the
  block becomes its offloaded weights (surgery: the cut tensors are kept in CPU memory,
  module by module, so a model is never materialised whole);
- :func:`full_state_dict`: the state dict with offloaded tensors read in (export formats
  that rebuild the model from a state dict).

Models without hooks pass through every function unchanged; ``accelerate`` is only
imported when a module carries a hook.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


def _hook(module: nn.Module) -> Any:
    return getattr(module, "_hf_hook", None)


def offloaded(module: nn.Module) -> bool:
    """Whether ``module``'s own hook offloads its tensors (they are ``meta`` between forwards)."""
    hook = _hook(module)
    if hook is None:
        return False
    from accelerate.utils import has_offloaded_params

    return bool(has_offloaded_params(module))


def offloaded_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every submodule of ``model`` whose weights are offloaded."""
    return [(name, module) for name, module in model.named_modules() if offloaded(module)]


def has_offloaded_weights(model: nn.Module) -> bool:
    return any(offloaded(module) for module in model.modules())


def _tensor_names(module: nn.Module) -> list[str]:
    """The names (relative to ``module``) of the tensors its offloading hook manages."""
    from accelerate.utils import named_module_tensors

    hook = _hook(module)
    return [name for name, _ in named_module_tensors(
        module, include_buffers=hook.offload_buffers, recurse=hook.place_submodules,
        remove_non_persistent=True)]


def module_device(module: nn.Module) -> torch.device:
    """The device ``module`` computes on: its hook's execution device when it is
    offloaded, else the device of its first parameter or buffer (CPU when it has none)."""
    hook = _hook(module)
    if hook is not None and getattr(hook, "execution_device", None) is not None:
        return torch.device(hook.execution_device if not isinstance(hook.execution_device, int)
                            else f"cuda:{hook.execution_device}")
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.device.type != "meta":
            return tensor.device
    return torch.device("cpu")


def input_device(model: Any) -> torch.device:
    """Where a causal LM's input ids go: the device its input embeddings compute on
    (the first stage of a ``device_map`` model)."""
    return module_device(model.get_input_embeddings())


def parameter_devices(model: nn.Module) -> list[torch.device]:
    """Every device that holds ``model``'s tensors or computes its offloaded modules
    (``meta`` left out), in a stable order."""
    devices = {t.device for t in (*model.parameters(), *model.buffers())
               if t.device.type != "meta"}
    devices |= {module_device(module) for module in model.modules() if offloaded(module)}
    return sorted(devices, key=lambda d: (d.type, -1 if d.index is None else d.index))


@contextlib.contextmanager
def onloaded(module: nn.Module) -> Iterator[None]:
    """Within the block, every offloaded submodule of ``module`` (itself included) holds
    its real tensors on its execution device; they are dropped again on exit.  For
    reading weights outside a forward; changes made inside are lost (see :func:`editing`)."""
    targets = [sub for sub in module.modules() if offloaded(sub)]
    if not targets:
        yield
        return
    from accelerate.utils import align_module_device

    with contextlib.ExitStack() as stack:
        for sub in targets:
            stack.enter_context(align_module_device(sub))
        yield


@contextlib.contextmanager
def editing(module: nn.Module) -> Iterator[None]:
    """Within the block, an offloaded ``module`` holds its real tensors on the CPU, to be
    changed in place or replaced (surgery); on exit, what it holds becomes its offloaded
    weights (kept in CPU memory) and it returns to ``meta``.  A module that is not
    offloaded is left as it is."""
    if not offloaded(module):
        yield
        return
    from accelerate.utils import set_module_tensor_to_device

    hook = _hook(module)
    names = _tensor_names(module)
    for name in names:
        set_module_tensor_to_device(module, name, "cpu", value=hook.weights_map[name])
    try:
        yield
    finally:
        names = _tensor_names(module)
        tensors: dict[str, torch.Tensor] = dict(
            module.named_parameters(recurse=hook.place_submodules))
        tensors.update(module.named_buffers(recurse=hook.place_submodules))
        hook.weights_map = {name: tensors[name].detach().to("cpu") for name in names}
        for name in names:
            set_module_tensor_to_device(module, name, "meta")


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with every offloaded tensor read from its hook's weights
    (on the CPU): all of the model in memory at once."""
    state = model.state_dict()
    for prefix, module in offloaded_modules(model):
        hook = _hook(module)
        for name in _tensor_names(module):
            key = f"{prefix}.{name}" if prefix else name
            if key in state and state[key].device.type == "meta":
                state[key] = hook.weights_map[name].to("cpu")
    return state
