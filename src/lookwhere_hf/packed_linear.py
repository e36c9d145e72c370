"""Linear layers with oneDNN-packed weights, for float32 inference on the CPU.

`F.linear` on the CPU runs the BLAS that torch was built with (MKL on x86). oneDNN, also inside every x86 build of
torch, has its own matrix-product kernels, which work on a weight reordered once into its blocked layout. Where
oneDNN's kernels are the faster ones, packing the weights once and calling oneDNN's linear saves that difference on
every forward. On the AMD EPYC of `benchmarks/RESULTS.md` ("Packed linear weights") MKL runs an AVX2 path and oneDNN
an AVX-512 one: the matrix products of a ViT-B layer on 141 tokens ran ~20% faster, LookWhere's whole forward ~20%.
Elsewhere the gain can be smaller or none: measure (`lookwhere-hf benchmark --packed`).

[`pack_linear_weights`] swaps every plain `nn.Linear` of a model for a [`PackedLinear`] that shares its parameters:
the state dict, `save_pretrained`, training and every other device and dtype see the same `weight` and `bias` as
before. The packed copy is a cache (as much memory again as the weights), built at the first forward that uses it and
rebuilt whenever the weight changes (an optimizer step or `load_state_dict` bumps the tensor's version); it is never
saved. It is used only when nothing needs the standard path: float32 tensors on the CPU, no gradient to record, no
autocast, and not while `torch.compile`, `torch.export` / ONNX export or a tracer captures the forward (these get
`F.linear`, so compiled and exported graphs are unchanged). The result equals `F.linear`'s up to float32 rounding
(another summation order). [`unpack_linear_weights`] puts the plain `nn.Linear` modules back.

```python
from lookwhere_hf import LookWhereForImageClassification, pack_linear_weights

model = LookWhereForImageClassification.from_pretrained(path).eval()
pack_linear_weights(model)  # returns the number of packed layers
with torch.inference_mode():
    logits = model(pixel_values).logits
```
"""

from __future__ import annotations

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


def _capturing() -> bool:
    """Whether `torch.compile`, `torch.export` or a TorchScript tracer captures the forward (they must see the standard
    `F.linear`; FX's symbolic tracer passes proxies, which are not tensors, and is caught by the type check)."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting()


class PackedLinear(nn.Linear):
    """An `nn.Linear` that runs oneDNN's linear on a packed copy of its weight for float32 CPU inference (see the
    module docstring); `F.linear` otherwise. Same parameters and state dict as the `nn.Linear` it was made from.

    Input `(*, in_features)`, output `(*, out_features)`, as `nn.Linear`.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._packed: tuple[tuple, torch.Tensor] | None = None  # (the weight's identity and version, packed weight)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> PackedLinear:
        """A `PackedLinear` holding `linear`'s own `weight` and `bias` parameters (shared, not copied)."""
        packed = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        packed.weight = linear.weight
        packed.bias = linear.bias
        packed.train(linear.training)
        return packed

    def to_linear(self) -> nn.Linear:
        """The plain `nn.Linear` with the same (shared) parameters."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        linear.weight = self.weight
        linear.bias = self.bias
        linear.train(self.training)
        return linear

    def uses_packed_weight(self, inputs: torch.Tensor) -> bool:
        """Whether this call takes the oneDNN path: float32 on the CPU, no gradient to record, no autocast/capture."""
        weight = self.weight
        if type(inputs) is not torch.Tensor or type(weight.data) is not torch.Tensor or _capturing():
            return False  # tensor subclasses, proxies and compilers take the standard path
        if not (inputs.device.type == weight.device.type == "cpu"):
            return False
        if not (inputs.dtype == weight.dtype == torch.float32) or inputs.dim() < 2 or inputs.layout != torch.strided:
            return False
        if torch.is_grad_enabled() and (
            inputs.requires_grad or weight.requires_grad or (self.bias is not None and self.bias.requires_grad)
        ):
            return False
        return not torch.is_autocast_enabled("cpu")

    def packed_weight(self) -> torch.Tensor:
        """The weight in oneDNN's layout, packed again if the weight was replaced or changed in place since."""
        weight = self.weight
        # Tensors made under `torch.inference_mode()` have no version counter: there, only a replaced weight is seen.
        version = None if weight.is_inference() else weight._version
        key = (id(weight), weight.data_ptr(), version, tuple(weight.shape))
        if self._packed is None or self._packed[0] != key:
            with torch.no_grad():
                self._packed = (key, torch.ops.mkldnn._reorder_linear_weight(weight.detach()))
        return self._packed[1]

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.uses_packed_weight(inputs):
            return torch.ops.mkldnn._linear_pointwise(inputs, self.packed_weight(), self.bias, "none", [], "")
        return F.linear(inputs, self.weight, self.bias)

    def _apply(self, fn, recurse=True):  # `.to()`, `.cuda()`, `.half()`: the packed copy goes with the old weight
        self._packed = None
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict:  # copies and pickles rebuild the cache instead of carrying a oneDNN tensor
        state = self.__dict__.copy()
        state["_packed"] = None
        return state


def _has_hooks(module: nn.Module) -> bool:
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or module._backward_hooks
        or getattr(module, "_backward_pre_hooks", None)
        or getattr(module, "parametrizations", None)
    )


def pack_linear_weights(model: nn.Module) -> int:
    """Swap every plain `nn.Linear` inside `model` (the exact class, without hooks or parametrizations) for a
    [`PackedLinear`] sharing its parameters; returns how many were swapped. Returns 0 and changes nothing when this
    torch build has no oneDNN linear ([`onednn_linear_available`]).

    Args:
        model (`nn.Module`): any module, e.g. a `LookWhereForImageClassification` or a transformers ViT.

    Raises:
        TypeError: `model` is not an `nn.Module`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`pack_linear_weights` takes an nn.Module (a model), got a {type(model).__name__}.")
    if not onednn_linear_available():
        return 0
    return _swap(model, lambda child: type(child) is nn.Linear and not _has_hooks(child), PackedLinear.from_linear)


def unpack_linear_weights(model: nn.Module) -> int:
    """Undo [`pack_linear_weights`]: every [`PackedLinear`] becomes a plain `nn.Linear` with the same parameters (and
    the packed copies are freed); returns how many were swapped back."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"`unpack_linear_weights` takes an nn.Module (a model), got a {type(model).__name__}.")
    return _swap(model, lambda child: type(child) is PackedLinear, PackedLinear.to_linear)


def _swap(model: nn.Module, wanted, convert) -> int:
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if wanted(child):
                setattr(parent, name, convert(child))
                count += 1
    return count
