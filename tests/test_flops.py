"""The analytic FLOPs of `lookwhere_hf.flops` against torch's FlopCounterMode on real forwards (eager attention)."""

import pytest
import torch
from conftest import make_tiny_config
from torch.utils.flop_counter import FlopCounterMode
from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

from lookwhere_hf import LookWhereConfig, LookWhereForImageClassification, LookWhereModel
from lookwhere_hf.flops import (
    dinov2_flops,
    flops_comparison,
    flops_table,
    format_flops,
    full_resolution_flops,
    lookwhere_flops,
    mlp_width,
)


def counted_flops(model, *args, **kwargs) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(*args, **kwargs)
    return counter.get_total_flops()


def medium_config(swiglu: bool = False) -> LookWhereConfig:
    """Wider than the tiny config, two registers, optionally a SwiGLU MLP."""
    return make_tiny_config(
        low_res=98,
        high_res=224,
        selector_depth=2,
        extractor_depth=3,
        backbone=dict(hidden_size=96, num_attention_heads=4, num_register_tokens=2, use_swiglu_ffn=swiglu),
    )


# name -> (config factory, high-res input (H, W), batch size, k_ratio)
CASES = {
    "tiny": (make_tiny_config, (112, 112), 2, 0.25),
    "tiny-non-square": (make_tiny_config, (112, 196), 1, 0.1),
    "medium": (medium_config, (224, 224), 2, 0.1),
    "medium-swiglu-upscaled": (lambda: medium_config(swiglu=True), (336, 336), 1, 0.05),
}


def _build(name):
    make, size, batch, k_ratio = CASES[name]
    config = make()
    config.k_ratio = k_ratio
    return config, size, batch


@pytest.mark.parametrize("mode", ["cls", "dense"])
@pytest.mark.parametrize("name", list(CASES))
def test_lookwhere_flops_match_flop_counter(name, mode):
    config, size, batch = _build(name)
    model = LookWhereModel._from_config(config, attn_implementation="eager").eval()
    pixel_values = torch.randn(batch, 3, *size)
    measured = counted_flops(model, pixel_values, output_dense_features=mode == "dense")
    analytic = lookwhere_flops(config, size, mode=mode, batch_size=batch)
    assert analytic.k == config.num_selected((size[0] // 14) * (size[1] // 14))
    assert analytic.total == pytest.approx(measured, rel=0.05)
    # the breakdown adds up and the spreading is only counted for dense outputs
    assert analytic.total == analytic.selector + analytic.extractor + analytic.spreading + analytic.classifier
    assert (analytic.spreading > 0) == (mode == "dense")


def test_classifier_head_flops_are_included():
    config = make_tiny_config(num_labels=7)
    model = LookWhereForImageClassification._from_config(config, attn_implementation="eager").eval()
    measured = counted_flops(model, torch.randn(2, 3, 112, 112))
    analytic = lookwhere_flops(config, 112, batch_size=2, num_labels=7)
    assert analytic.classifier == 2 * 2 * 32 * 7
    assert analytic.total == pytest.approx(measured, rel=0.05)


@pytest.mark.parametrize("size,swiglu", [((224, 224), False), ((168, 252), True)])
def test_dinov2_flops_match_flop_counter(size, swiglu):
    config = Dinov2WithRegistersConfig(
        hidden_size=96,
        num_attention_heads=4,
        num_hidden_layers=2,
        patch_size=14,
        image_size=224,
        num_register_tokens=4,
        use_swiglu_ffn=swiglu,
    )
    config._attn_implementation = "eager"
    model = Dinov2WithRegistersModel(config).eval()
    measured = counted_flops(model, torch.randn(2, 3, *size))
    assert dinov2_flops(config, size, batch_size=2) == pytest.approx(measured, rel=0.05)


def test_release_size_flops_ratios():
    """ViT-B/14 release layout: the FLOPs ratios the issue quotes (about 9.8x at 518 px and 18x at 1036 px, k = 10%)."""
    config = LookWhereConfig()
    ratio_518 = full_resolution_flops(config, 518) / lookwhere_flops(config, 518, k_ratio=0.1).total
    ratio_1036 = full_resolution_flops(config, 1036) / lookwhere_flops(config, 1036, k_ratio=0.1).total
    assert ratio_518 == pytest.approx(9.8, abs=0.05)
    assert ratio_1036 == pytest.approx(18.3, abs=0.1)
    assert lookwhere_flops(config, 1036, k_ratio=0.1).k == 547
    # full DINOv2-reg ViT-B/14 at 518 px: ~304 GFLOPs (2 x ~152 GMACs)
    assert full_resolution_flops(config, 518) == pytest.approx(304.2e9, rel=1e-3)
    assert format_flops(3.1e10) == "31.00 GFLOPs"


def test_flops_comparison_by_hand():
    """The model cards' comparison follows the stated convention: the full ViT-B/14 at 518 px written out by hand."""
    config = LookWhereConfig()
    f = flops_comparison(config, 518, 0.1)
    n, d = 1369 + 5, 768
    full = 2 * 1369 * 3 * 14 * 14 * d + 12 * (2 * n * (4 * d * d + 2 * d * 3072) + 4 * n * n * d)
    assert f["full"] == full and f["k"] == 136 and f["num_patches"] == 1369
    assert f["lookwhere"] == f["selector"] + f["extractor"] == lookwhere_flops(config, 518, k_ratio=0.1).total
    assert f["reduction"] == f["full"] / f["lookwhere"]
    table = flops_table(config, resolutions=(518,), k_ratios=(0.1,)).splitlines()
    assert len(table) == 3 and table[2].startswith("| 518x518 | 0.1 | 136 / 1369 |")
    assert f"| {full / 1e9:.1f} | {full / f['lookwhere']:.1f}x |" in table[2]


@pytest.mark.parametrize("hidden,ratio", [(768, 4), (128, 4), (96, 3), (64, 2)])
def test_mlp_width_is_what_transformers_builds(hidden, ratio):
    from transformers.models.dinov2_with_registers.modeling_dinov2_with_registers import (
        Dinov2WithRegistersMLP,
        Dinov2WithRegistersSwiGLUFFN,
    )

    config = Dinov2WithRegistersConfig(hidden_size=hidden, num_attention_heads=1, mlp_ratio=ratio)
    assert mlp_width(hidden, ratio) == Dinov2WithRegistersMLP(config).fc1.out_features
    assert mlp_width(hidden, ratio, use_swiglu_ffn=True) == Dinov2WithRegistersSwiGLUFFN(config).gate_proj.out_features
    assert mlp_width(768, 4, use_swiglu_ffn=True) == 2048  # Franca's ViT-B MLP


def test_bad_arguments_are_rejected():
    config = make_tiny_config()
    with pytest.raises(ValueError, match="multiple of the patch size"):
        lookwhere_flops(config, 100)
    with pytest.raises(ValueError, match="k_ratio"):
        lookwhere_flops(config, 112, k_ratio=1.5)
    with pytest.raises(ValueError, match="mode"):
        lookwhere_flops(config, 112, mode="segmentation")
    with pytest.raises(ValueError, match="between 1 and"):
        lookwhere_flops(config, 112, k=65)
