"""`lookwhere_hf.packed_linear`: linear layers on oneDNN-packed weights for float32 CPU inference.

Checked here: a packed layer equals the float64 product within the float32 bound for every input shape, and really
takes the packed path (its cache fills); it falls back to `F.linear` whenever the standard path is needed (gradients,
autocast, other dtypes, `torch.compile`, `torch.export`, ONNX export, `torch.jit.trace`, `vmap`, `FlopCounterMode`,
parametrizations, oneDNN switched off) with the same results and gradients; a weight changed in place or replaced
(also by tensors that may reuse a freed tensor's id and memory) is packed again; packing converts the layers in place
(shared layers, hooks, buffers kept); and a whole model keeps its state dict, saves and loads as the standard layout,
and gives the float64 reference's logits within the float32 bound, through `pipeline` too.
"""

import copy
import pickle
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import EPS32, assert_top_k_margin, make_tiny_config
from test_lookupvit import tiny_config as tiny_lookupvit_config
from torch import nn
from torch.nn.utils import parametrize
from transformers import pipeline

from lookwhere_hf import (
    LookupViTForImageClassification,
    LookWhereForImageClassification,
    LookWhereImageProcessor,
    PackedLinear,
    pack_linear_weights,
    select_top_k,
    unpack_linear_weights,
)
from lookwhere_hf.packed_linear import onednn_linear_available

pytestmark = pytest.mark.skipif(not onednn_linear_available(), reason="this torch build has no oneDNN linear")


def float64_bound(inputs: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """Per output element: a float32 dot product of n terms plus the bias is off by at most (n + 1) eps sum|terms|
    (conftest), whatever the summation order or kernel."""
    magnitude = F.linear(inputs.double().abs(), linear.weight.double().abs(), linear.bias.double().abs())
    return (linear.in_features + 1) * EPS32 * magnitude


def reference(inputs: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    return F.linear(inputs.double(), linear.weight.double(), linear.bias.double())


def assert_float32_product(got: torch.Tensor, inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """`got` is `inputs @ weight.T + bias` within the float32 bound of `float64_bound`."""
    x, w, b = inputs.double(), weight.detach().double(), bias.detach().double()
    bound = (w.shape[1] + 1) * EPS32 * F.linear(x.abs(), w.abs(), b.abs())
    assert ((got.double() - F.linear(x, w, b)).abs() <= bound).all()


def make_linear(in_features=48, out_features=40) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(in_features, out_features)


@pytest.mark.parametrize("shape", [(7, 48), (1, 48), (2, 9, 48), (2, 3, 5, 48)], ids=["2d", "one-row", "3d", "4d"])
def test_packed_layer_is_within_float32_rounding_of_the_float64_product(shape):
    linear = make_linear()
    packed = PackedLinear.from_linear(linear)
    inputs = torch.randn(*shape)
    with torch.inference_mode():
        got = packed(inputs)
    assert packed._packed is not None  # the oneDNN path ran (and cached the packed weight)
    assert got.shape == (*shape[:-1], 40) and got.dtype == torch.float32
    assert ((got.double() - reference(inputs, linear)).abs() <= float64_bound(inputs, linear)).all()
    # a non-contiguous input (every other row) is read with its strides
    strided = torch.randn(12, 48)[::2]
    with torch.no_grad():
        got = packed(strided)
    assert ((got.double() - reference(strided, linear)).abs() <= float64_bound(strided, linear)).all()


def test_packed_layer_shares_the_parameters_and_the_state_dict():
    linear = make_linear()
    packed = PackedLinear.from_linear(linear)
    assert packed.weight is linear.weight and packed.bias is linear.bias
    assert packed.state_dict().keys() == linear.state_dict().keys() == {"weight", "bias"}
    back = packed.to_linear()
    assert type(back) is nn.Linear and back.weight is linear.weight and back.bias is linear.bias
    no_bias = PackedLinear.from_linear(nn.Linear(4, 3, bias=False))
    with torch.no_grad():
        inputs = torch.randn(2, 4)
        torch.testing.assert_close(no_bias(inputs), F.linear(inputs, no_bias.weight), rtol=0, atol=8 * EPS32 * 4)
    assert no_bias._packed is not None and no_bias.bias is None


def test_falls_back_to_f_linear_where_the_standard_path_is_needed():
    """Gradients recorded, CPU autocast, float64 and bfloat16: the plain `F.linear` result, bit for bit, and no packed
    weight is made."""
    linear = make_linear()
    packed = PackedLinear.from_linear(linear)
    inputs = torch.randn(5, 48, requires_grad=True)
    out = packed(inputs)  # grad mode, parameters require grad
    assert torch.equal(out, F.linear(inputs, linear.weight, linear.bias))
    out.sum().backward()
    expected = torch.autograd.grad(F.linear(inputs, linear.weight, linear.bias).sum(), linear.weight)[0]
    torch.testing.assert_close(linear.weight.grad, expected, rtol=0, atol=0)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert packed(inputs).dtype == torch.bfloat16
    double = PackedLinear.from_linear(make_linear().double())
    with torch.no_grad():
        x64 = torch.randn(3, 48, dtype=torch.float64)
        assert torch.equal(double(x64), F.linear(x64, double.weight, double.bias))
    assert packed._packed is None and double._packed is None
    # gradients off but an input that requires grad: still the plain path under grad mode
    frozen = PackedLinear.from_linear(make_linear().requires_grad_(False))
    assert torch.equal(frozen(inputs), F.linear(inputs, frozen.weight, frozen.bias)) and frozen._packed is None


def test_a_weight_changed_in_place_or_replaced_is_packed_again():
    linear = make_linear()
    packed = PackedLinear.from_linear(linear)
    optimizer = torch.optim.SGD(packed.parameters(), lr=0.5)
    inputs = torch.randn(4, 48)
    for _ in range(2):  # an optimizer step updates the weight in place: the next inference forward sees it
        with torch.inference_mode():
            got = packed(inputs)
        assert ((got.double() - reference(inputs, linear)).abs() <= float64_bound(inputs, linear)).all()
        packed(inputs).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    packed.load_state_dict({"weight": torch.zeros(40, 48), "bias": torch.ones(40)})
    with torch.inference_mode():
        assert torch.equal(packed(inputs), torch.ones(4, 40))
    packed.weight = nn.Parameter(torch.eye(40, 48))
    with torch.inference_mode():
        torch.testing.assert_close(packed(inputs), inputs[:, :40] + 1, rtol=0, atol=4 * EPS32)
    packed.double()  # a dtype or device move drops the packed copy (float64 then takes the plain path)
    assert packed._packed is None
    with torch.inference_mode():  # weights made in inference mode (no version counter) are packed too
        made_there = PackedLinear.from_linear(make_linear())
        got = made_there(inputs)
    linear = made_there.to_linear()
    assert made_there._packed is not None
    assert ((got.double() - reference(inputs, linear)).abs() <= float64_bound(inputs, linear)).all()


def test_copies_and_pickles_drop_the_packed_cache():
    packed = PackedLinear.from_linear(make_linear())
    with torch.no_grad():
        expected = packed(torch.ones(2, 48))
    assert packed._packed is not None
    for clone in (copy.deepcopy(packed), pickle.loads(pickle.dumps(packed))):
        assert clone._packed is None
        with torch.no_grad():
            torch.testing.assert_close(clone(torch.ones(2, 48)), expected, rtol=0, atol=0)


def tiny_classifier(dtype=torch.float32) -> LookWhereForImageClassification:
    torch.manual_seed(0)
    model = LookWhereForImageClassification(make_tiny_config(num_labels=5, extractor_depth=3)).eval()
    for parameter in model.parameters():  # larger than the default init, so that logits are not near zero
        nn.init.normal_(parameter, std=0.2)
    return model.to(dtype)


def test_a_packed_model_matches_the_float64_reference_and_keeps_its_weights(tmp_path):
    """Every plain `nn.Linear` is packed (the state dict is unchanged, tensor for tensor), the logits on the float64
    model's selection stay within the float32 bound of the CLS-only test (tests/test_cls_only_last_layer.py), the
    whole forward picks the same patches, and the model saves and loads as a standard one."""
    model, expected_model = tiny_classifier(), tiny_classifier(torch.float64)
    linears = [name for name, module in model.named_modules() if type(module) is nn.Linear]
    before = model.state_dict()
    assert pack_linear_weights(model) == len(linears) > 10
    assert all(type(model.get_submodule(name)) is PackedLinear for name in linears)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(after[k].data_ptr() == before[k].data_ptr() for k in before)

    torch.manual_seed(1)
    pixel_values = torch.randn(3, 3, 112, 112, dtype=torch.float64)
    with torch.inference_mode():
        selector_map, prefix, _, _ = expected_model.lookwhere.select(pixel_values)
        indices = select_top_k(selector_map, 12)
        tokens, _ = expected_model.lookwhere.extractor(pixel_values, indices, prefix, cls_only=True)
        expected = expected_model.classifier(tokens[:, 0])
        tokens, _ = model.lookwhere.extractor(pixel_values.float(), indices, prefix.float(), cls_only=True)
        got = model.classifier(tokens[:, 0])
        bound = 1e5 * EPS32 * (1 + expected.abs().max().item())
        torch.testing.assert_close(got.double(), expected, atol=bound, rtol=0)
        assert expected.abs().max() > 0.1
        full = model(pixel_values.float(), k=12)
        map_error = (full.selector_map.double() - selector_map).abs().max().item()
        assert_top_k_margin(selector_map, 12, margin=2 * map_error)
        assert torch.equal(full.selected_indices.sort(-1).values, indices.sort(-1).values)
        torch.testing.assert_close(full.logits.double(), expected, atol=bound, rtol=0)
    assert any(module._packed is not None for module in model.modules() if isinstance(module, PackedLinear))

    model.save_pretrained(tmp_path)
    loaded = LookWhereForImageClassification.from_pretrained(tmp_path).eval()
    assert not any(isinstance(module, PackedLinear) for module in loaded.modules())
    assert all(torch.equal(loaded.state_dict()[key], value) for key, value in after.items())
    assert unpack_linear_weights(model) == len(linears)
    assert not any(isinstance(module, PackedLinear) for module in model.modules())


def test_a_packed_model_in_the_image_classification_pipeline(photos):
    """`pipeline("image-classification")` with a packed model: the same labels, each probability within the float32
    bound above (which also covers the softmax), and the packed path ran."""
    model = tiny_classifier()
    model.config.id2label = {i: f"label_{i}" for i in range(5)}
    model.config.label2id = {v: k for k, v in model.config.id2label.items()}
    processor = LookWhereImageProcessor.from_model_config(model.config)
    inputs = processor(photos["chelsea"], return_tensors="pt")
    with torch.inference_mode():
        plain_map = model(**inputs).selector_map
    plain = pipeline("image-classification", model=model, image_processor=processor, top_k=5)(photos["chelsea"])
    pack_linear_weights(model)
    with torch.inference_mode():
        packed_out = model(**inputs)
    k = packed_out.selected_indices.shape[1]  # the same selection: no near-tie within the maps' difference
    assert_top_k_margin(plain_map, k, margin=2 * (packed_out.selector_map - plain_map).abs().max().item())
    packed = pipeline("image-classification", model=model, image_processor=processor, top_k=5)(photos["chelsea"])
    by_label = {p["label"]: p["score"] for p in plain}
    assert all(abs(p["score"] - by_label[p["label"]]) <= 1e5 * EPS32 for p in packed)
    assert any(module._packed is not None for module in model.modules() if isinstance(module, PackedLinear))


def test_compile_and_export_see_the_standard_linear():
    """`torch.compile(fullgraph=True)` captures the packed model in one graph (the capture takes the `F.linear`
    path), with the eager model's outputs; `torch.export` records `aten.linear`, no oneDNN op, and makes no packed
    weight."""
    model = tiny_classifier()
    pack_linear_weights(model)
    pixel_values = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        eager = model(pixel_values, k=12).logits
        compiled = torch.compile(model, fullgraph=True, dynamic=False)(pixel_values, k=12).logits
        bound = 1e5 * EPS32 * (1 + eager.abs().max().item())
        torch.testing.assert_close(compiled, eager, atol=bound, rtol=0)
    fresh = tiny_classifier()
    pack_linear_weights(fresh)

    class Fixed(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x, k=12).logits

    program = torch.export.export(Fixed(fresh), (pixel_values,))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert "aten.linear.default" in targets and not any("mkldnn" in target for target in targets)
    assert all(module._packed is None for module in fresh.modules() if isinstance(module, PackedLinear))
    # FX's symbolic tracer records the plain linear too
    traced = torch.fx.symbolic_trace(PackedLinear.from_linear(make_linear()))
    assert [node.target for node in traced.graph.nodes if node.op == "call_function"] == [F.linear]


def test_other_models_and_bad_input():
    torch.manual_seed(0)
    lookupvit = LookupViTForImageClassification(tiny_lookupvit_config(num_labels=3)).eval()
    pixel_values = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        before = lookupvit(pixel_values).logits
        assert pack_linear_weights(lookupvit) > 4
        after = lookupvit(pixel_values).logits
    torch.testing.assert_close(after, before, atol=1e5 * EPS32 * (1 + before.abs().max().item()), rtol=0)
    with pytest.raises(TypeError, match="takes an nn.Module"):
        pack_linear_weights("model")
    with pytest.raises(TypeError, match="takes an nn.Module"):
        unpack_linear_weights(None)


def test_packing_converts_the_layers_in_place():
    """The same module objects become `PackedLinear`: a layer shared by two parents stays one layer (packed once),
    hooks keep running, extra buffers stay in the state dict, attributes stay; the model itself may be a Linear."""
    torch.manual_seed(0)
    shared, extra = nn.Linear(48, 48), make_linear(48, 40)
    extra.register_buffer("scale", torch.full((40,), 2.0))
    extra.note = "kept"
    seen = []
    extra.register_forward_hook(lambda module, args, output: seen.append(output))
    model = nn.Sequential(shared, nn.ReLU(), shared, extra)
    keys = model.state_dict().keys()
    assert pack_linear_weights(model) == 2
    assert model[0] is model[2] is shared and model[3] is extra and extra.note == "kept"
    assert type(shared) is PackedLinear and type(extra) is PackedLinear
    assert model.state_dict().keys() == keys and "3.scale" in keys
    inputs = torch.randn(5, 48)
    with torch.inference_mode():
        hidden = model[:3](inputs)
        got = model(inputs)
    assert len(seen) == 1 and seen[0] is got and shared._packed is not None and extra._packed is not None
    assert_float32_product(got, hidden, extra.weight, extra.bias)
    assert unpack_linear_weights(model) == 2
    assert model[0] is model[2] and type(shared) is nn.Linear and not hasattr(shared, "_packed")
    alone = make_linear()
    assert pack_linear_weights(alone) == 1 and type(alone) is PackedLinear
    assert unpack_linear_weights(alone) == 1 and type(alone) is nn.Linear


def test_a_replaced_weight_tensor_is_never_mistaken_for_the_packed_one():
    """`torch.func.functional_call` with a weight computed per call, and `weight.data = ...` twice between two
    forwards: the new tensors may reuse the freed tensors' ids and memory, the packed copy must still follow."""
    layer = PackedLinear.from_linear(make_linear())
    base, inputs = layer.weight.detach().clone(), torch.randn(4, 48)
    for scale in (1.0, -1.0, 3.0):
        with torch.no_grad():
            got = torch.func.functional_call(layer, {"weight": base * scale}, (inputs,))
        assert_float32_product(got, inputs, base * scale, layer.bias)
        assert layer._packed is not None
    for _ in range(20):  # the second new tensor often lands where the first weight was (glibc malloc: 11 in 20)
        with torch.inference_mode():
            layer(inputs)
        layer.weight.data = torch.randn(40, 48)
        layer.weight.data = torch.randn(40, 48)
        with torch.inference_mode():
            got = layer(inputs)
        assert_float32_product(got, inputs, layer.weight, layer.bias)
    layer.weight = nn.Parameter(torch.randn(40, 48))  # version 0
    with torch.inference_mode():
        layer(inputs)
    same_memory = nn.Parameter(torch.empty(0))  # another parameter on the same memory, also at version 0
    same_memory.data = layer.weight.data
    same_memory.data.mul_(-1)  # through `.data`: no version counter moves
    layer.weight = same_memory  # a new weight tensor: packed again, although memory, shape and version match
    with torch.inference_mode():
        got = layer(inputs)
    assert_float32_product(got, inputs, layer.weight, layer.bias)
    with torch.inference_mode():  # in-place changes under inference mode bump a normal tensor's version too
        layer.weight.mul_(-2)
        got = layer(inputs)
    assert_float32_product(got, inputs, layer.weight, layer.bias)


class Subclass(torch.Tensor):
    pass


class Negate(nn.Module):
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return -weight


def test_transforms_modes_and_switches_get_the_plain_linear():
    """`FlopCounterMode` counts the product, `vmap` and `torch.jit.trace` see `F.linear`, a parametrized layer and
    `torch.backends.mkldnn.enabled = False` use it too; none of them makes a packed copy."""
    from torch.utils.flop_counter import FlopCounterMode

    layer = PackedLinear.from_linear(make_linear())
    inputs = torch.randn(3, 5, 48)
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            layer(inputs)
        assert counter.get_total_flops() == 2 * 15 * 48 * 40
        got = torch.func.vmap(layer)(inputs)
        assert_float32_product(got, inputs, layer.weight, layer.bias)
        traced = torch.jit.trace(layer, inputs, check_trace=False)  # the check would run it eagerly
        assert "aten::linear" in str(traced.graph) and "mkldnn" not in str(traced.graph)
        with torch.backends.mkldnn.flags(enabled=False):
            assert torch.equal(layer(inputs), F.linear(inputs, layer.weight, layer.bias))
        subclassed = inputs.as_subclass(Subclass)  # tensor subclasses (DTensor, say) keep their own dispatch
        got = layer(subclassed)
        assert type(got) is Subclass and torch.equal(got, F.linear(subclassed, layer.weight, layer.bias))
        on_meta = PackedLinear(48, 40, device="meta")
        assert on_meta(inputs.to("meta")).shape == (3, 5, 40) and on_meta._packed is None
        mixed = make_linear()  # a float64 bias: the plain layer's error, not one from oneDNN
        mixed.bias = nn.Parameter(mixed.bias.double())
        with pytest.raises(RuntimeError) as plain_error:
            mixed(inputs)
        with pytest.raises(RuntimeError, match=re.escape(str(plain_error.value))):
            PackedLinear.from_linear(mixed)(inputs)
    assert layer._packed is None
    parametrize.register_parametrization(layer, "weight", Negate())
    for _ in range(2):  # the parametrized weight is made anew at every access: the plain path, following `original`
        with torch.inference_mode():
            got = layer(inputs)
        assert_float32_product(got, inputs, layer.weight, layer.bias)
        with torch.no_grad():
            layer.parametrizations.weight.original.mul_(-3)
    assert layer._packed is None


def test_onnx_export_of_a_packed_model_is_the_plain_graph():
    """`torch.onnx.export(dynamo=True)` writes the same nodes for the packed model as for the plain one."""
    pytest.importorskip("onnxscript")
    model = nn.Sequential(make_linear(48, 40), nn.GELU(), make_linear(40, 8)).eval()
    inputs = torch.randn(2, 48)

    def op_types(module):
        program = torch.onnx.export(module, (inputs,), dynamo=True, verbose=False)
        return [node.op_type for node in program.model_proto.graph.node]

    plain = op_types(model)
    assert pack_linear_weights(model) == 2
    assert op_types(model) == plain and ("Gemm" in plain or "MatMul" in plain)
    assert all(module._packed is None for module in model.modules() if isinstance(module, PackedLinear))


def test_fused_optimizer_steps_and_mode_switches_are_seen():
    """Fused optimizers (`fused=True`, the Trainer's CPU default) update weights without moving their version
    counter: the recording forward before each step drops the packed copy, and so do `eval()` / `train()` (the
    documented way to make any untracked change seen)."""
    layer = PackedLinear.from_linear(make_linear())
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1, fused=True)
    inputs = torch.randn(4, 48)
    for _ in range(2):
        with torch.no_grad():
            layer(inputs)
        assert layer._packed is not None
        layer(inputs).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        with torch.no_grad():
            got = layer(inputs)
        assert_float32_product(got, inputs, layer.weight, layer.bias)
    with torch.no_grad():
        layer.weight.data.mul_(-1)  # no trace on the weight
        layer.eval()
        got = layer(inputs)
    assert_float32_product(got, inputs, layer.weight, layer.bias)


def test_trainer_evaluates_a_packed_model_on_its_trained_weights(tmp_path):
    """`Trainer.train` (default optimizer: fused AdamW on the CPU) then `Trainer.predict` on a packed LookWhere: the
    logits of the trained weights, as the unpacked copy gives them (float32 bound above, same patches)."""
    from transformers import Trainer, TrainingArguments

    model = tiny_classifier()
    generator = torch.Generator().manual_seed(1)
    pixel_values, labels = (
        torch.randn(6, 3, 112, 112, generator=generator),
        torch.randint(0, 5, (6,), generator=generator),
    )
    data = [{"pixel_values": pixel_values[i], "labels": labels[i]} for i in range(6)]
    args = TrainingArguments(
        tmp_path, max_steps=2, learning_rate=1e-2, per_device_train_batch_size=3, per_device_eval_batch_size=3,
        use_cpu=True, report_to=[], disable_tqdm=True, save_strategy="no",
    )  # fmt: skip
    pack_linear_weights(model)
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.predict(data)  # packs the initial weights
    trainer.train()
    got = torch.from_numpy(trainer.predict(data).predictions)  # the logits alone (`keys_to_ignore_at_inference`)
    plain = copy.deepcopy(model)
    unpack_linear_weights(plain)
    with torch.no_grad():
        plain_out, packed_out = plain(pixel_values), model(pixel_values)
    expected = plain_out.logits  # on the same patches: no near-tie within the maps' difference
    margin = 2 * (packed_out.selector_map - plain_out.selector_map).abs().max().item()
    assert_top_k_margin(plain_out.selector_map, plain_out.selected_indices.shape[1], margin=margin)
    bound = 1e5 * EPS32 * (1 + expected.abs().max().item())
    torch.testing.assert_close(got, expected, atol=bound, rtol=0)
