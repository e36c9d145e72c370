"""LookWhere model family: numerics against references, invariances, save/load, input validation."""

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from conftest import EPS32, FLOAT64_TOLERANCE, assert_top_k_margin, make_tiny_config, sum_rtol
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification, AutoModelForSemanticSegmentation

from lookwhere_hf import (
    LookWhereConfig,
    LookWhereForImageClassification,
    LookWhereForSemanticSegmentation,
    LookWhereModel,
    spread_to_grid,
)
from lookwhere_hf.models.lookwhere.modeling_lookwhere import resize_position_embeddings


def _randomize(model: torch.nn.Module) -> torch.nn.Module:
    """Random values everywhere (LayerScale, tokens, norms too) so that no comparison passes by accident."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
    return model


def _tiny_model(cls=LookWhereModel, **kwargs):
    return _randomize(cls(make_tiny_config(**kwargs))).eval()


# ----------------------------------------------------------------------------------------------------- config
def test_config_round_trip(tmp_path):
    config = make_tiny_config(k_ratio=0.3, num_spread_neighbors=3, low_res_antialias=True, num_labels=4)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, LookWhereConfig)
    strip = lambda d: {k: v for k, v in d.items() if k != "_name_or_path"}  # noqa: E731
    assert strip(loaded.to_dict()) == strip(config.to_dict())
    assert loaded.selector_config.num_hidden_layers == 1 and loaded.extractor_config.image_size == 112
    assert loaded.selector_upsample_factor == math.ceil(8 / 4)


def test_config_defaults_match_release():
    config = LookWhereConfig()
    assert (config.low_res_size, config.high_res_size, config.patch_size) == (154, 518, 14)
    assert config.selector_config.num_hidden_layers == 3 and config.extractor_config.num_hidden_layers == 12
    assert config.selector_upsample_factor == 4 and config.num_prefix_tokens == 5
    assert config.num_selected(37 * 37) == 136 and config.num_selected(74 * 74) == 547


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"k_ratio": 0.0}, "k_ratio"),
        ({"k_ratio": 1.5}, "k_ratio"),
        ({"high_res": 100}, "extractor_config.image_size"),
        ({"low_res": 50}, "selector_config.image_size"),
        ({"num_spread_neighbors": 0}, "num_spread_neighbors"),
        ({"selector_head_act": "relu"}, "selector_head_act"),
    ],
)
def test_config_rejects_invalid_values(kwargs, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        make_tiny_config(**kwargs)


def test_config_rejects_mismatched_hidden_sizes():
    with pytest.raises(ValueError, match="hidden_size"):
        LookWhereConfig(
            selector_config=dict(
                hidden_size=32, num_attention_heads=2, num_hidden_layers=1, image_size=56, patch_size=14
            ),
            extractor_config=dict(
                hidden_size=64, num_attention_heads=2, num_hidden_layers=1, image_size=112, patch_size=14
            ),
        )


# ----------------------------------------------------------------------------------------------------- numerics
def test_all_patches_extractor_equals_dinov2_layers_on_full_sequence():
    """With k = all patches the extractor is a plain DINOv2-with-registers pass on [selector prefix; patches]."""
    model = _tiny_model().double()  # float64: the two operation orders agree to FLOAT64_TOLERANCE
    pixel_values = torch.randn(2, 3, 112, 112, dtype=torch.float64)
    out = model(pixel_values, k=64)
    # Reference: every patch embedded with the conv, position embeddings added, tokens in row-major order.
    ext = model.extractor
    patches = ext.embeddings.patch_embeddings.projection(pixel_values).flatten(2).transpose(1, 2)
    patches = patches + ext.embeddings.position_embeddings
    hidden = torch.cat((out.selector_prefix_tokens, patches), dim=1)
    for layer in ext.encoder.layer:
        hidden = layer(hidden)
    reference = ext.layernorm(hidden)
    order = out.selected_indices  # the model's tokens come in selector-score order
    got_patches = out.last_hidden_state[:, 5:]
    ref_patches = torch.gather(reference[:, 5:], 1, order.unsqueeze(-1).expand(-1, -1, 32))
    torch.testing.assert_close(got_patches, ref_patches, **FLOAT64_TOLERANCE)
    torch.testing.assert_close(out.last_hidden_state[:, :5], reference[:, :5], **FLOAT64_TOLERANCE)
    assert sorted(order[0].tolist()) == list(range(64))


def test_selector_map_layout_and_reference():
    """Selector map: per-low-res-patch r x r scores laid out as (h*r+i, w*r+j), bilinearly resized to the grid."""
    model = _tiny_model(high_res=126).double()  # grid 9, low grid 4, r = 3 -> 12x12 map resized to 9x9
    pixel_values = torch.randn(2, 3, 126, 126, dtype=torch.float64)
    selector_map, prefix, patch_tokens, _ = model.select(pixel_values)
    low = F.interpolate(pixel_values, size=(56, 56), mode="bilinear", align_corners=False, antialias=False)
    sel = model.selector
    tokens = (
        sel.embeddings.patch_embeddings.projection(low).flatten(2).transpose(1, 2) + sel.embeddings.position_embeddings
    )
    hidden = torch.cat(
        (sel.embeddings.cls_token.expand(2, -1, -1), sel.embeddings.register_tokens.expand(2, -1, -1), tokens), 1
    )
    for layer in sel.encoder.layer:
        hidden = layer(hidden)
    hidden = sel.layernorm(hidden)
    torch.testing.assert_close(prefix, hidden[:, :5], **FLOAT64_TOLERANCE)
    scores = sel.head.fc2(F.gelu(sel.head.fc1(hidden[:, 5:])))  # (2, 16, 9)
    fine = torch.zeros(2, 12, 12, dtype=torch.float64)
    for h in range(4):
        for w in range(4):
            for i in range(3):
                for j in range(3):
                    fine[:, h * 3 + i, w * 3 + j] = scores[:, h * 4 + w, i * 3 + j]
    # The model resizes the map in float32 (as the official code does), so the reference does too: the same kernel on
    # inputs within one float32 rounding of each other (2 u), plus <= 1 ulp per its 7 operations: 9 u max|map|.
    reference = F.interpolate(fine[:, None].float(), size=(9, 9), mode="bilinear", align_corners=False).flatten(1)
    torch.testing.assert_close(selector_map, reference.double(), atol=5 * EPS32 * fine.abs().max().item(), rtol=0)
    assert patch_tokens.shape == (2, 16, 32)


def test_position_embedding_resize_is_bicubic_without_antialias():
    pos = torch.randn(1, 16, 8)
    got = resize_position_embeddings(pos, 4, (2, 3))
    ref = F.interpolate(pos.reshape(1, 4, 4, 8).permute(0, 3, 1, 2), size=(2, 3), mode="bicubic", align_corners=False)
    torch.testing.assert_close(got, ref.permute(0, 2, 3, 1).reshape(1, 6, 8), atol=0, rtol=0)  # the same call
    antialiased = F.interpolate(
        pos.reshape(1, 4, 4, 8).permute(0, 3, 1, 2), size=(2, 3), mode="bicubic", align_corners=False, antialias=True
    )
    assert not torch.allclose(got, antialiased.permute(0, 2, 3, 1).reshape(1, 6, 8))


def test_eager_and_sdpa_agree():
    config = make_tiny_config()
    model = _randomize(LookWhereModel(config)).eval().double()  # float64: the kernels agree to FLOAT64_TOLERANCE
    pixel_values = torch.randn(2, 3, 112, 112, dtype=torch.float64)
    model.set_attn_implementation("eager")
    eager = model(pixel_values, output_dense_features=True)
    model.set_attn_implementation("sdpa")
    assert model.extractor.encoder.config._attn_implementation == "sdpa"
    sdpa = model(pixel_values, output_dense_features=True)
    # no near-tie in the scores, so both kernels select the same patches in the same order
    k = eager.selected_indices.shape[1]
    assert_top_k_margin(eager.selector_map, k, 2 * FLOAT64_TOLERANCE["atol"], ordered=True)
    assert torch.equal(eager.selected_indices, sdpa.selected_indices)
    for name in ("last_hidden_state", "selector_map", "dense_features"):
        torch.testing.assert_close(getattr(eager, name), getattr(sdpa, name), **FLOAT64_TOLERANCE)


def test_attentions_and_hidden_states_on_request():
    config = make_tiny_config()
    model = LookWhereModel(config)
    model.set_attn_implementation("eager")
    out = model(torch.randn(1, 3, 112, 112), k=10, output_attentions=True, output_hidden_states=True)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (1, 2, 15, 15)
    assert len(out.hidden_states) == 3 and out.hidden_states[-1].shape == (1, 15, 32)
    assert len(out.selector_attentions) == 1 and out.selector_attentions[0].shape == (1, 2, 21, 21)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(1, 2, 15), atol=15 * EPS32, rtol=0)  # 15 terms


# ----------------------------------------------------------------------------------------------------- invariances
def test_batch_invariance_and_determinism():
    model = _tiny_model(LookWhereForSemanticSegmentation, num_labels=3).double()  # float64: see FLOAT64_TOLERANCE
    images = torch.randn(3, 3, 112, 112, dtype=torch.float64)
    batched = model(images)
    again = model(images)
    assert torch.equal(batched.logits, again.logits)  # same kernels on the same input
    # no near-tie in the scores: a single image's forward selects the same patches in the same order
    assert_top_k_margin(batched.selector_map, batched.selected_indices.shape[1], 2 * FLOAT64_TOLERANCE["atol"], True)
    for i in range(3):
        single = model(images[i : i + 1])
        assert torch.equal(single.selected_indices, batched.selected_indices[i : i + 1])
        torch.testing.assert_close(single.logits, batched.logits[i : i + 1], **FLOAT64_TOLERANCE)


def test_k_override_and_k_ratio():
    model = _tiny_model()
    pixel_values = torch.randn(2, 3, 112, 112)
    assert model(pixel_values).selected_indices.shape == (2, 6)  # floor(0.1 * 64)
    out = model(pixel_values, k=17)
    assert out.selected_indices.shape == (2, 17) and out.last_hidden_state.shape == (2, 5 + 17, 32)
    top = out.selector_map.topk(17).indices
    assert torch.equal(out.selected_indices, top)  # the same top-k kernel on the same scores
    # selected scores are in descending order
    scores = out.selector_map.gather(1, out.selected_indices)
    assert (scores[:, :-1] >= scores[:, 1:]).all()


def test_non_square_input():
    model = _tiny_model(LookWhereForSemanticSegmentation, num_labels=3)
    out = model(torch.randn(2, 3, 126, 84), labels=torch.randint(0, 3, (2, 126, 84)))
    assert out.logits.shape == (2, 3, 9, 6)
    assert out.selector_map.shape == (2, 54) and out.selected_indices.max() < 54
    assert torch.isfinite(out.loss)


def test_given_low_res_view_equals_made_one():
    model = _tiny_model()
    pixel_values = torch.randn(2, 3, 112, 112)
    low = F.interpolate(pixel_values, size=(56, 56), mode="bilinear", align_corners=False)
    a, b = model(pixel_values), model(pixel_values, low_res_pixel_values=low)
    assert torch.equal(a.last_hidden_state, b.last_hidden_state)  # the same resize kernel on the same input
    antialiased = _tiny_model(low_res_antialias=True)
    low_aa = F.interpolate(pixel_values, size=(56, 56), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(antialiased.low_res_view(pixel_values), low_aa, atol=0, rtol=0)  # the same call


def test_bf16_close_to_fp32():
    model = _tiny_model(LookWhereForImageClassification, num_labels=5)
    pixel_values = torch.randn(2, 3, 112, 112)
    k = 64  # every patch: no near-tie can flip the selection, and the CLS does not depend on the patches' order
    with torch.no_grad():
        fp32 = model(pixel_values, k=k)
        body = model.lookwhere(pixel_values, k=k)
        head = model.lookwhere.selector.head
        hidden = head.act(head.fc1(body.selector_patch_tokens))
        # scale of an output's error: its inputs' independent errors (each <= rho max|input|) add in quadrature
        # through a Linear, ||w||_2 max|input| + |b| (the map's bilinear resize is convex and keeps the bound)
        score_scale = head.fc2.weight.norm(dim=1).max() * hidden.abs().max() + head.fc2.bias.abs().max()
        logit_scale = model.classifier.weight.norm(dim=1).max() * body.pooler_output.abs().max()
        logit_scale += model.classifier.bias.abs().max()
    bf16 = model.to(torch.bfloat16)(pixel_values.to(torch.bfloat16), k=k)
    assert bf16.logits.dtype == torch.bfloat16
    # bf16 keeps 8 significant bits (u = 2**-9); a value goes through ~8 roundings per layer (norm, q/k/v, attention,
    # projection, norm, 2 MLP layers) x 3 layers + the head's 2: relative error <= rho = 32 u = 6.25% of its scale.
    rho = 32 * 2**-9
    assert ((bf16.selector_map.float() - fp32.selector_map).abs() <= rho * score_scale).all()
    assert ((bf16.logits.float() - fp32.logits).abs() <= rho * logit_scale).all()


# ----------------------------------------------------------------------------------------------------- heads / losses
def test_classification_losses_follow_problem_type():
    pixel_values = torch.randn(4, 3, 112, 112)
    single = _tiny_model(LookWhereForImageClassification, num_labels=3)
    labels = torch.tensor([0, 2, 1, 1])
    out = single(pixel_values, labels=labels)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))

    multi = _tiny_model(LookWhereForImageClassification, num_labels=3, problem_type="multi_label_classification")
    targets = torch.tensor([[1.0, 0, 1], [0, 0, 1], [1, 1, 1], [0, 0, 0]])
    out = multi(pixel_values, labels=targets)
    torch.testing.assert_close(out.loss, F.binary_cross_entropy_with_logits(out.logits, targets))

    regression = _tiny_model(LookWhereForImageClassification, num_labels=1)
    values = torch.randn(4)
    out = regression(pixel_values, labels=values)
    torch.testing.assert_close(out.loss, F.mse_loss(out.logits.squeeze(), values))


def test_segmentation_loss_upsamples_and_ignores_255():
    model = _tiny_model(LookWhereForSemanticSegmentation, num_labels=4)
    pixel_values = torch.randn(2, 3, 112, 112)
    labels = torch.randint(0, 4, (2, 60, 50))
    labels[:, :10] = 255
    out = model(pixel_values, labels=labels)
    up = F.interpolate(out.logits, size=(60, 50), mode="bilinear", align_corners=False)
    # the same loss over <= 6000 pixels, maybe reduced in another order: relative error <= sum_rtol(n)
    expected = F.cross_entropy(up, labels, ignore_index=255)
    torch.testing.assert_close(out.loss, expected, atol=0, rtol=sum_rtol(labels.numel()))
    assert out.logits.shape == (2, 4, 8, 8)


def test_dense_logits_are_linear_head_on_spread_tokens():
    model = _tiny_model(LookWhereForSemanticSegmentation, num_labels=3)
    pixel_values = torch.randn(1, 3, 112, 112)
    body = model.lookwhere(pixel_values, output_dense_features=True)
    dense = spread_to_grid(body.last_hidden_state[:, 5:], body.selected_indices, (8, 8))
    torch.testing.assert_close(body.dense_features.flatten(2).transpose(1, 2), dense, atol=0, rtol=0)  # same call
    logits = model(pixel_values).logits
    # a Linear over D = 32 channels in another memory layout: <= (D + 2) u (sum |w| max |x| + |b|)
    scale = model.classifier.weight.abs().sum(1).max() * dense.abs().max() + model.classifier.bias.abs().max()
    atol = (32 + 2) * EPS32 / 2 * scale.item()
    torch.testing.assert_close(logits.flatten(2).transpose(1, 2), model.classifier(dense), atol=atol, rtol=0)


def test_selector_frozen_for_fine_tuning_and_gradients_reach_extractor():
    model = LookWhereForImageClassification(make_tiny_config(num_labels=3)).train()
    assert not any(p.requires_grad for p in model.lookwhere.selector.parameters())
    out = model(torch.randn(2, 3, 112, 112), labels=torch.tensor([0, 1]))
    out.loss.backward()
    assert all(p.grad is None for p in model.lookwhere.selector.parameters())
    assert model.lookwhere.extractor.encoder.layer[0].mlp.fc1.weight.grad.abs().sum() > 0
    unfrozen = LookWhereForImageClassification(make_tiny_config(num_labels=3, freeze_selector=False)).train()
    unfrozen(torch.randn(2, 3, 112, 112), labels=torch.tensor([0, 1])).loss.backward()
    # The selector is trained through the prefix tokens it hands to the extractor.
    assert unfrozen.lookwhere.selector.encoder.layer[0].mlp.fc1.weight.grad.abs().sum() > 0


def test_gradient_checkpointing_gives_same_gradients():
    config = make_tiny_config(num_labels=3, freeze_selector=False)
    torch.manual_seed(0)
    plain = LookWhereForImageClassification(config).train()
    checkpointed = LookWhereForImageClassification(config).train()
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert checkpointed.lookwhere.extractor.encoder.layer[0].gradient_checkpointing
    pixel_values, labels = torch.randn(2, 3, 112, 112), torch.tensor([0, 2])
    plain(pixel_values, labels=labels).loss.backward()
    checkpointed(pixel_values, labels=labels).loss.backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        if a.grad is not None:
            # recomputation runs the same kernels on the same inputs: bit-identical gradients
            torch.testing.assert_close(a.grad, b.grad, atol=0, rtol=0, msg=name)


# ----------------------------------------------------------------------------------------------------- save / load
@pytest.mark.parametrize(
    "cls, auto",
    [
        (LookWhereModel, AutoModel),
        (LookWhereForImageClassification, AutoModelForImageClassification),
        (LookWhereForSemanticSegmentation, AutoModelForSemanticSegmentation),
    ],
)
def test_save_and_load_bit_identical(tmp_path, cls, auto):
    model = _tiny_model(cls, num_labels=3)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert not list(tmp_path.glob("*.bin"))
    pixel_values = torch.randn(2, 3, 112, 112)
    reference = model(pixel_values)
    for loader in (auto, cls):
        loaded = loader.from_pretrained(tmp_path).eval()
        assert type(loaded) is cls
        out = loaded(pixel_values)
        for key, value in reference.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(out[key], value), key


def test_base_weights_load_into_task_models(tmp_path):
    base = _tiny_model()
    base.save_pretrained(tmp_path)
    classifier = LookWhereForImageClassification.from_pretrained(tmp_path, num_labels=4).eval()
    pixel_values = torch.randn(1, 3, 112, 112)
    assert torch.equal(classifier.lookwhere(pixel_values).pooler_output, base(pixel_values).pooler_output)


def test_return_dict_false_gives_tuple():
    model = _tiny_model(LookWhereForImageClassification, num_labels=3)
    pixel_values = torch.randn(1, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    out = model(pixel_values, return_dict=False)
    assert isinstance(out, tuple) and out[0].shape == (1, 3)
    assert torch.equal(out[0], model(pixel_values).logits)  # the same forward, only packed differently


@pytest.mark.slow
def test_trust_remote_code_load_without_package(tmp_path):
    """A saved folder loads in a fresh process that never imports lookwhere_hf (code copied next to the weights)."""
    model = _tiny_model(LookWhereForImageClassification, num_labels=3)
    model.save_pretrained(tmp_path / "model")
    pixel_values = torch.randn(1, 3, 112, 112)
    torch.save(pixel_values, tmp_path / "x.pt")
    expected = model(pixel_values).logits
    script = textwrap.dedent(
        f"""
        import sys, torch
        from transformers import AutoModelForImageClassification
        torch.set_num_threads({torch.get_num_threads()})  # the parent's thread count: the same kernels, bit-identical
        model = AutoModelForImageClassification.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True)
        assert "lookwhere_hf" not in sys.modules, "lookwhere_hf was imported"
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        logits = model.eval()(torch.load({str(tmp_path / "x.pt")!r})).logits
        torch.save(logits, {str(tmp_path / "logits.pt")!r})
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.equal(torch.load(tmp_path / "logits.pt"), expected)


# ----------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "make_input, kwargs, match",
    [
        (lambda: torch.randn(1, 4, 112, 112), {}, "3 channels"),
        (lambda: torch.randn(1, 3, 110, 112), {}, "multiples of the patch size 14"),
        (lambda: torch.randn(0, 3, 112, 112), {}, "empty batch"),
        (lambda: torch.randn(3, 112, 112), {}, r"shape \(batch_size, 3, height, width\)"),
        (lambda: torch.randn(1, 3, 112, 112), {"k": 0}, "between 1 and the number of high-res patches"),
        (lambda: torch.randn(1, 3, 112, 112), {"k": 65}, r"between 1 and the number of high-res patches \(64\)"),
        (lambda: torch.randn(2, 3, 112, 112), {"low_res_pixel_values": torch.randn(3, 3, 56, 56)}, "batch size"),
        (
            lambda: torch.randn(1, 3, 112, 112),
            {"low_res_pixel_values": torch.randn(1, 3, 50, 56)},
            "selector patch size",
        ),
    ],
)
def test_bad_inputs_raise_clear_errors(make_input, kwargs, match):
    model = _tiny_model(LookWhereForImageClassification, num_labels=2)
    with pytest.raises(ValueError, match=match):
        model(make_input(), **kwargs)


def test_non_int_k_is_rejected():
    model = _tiny_model()
    with pytest.raises(TypeError, match="`k` must be an int"):
        model(torch.randn(1, 3, 112, 112), k=3.5)
