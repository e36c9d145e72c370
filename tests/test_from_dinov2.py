"""`LookWherePreTrainedModel.from_dinov2`: a LookWhere initialized from a transformers DINOv2(-with-registers) model.

With every patch kept and its own (teacher) CLS/register inputs, the initialized extractor must reproduce the
teacher's final outputs; the selector must hold the teacher's first layers.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

from lookwhere_hf import LookWhereForImageClassification, LookWhereModel

BACKBONE = dict(
    hidden_size=64, num_attention_heads=2, num_hidden_layers=3, patch_size=14, image_size=70, layerscale_value=1.0
)


@torch.no_grad()
def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Random values for every parameter (LayerScale, biases, tokens, position embeddings too) so the test can fail."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if "layer_scale" in name:
            value = 0.2 + torch.rand(param.shape, generator=generator)
        elif ("norm" in name) and name.endswith("weight"):
            value = 1.0 + 0.2 * torch.randn(param.shape, generator=generator)
        elif param.ndim <= 1 or name.startswith("embeddings.") and "projection" not in name:
            value = 0.3 * torch.randn(param.shape, generator=generator)
        else:
            value = torch.randn(param.shape, generator=generator) / math.sqrt(math.prod(param.shape[1:]))
        param.copy_(value)


def _teacher(kind: str, swiglu: bool = False):
    if kind == "registers":
        config = Dinov2WithRegistersConfig(**BACKBONE, num_register_tokens=4, use_swiglu_ffn=swiglu)
        model = Dinov2WithRegistersModel(config)
    else:
        config = Dinov2Config(**BACKBONE, use_swiglu_ffn=swiglu)
        model = Dinov2Model(config)
    _randomize(model, seed=7)
    return model.eval()


def _extractor_reproduces_teacher(lookwhere: LookWhereModel, teacher, pixel_values) -> float:
    """Max abs difference between the extractor (all patches, its own prefix tokens) and the teacher's last state.

    Computed in float64 on copies of both models, so FLOAT64_TOLERANCE bounds it. The extractor's CLS is the
    teacher's CLS + CLS position embedding, added once in float32 when it was built: one correctly rounded sum, so it
    equals the float64 sum rounded; the float64 comparison feeds that unrounded sum.
    """
    lookwhere, teacher = copy.deepcopy(lookwhere).double(), copy.deepcopy(teacher).double()
    pixel_values = pixel_values.double()
    grid = pixel_values.shape[-1] // 14
    indices = torch.arange(grid * grid).expand(pixel_values.shape[0], -1)
    own_prefix = lookwhere.extractor.embeddings.prefix_tokens(pixel_values.shape[0])
    emb = teacher.embeddings
    tokens = [emb.cls_token + emb.position_embeddings[:, :1]]
    tokens += [emb.register_tokens] if hasattr(emb, "register_tokens") else []
    prefix = torch.cat(tokens, dim=1).expand(pixel_values.shape[0], -1, -1)
    assert torch.equal(own_prefix.float(), prefix.float())
    with torch.no_grad():
        ours, _ = lookwhere.extractor(pixel_values, indices, prefix)
        theirs = teacher(pixel_values).last_hidden_state
    assert ours.shape == theirs.shape
    return float((ours - theirs).abs().max())


@pytest.mark.parametrize(
    "kind, swiglu",
    [("registers", False), ("registers", True), ("plain", False)],
    ids=["dinov2-with-registers", "dinov2-with-registers-swiglu", "dinov2"],
)
def test_extractor_reproduces_teacher(kind, swiglu):
    teacher = _teacher(kind, swiglu)
    model = LookWhereModel.from_dinov2(teacher, selector_depth=2, low_res_size=42, k_ratio=0.5).eval()
    pixel_values = torch.randn(2, 3, 70, 70)
    # outputs after the final LayerNorm are O(1): FLOAT64_TOLERANCE's atol + rtol * O(1) <= 1e-8
    assert _extractor_reproduces_teacher(model, teacher, pixel_values) <= 1e-8

    # The configuration follows the teacher.
    config = model.config
    assert config.extractor_config.num_hidden_layers == 3 and config.selector_config.num_hidden_layers == 2
    assert config.num_prefix_tokens == (5 if kind == "registers" else 1)
    assert config.high_res_size == 70 and config.low_res_size == 42 and config.k_ratio == 0.5
    assert config.extractor_config.use_swiglu_ffn == swiglu

    # The selector holds the teacher's first layers (exact copies), its norm and patch embedding.
    teacher_state = teacher.state_dict()
    for i, layer in enumerate(model.selector.encoder.layer):
        for name, tensor in layer.state_dict().items():
            assert torch.equal(tensor, teacher_state[f"encoder.layer.{i}.{name}"]), name
    assert torch.equal(model.selector.layernorm.weight, teacher_state["layernorm.weight"])
    assert torch.equal(
        model.selector.embeddings.patch_embeddings.projection.weight,
        teacher_state["embeddings.patch_embeddings.projection.weight"],
    )
    # ... with the CLS position embedding folded into the CLS token, and patch position embeddings resized 5x5 -> 3x3.
    expected_cls = teacher_state["embeddings.cls_token"] + teacher_state["embeddings.position_embeddings"][:, :1]
    assert torch.equal(model.selector.embeddings.cls_token, expected_cls)
    assert model.selector.embeddings.position_embeddings.shape == (1, 9, 64)


def test_teacher_from_path_and_task_head(tmp_path):
    """A saved teacher folder works too, and task models get the same body (plus their own classifier)."""
    teacher = _teacher("registers")
    teacher.save_pretrained(tmp_path / "teacher")
    model = LookWhereForImageClassification.from_dinov2(
        str(tmp_path / "teacher"), selector_depth=1, low_res_size=42, num_labels=3
    ).eval()
    assert model.classifier.out_features == 3
    assert _extractor_reproduces_teacher(model.lookwhere, teacher, torch.randn(1, 3, 70, 70)) <= 1e-8  # as above
    # The whole model runs end to end on a selection of the patches.
    with torch.no_grad():
        out = model(torch.randn(1, 3, 70, 70))
    assert out.logits.shape == (1, 3) and out.selected_indices.shape == (1, 2)


def test_rejects_other_models():
    with pytest.raises(ValueError, match="DINOv2"):
        LookWhereModel.from_dinov2(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="selector_depth"):
        LookWhereModel.from_dinov2(_teacher("registers"), selector_depth=4)
