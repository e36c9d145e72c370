"""LookupViT: shapes, FLOPs, the shared gather/scatter logits, flexible compute, save -> load -> pipeline, eager ==
SDPA, gradient checkpointing, from_vit / from_dinov2 and input validation, on tiny configs."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import EPS32, FLOAT64_TOLERANCE
from huggingface_hub.errors import StrictDataclassClassValidationError
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode
from transformers import (
    AutoConfig,
    AutoModelForImageClassification,
    AutoModelForSemanticSegmentation,
    BeitImageProcessor,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    ViTConfig,
    ViTForImageClassification,
    pipeline,
)

from lookwhere_hf import (
    LookupViTConfig,
    LookupViTForImageClassification,
    LookupViTForSemanticSegmentation,
    LookupViTModel,
    lookupvit_image_processor,
)
from lookwhere_hf.flops import lookupvit_flops, vit_flops_like

GRIDS = [2, 3, 4]


def tiny_config(**kwargs) -> LookupViTConfig:
    """Hidden 32, 2 heads, 2 blocks, 112 px / patch 14 = an 8 x 8 lookup grid; compressed grids 2x2, 3x3, 4x4."""
    settings = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=112,
        patch_size=14,
        compressed_grid=4,
        compressed_grids=GRIDS,
        lookup_mlp_ratio=0.5,
    )
    return LookupViTConfig(**{**settings, **kwargs})


def tiny(cls, attn_implementation="eager", **kwargs):
    return cls._from_config(tiny_config(**kwargs), attn_implementation=attn_implementation).eval()


def counted_flops(model, *args, **kwargs) -> FlopCounterMode:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(*args, **kwargs)
    return counter


# ----------------------------------------------------------------------------------------------------- shapes
def test_output_shapes_and_per_layer_outputs():
    pixel_values = torch.randn(2, 3, 112, 140)  # 8 x 10 lookup tokens
    out = tiny(LookupViTModel)(pixel_values, compressed_grid=(3, 2), output_hidden_states=True, output_attentions=True)
    assert out.compressed_grid.tolist() == [[3, 2]] * len(pixel_values)
    assert out.last_hidden_state.shape == (2, 6, 32)
    assert out.pooler_output.shape == (2, 32)
    torch.testing.assert_close(out.pooler_output, out.last_hidden_state.mean(1), rtol=0, atol=0)
    assert out.lookup_last_hidden_state.shape == (2, 80, 32)
    assert [h.shape for h in out.hidden_states] == [(2, 6, 32)] * 3
    assert [h.shape for h in out.lookup_hidden_states] == [(2, 80, 32)] * 3
    assert [a.shape for a in out.attentions] == [(2, 2, 6, 80)] * 2
    # gather attention: every compressed token's weights over the 80 lookup tokens sum to 1 (80 float32 terms)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(2, 2, 6), rtol=0, atol=80 * EPS32)

    logits = tiny(LookupViTForImageClassification, num_labels=5)(pixel_values).logits
    assert logits.shape == (2, 5)
    seg = tiny(LookupViTForSemanticSegmentation, num_labels=4)(pixel_values, labels=torch.zeros(2, 112, 140).long())
    assert seg.logits.shape == (2, 4, 8, 10) and seg.loss.ndim == 0
    assert tiny(LookupViTModel)(pixel_values, return_dict=False)[0].shape == (2, 16, 32)


def test_compressed_tokens_are_the_downsampled_patch_grid_plus_their_own_positions():
    model = tiny(LookupViTModel).double()
    emb = model.embeddings
    pixel_values = torch.randn(2, 3, 112, 112, dtype=torch.float64)
    with torch.no_grad():
        lookup, compressed = emb(pixel_values, (3, 2))
        patches = emb.patch_embeddings.projection(pixel_values)  # (B, D, 8, 8)
        area = F.interpolate(patches, size=(3, 2), mode="bilinear", align_corners=False, antialias=True)
        positions = F.interpolate(
            emb.compressed_position_embeddings.reshape(1, 4, 4, 32).permute(0, 3, 1, 2),
            size=(3, 2),
            mode="bicubic",
            align_corners=False,
        )
    torch.testing.assert_close(compressed, (area + positions).flatten(2).transpose(1, 2), **FLOAT64_TOLERANCE)
    torch.testing.assert_close(
        lookup, patches.flatten(2).transpose(1, 2) + emb.lookup_position_embeddings, **FLOAT64_TOLERANCE
    )


# ----------------------------------------------------------------------------------------------------- block math
def _reference_layer(layer, lookup, compressed, heads):
    """One LookupViT block written out by hand (float64): gather with logits S, the DINOv2 layer, scatter with
    softmax over the compressed axis of S^T, lookup MLP. LayerScale is 1 and drop path is off in the test config."""

    def split(x):
        return x.view(*x.shape[:2], heads, -1).transpose(1, 2)

    def merge(x):
        return x.transpose(1, 2).flatten(2)

    g = layer.gather
    q = split(g.q_proj(layer.gather_norm_compressed(compressed)))
    lookup_normed = layer.gather_norm_lookup(lookup)
    k, v = split(g.k_proj(lookup_normed)), split(g.v_proj(lookup_normed))
    logits = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5  # (B, h, M, N), computed once
    compressed = compressed + g.o_proj(merge(logits.softmax(-1) @ v))
    compressed = layer.compressed_layer(compressed)
    s = layer.scatter
    values = split(s.v_proj(layer.scatter_norm(compressed)))
    lookup = lookup + s.o_proj(merge(logits.transpose(-1, -2).softmax(-1) @ values))
    mlp = layer.lookup_mlp
    lookup = lookup + mlp.fc2(F.gelu(mlp.fc1(layer.lookup_mlp_norm(lookup))))
    return lookup, compressed


def test_block_matches_hand_written_reference_float64():
    model = tiny(LookupViTModel).double()
    layer = model.encoder.layer[0]
    lookup, compressed = torch.randn(2, 64, 32, dtype=torch.float64), torch.randn(2, 9, 32, dtype=torch.float64)
    with torch.no_grad():
        got_lookup, got_compressed, _ = layer(lookup, compressed)
        want_lookup, want_compressed = _reference_layer(layer, lookup, compressed, heads=2)
    torch.testing.assert_close(got_lookup, want_lookup, **FLOAT64_TOLERANCE)
    torch.testing.assert_close(got_compressed, want_compressed, **FLOAT64_TOLERANCE)


def test_scatter_computes_no_second_qk_and_saves_those_flops():
    """Per module: the scatter step's matmuls are exactly `P^T V` (2 N M D) plus its v / o projections; the gather
    step's are `Q K^T` and `P V`. The scatter reads the gather's logits: feeding it other logits changes its output."""
    model = tiny(LookupViTModel)
    batch, n, m, d = 2, 64, 9, 32
    counter = counted_flops(model, torch.randn(batch, 3, 112, 112), compressed_grid=3)
    counts = {name: sum(v.values()) for name, v in counter.get_flop_counts().items()}
    for i in range(2):
        prefix = f"LookupViTModel.encoder.layer.{i}"
        scatter_matmuls = {str(op): f for op, f in counter.get_flop_counts()[f"{prefix}.scatter"].items()}
        assert scatter_matmuls["aten.bmm"] == batch * 2 * n * m * d  # one (N x M) @ (M x d) per head, no Q K^T
        assert counts[f"{prefix}.scatter"] == batch * (2 * m * d * d + 2 * n * m * d + 2 * n * d * d)
        assert counts[f"{prefix}.gather"] == batch * (2 * 2 * m * d * d + 2 * 2 * n * d * d + 2 * 2 * m * n * d)
    analytic = lookupvit_flops(model.config, 112, compressed_grid=3, mode="dense", batch_size=batch)
    assert analytic.scatter_saved == 2 * batch * 2 * n * m * d  # what a second Q K^T in each of the 2 blocks costs
    assert analytic.scatter == sum(counts[f"LookupViTModel.encoder.layer.{i}.scatter"] for i in range(2))

    scatter = model.encoder.layer[0].scatter
    compressed = torch.randn(1, m, d)
    logits = torch.randn(1, 2, m, n)
    with torch.no_grad():
        assert not torch.allclose(scatter(compressed, logits), scatter(compressed, logits.flip(-1)))


# ----------------------------------------------------------------------------------------------------- FLOPs
@pytest.mark.parametrize("mode", ["cls", "dense"])
@pytest.mark.parametrize("grid", [2, (3, 2), 4])
def test_analytic_flops_equal_flop_counter(grid, mode):
    cls = LookupViTForImageClassification if mode == "cls" else LookupViTForSemanticSegmentation
    model = tiny(cls, num_labels=3, use_swiglu_ffn=mode == "dense")
    measured = counted_flops(model, torch.randn(2, 3, 112, 140), compressed_grid=grid).get_total_flops()
    analytic = lookupvit_flops(model.config, (112, 140), compressed_grid=grid, mode=mode, batch_size=2, num_labels=3)
    # integer counts of the same matmuls: equal (norms, softmax, resizes are not counted by either)
    assert analytic.total == measured


def test_flexible_compute_one_model_three_grids():
    """One model, three grids: the outputs change with the grid, the FLOPs fall as it shrinks, and training draws
    grids from `compressed_grids` while eval uses `compressed_grid`."""
    model = tiny(LookupViTForImageClassification, num_labels=4)
    pixel_values = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        logits = {g: model(pixel_values, compressed_grid=g).logits for g in GRIDS}
    for a, b in [(2, 3), (3, 4), (2, 4)]:
        # random tiny weights give logits of about 1e-1; float32 noise would be < 1e-5
        assert (logits[a] - logits[b]).abs().max() > 1e-4
    flops = [counted_flops(model, pixel_values, compressed_grid=g).get_total_flops() for g in GRIDS]
    assert flops[0] < flops[1] < flops[2]
    full = vit_flops_like(model.config, 112, batch_size=2)
    assert flops[2] < full

    with torch.no_grad():
        assert model(pixel_values).compressed_grid[0].tolist() == [4, 4]  # eval default
        model.train()
        torch.manual_seed(0)
        drawn = {tuple(model(pixel_values).compressed_grid[0].tolist()) for _ in range(12)}
    assert drawn == {(2, 2), (3, 3), (4, 4)}  # 12 uniform draws over 3 grids, seeded


# ------------------------------------------------------------------------------------------ attention / training
def test_eager_equals_sdpa_float64():
    eager = tiny(LookupViTForSemanticSegmentation, num_labels=3).double()
    sdpa = tiny(LookupViTForSemanticSegmentation, attn_implementation="sdpa", num_labels=3).double()
    sdpa.load_state_dict(eager.state_dict())
    assert sdpa.config._attn_implementation == "sdpa"
    pixel_values = torch.randn(2, 3, 112, 112, dtype=torch.float64)
    with torch.no_grad():
        a = eager(pixel_values, compressed_grid=3, output_hidden_states=True)
        b = sdpa(pixel_values, compressed_grid=3, output_hidden_states=True)
    torch.testing.assert_close(a.logits, b.logits, **FLOAT64_TOLERANCE)
    torch.testing.assert_close(a.hidden_states[-1], b.hidden_states[-1], **FLOAT64_TOLERANCE)


def test_gradient_checkpointing_gives_the_same_gradients():
    def grads(checkpointing: bool):
        torch.manual_seed(0)
        model = tiny(LookupViTForImageClassification, num_labels=3).double().train()
        if checkpointing:
            model.activation_checkpointing_enable(every_n_layers=2)
            assert [b.gradient_checkpointing for b in model.lookupvit.encoder.layer] == [True, False]
            model.activation_checkpointing_enable()
            blocks = model.lookupvit.encoder.layer
            assert [(b.gradient_checkpointing, b.compressed_layer.gradient_checkpointing) for b in blocks] == [
                (True, False)
            ] * 2  # whole blocks, not also the DINOv2 layer inside
        pixel_values = torch.randn(2, 3, 112, 112, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        model(pixel_values, labels=torch.tensor([0, 2]), compressed_grid=3).loss.backward()
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}, frozen

    (plain, frozen), (checkpointed, _) = grads(False), grads(True)
    # the classifier never reads the last block's lookup update nor the lookup final norm: frozen, not computed
    unused = ("scatter_norm.", "scatter.", "scatter_layer_scale.", "lookup_mlp_norm.", "lookup_mlp.")
    unused = tuple(f"lookupvit.encoder.layer.1.{name}" for name in (*unused, "lookup_mlp_layer_scale.")) + (
        "lookupvit.lookup_layernorm.",
    )
    names = {n for n, _ in tiny(LookupViTForImageClassification, num_labels=3).named_parameters()}
    assert frozen == {n for n in names if n.startswith(unused)} and len(frozen) == 16
    assert plain.keys() == checkpointed.keys()
    assert all(g is not None for g in plain.values())  # every trainable parameter gets a gradient
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], **FLOAT64_TOLERANCE, msg=name)


@pytest.mark.parametrize("cls", [LookupViTForImageClassification, LookupViTForSemanticSegmentation])
def test_every_trainable_parameter_gets_a_gradient_and_frozen_ones_stay_frozen(tmp_path, cls):
    model = tiny(cls, num_labels=3).train()
    labels = torch.tensor([0, 2]) if cls is LookupViTForImageClassification else torch.randint(3, (2, 112, 112))
    model(torch.randn(2, 3, 112, 112), labels=labels).loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(p.grad is not None for n, p in model.named_parameters() if n in trainable)
    model.save_pretrained(tmp_path)
    loaded = cls.from_pretrained(tmp_path)
    assert {n for n, p in loaded.named_parameters() if p.requires_grad} == trainable


# ------------------------------------------------------------------------------------- save / load / pipelines
def test_config_round_trip_and_auto_classes(tmp_path):
    config = tiny_config(compressed_grids=[2, (3, 2)], num_labels=2)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, LookupViTConfig)
    assert loaded.compressed_grids == [[2, 2], [3, 2]] and loaded.compressed_grid == [4, 4]
    assert loaded.position_grid == (4, 4)
    assert {k: v for k, v in loaded.to_dict().items() if k != "_name_or_path"} == {
        k: v for k, v in config.to_dict().items() if k != "_name_or_path"
    }


def test_values_changed_after_construction_are_checked_when_saving(tmp_path):
    config = tiny_config()
    config.compressed_grids = [2, 12]
    with pytest.raises(StrictDataclassClassValidationError, match=r"compressed_grids\[1\]` 12x12 is larger than"):
        config.save_pretrained(tmp_path)


def _save(tmp_path, cls, **kwargs):
    model = tiny(cls, **kwargs)
    model.save_pretrained(tmp_path)
    lookupvit_image_processor(model.config).save_pretrained(tmp_path)
    return model


def test_image_classification_pipeline_equals_manual_forward(tmp_path, photos):
    labels = {0: "cat", 1: "dog", 2: "bird"}
    model = _save(tmp_path, LookupViTForImageClassification, num_labels=3, id2label=labels)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, LookupViTForImageClassification)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    image = Image.fromarray(photos["chelsea"])
    classifier = pipeline("image-classification", model=str(tmp_path))
    assert isinstance(classifier.image_processor, BeitImageProcessor)
    scores = classifier(image, top_k=3)
    with torch.no_grad():
        inputs = lookupvit_image_processor(model.config)(image, return_tensors="pt")
        assert inputs["pixel_values"].shape == (1, 3, 112, 112)
        probs = model(**inputs).logits.softmax(-1)[0]
    # same logits, softmaxed by two float32 implementations: each probability within (n + 3) EPS32 for n = 3 classes
    for entry in scores:
        class_id = {v: k for k, v in labels.items()}[entry["label"]]
        assert entry["score"] == pytest.approx(probs[class_id].item(), abs=6 * EPS32)


def test_image_segmentation_pipeline_equals_manual_forward(tmp_path, photos):
    labels = {0: "background", 1: "cat", 2: "sky"}
    model = _save(tmp_path, LookupViTForSemanticSegmentation, num_labels=3, id2label=labels)
    assert isinstance(AutoModelForSemanticSegmentation.from_pretrained(tmp_path), LookupViTForSemanticSegmentation)
    image = Image.fromarray(photos["coffee"])
    result = pipeline("image-segmentation", model=str(tmp_path))(image)
    with torch.no_grad():
        logits = model(**lookupvit_image_processor(model.config)(image, return_tensors="pt")).logits
    size = (image.height, image.width)
    expected = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)[0].argmax(0)
    # the pipeline post-processes with the same resize and argmax on the same logits: exact
    assert {r["label"] for r in result} == {labels[i] for i in expected.unique().tolist()}
    for r in result:
        class_id = {v: k for k, v in labels.items()}[r["label"]]
        np.testing.assert_array_equal(np.array(r["mask"]) > 0, (expected == class_id).numpy())


@pytest.mark.slow
def test_trust_remote_code_load_without_package(tmp_path):
    """A saved folder loads in a fresh process that never imports lookwhere_hf (code copied next to the weights)."""
    model = _save(tmp_path / "model", LookupViTForSemanticSegmentation, num_labels=3)
    assert (tmp_path / "model" / "modeling_lookupvit.py").exists()
    pixel_values = torch.randn(1, 3, 112, 112)
    torch.save(pixel_values, tmp_path / "x.pt")
    with torch.no_grad():
        expected = model(pixel_values, compressed_grid=2).logits
    script = textwrap.dedent(
        f"""
        import sys, torch
        from transformers import AutoModelForSemanticSegmentation
        torch.set_num_threads({torch.get_num_threads()})  # the parent's thread count: the same kernels, bit-identical
        model = AutoModelForSemanticSegmentation.from_pretrained(
            {str(tmp_path / "model")!r}, trust_remote_code=True, attn_implementation="eager"
        )
        assert "lookwhere_hf" not in sys.modules, "lookwhere_hf was imported"
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        with torch.no_grad():
            logits = model.eval()(torch.load({str(tmp_path / "x.pt")!r}), compressed_grid=2).logits
        torch.save(logits, {str(tmp_path / "logits.pt")!r})
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.equal(torch.load(tmp_path / "logits.pt"), expected)


# -------------------------------------------------------------------------------------- from_vit / from_dinov2
def _new_parameter(name: str) -> bool:
    """Parameters `from_vit` / `from_dinov2` say they initialise fresh (not copied)."""
    parts = ("gather", "scatter", "lookup_mlp", "classifier")
    return any(f".{p}" in f".{name}" for p in parts)


def test_from_vit_copies_what_it_says():
    vit_config = ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=96, image_size=112, patch_size=14
    )
    vit = ViTForImageClassification(vit_config).eval()  # a task model: its `.vit` backbone is used
    with torch.no_grad():
        for p in vit.parameters():  # no parameter left at a constant init (LayerNorm 1 / 0) that would match anything
            p.add_(torch.randn_like(p) * 0.1)
    model = LookupViTForImageClassification.from_vit(vit, compressed_grid=3, compressed_grids=[2, 3], num_labels=4)
    config, body, state = model.config, model.lookupvit, vit.vit.state_dict()
    assert (config.mlp_ratio, config.layer_norm_eps, config.layerscale_value) == (3.0, vit_config.layer_norm_eps, 1.0)
    emb = body.embeddings
    assert torch.equal(emb.patch_embeddings.projection.weight, state["embeddings.patch_embeddings.projection.weight"])
    assert torch.equal(emb.lookup_position_embeddings, state["embeddings.position_embeddings"][:, 1:])
    assert emb.compressed_position_embeddings.shape == (1, 9, 32)
    assert torch.equal(body.layernorm.weight, state["layernorm.weight"])
    assert torch.equal(body.lookup_layernorm.bias, state["layernorm.bias"])
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    for ours, theirs in zip(body.encoder.layer, vit.vit.layers):
        # the compressed stream's layer is the ViT layer: same function, computed in float64
        torch.testing.assert_close(ours.compressed_layer.double()(x), theirs.double()(x), **FLOAT64_TOLERANCE)
    copied = {
        n for n, p in model.named_parameters() if any(torch.equal(p, t) for t in state.values() if t.shape == p.shape)
    }
    fresh = {n for n, _ in model.named_parameters() if _new_parameter(n)}
    # every parameter is either copied or one of the new ones, and none of the new ones is a copy
    assert copied | fresh == {n for n, _ in model.named_parameters()} - {
        "lookupvit.embeddings.lookup_position_embeddings",  # checked above (the CLS slot is dropped)
        "lookupvit.embeddings.compressed_position_embeddings",  # resized
        *(f"lookupvit.encoder.layer.{i}.compressed_layer.layer_scale{j}.lambda1" for i in range(2) for j in (1, 2)),
    }
    assert not copied & fresh


def test_from_dinov2_copies_what_it_says(tmp_path):
    config = Dinov2WithRegistersConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=112,
        patch_size=14,
        num_register_tokens=2,
        layerscale_value=0.3,
        use_swiglu_ffn=True,
    )
    dinov2 = Dinov2WithRegistersModel(config).eval()
    dinov2.save_pretrained(tmp_path)  # loaded back from the path
    model = LookupViTModel.from_dinov2(str(tmp_path), compressed_grid=4)
    assert model.config.use_swiglu_ffn and model.config.layerscale_value == 0.3
    state = dinov2.state_dict()
    for name, tensor in model.state_dict().items():
        if name.startswith("encoder.layer.") and ".compressed_layer." in name:
            source = name.replace(".compressed_layer.", ".")
            assert torch.equal(tensor, state[source]), name
    assert torch.equal(model.embeddings.lookup_position_embeddings, state["embeddings.position_embeddings"][:, 1:])
    patch_pos = state["embeddings.position_embeddings"][:, 1:].reshape(1, 8, 8, 32).permute(0, 3, 1, 2)
    resized = F.interpolate(patch_pos, size=(4, 4), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
    torch.testing.assert_close(model.embeddings.compressed_position_embeddings, resized, rtol=0, atol=0)
    assert torch.equal(model.layernorm.weight, state["layernorm.weight"])
    with pytest.raises(ValueError, match="Expected a transformers model of type vit"):
        LookupViTModel.from_vit(dinov2)
    with pytest.raises(ValueError, match=r"`patch_size` must be the backbone's \(14\)"):
        LookupViTModel.from_dinov2(dinov2, patch_size=16, image_size=112)
    # another image size: the lookup position embeddings are resized to its 10 x 10 grid
    larger = LookupViTModel.from_dinov2(dinov2, image_size=140, compressed_grid=4)
    expected = F.interpolate(patch_pos, size=(10, 10), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
    torch.testing.assert_close(larger.embeddings.lookup_position_embeddings, expected, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"compressed_grid": 9}, "larger than the lookup token grid 8x8"),
        ({"compressed_grids": [2, (3, 9)]}, r"compressed_grids\[1\]` 3x9 is larger than the lookup token grid"),
        ({"compressed_grids": []}, "non-empty list"),
        ({"compressed_grids": [2, 3, 2]}, "lists 2x2 twice"),
        ({"compressed_grids": [2, 0]}, r"compressed_grids\[1\]` must have sizes >= 1"),
        ({"compressed_grids": [2.5]}, "int s"),
        ({"compressed_grid": True}, "int s"),
        ({"compressed_grid": (2, 2, 2)}, r"\(height, width\) pair"),
        ({"image_size": 100}, "multiple of `patch_size`"),
        ({"num_attention_heads": 5}, "divisible by `num_attention_heads`"),
        ({"lookup_mlp_ratio": 0}, "lookup_mlp_ratio"),
        ({"drop_path_rate": 1.0}, "drop_path_rate"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**kwargs)


@pytest.mark.parametrize(
    "make_input, kwargs, match",
    [
        (lambda: torch.randn(1, 3, 42, 42), {}, "4x4 is larger than the lookup token grid 3x3"),
        (lambda: torch.randn(1, 3, 112, 112), {"compressed_grid": (2, 9)}, "2x9 is larger than the lookup token grid"),
        (lambda: torch.randn(1, 3, 112, 112), {"compressed_grid": 0}, "sizes >= 1"),
        (lambda: torch.randn(1, 3, 110, 112), {}, "multiples of the patch size 14"),
        (lambda: torch.randn(1, 4, 112, 112), {}, "3 channels"),
        (lambda: torch.randn(0, 3, 112, 112), {}, "empty batch"),
        (lambda: torch.randn(3, 112, 112), {}, r"shape \(batch_size, 3, height, width\)"),
    ],
)
def test_forward_validation(make_input, kwargs, match):
    model = tiny(LookupViTModel)
    with pytest.raises(ValueError, match=match):
        model(make_input(), **kwargs)
