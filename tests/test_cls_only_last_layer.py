"""The CLS-only last extractor layer of image-level LookWhere (issue 14): `LookWhereForImageClassification` reads only
the extractor's output CLS token, so its last layer computes keys / values for every token and the query, attention
output, layer scales, MLP and final norm for the CLS token only.

Checked here: the logits equal the full last layer's (float64: to rounding; float32: within a bound from the
float32 arithmetic) under eager and SDPA attention, for several k and batch > 1; the work is really skipped
(`FlopCounterMode` per module); every request that needs the other tokens (hidden states, attentions, dense features,
the bare model's `last_hidden_state`) runs the full layer; training gives the full layer's gradients and random draws;
`torch.compile(fullgraph=True)` captures one graph; the state dict and a save / load round trip are unchanged.
"""

import pytest
import torch
from conftest import EPS32, FLOAT64_TOLERANCE, make_tiny_config
from torch.utils.flop_counter import FlopCounterMode
from transformers import AttentionInterface
from transformers.models.dinov2_with_registers.modeling_dinov2_with_registers import (
    Dinov2WithRegistersAttention,
    Dinov2WithRegistersLayer,
    eager_attention_forward,
)

from lookwhere_hf import LookWhereForImageClassification
from lookwhere_hf.flops import lookwhere_flops, transformer_layer_flops
from lookwhere_hf.models.lookwhere.anytime_rungs import _block_flops
from lookwhere_hf.models.lookwhere.selection import select_top_k

NUM_LABELS = 5
SIZE = 112  # 8 x 8 = 64 high-resolution patches of 14 px
EXTRACTOR_DEPTH = 3
HIDDEN, MLP_HIDDEN, PREFIX = 32, 128, 5  # the tiny backbone: hidden 32, MLP ratio 4, CLS + 4 registers


def randomized(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Random values in every parameter (layer scales, norms and tokens too), so that no comparison passes because a
    part is zero or the identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
    return model


def make_model(attn: str = "sdpa", dtype=torch.float64, **config_kwargs) -> LookWhereForImageClassification:
    config = make_tiny_config(extractor_depth=EXTRACTOR_DEPTH, num_labels=NUM_LABELS, **config_kwargs)
    model = LookWhereForImageClassification._from_config(config, attn_implementation=attn)
    return randomized(model).to(dtype).eval()


def images(batch: int, dtype=torch.float64, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)).to(dtype)


def full_layer_logits(model, pixel_values, k=None) -> torch.Tensor:
    """The old computation: the bare model's full last layer (every token), then the head on its CLS token."""
    out = model.lookwhere(pixel_values, k=k)
    return model.classifier(out.pooler_output)


def module_flops(counter: FlopCounterMode, suffix: str) -> int:
    """FLOPs `counter` saw inside the module whose name ends with `suffix` (summed over operators)."""
    counts = counter.get_flop_counts()
    (name,) = [name for name in counts if name.endswith(suffix)]
    return sum(counts[name].values())


def last_layer(model) -> str:
    """The last extractor layer's module name, as a suffix of FlopCounterMode's names (the classification model and
    its bare body name their roots differently)."""
    return f".extractor.encoder.layer.{EXTRACTOR_DEPTH - 1}"


# ----------------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("k", [1, 6, 23, 64])
def test_logits_equal_the_full_last_layer_in_float64(attn, k):
    """float64: the two computations differ only by the order of roundings, far below FLOAT64_TOLERANCE; any
    difference in what is computed (a missing layer scale, residual, norm) would be of the order of the logits."""
    model = make_model(attn)
    pixel_values = images(3)
    with torch.no_grad():
        fast = model(pixel_values, k=k)
        body = model.lookwhere(pixel_values, k=k, cls_only=True)
        full = model.lookwhere(pixel_values, k=k)
    assert body.last_hidden_state.shape == (3, 1, HIDDEN)
    torch.testing.assert_close(body.last_hidden_state, full.last_hidden_state[:, :1], **FLOAT64_TOLERANCE)
    torch.testing.assert_close(fast.logits, model.classifier(full.pooler_output), **FLOAT64_TOLERANCE)
    assert fast.logits.abs().max() > 0.1  # not a comparison of near-zeros


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("k", [6, 23])
def test_float32_logits_are_within_float32_rounding_of_the_float64_reference(attn, k):
    """float32 CLS-only extractor + head against the float64 full-layer reference, on the same selection.

    Bound: a float32 dot product of n terms is off by at most n * eps * sum|terms| (conftest). Along the path from
    the (rounded) inputs to a logit the reductions are, per extractor layer, q/k/v 32 terms each, attention <= 28
    keys, o 32, MLP 32 + 128, and then the classifier's 32: under 1e3 terms in all. LayerNorm and softmax amplify
    relative errors by less than 1e2 for these random weights (std 0.2), so 1e5 * eps ~= 1.2e-2 of the logits'
    scale bounds the float32 error; a wrong computation is off by the order of the logits themselves.
    """
    reference = make_model(attn)
    model = make_model(attn, dtype=torch.float32)
    pixel_values = images(4)
    with torch.no_grad():
        selector_map, prefix, _, _ = reference.lookwhere.select(pixel_values)
        indices = select_top_k(selector_map, k)
        expected = reference.classifier(reference.lookwhere.extractor(pixel_values, indices, prefix)[0][:, 0])
        tokens, _ = model.lookwhere.extractor(pixel_values.float(), indices, prefix.float(), cls_only=True)
        got = model.classifier(tokens[:, 0])
        assert tokens.shape == (4, 1, HIDDEN)
        bound = 1e5 * EPS32 * (1 + expected.abs().max().item())
        torch.testing.assert_close(got.double(), expected, atol=bound, rtol=0)
        # end to end in float32, CLS-only against the full layer: the selector runs the same code on the same
        # input (the same selection, bit for bit), so only the last layer differs, within the same bound
        fast = model(pixel_values.float(), k=k)
        full = model.lookwhere(pixel_values.float(), k=k)
        assert torch.equal(fast.selected_indices, full.selected_indices)
        torch.testing.assert_close(fast.logits, model.classifier(full.pooler_output), atol=bound, rtol=0)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize(
    "backbone",
    [
        dict(use_swiglu_ffn=True, num_register_tokens=0),  # the Franca layout: SwiGLU MLP, CLS the only prefix token
        dict(qkv_bias=False),
        dict(attention_probs_dropout_prob=0.5, drop_path_rate=0.5),  # both off in eval mode
    ],
    ids=["swiglu-no-registers", "no-qkv-bias", "dropout-configured"],
)
def test_other_backbone_layouts_match_the_full_last_layer(backbone, attn):
    """float64, eval mode: the CLS-only layer runs (it is not a fall-back to the full layer that matches) and gives
    the full layer's logits. With attention dropout configured, eval mode must pass no dropout probability to the
    attention function (SDPA applies any `dropout_p` it is given, whatever the module's mode)."""
    model = make_model(attn, backbone=backbone)
    assert model.lookwhere.extractor.can_skip_last_layer_tokens()
    prefix = model.config.num_prefix_tokens
    pixel_values = images(3)
    mlp = f"{last_layer(model)}.mlp"
    with torch.no_grad():
        with FlopCounterMode(display=False) as fast_counter:
            fast = model(pixel_values, k=9).logits
        with FlopCounterMode(display=False) as full_counter:
            full_out = model.lookwhere(pixel_values, k=9)
    # the last layer's MLP ran on the CLS token only
    assert module_flops(fast_counter, mlp) * (prefix + 9) == module_flops(full_counter, mlp) > 0
    assert full_out.last_hidden_state.shape[1] == prefix + 9
    torch.testing.assert_close(fast, model.classifier(full_out.pooler_output), **FLOAT64_TOLERANCE)
    assert fast.abs().max() > 0.1


def test_a_registered_attention_implementation_gets_the_cls_query_row(monkeypatch):
    """The CLS-only layer calls the attention function the config names, as the full layer does (here one registered
    through `AttentionInterface`, which records what it is given and computes eager attention): one query row against
    every key, no mask, and the full layer's logits."""
    calls = []

    def recording_attention(module, query, key, value, attention_mask, **kwargs):
        calls.append((tuple(query.shape), tuple(key.shape), attention_mask))
        return eager_attention_forward(module, query, key, value, attention_mask, **kwargs)

    monkeypatch.setitem(AttentionInterface._global_mapping, "recording_for_test", recording_attention)
    model = make_model("recording_for_test")
    assert model.config.extractor_config._attn_implementation == "recording_for_test"
    pixel_values, k, heads = images(2), 7, 2
    head_dim = HIDDEN // heads
    with torch.no_grad():
        fast = model(pixel_values, k=k).logits
        extractor_calls = calls[-EXTRACTOR_DEPTH:]
        assert len(calls) == 1 + EXTRACTOR_DEPTH  # the selector's one layer, then the extractor's
        calls.clear()
        full = model.classifier(model.lookwhere(pixel_values, k=k).pooler_output)
    every_token = (2, heads, PREFIX + k, head_dim)
    assert [call[0] for call in extractor_calls] == [every_token] * (EXTRACTOR_DEPTH - 1) + [(2, heads, 1, head_dim)]
    assert all(call[1] == every_token and call[2] is None for call in extractor_calls)
    assert calls[-1][0] == every_token
    torch.testing.assert_close(fast, full, **FLOAT64_TOLERANCE)


@pytest.mark.slow
def test_flex_attention_runs_the_cls_only_layer():
    """transformers' flex attention (compiled; float32 only on CPU) with one query row against `P + k` keys, on the
    float64 eager reference's selection (so that no near-tie of the two selectors' maps matters): within the float32
    bound of `test_float32_logits_are_within_float32_rounding_of_the_float64_reference` of the reference's full last
    layer."""
    reference = make_model("eager")
    model = make_model("flex_attention", dtype=torch.float32)
    extractor = model.lookwhere.extractor
    assert extractor.config._attn_implementation == "flex_attention" and extractor.can_skip_last_layer_tokens()
    pixel_values, k = images(2), 6
    with torch.no_grad():
        selector_map, prefix, _, _ = reference.lookwhere.select(pixel_values)
        indices = select_top_k(selector_map, k)
        expected = reference.classifier(reference.lookwhere.extractor(pixel_values, indices, prefix)[0][:, 0])
        tokens, _ = extractor(pixel_values.float(), indices, prefix.float(), cls_only=True)
    assert tokens.shape == (2, 1, HIDDEN)
    bound = 1e5 * EPS32 * (1 + expected.abs().max().item())
    torch.testing.assert_close(model.classifier(tokens[:, 0]).double(), expected, atol=bound, rtol=0)


# ----------------------------------------------------------------------------------------------------- the saving
@pytest.mark.parametrize("batch, k", [(1, 6), (3, 23)])
def test_the_last_layer_computes_the_cls_token_only(batch, k):
    """FlopCounterMode (eager attention, whose matmuls it counts) per module: the last layer's MLP does 1 / (5 + k)
    of the full layer's work, its query / output projections too, its keys and values all of it; the earlier layers
    are unchanged, and the whole forward is what `lookwhere_flops` with a classification head counts."""
    model = make_model("eager")
    pixel_values = images(batch)
    tokens = PREFIX + k
    with torch.no_grad():
        with FlopCounterMode(display=False) as fast:
            model(pixel_values, k=k)
        with FlopCounterMode(display=False) as full:
            model(pixel_values, k=k, output_hidden_states=True)
    last = last_layer(model)
    mlp = 2 * 2 * HIDDEN * MLP_HIDDEN * batch  # fc1 + fc2 per token
    assert module_flops(full, f"{last}.mlp") == tokens * mlp
    assert module_flops(fast, f"{last}.mlp") == mlp
    for name, fast_tokens in (("q_proj", 1), ("o_proj", 1), ("k_proj", tokens), ("v_proj", tokens)):
        projection = 2 * HIDDEN * HIDDEN * batch
        assert module_flops(full, f"{last}.attention.{name}") == tokens * projection
        assert module_flops(fast, f"{last}.attention.{name}") == fast_tokens * projection
    first = ".extractor.encoder.layer.0"
    assert (
        module_flops(fast, first)
        == module_flops(full, first)
        == batch * transformer_layer_flops(model.config.extractor_config, tokens)
    )
    cls_only_layer = batch * transformer_layer_flops(model.config.extractor_config, tokens, num_queries=1)
    assert module_flops(full, last) == batch * transformer_layer_flops(model.config.extractor_config, tokens)
    # (the CLS-only layer's attention matmuls run outside the layer's submodules: compare the totals)
    assert full.get_total_flops() - fast.get_total_flops() == module_flops(full, last) - cls_only_layer
    analytic = lookwhere_flops(model.config, SIZE, k=k, batch_size=batch, num_labels=NUM_LABELS)
    assert fast.get_total_flops() == analytic.total


def test_flops_formulas_agree_and_reduce_to_the_full_layer():
    config = make_tiny_config(backbone=dict(use_swiglu_ffn=True)).extractor_config
    for tokens in (5, 30, 141):
        for queries in (None, 1, tokens):
            assert _block_flops(config, tokens, queries) == transformer_layer_flops(config, tokens, queries)
        assert transformer_layer_flops(config, tokens, tokens) == transformer_layer_flops(config, tokens)
    for queries in (0, -1, 31, 1.0, True):
        with pytest.raises(ValueError, match="`num_queries` must be an int between 1 and `num_tokens` \\(30\\)"):
            transformer_layer_flops(config, 30, queries)
    # ViT-B/14 at 518 px, k = 136: the last layer's saving, 1.7 of 31 GFLOPs
    from lookwhere_hf import LookWhereConfig

    release = LookWhereConfig()
    bare = lookwhere_flops(release, 518, k_ratio=0.1)
    head = lookwhere_flops(release, 518, k_ratio=0.1, num_labels=1000)
    saved = bare.total + 2 * 768 * 1000 - head.total
    ext = release.extractor_config
    assert saved == transformer_layer_flops(ext, 141) - transformer_layer_flops(ext, 141, 1)
    assert 1.6e9 < saved < 1.8e9 and 30e9 < bare.total < 32e9


# ----------------------------------------------------------------------------------------------------- full path
def test_requests_for_every_token_run_the_full_last_layer():
    model = make_model("eager")
    pixel_values = images(2)
    k = 6
    full_mlp = (PREFIX + k) * 2 * 2 * HIDDEN * MLP_HIDDEN * 2
    mlp = f"{last_layer(model)}.mlp"
    with torch.no_grad():
        expected = model(pixel_values, k=k).logits
        for flags in ({"output_hidden_states": True}, {"output_attentions": True}):
            with FlopCounterMode(display=False) as counter:
                out = model(pixel_values, k=k, **flags)
            assert module_flops(counter, mlp) == full_mlp, flags
            torch.testing.assert_close(out.logits, expected, **FLOAT64_TOLERANCE)
        assert out.attentions[-1].shape == (2, 2, PREFIX + k, PREFIX + k)
        hidden = model(pixel_values, k=k, output_hidden_states=True).hidden_states
        assert len(hidden) == EXTRACTOR_DEPTH + 1 and hidden[-1].shape == (2, PREFIX + k, HIDDEN)
        # flags from the config count as requests
        model.config.output_hidden_states = True
        try:
            with FlopCounterMode(display=False) as counter:
                assert len(model(pixel_values, k=k).hidden_states) == EXTRACTOR_DEPTH + 1
            assert module_flops(counter, mlp) == full_mlp
        finally:
            model.config.output_hidden_states = False
        # the bare model returns every token unless asked for the CLS token only
        with FlopCounterMode(display=False) as counter:
            assert model.lookwhere(pixel_values, k=k).last_hidden_state.shape == (2, PREFIX + k, HIDDEN)
        assert module_flops(counter, mlp) == full_mlp
        with FlopCounterMode(display=False) as counter:
            model.lookwhere(pixel_values, k=k, cls_only=True)
        assert module_flops(counter, mlp) == full_mlp // (PREFIX + k)
    # the bare model with `cls_only=True` is what `lookwhere_flops(..., cls_only=True)` counts
    assert counter.get_total_flops() == lookwhere_flops(model.config, SIZE, k=k, batch_size=2, cls_only=True).total
    with pytest.raises(ValueError, match="dense outputs need every token"):
        lookwhere_flops(model.config, SIZE, k=k, mode="dense", cls_only=True)
    with pytest.raises(ValueError, match="`cls_only` must be True, False or None"):
        lookwhere_flops(model.config, SIZE, k=k, cls_only="no")  # truthy: counted as CLS-only before


def test_cls_only_refuses_outputs_that_need_every_token():
    model = make_model("eager")
    pixel_values = images(1)
    with pytest.raises(ValueError, match="output_dense_features needs every token"):
        model.lookwhere(pixel_values, cls_only=True, output_dense_features=True)
    with pytest.raises(ValueError, match="output_hidden_states needs every token"):
        model.lookwhere(pixel_values, cls_only=True, output_hidden_states=True)
    with pytest.raises(ValueError, match="output_attentions needs every token"):
        model.lookwhere(pixel_values, cls_only=True, output_attentions=True)
    # the classification model decides itself (a second `cls_only` was a TypeError, or ignored in anytime mode)
    for mode in ({}, {"anytime": True}, {"budget": False}):
        with pytest.raises(ValueError, match="takes no `cls_only`.*output_hidden_states=True"):
            model(pixel_values, cls_only=False, **mode)


def test_an_accelerate_dispatched_last_layer_runs_in_full():
    """A hook of accelerate (`device_map`, offloading) wraps the layer's own forward, which the CLS-only path does
    not call: the full layer runs then."""
    from accelerate.hooks import ModelHook, add_hook_to_module, remove_hook_from_module

    model = make_model("eager")
    extractor = model.lookwhere.extractor
    assert extractor.can_skip_last_layer_tokens()
    add_hook_to_module(extractor.encoder.layer[-1], ModelHook())
    try:
        assert not extractor.can_skip_last_layer_tokens()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(images(1), k=6)
        assert module_flops(counter, f"{last_layer(model)}.mlp") == (PREFIX + 6) * 2 * 2 * HIDDEN * MLP_HIDDEN
    finally:
        remove_hook_from_module(extractor.encoder.layer[-1])


def ramp(like: torch.Tensor) -> torch.Tensor:
    """`0, 1 / D, ..., (D - 1) / D` over the channels: a change that the final LayerNorm does not normalize away (it
    would a scaling or a constant shift of a token)."""
    return torch.arange(like.shape[-1], dtype=like.dtype) / like.shape[-1]


class RampedOutputLayer(Dinov2WithRegistersLayer):
    """A custom last layer: its own `forward` adds `ramp` to the DINOv2 layer's output."""

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        output = super().forward(hidden_states, attention_mask, **kwargs)
        return output + ramp(output)


class HalvedOutputAttention(Dinov2WithRegistersAttention):
    """A custom attention module: its own `forward` halves the attention output."""

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        attn_output, attn_weights = super().forward(hidden_states, attention_mask, **kwargs)
        return attn_output / 2, attn_weights


def replace_last_layer_part(model, part: str) -> None:
    """Put a `RampedOutputLayer` (`part="layer"`) or a `HalvedOutputAttention` (`"attention"`) with the same
    weights in place of the last extractor layer or its attention."""
    layers = model.lookwhere.extractor.encoder.layer
    config = model.config.extractor_config
    old = layers[-1] if part == "layer" else layers[-1].attention
    new = (RampedOutputLayer if part == "layer" else HalvedOutputAttention)(config).to(torch.float64)
    new.load_state_dict(old.state_dict())
    if part == "layer":
        layers[-1] = new.eval()
    else:
        layers[-1].attention = new.eval()


@pytest.mark.parametrize("part", ["layer", "attention"])
def test_a_custom_last_layer_runs_its_own_forward(part):
    """A subclass (or any other module) in place of the last layer or its attention has a `forward` the CLS-only path
    cannot know: the full layer runs, so the logits are the custom layer's."""
    model = make_model("eager")
    pixel_values = images(2)
    with torch.no_grad():
        standard = model(pixel_values, k=6).logits
    replace_last_layer_part(model, part)
    assert not model.lookwhere.extractor.can_skip_last_layer_tokens()
    with torch.no_grad():
        custom = model(pixel_values, k=6).logits
        full = model.classifier(model.lookwhere(pixel_values, k=6).pooler_output)
    torch.testing.assert_close(custom, full, **FLOAT64_TOLERANCE)
    assert (custom - standard).abs().max() > 1e-3  # the custom forward changes the logits


@pytest.mark.parametrize(
    "where, register",
    [
        (
            "layer",
            lambda module, seen: module.register_forward_hook(lambda m, args, out: seen.append(1) or out + ramp(out)),
        ),
        (
            "layer",
            lambda module, seen: module.register_forward_pre_hook(
                lambda m, args: seen.append(1) or (args[0] * 0.5, *args[1:])
            ),
        ),
        (
            "attention",
            lambda module, seen: module.register_forward_hook(
                lambda m, args, out: seen.append(1) or (out[0] / 2, out[1])
            ),
        ),
    ],
    ids=["layer-forward-hook", "layer-pre-hook", "attention-forward-hook"],
)
def test_hooks_on_the_last_layer_run(where, register):
    """A hook registered on the last layer or its attention changes the output (a user's feature probe, say): the
    full layer runs so that the hook does. Without it, the CLS-only layer runs again; transformers' output-capturing
    hooks, installed by a call with `output_hidden_states` / `output_attentions`, do not stop it."""
    model = make_model("eager")
    layer = model.lookwhere.extractor.encoder.layer[-1]
    module = layer if where == "layer" else layer.attention
    pixel_values = images(2)
    with torch.no_grad():
        standard = model(pixel_values, k=6).logits
        seen = []
        handle = register(module, seen)
        assert not model.lookwhere.extractor.can_skip_last_layer_tokens()
        hooked = model(pixel_values, k=6).logits
        assert seen == [1]
        full = model.classifier(model.lookwhere(pixel_values, k=6).pooler_output)
        torch.testing.assert_close(hooked, full, **FLOAT64_TOLERANCE)
        assert (hooked - standard).abs().max() > 1e-3
        handle.remove()
        model(pixel_values, k=6, output_hidden_states=True, output_attentions=True)
        assert layer._forward_hooks and layer.attention._forward_hooks  # transformers' capturing hooks
        assert model.lookwhere.extractor.can_skip_last_layer_tokens()
        torch.testing.assert_close(model(pixel_values, k=6).logits, standard, atol=0, rtol=0)
    backward = layer.register_full_backward_hook(lambda m, grad_input, grad_output: None)
    assert not model.lookwhere.extractor.can_skip_last_layer_tokens()
    backward.remove()


# ----------------------------------------------------------------------------------------------------- training
def test_training_gives_the_full_layers_loss_and_gradients():
    """Train mode, selector trainable, drop path on (its per-image mask has the same shape on both paths, so the
    same draws): the loss and every gradient equal those of the full last layer (float64)."""
    config_kwargs = dict(freeze_selector=False, backbone=dict(drop_path_rate=0.3))
    fast, full = make_model(**config_kwargs).train(), make_model(**config_kwargs).train()
    assert fast.lookwhere.extractor.can_skip_last_layer_tokens()
    pixel_values, labels = images(4), torch.tensor([0, 3, 1, 4])
    torch.manual_seed(7)
    fast_out = fast(pixel_values, labels=labels, k=10)
    torch.manual_seed(7)
    full_out = full(pixel_values, labels=labels, k=10, output_hidden_states=True)  # the full last layer
    torch.testing.assert_close(fast_out.loss, full_out.loss, **FLOAT64_TOLERANCE)
    fast_out.loss.backward()
    full_out.loss.backward()
    checked = 0
    for (name, a), (_, b) in zip(fast.named_parameters(), full.named_parameters(), strict=True):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, **FLOAT64_TOLERANCE, msg=name)
            checked += 1
    last = fast.lookwhere.extractor.encoder.layer[-1]
    assert last.mlp.fc1.weight.grad.abs().sum() > 0 and last.attention.k_proj.weight.grad.abs().sum() > 0
    assert fast.lookwhere.selector.encoder.layer[0].attention.q_proj.weight.grad.abs().sum() > 0
    assert checked > 50


def test_training_with_attention_dropout_runs_the_full_layer():
    """Attention dropout draws a mask per attention row: one row on the CLS-only path, all rows on the full one, so
    the random stream would differ. In training mode with attention dropout the full layer runs: the same draws, the
    same numbers as before this path existed."""
    model = make_model(backbone=dict(attention_probs_dropout_prob=0.3)).train()
    assert not model.lookwhere.extractor.can_skip_last_layer_tokens()
    pixel_values = images(2)
    torch.manual_seed(3)
    default = model(pixel_values, k=6).logits
    torch.manual_seed(3)
    full = model(pixel_values, k=6, output_hidden_states=True).logits
    torch.testing.assert_close(default, full, atol=0, rtol=0)
    model.eval()  # no dropout in eval mode: the CLS-only layer again
    assert model.lookwhere.extractor.can_skip_last_layer_tokens()
    # the attention module's own mode decides whether it drops (a model in eval mode with that module training)
    model.lookwhere.extractor.encoder.layer[-1].attention.train()
    assert not model.lookwhere.extractor.can_skip_last_layer_tokens()


def test_gradient_checkpointing_checkpoints_the_cls_only_layer():
    """With gradient checkpointing the CLS-only layer is checkpointed like the full one: its MLP runs in the forward
    and again in the backward's recomputation (on the CLS token), with the same drop-path draws, so the loss and the
    gradients are those of the full last layer without checkpointing (float64)."""
    config_kwargs = dict(freeze_selector=False, backbone=dict(drop_path_rate=0.3))
    fast, full = make_model(**config_kwargs).train(), make_model(**config_kwargs).train()
    fast.gradient_checkpointing_enable()
    assert fast.lookwhere.extractor.can_skip_last_layer_tokens()
    mlp_inputs = []
    fast.lookwhere.extractor.encoder.layer[-1].mlp.register_forward_hook(
        lambda module, args, output: mlp_inputs.append(tuple(args[0].shape))
    )
    pixel_values, labels = images(4), torch.tensor([0, 3, 1, 4])
    torch.manual_seed(7)
    fast_out = fast(pixel_values, labels=labels, k=10)
    torch.manual_seed(7)
    full_out = full(pixel_values, labels=labels, k=10, output_hidden_states=True)
    fast_out.loss.backward()
    full_out.loss.backward()
    assert mlp_inputs == [(4, 1, HIDDEN)] * 2  # the forward, then the recomputation
    torch.testing.assert_close(fast_out.loss, full_out.loss, **FLOAT64_TOLERANCE)
    for (name, a), (_, b) in zip(fast.named_parameters(), full.named_parameters(), strict=True):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, **FLOAT64_TOLERANCE, msg=name)


# ----------------------------------------------------------------------------------------------------- compile, save
def test_compiles_to_one_graph_with_the_cls_only_layer():
    """`torch.compile(fullgraph=True)` captures the forward with the CLS-only layer as one graph, and the captured
    graph does the classification model's FLOPs (eager attention, which FlopCounterMode counts), not the full's."""
    model = make_model("eager", dtype=torch.float32)
    pixel_values = images(2, dtype=torch.float32)
    graphs = []

    def keeping_backend(graph_module, example_inputs):
        graphs.append((graph_module, example_inputs))
        return graph_module.forward

    torch._dynamo.reset()
    with torch.no_grad():
        explanation = torch._dynamo.explain(model)(pixel_values, k=10)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        assert explanation.graph_count == 1
        compiled = torch.compile(model, backend=keeping_backend, fullgraph=True)
        expected = model(pixel_values, k=10).logits
        torch.testing.assert_close(compiled(pixel_values, k=10).logits, expected, atol=0, rtol=0)
        (graph_module, example_inputs), *_ = graphs
        with FlopCounterMode(display=False) as counter:  # the captured graph, run as it is
            graph_module(*example_inputs)
    analytic = lookwhere_flops(model.config, SIZE, k=10, batch_size=2, num_labels=NUM_LABELS).total
    assert counter.get_total_flops() == analytic
    # = the bare model's FLOPs + the head - what the last layer skips
    bare = lookwhere_flops(model.config, SIZE, k=10, batch_size=2).total
    ext, tokens = model.config.extractor_config, PREFIX + 10
    skipped = 2 * (transformer_layer_flops(ext, tokens) - transformer_layer_flops(ext, tokens, num_queries=1))
    assert analytic == bare + 2 * 2 * HIDDEN * NUM_LABELS - skipped and skipped > 0


def test_state_dict_and_save_load_are_unchanged(tmp_path):
    from transformers import AutoModelForImageClassification

    model = make_model("sdpa", dtype=torch.float32)
    keys = set(model.state_dict())
    assert not any("fused" in key or "cls_only" in key for key in keys)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    assert set(loaded.state_dict()) == keys
    pixel_values = images(2, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values, k=6).logits, model(pixel_values, k=6).logits, atol=0, rtol=0)
        # the loaded body's CLS-only output is its full output's CLS token (float32 bound as above)
        cls_token = loaded.lookwhere(pixel_values, k=6, cls_only=True).last_hidden_state
        full = loaded.lookwhere(pixel_values, k=6).last_hidden_state
        bound = 1e5 * EPS32 * (1 + full.abs().max().item())
        torch.testing.assert_close(cls_token, full[:, :1], atol=bound, rtol=0)
