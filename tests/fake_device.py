"""A second device on a CPU-only machine, for checking that every tensor goes where the model is.

`on_fake_device()` makes torch.device("meta") behave like a GPU whose memory is the CPU's: a tensor moved or
created there (`.to(FAKE)`, `torch.zeros(..., device=FAKE)`, `torch.tensor(..., device=FAKE)`) is a wrapper
that reports device meta and holds a real CPU tensor, so every op computes real values (and so `.item()`,
`.tolist()`, argmax and a whole training run work, bit for bit as on the CPU). Like CUDA, an op that mixes a
fake-device tensor with a CPU tensor of one or more dimensions raises ("Expected all tensors to be on the
same device"); 0-dim CPU tensors are allowed, as CUDA allows them; copies between the two devices
(`.to`, `copy_`, `x[i] = cpu_tensor`) are allowed.

Limits (what this does not check):
- Kernels, streams, memory: everything runs on the CPU. Speed and CUDA numerics are bench/gpu_check.py's job.
- Autocast: torch has no autocast for meta, so `torch.autocast("meta", ...)` runs as CPU autocast; the device
  types asked for are recorded (`autocast_types`) so a test can check that they follow the model.
- Checkpoints: torch.save stores a fake-device tensor's CPU values; torch.load then returns plain CPU tensors,
  moved onto the fake device only when map_location asks for it (as a CUDA checkpoint needs map_location).
- Only torch.tensor/as_tensor and aten factory ops are intercepted; a tensor made in C++ code outside the
  dispatcher (none known in this project's paths) would escape the check.
- peft: an adapter added to a layer is moved to the base layer's device explicitly (peft skips the move when
  any adapter of the layer is on meta, which every one is here).
- `.to("cuda")` paths (load_model's move, check_device) are not exercised; they are one call each."""
from __future__ import annotations

import contextlib

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map

FAKE = torch.device("meta")
aten = torch.ops.aten

# ops that may legally take tensors of both devices (moves and copies, as on CUDA)
CROSS_DEVICE = {aten._to_copy.default, aten.copy_.default, aten._local_scalar_dense.default, aten.lift_fresh.default,
                aten.lift_fresh_copy.default, aten.detach.default, aten.alias.default}
INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}


class OnFake(torch.Tensor):
    """A CPU tensor that reports the fake device."""

    @staticmethod
    def __new__(cls, elem: torch.Tensor):
        return torch.Tensor._make_wrapper_subclass(cls, elem.shape, strides=elem.stride(), dtype=elem.dtype,
                                                   device=FAKE, requires_grad=elem.requires_grad,
                                                   storage_offset=elem.storage_offset())

    def __init__(self, elem: torch.Tensor):
        self.elem = elem

    def __repr__(self):
        return f"OnFake({self.elem!r})"

    def __reduce_ex__(self, protocol):
        return self.elem.__reduce_ex__(protocol)   # saved as its CPU values (see the module's limits)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise RuntimeError(f"{func} on a fake-device tensor outside on_fake_device()")


def _unwrap(t):
    return t.elem if isinstance(t, OnFake) else t


def _wants_fake(device) -> bool:
    return device is not None and torch.device(device).type == FAKE.type


class _Dispatch(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        tensors = [a for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        fake = [isinstance(t, OnFake) for t in tensors]
        if any(fake) and func not in CROSS_DEVICE:
            checked = tensors
            if func in INDEXING and isinstance(args[0], OnFake):   # CUDA takes CPU indices for a tensor of its own
                checked = [t for t in tensors if all(t is not i for i in args[1] if i is not None)]
            cpu = [tuple(t.shape) for t in checked if not isinstance(t, OnFake) and t.dim() > 0]
            if cpu:
                raise RuntimeError(f"Expected all tensors to be on the same device, but {func} got CPU tensor(s) of "
                                   f"shape {cpu} with tensors on the model's device")
        to_fake = any(fake)
        if kwargs.get("device") is not None:   # a factory or a move names its device
            to_fake = _wants_fake(kwargs["device"])
            kwargs["device"] = torch.device("cpu")
        out = func(*tree_map(_unwrap, args), **tree_map(_unwrap, kwargs))
        if not to_fake or func is aten._local_scalar_dense.default:
            return out
        inputs = {id(_unwrap(t)): t for t in tensors}   # an in-place op returns its own input
        return tree_map(lambda t: (inputs[id(t)] if id(t) in inputs else OnFake(t))
                        if isinstance(t, torch.Tensor) else t, out)


class _Functions(TorchFunctionMode):
    """What never reaches the dispatcher as an op: the tensor constructor's device, and conversions to Python."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in (torch.tensor, torch.as_tensor) and _wants_fake(kwargs.get("device")):
            kwargs.pop("device")
            return OnFake(func(*args, **kwargs))
        if func in (torch.Tensor.tolist, torch.Tensor.numpy) and isinstance(args[0], OnFake):
            return func(args[0].elem, *args[1:], **kwargs)
        if func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__) and isinstance(args[0], OnFake):
            # x[python_list]: torch builds the index on x's device in C++, past this mode, as data-less meta;
            # built here on the CPU instead (an index CUDA accepts too)
            index = args[1]
            if isinstance(index, list):
                index = torch.tensor(index)
            elif isinstance(index, tuple):
                index = tuple(torch.tensor(i) if isinstance(i, list) else i for i in index)
            return func(args[0], index, *args[2:], **kwargs)
        return func(*args, **kwargs)


@contextlib.contextmanager
def on_fake_device(monkeypatch):
    """Run the block with the fake device available; yields a record {"autocast_types": [...]}."""
    record = {"autocast_types": []}
    real_autocast, real_load = torch.autocast, torch.load

    def autocast(device_type, *args, **kwargs):
        record["autocast_types"].append(device_type)
        return real_autocast("cpu" if device_type == FAKE.type else device_type, *args, **kwargs)

    real_move = BaseTunerLayer._move_adapter_to_device_of_base_layer

    def move_adapter(layer, adapter_name, device=None):
        # peft leaves a new adapter where it was made when any adapter of the layer is on meta (its empty-weights
        # loading); the fake device is meta to torch, so the move a real GPU gets is done here
        real_move(layer, adapter_name, device)
        target = device or layer.get_base_layer().weight.device
        for name in layer.adapter_layer_names + layer.other_param_names:
            group = getattr(layer, name, None)
            if isinstance(group, (torch.nn.ModuleDict, torch.nn.ParameterDict)) and adapter_name in group:
                group[adapter_name] = group[adapter_name].to(target)

    def load(f, map_location=None, **kwargs):
        state = real_load(f, map_location="cpu", **kwargs)
        if map_location is not None and _wants_fake(map_location):
            state = tree_map(lambda t: t.to(FAKE) if isinstance(t, torch.Tensor) else t, state)
        return state

    monkeypatch.setattr(torch, "autocast", autocast)
    monkeypatch.setattr(BaseTunerLayer, "_move_adapter_to_device_of_base_layer", move_adapter)
    monkeypatch.setattr(torch, "load", load)
    with _Functions(), _Dispatch():
        yield record
