"""Conversion of official LookWhere checkpoints: numerical parity with a timm-based reference, and clear errors.

The official checkpoints are timm `vit_base_patch14_reg4_dinov2`-style state dicts. Here we build checkpoints in
exactly that format from timm's own `VisionTransformer` with random weights (small widths/depths), compute the
LookWhere forward directly with those timm modules following DESIGN.md section 2 step by step, convert with
`convert_lookwhere_original_to_hf`, load the folder with `LookWhereModel.from_pretrained`, and compare.
"""

from __future__ import annotations

import copy
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import EPS32, FLOAT64_TOLERANCE, assert_top_k_margin
from torch import nn

timm = pytest.importorskip("timm")
from timm.layers import SwiGLUPacked  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

from lookwhere_hf import LookWhereModel  # noqa: E402
from lookwhere_hf.models.lookwhere.convert_lookwhere_original_to_hf import (  # noqa: E402
    ConversionError,
    convert_checkpoint,
    main,
    mlp_ratio_for,
)

PATCH = 14
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

# Two official-format variants. "dinov2": GELU MLP, 4 registers, extractor trained at 112 (grid 8), selector at 56
# (grid 4) -> r = ceil(8/4) = 2 and the 8x8 head map needs no resize at 112. "franca": packed SwiGLU, no registers,
# extractor at 126 (grid 9) -> r = ceil(9/4) = 3, a 12x12 head map bilinearly resized to 9x9.
VARIANTS = {
    "dinov2": dict(
        dim=128,
        heads=2,
        low=56,
        high=112,
        sel_depth=2,
        ext_depth=2,
        regs=4,
        swiglu=False,
        sizes=[(112, 112), (154, 154), (112, 140)],
    ),
    "franca": dict(
        dim=128,
        heads=2,
        low=56,
        high=126,
        sel_depth=2,
        ext_depth=2,
        regs=0,
        swiglu=True,
        sizes=[(126, 126), (98, 98), (140, 112)],
    ),
}
K_RATIO = 0.25
NUM_NEIGHBORS = 5


# ---------------------------------------------------------------------------------------------- official format
class OfficialSelectorHead(nn.Module):
    """The official selector head: Linear(D, 4D) -> exact GELU -> Linear(4D, r*r), parameters named w1 / w2."""

    def __init__(self, dim: int, num_outputs: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, 4 * dim)
        self.w2 = nn.Linear(4 * dim, num_outputs)

    def forward(self, x):
        return self.w2(F.gelu(self.w1(x)))


def make_timm_vit(img_size: int, depth: int, dim: int, heads: int, regs: int, swiglu: bool) -> VisionTransformer:
    """A timm ViT laid out like vit_base_patch14_reg4_dinov2 (patch-only pos_embed, LayerScale, CLS + registers)."""
    kwargs = dict(
        img_size=img_size,
        patch_size=PATCH,
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        num_classes=0,
        class_token=True,
        no_embed_class=True,
        reg_tokens=regs,
        init_values=1.0,
        dynamic_img_size=False,
    )
    if swiglu:
        # Franca: timm SwiGLUPacked with fc1 packing both halves; pick the width transformers builds for mlp_ratio=4.
        half = (int(int(dim * 4) * 2 / 3) + 7) // 8 * 8
        kwargs.update(mlp_layer=SwiGLUPacked, act_layer=nn.SiLU, mlp_ratio=2 * half / dim)
    return VisionTransformer(**kwargs).eval()


@torch.no_grad()
def randomize_(module: nn.Module, generator: torch.Generator) -> None:
    """Random weights everywhere, including LayerScale gammas, biases, norms, CLS/register tokens and pos_embed."""
    for name, param in module.named_parameters():
        shape = param.shape
        if name.endswith("gamma"):
            value = 0.2 + torch.rand(shape, generator=generator)
        elif "norm" in name and name.endswith("weight"):
            value = 1.0 + 0.2 * torch.randn(shape, generator=generator)
        elif name.endswith("bias"):
            value = 0.1 * torch.randn(shape, generator=generator)
        elif name in ("cls_token", "reg_token", "pos_embed"):
            value = 0.5 * torch.randn(shape, generator=generator)
        else:
            fan_in = math.prod(shape[1:])
            value = torch.randn(shape, generator=generator) / math.sqrt(fan_in)
        param.copy_(value)


def build_official(variant: str, seed: int = 0):
    """Random official-format modules: (selector ViT, selector head, extractor ViT)."""
    v = VARIANTS[variant]
    generator = torch.Generator().manual_seed(seed)
    selector = make_timm_vit(v["low"], v["sel_depth"], v["dim"], v["heads"], v["regs"], v["swiglu"])
    extractor = make_timm_vit(v["high"], v["ext_depth"], v["dim"], v["heads"], v["regs"], v["swiglu"])
    r = math.ceil((v["high"] // PATCH) / (v["low"] // PATCH))
    head = OfficialSelectorHead(v["dim"], r * r).eval()
    for module in (selector, head, extractor):
        randomize_(module, generator)
    return selector, head, extractor


def official_checkpoint(selector, head, extractor) -> dict:
    return {
        "selector": {"backbone": selector.state_dict(), "head": head.state_dict()},
        "extractor": extractor.state_dict(),
    }


# ---------------------------------------------------------------------------------------------- reference forward
def reference_spread(patch_tokens, indices, grid):
    """Dense features by the official formula in float64, with the pretraining's stable tie rule.

    Brute-force distances from every grid position to every selected one (columns in `indices` order, i.e. descending
    selector score), a STABLE argsort (equal distances: the earlier, higher-scored patch is nearer), the K nearest,
    weights `1 / (d + 1e-8)` normalized to sum one.

    Returns:
        `(dense, dense_scale)`, float64 `(B, G*G, D)`: the spread tokens and the spread of their absolute values (the
        magnitude that the float32 rounding of a weighted sum is relative to).
    """
    grid_h, grid_w = grid
    positions = torch.arange(grid_h * grid_w)
    all_xy = torch.stack((positions // grid_w, positions % grid_w), -1).double()
    dense, scale = [], []
    for b in range(patch_tokens.shape[0]):
        dist = ((all_xy[:, None, :] - all_xy[indices[b]][None, :, :]) ** 2).sum(-1).sqrt()  # (G*G, k)
        near = torch.argsort(dist, dim=1, stable=True)[:, :NUM_NEIGHBORS]
        w = 1.0 / (torch.gather(dist, 1, near) + 1e-8)
        w = (w / w.sum(-1, keepdim=True))[..., None]
        tokens = patch_tokens[b].double()[near]  # (G*G, K, D)
        dense.append((w * tokens).sum(1))
        scale.append((w * tokens.abs()).sum(1))
    return torch.stack(dense), torch.stack(scale)


@torch.no_grad()
def reference_forward(selector, head, extractor, pixel_values, low_res: int, pretrain_grid: int, k: int):
    """The LookWhere forward of DESIGN.md section 2, computed directly with the timm modules."""
    batch, _, height, width = pixel_values.shape
    grid_h, grid_w = height // PATCH, width // PATCH
    num_prefix = extractor.num_prefix_tokens

    # Selector: bilinear (no antialias) resize of the normalized high-res tensor, timm forward_features (norm incl.).
    low = F.interpolate(pixel_values, size=(low_res, low_res), mode="bilinear", align_corners=False, antialias=False)
    features = selector.forward_features(low)
    prefix, low_patches = features[:, :num_prefix], features[:, num_prefix:]
    low_grid = low_res // PATCH
    r = math.ceil(pretrain_grid / low_grid)
    scores = head(low_patches)  # (B, low_grid^2, r*r)
    # Low-res patch (h, w), sub-position (i, j) -> pixel (h*r + i, w*r + j).
    fine = torch.empty(batch, low_grid * r, low_grid * r, dtype=scores.dtype)
    for i in range(r):
        for j in range(r):
            fine[:, i::r, j::r] = scores[..., i * r + j].reshape(batch, low_grid, low_grid)
    if fine.shape[-2:] != (grid_h, grid_w):
        # in float32 whatever the modules' dtype, as the official code (and the model) do
        fine = F.interpolate(fine[:, None].float(), size=(grid_h, grid_w), mode="bilinear", align_corners=False)[:, 0]
        fine = fine.to(scores.dtype)
    selector_map = fine.reshape(batch, grid_h * grid_w)
    indices = torch.topk(selector_map, k, dim=1, largest=True, sorted=True).indices

    # Extractor: patch-embed all patches, add (resized) position embeddings, keep the top-k, prepend selector prefix.
    extractor.patch_embed.strict_img_size = False
    tokens = extractor.patch_embed(pixel_values)
    pos = extractor.pos_embed
    source_grid = math.isqrt(pos.shape[1])
    if (source_grid, source_grid) != (grid_h, grid_w):
        pos = pos.reshape(1, source_grid, source_grid, -1).permute(0, 3, 1, 2)
        pos = F.interpolate(pos.float(), size=(grid_h, grid_w), mode="bicubic", align_corners=False, antialias=False)
        pos = pos.to(extractor.pos_embed.dtype)  # resized in float32 as above
        pos = pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)
    tokens = tokens + pos
    kept = tokens[torch.arange(batch)[:, None], indices]
    out = extractor.norm(extractor.blocks(torch.cat((prefix, kept), dim=1)))
    patch_out = out[:, num_prefix:]

    dense, dense_scale = reference_spread(patch_out, indices, (grid_h, grid_w))
    return {
        "selector_map": selector_map,
        "indices": indices,
        "prefix": prefix,
        "cls": out[:, 0],
        "patch_tokens": patch_out,
        "dense": dense,
        "dense_scale": dense_scale,
        "low_patches": low_patches,
    }


def photo_batch(photos, height: int, width: int) -> torch.Tensor:
    """Two real photos, resized and ImageNet-normalized: (2, 3, height, width)."""
    images = []
    for name in ("astronaut", "coffee"):
        image = torch.from_numpy(photos[name]).permute(2, 0, 1)[None].float() / 255.0
        images.append(F.interpolate(image, size=(height, width), mode="bilinear", align_corners=False, antialias=True))
    return (torch.cat(images) - MEAN) / STD


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", params=sorted(VARIANTS))
def converted(request, tmp_path_factory):
    """(variant, timm modules, converted folder) for each official-format variant."""
    variant = request.param
    selector, head, extractor = build_official(variant, seed=1 if variant == "dinov2" else 2)
    root = tmp_path_factory.mktemp(f"lookwhere_{variant}")
    ckpt = root / f"lookwhere_{variant}.pt"
    torch.save(official_checkpoint(selector, head, extractor), ckpt)
    messages = []
    result = convert_checkpoint(ckpt, root / "hf", k_ratio=K_RATIO, variant=variant, log=messages.append)
    model = LookWhereModel.from_pretrained(root / "hf").eval()
    return {
        "variant": variant,
        "timm": (selector, head, extractor),
        "dir": root / "hf",
        "ckpt": ckpt,
        "result": result,
        "log": messages,
        "model": model,
    }


@pytest.fixture(scope="module")
def dinov2_checkpoint(tmp_path_factory):
    """A small official-format DINOv2 checkpoint dict and its file."""
    modules = build_official("dinov2", seed=3)
    path = tmp_path_factory.mktemp("ckpt") / "lookwhere_dinov2.pt"
    checkpoint = official_checkpoint(*modules)
    torch.save(checkpoint, path)
    return checkpoint, path


# ---------------------------------------------------------------------------------------------- parity
def test_converter_inferred_architecture(converted):
    v = VARIANTS[converted["variant"]]
    config = converted["result"].config
    assert converted["result"].variant == converted["variant"]
    for sub, depth, size in (
        (config.selector_config, v["sel_depth"], v["low"]),
        (config.extractor_config, v["ext_depth"], v["high"]),
    ):
        assert sub.hidden_size == v["dim"] and sub.num_attention_heads == v["heads"]
        assert sub.num_hidden_layers == depth and sub.image_size == size
        assert sub.num_register_tokens == v["regs"] and sub.use_swiglu_ffn == v["swiglu"]
    assert config.selector_upsample_factor == math.ceil((v["high"] // PATCH) / (v["low"] // PATCH))
    assert config.k_ratio == K_RATIO
    # The folder has the weights, config, processor config and a card, and the self-check ran on a real photo.
    files = set(converted["result"].files)
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md"} <= files
    check = converted["result"].self_check
    assert check["finite"] and check["max_abs_diff_vs_converted"] <= 1e-5
    assert check["pixel_values"] == (1, 3, v["high"], v["high"]) and check["low_res_pixel_values"] == (
        1,
        3,
        v["low"],
        v["low"],
    )
    assert any("Mapped all" in m for m in converted["log"]) and any("Self-check" in m for m in converted["log"])


@pytest.mark.parametrize("size_index", [0, 1, 2], ids=["pretrain-size", "other-size", "non-square"])
def test_parity_with_timm_reference(converted, photos, size_index):
    v = VARIANTS[converted["variant"]]
    height, width = v["sizes"][size_index]
    # float64 copies of both sides (the model loaded with LookWhereModel.from_pretrained from the converted folder):
    # they agree to FLOAT64_TOLERANCE except for the two resizes that run in float32 in both.
    selector, head, extractor = (copy.deepcopy(module).double() for module in converted["timm"])
    model = copy.deepcopy(converted["model"]).double()
    pixel_values = photo_batch(photos, height, width).double()
    num_patches = (height // PATCH) * (width // PATCH)
    k = int(K_RATIO * num_patches)

    ref = reference_forward(selector, head, extractor, pixel_values, v["low"], v["high"] // PATCH, k)
    with torch.no_grad():
        out = model(pixel_values, output_dense_features=True)

    P = 1 + v["regs"]
    assert out.selector_map.shape == (2, num_patches)
    # The map's float32 bilinear resize: the same kernel on inputs within one float32 rounding of each other (2 u),
    # plus <= 1 ulp per its 7 operations: <= 9 u max|map|.
    map_tolerance = 5 * EPS32 * ref["selector_map"].abs().max().item()
    assert (out.selector_map - ref["selector_map"]).abs().max() <= map_tolerance
    assert_top_k_margin(ref["selector_map"], k, 2 * map_tolerance, ordered=True)  # no near-tie can flip the selection
    assert torch.equal(out.selected_indices, ref["indices"])
    torch.testing.assert_close(out.selector_prefix_tokens, ref["prefix"], **FLOAT64_TOLERANCE)
    torch.testing.assert_close(out.selector_patch_tokens, ref["low_patches"], **FLOAT64_TOLERANCE)
    torch.testing.assert_close(out.pooler_output, ref["cls"], **FLOAT64_TOLERANCE)
    assert out.last_hidden_state.shape == (2, P + k, v["dim"])
    torch.testing.assert_close(out.last_hidden_state[:, P:], ref["patch_tokens"], **FLOAT64_TOLERANCE)

    # Dense features at EVERY position, tie positions included. (1) The spreading alone: the reference rule applied to
    # the model's own patch tokens; float32 weights and a K-term sum are within ~16 u (2e-6) of the spread magnitude.
    dense = out.dense_features.flatten(2).transpose(1, 2).double()  # (B, G*G, D)
    grid = (height // PATCH, width // PATCH)
    own_ref, own_scale = reference_spread(out.last_hidden_state[:, P:], out.selected_indices, grid)
    assert ((dense - own_ref).abs() / own_scale).max() <= 1e-5
    # (2) End to end: a convex combination of tokens moves by at most the largest token difference.
    token_diff = (out.last_hidden_state[:, P:] - ref["patch_tokens"]).abs().max().item()
    assert ((dense - ref["dense"]).abs() <= token_diff + 1e-5 * ref["dense_scale"]).all()


def test_reference_is_sensitive(converted, photos):
    """Guard against a vacuous parity test: perturbing one LayerScale gamma of the timm extractor moves the CLS."""
    v = VARIANTS[converted["variant"]]
    selector, head, extractor = converted["timm"]
    pixel_values = photo_batch(photos, v["high"], v["high"])
    k = int(K_RATIO * (v["high"] // PATCH) ** 2)
    base = reference_forward(selector, head, extractor, pixel_values, v["low"], v["high"] // PATCH, k)["cls"]
    gamma = extractor.blocks[-1].ls2.gamma
    saved = gamma.detach().clone()
    with torch.no_grad():
        gamma.mul_(1.5)
    try:
        moved = reference_forward(selector, head, extractor, pixel_values, v["low"], v["high"] // PATCH, k)["cls"]
    finally:
        with torch.no_grad():
            gamma.copy_(saved)
    assert (moved - base).abs().max() > 1e-2


def test_swiglu_split_matches_timm():
    """timm SwiGLUPacked = silu(first half of fc1) * second half: our gate_proj / up_proj split reproduces it."""
    from transformers import Dinov2WithRegistersConfig
    from transformers.models.dinov2_with_registers.modeling_dinov2_with_registers import Dinov2WithRegistersSwiGLUFFN

    dim = 64
    half = (int(int(dim * 4) * 2 / 3) + 7) // 8 * 8
    timm_mlp = SwiGLUPacked(in_features=dim, hidden_features=2 * half)
    randomize_(timm_mlp, torch.Generator().manual_seed(0))
    hf_mlp = Dinov2WithRegistersSwiGLUFFN(
        Dinov2WithRegistersConfig(hidden_size=dim, mlp_ratio=mlp_ratio_for(dim, half, True))
    )
    gate_w, up_w = timm_mlp.fc1.weight.chunk(2)
    gate_b, up_b = timm_mlp.fc1.bias.chunk(2)
    hf_mlp.load_state_dict(
        {
            "gate_proj.weight": gate_w,
            "gate_proj.bias": gate_b,
            "up_proj.weight": up_w,
            "up_proj.bias": up_b,
            "down_proj.weight": timm_mlp.fc2.weight,
            "down_proj.bias": timm_mlp.fc2.bias,
        }
    )
    x = torch.randn(3, 7, dim)
    with torch.no_grad():
        # float64 copies: one MLP by two operation orders agrees to FLOAT64_TOLERANCE
        ours, theirs = copy.deepcopy(hf_mlp).double()(x.double()), copy.deepcopy(timm_mlp).double()(x.double())
        torch.testing.assert_close(ours, theirs, **FLOAT64_TOLERANCE)
        swapped = torch.nn.functional.silu(x @ up_w.T + up_b) * (x @ gate_w.T + gate_b) @ timm_mlp.fc2.weight.T
        assert (swapped + timm_mlp.fc2.bias - timm_mlp(x)).abs().max() > 1e-2  # the order matters


def test_mlp_ratio_inference():
    assert mlp_ratio_for(768, 3072, swiglu=False) == 4.0
    assert mlp_ratio_for(768, 2048, swiglu=True) == 4.0  # Franca ViT-B: timm fc1 4096 = 2 x 2048
    for hidden, width in ((128, 344), (64, 176), (384, 1024)):
        ratio = mlp_ratio_for(hidden, width, swiglu=True)
        assert (int(int(hidden * ratio) * 2 / 3) + 7) // 8 * 8 == width
    with pytest.raises(ConversionError, match="cannot build"):
        mlp_ratio_for(768, 2050, swiglu=True)  # not a multiple of 8
    with pytest.raises(ConversionError, match="cannot build"):
        mlp_ratio_for(768, 3000, swiglu=False)  # no integer ratio


def test_num_attention_heads_override(tmp_path, photos):
    """Heads cannot be read off the weights: 64-dim heads are inferred, other layouts need num_attention_heads."""
    generator = torch.Generator().manual_seed(5)
    selector = make_timm_vit(56, 1, 64, 4, 4, False)
    extractor = make_timm_vit(112, 1, 64, 4, 4, False)
    head = OfficialSelectorHead(64, 4)
    for module in (selector, head, extractor):
        randomize_(module, generator)
    ckpt = tmp_path / "heads.pt"
    torch.save(official_checkpoint(selector, head, extractor), ckpt)
    wrong = convert_checkpoint(ckpt, tmp_path / "wrong", run_self_check=False, log=lambda m: None)
    assert wrong.config.extractor_config.num_attention_heads == 1
    result = convert_checkpoint(ckpt, tmp_path / "hf", num_attention_heads=4, log=lambda m: None)
    assert result.config.extractor_config.num_attention_heads == 4
    pixel_values = photo_batch(photos, 112, 112).double()  # float64 on both sides: FLOAT64_TOLERANCE
    ref = reference_forward(selector.double(), head.double(), extractor.double(), pixel_values, 56, 8, 6)
    # no near-tie, as in the parity test
    assert_top_k_margin(ref["selector_map"], 6, 10 * EPS32 * ref["selector_map"].abs().max().item())
    for folder, close in (("hf", True), ("wrong", False)):
        model = LookWhereModel.from_pretrained(tmp_path / folder).eval().double()
        with torch.no_grad():
            cls = model(pixel_values).pooler_output
        assert torch.allclose(cls, ref["cls"], **FLOAT64_TOLERANCE) == close


# ---------------------------------------------------------------------------------------------- the folder
def test_converted_folder_pipeline_and_card(converted, photos):
    from huggingface_hub import ModelCard
    from transformers import AutoModel, pipeline

    folder = converted["dir"]
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "image-feature-extraction"
    assert "lookwhere" in card.data.tags and card.data.base_model
    assert "sha256" in card.text and "arXiv:2505.18051" in card.text

    extractor = pipeline("image-feature-extraction", model=str(folder))
    from PIL import Image

    image = Image.fromarray(photos["chelsea"])
    pooled = torch.tensor(extractor(image, pool=True))
    model = AutoModel.from_pretrained(folder).eval()
    inputs = extractor.image_processor(images=image, return_tensors="pt")
    with torch.no_grad():
        expected = model(**inputs).pooler_output
    assert pooled.shape[-1] == VARIANTS[converted["variant"]]["dim"]
    assert torch.equal(pooled.reshape(expected.shape), expected)  # the same forward on the same input: bit-identical


@pytest.mark.slow
def test_cli_module_end_to_end(dinov2_checkpoint, tmp_path):
    _, path = dinov2_checkpoint
    out = tmp_path / "cli"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lookwhere_hf.models.lookwhere.convert_lookwhere_original_to_hf",
            "--checkpoint_path",
            str(path),
            "--output_dir",
            str(out),
            "--high_res",
            "140",
            "--k_ratio",
            "0.2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Mapped all" in proc.stdout and "Self-check" in proc.stdout and str(out) in proc.stdout
    from transformers import AutoConfig, AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(out)
    assert processor.size["height"] == 140 and processor.low_res_size["height"] == 56
    assert AutoConfig.from_pretrained(out).k_ratio == 0.2


# ---------------------------------------------------------------------------------------------- errors
def _convert(path, tmp_path, **kwargs):
    return convert_checkpoint(path, tmp_path / "out", run_self_check=False, log=lambda m: None, **kwargs)


def test_error_missing_and_not_torch(tmp_path):
    with pytest.raises(ConversionError, match="does not exist"):
        _convert(tmp_path / "nope.pt", tmp_path)
    (tmp_path / "converted").mkdir()
    (tmp_path / "converted" / "config.json").write_text("{}")
    with pytest.raises(ConversionError, match="is a directory.*already converted"):
        _convert(tmp_path / "converted", tmp_path)
    text = tmp_path / "notes.pt"
    text.write_text("this is not a checkpoint\n")
    with pytest.raises(ConversionError, match="not a PyTorch checkpoint"):
        _convert(text, tmp_path)


def test_error_truncated(dinov2_checkpoint, tmp_path):
    _, path = dinov2_checkpoint
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ConversionError, match="truncated or corrupted"):
        _convert(truncated, tmp_path)


class _NotATensor:
    pass


def test_error_wrong_top_level_and_objects(dinov2_checkpoint, tmp_path):
    checkpoint, _ = dinov2_checkpoint
    bad = tmp_path / "model_only.pt"
    torch.save({"model": checkpoint["extractor"]}, bad)
    with pytest.raises(ConversionError, match="top-level keys \\['model'\\]"):
        _convert(bad, tmp_path)
    bad = tmp_path / "timm_vit_only.pt"  # a bare timm ViT state dict: the key list is shortened
    torch.save(checkpoint["extractor"], bad)
    n = len(checkpoint["extractor"])
    with pytest.raises(ConversionError, match=rf"top-level keys \['blocks\.0\..*, \.\.\. \({n} in all\)\]"):
        _convert(bad, tmp_path)
    bad = tmp_path / "no_head.pt"
    torch.save(
        {"selector": {"backbone": checkpoint["selector"]["backbone"]}, "extractor": checkpoint["extractor"]}, bad
    )
    with pytest.raises(ConversionError, match="'backbone' and 'head'"):
        _convert(bad, tmp_path)
    bad = tmp_path / "pickled.pt"
    torch.save({"selector": _NotATensor(), "extractor": {}}, bad)
    with pytest.raises(ConversionError, match="other than tensors"):
        _convert(bad, tmp_path)


def _edited(checkpoint, edit):
    copy = {
        "selector": {
            "backbone": dict(checkpoint["selector"]["backbone"]),
            "head": dict(checkpoint["selector"]["head"]),
        },
        "extractor": dict(checkpoint["extractor"]),
    }
    edit(copy)
    return copy


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda c: c["extractor"].__setitem__("blocks.1.attn.qkv.weight", torch.zeros(100, 128)),
            r"wrong shape: blocks\.1\.attn\.qkv\.weight: \(100, 128\)",
        ),
        (
            lambda c: c["extractor"].__setitem__("blocks.0.attn.extra", torch.zeros(3)),
            r"no place in LookWhereModel.*extractor\.blocks\.0\.attn\.extra",
        ),
        (
            lambda c: c["selector"]["head"].__setitem__("w3.weight", torch.zeros(3)),
            r"no place in LookWhereModel.*selector\.head\.w3\.weight",
        ),
        (lambda c: c["extractor"].pop("blocks.1.ls2.gamma"), r"lacks \['blocks\.1\.ls2\.gamma'\]"),
        (lambda c: c["selector"]["head"].__setitem__("w2.weight", torch.zeros(5, 512)), r"w2 must be \(r\*r, 512\)"),
        (lambda c: c["extractor"].__setitem__("pos_embed", torch.zeros(1, 65, 128)), r"CLS slot"),
        (lambda c: c["selector"]["backbone"].pop("reg_token"), r"differ in num_register_tokens"),
    ],
    ids=["bad-shape", "extra-tensor", "extra-head-tensor", "missing-tensor", "bad-head", "cls-slot", "mismatch"],
)
def test_error_bad_tensors(dinov2_checkpoint, tmp_path, edit, message):
    checkpoint, _ = dinov2_checkpoint
    path = tmp_path / "edited.pt"
    torch.save(_edited(checkpoint, edit), path)
    with pytest.raises(ConversionError, match=message):
        _convert(path, tmp_path)
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_error_arguments(dinov2_checkpoint, tmp_path):
    _, path = dinov2_checkpoint
    with pytest.raises(ConversionError, match="franca expects a SwiGLU MLP without registers"):
        _convert(path, tmp_path, variant="franca")
    with pytest.raises(ConversionError, match="--variant must be one of"):
        _convert(path, tmp_path, variant="dinov3")
    with pytest.raises(ConversionError, match="multiple of the patch size 14"):
        _convert(path, tmp_path, high_res=500)
    with pytest.raises(ConversionError, match="k_ratio must be in"):
        _convert(path, tmp_path, k_ratio=1.5)


def test_cli_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00\x01garbage")
    assert main(["--checkpoint_path", str(bad), "--output_dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not a PyTorch checkpoint" in err and "Traceback" not in err


def test_push_to_hub_offline_error(dinov2_checkpoint, tmp_path, monkeypatch):
    _, path = dinov2_checkpoint
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConversionError, match="offline mode is on.*upload it later"):
        _convert(path, tmp_path, push_to_hub="someone/lookwhere-test")
    assert (tmp_path / "out" / "model.safetensors").exists()  # the folder is written before the push
    with pytest.raises(ConversionError, match="repo id like"):
        _convert(path, tmp_path, push_to_hub="not a repo id")


def test_self_check_needs_scikit_image(dinov2_checkpoint, tmp_path, monkeypatch):
    _, path = dinov2_checkpoint
    monkeypatch.setitem(sys.modules, "skimage", None)  # as if scikit-image were not installed
    with pytest.raises(ConversionError, match="pip install scikit-image.*--skip_self_check"):
        convert_checkpoint(path, tmp_path / "out", log=lambda m: None)
    assert not (tmp_path / "out").exists()  # it stops before writing anything
