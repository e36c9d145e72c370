"""Linear layers with oneDNN-packed weights, for float32 inference on the CPU.

`F.linear` on the CPU runs the BLAS that torch was built with (MKL on x86). oneDNN, also inside every x86 build of
torch, has its own matrix-product kernels, which work on a weight reordered once into its blocked layout. Where
oneDNN's kernels are the faster ones, packing the weights once and calling oneDNN's linear saves that difference on
every forward. On the AMD EPYC of `benchmarks/RESULTS.md` ("Packed linear weights") MKL runs an AVX2 path and oneDNN
an AVX-512 one: the six products of a ViT-B layer on 141 rows ran 1.24x (1 thread) and 1.34x (2 threads) as fast,
and LookWhere's whole forward at 518 px took 0.74-0.80x of its plain time (2 threads). Elsewhere the gain can be
smaller or none: measure (`benchmarks/bench_inference.py --packed`, `benchmarks/bench_linear_kernels.py`).

[`pack_linear_weights`] turns every plain `nn.Linear` of a model into a [`PackedLinear`] in place (the same module
objects, with their parameters, buffers, hooks and attributes): the state dict, `save_pretrained`, training and every
other device and dtype see the same `weight` and `bias` as before. The packed copy is a cache (as much memory again
as the weights; it also keeps the memory of the weight it was made from), built at the first forward that uses it
and never saved. It is rebuilt when the weight tensor is replaced (`layer.weight = ...`, `load_state_dict(assign=True)`,
`weight.data = ...`, `torch.func.functional_call`) or changed in place through itself (`load_state_dict`, `nn.init`,
a foreach or for-loop optimizer step, `with torch.no_grad(): weight.mul_(2)`), which bumps its version counter; and it
is dropped by `model.train()` / `model.eval()`, by `.to()` and dtype casts, and by every forward that records
gradients. Changes that leave no trace on the weight are not seen until one of those: fused optimizer steps
(`fused=True`, the Trainer's CPU default `adamw_torch_fused`; a training loop runs a recording forward before each),
in-place changes through another tensor on the same memory (`weight.data.copy_(...)`), and in-place changes of
inference tensors (weights made under `torch.inference_mode()` have no version counter). After such a change, call
`model.eval()` before the next inference forward.

The packed copy is used only when nothing needs the standard path: float32 tensors on the CPU (plain tensors, not
subclasses), no gradient to record, no autocast, oneDNN enabled (`torch.backends.mkldnn.enabled`), no parametrization
on the layer, and no tracer, transform or dispatch mode watching the call: `torch.compile`, `torch.export` / ONNX
export, `torch.jit.trace`, `torch.fx`, `torch.func` transforms (`vmap`, `grad`) and modes such as
`torch.utils.flop_counter.FlopCounterMode` get `F.linear`, so compiled and exported graphs and FLOP counts are those of
the plain model. The result equals `F.linear`'s up to float32 rounding (another summation order). TorchScript
cannot compile a `PackedLinear` (`torch.jit.script`): script the unpacked model.

```python
from lookwhere_hf import LookWhereForImageClassification, pack_linear_weights

model = LookWhereForImageClassification.from_pretrained(path).eval()
pack_linear_weights(model)  # returns the number of packed layers
with torch.inference_mode():
    logits = model(pixel_values).logits
```
"""

from __future__ import annotations

import weakref
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


def onednn_linear_available() -> bool:
    """Whether this torch build has oneDNN's packed CPU linear (`torch.ops.mkldnn._linear_pointwise`), checked by
    running it once on a small input against `F.linear`."""
    global _AVAILABLE
    if _AVAILABLE is None:
        try:
            generator = torch.Generator().manual_seed(0)
            weight = torch.randn(8, 16, generator=generator)
            bias, inputs = torch.randn(8, generator=generator), torch.randn(3, 16, generator=generator)
            with torch.no_grad():
                packed = torch.ops.mkldnn._reorder_linear_weight(weight)
                got = torch.ops.mkldnn._linear_pointwise(inputs, packed, bias, "none", [], "")
            _AVAILABLE = bool(torch.allclose(got, F.linear(inputs, weight, bias), rtol=1e-5, atol=1e-5))
        except (AttributeError, RuntimeError, NotImplementedError):
            _AVAILABLE = False
    return _AVAILABLE


_AVAILABLE: bool | None = None


def _watched() -> bool:
    """Whether something other than plain eager execution sees the call and must see `F.linear`: `torch.compile` /
    `torch.export` (dynamo or its fake tensors), a TorchScript tracer, a `torch.func` transform, or a dispatch mode
    (`FlopCounterMode`, fake and functional tensor modes). FX's symbolic tracer passes proxies, which are not tensors,
    and is caught by the type check."""
    return (
        torch.compiler.is_compiling()
        or torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch._C._functorch.peek_interpreter_stack() is not None
        or torch._C._len_torch_dispatch_stack() > 0
    )


def _plain_float32_cpu(tensor: torch.Tensor) -> bool:  # dtypes and layouts are singletons: `is` is the fast test
    return (
        type(tensor) in (torch.Tensor, nn.Parameter)  # a Parameter of a tensor subclass has the subclass's type
        and tensor.dtype is torch.float32
        and tensor.is_cpu
        and tensor.layout is torch.strided
    )


class _PackedCopy(NamedTuple):
    source: weakref.ref  # the weight tensor packed (weakly: a new tensor never passes for a freed one with its id)
    storage: torch.UntypedStorage  # its memory, held so that no other tensor gets that address while this is cached
    key: tuple  # its data_ptr, shape, strides and version (None for inference tensors, which have no version)
    packed: torch.Tensor  # the weight in oneDNN's layout


def _weight_key(weight: torch.Tensor) -> tuple:
    version = None if weight.is_inference() else weight._version
    return weight.data_ptr(), tuple(weight.shape), weight.stride(), version


class PackedLinear(nn.Linear):
    """An `nn.Linear` that runs oneDNN's linear on a packed copy of its weight for float32 CPU inference (see the
    module docstring for when, and for the changes to the weight it sees); `F.linear` otherwise. Same parameters
    and state dict as an `nn.Linear`.

    Input `(*, in_features)`, output `(*, out_features)`, as `nn.Linear`.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._packed: _PackedCopy | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> PackedLinear:
        """A new `PackedLinear` holding `linear`'s own `weight` and `bias` parameters (shared, not copied).
        [`pack_linear_weights`] converts the layers of a model in place instead, keeping hooks and buffers."""
        packed = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        packed.weight = linear.weight
        packed.bias = linear.bias
        packed.train(linear.training)
        return packed

    def to_linear(self) -> nn.Linear:
        """A new plain `nn.Linear` with the same (shared) parameters."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        linear.weight = self.weight
        linear.bias = self.bias
        linear.train(self.training)
        return linear

    def uses_packed_weight(self, inputs: torch.Tensor) -> bool:
        """Whether a call on `inputs` takes the oneDNN path: plain float32 CPU tensors of at least 2 dimensions, no
        gradient to record, no autocast, oneDNN enabled, no parametrization, nothing watching (module docstring)."""
        # `parametrize.is_parametrized(self)`, without its getattr miss (a microsecond on every call)
        if _watched() or not torch._C._get_mkldnn_enabled() or "parametrizations" in self._modules:
            return False
        weight, bias = self.weight, self.bias
        if not (_plain_float32_cpu(inputs) and _plain_float32_cpu(weight) and inputs.dim() >= 2):
            return False
        if bias is not None and not _plain_float32_cpu(bias):
            return False
        if torch.is_grad_enabled() and (
            inputs.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
        ):
            return False
        return not torch.is_autocast_enabled("cpu")

    def packed_weight(self) -> torch.Tensor:
        """The weight in oneDNN's layout, packed again if the weight was replaced or changed in place since."""
        weight, cached = self.weight, self._packed
        key = _weight_key(weight)
        if cached is None or cached.source() is not weight or cached.key != key:
            with torch.no_grad():
                packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach())
            self._packed = _PackedCopy(weakref.ref(weight), weight.untyped_storage(), key, packed)
        return self._packed.packed

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.uses_packed_weight(inputs):
            return torch.ops.mkldnn._linear_pointwise(inputs, self.packed_weight(), self.bias, "none", [], "")
        if not torch.compiler.is_compiling() and torch.is_grad_enabled() and self._packed is not None:
            self._packed = None  # training: an optimizer step (a fused one moves no version counter) comes next
        return F.linear(inputs, self.weight, self.bias)

    def train(self, mode: bool = True) -> PackedLinear:  # `model.eval()` / `model.train()` pack afresh
        self._packed = None
        return super().train(mode)

    def _apply(self, fn, recurse=True):  # `.to()`, `.cuda()`, `.half()`: the packed copy goes with the old weight
        self._packed = None
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict:  # copies and pickles rebuild the cache instead of carrying a oneDNN tensor
        state = self.__dict__.copy()
        state["_packed"] = None
        return state


def pack_linear_weights(model: nn.Module) -> int:
    """Turn every plain `nn.Linear` in `model` (the exact class; `model` itself too) into a [`PackedLinear`], in
    place: the same module objects, so parameters, buffers, hooks, attributes and layers shared between several
    parents stay as they are. Returns how many layers were converted (a layer shared by two parents counts once);
    0, changing nothing, when this torch build has no oneDNN linear ([`onednn_linear_available`]). Layers with a
    parametrization (`torch.nn.utils.parametrize`) have their own class and are left alone.

    Args:
        model (`nn.Module`): any module, e.g. a `LookWhereForImageClassification` or a transformers ViT.

    Raises:
        TypeError: `model` is not an `nn.Module`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`pack_linear_weights` takes an nn.Module (a model), got a {type(model).__name__}.")
    if not onednn_linear_available():
        return 0
    return _convert(model, nn.Linear, PackedLinear)


def unpack_linear_weights(model: nn.Module) -> int:
    """Undo [`pack_linear_weights`]: every [`PackedLinear`] in `model` becomes a plain `nn.Linear` again, in place,
    and its packed copy is freed; returns how many layers were converted.

    Raises:
        TypeError: `model` is not an `nn.Module`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`unpack_linear_weights` takes an nn.Module (a model), got a {type(model).__name__}.")
    return _convert(model, PackedLinear, nn.Linear)


def _convert(model: nn.Module, source: type, target: type) -> int:
    """Change the class of every module of exactly class `source` (each once, `modules()` deduplicates) to `target`;
    the two differ only in `forward` and the `_packed` cache."""
    count = 0
    for module in model.modules():
        if type(module) is source:
            module.__class__ = target
            if target is PackedLinear:
                module._packed = None
            else:
                del module._packed
            count += 1
    return count
