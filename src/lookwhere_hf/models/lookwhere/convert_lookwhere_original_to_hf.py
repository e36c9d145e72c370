"""Convert an official LookWhere checkpoint (`lookwhere_dinov2.pt` / `lookwhere_franca.pt`) to a transformers folder.

The official release stores timm ViT state dicts:

```
{"selector": {"backbone": <timm ViT state dict>, "head": {"w1.weight", "w1.bias", "w2.weight", "w2.bias"}},
 "extractor": <timm ViT state dict>}
```

with the `vit_base_patch14_reg4_dinov2` layout (`cls_token`, `reg_token`, patch-only `pos_embed`,
`patch_embed.proj`, `blocks.i.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}`, `norm`).
The Franca variant has no `reg_token` and a packed SwiGLU MLP (timm `SwiGLUPacked`: `fc1` holds the gate half, then
the value half).

The converter reads the architecture off the tensor shapes, renames every tensor with one table (splitting timm's
fused `qkv` and packed SwiGLU `fc1` along their output dimension), refuses to write anything if a source tensor is
left over, missing or of the wrong shape, or a parameter is left empty, saves the model, its image processor and a
model card (`lookwhere_hf.model_cards`), then reloads the folder and checks it on a real photo (optional push).

Usage:

```bash
python -m lookwhere_hf.models.lookwhere.convert_lookwhere_original_to_hf \
    --checkpoint_path lookwhere_dinov2.pt --output_dir lookwhere-dinov2-vitb14 [--high_res 518] [--k_ratio 0.1] \
    [--variant auto|dinov2|franca] [--push_to_hub USER/lookwhere-dinov2-vitb14]
```
"""

from __future__ import annotations

import math
import os
import pickle
import re
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...flops import mlp_width
from ...model_cards import ORIGINAL_WEIGHTS, conversion_provenance, render_model_card
from ..conversion_utils import ConversionError, first_line, name_listing, push_folder_to_hub, run_converter
from .configuration_lookwhere import LookWhereConfig
from .image_processing_lookwhere import LookWhereImageProcessor
from .modeling_lookwhere import LookWhereModel

VARIANTS = ("auto", "dinov2", "franca")
HEAD_KEYS = ("w1.weight", "w1.bias", "w2.weight", "w2.bias")


# --------------------------------------------------------------------------------------------------- reading
def load_original_checkpoint(checkpoint_path: str | os.PathLike) -> dict:
    """Read an official LookWhere `.pt` file with `torch.load(weights_only=True)` and check its top-level layout.

    Raises:
        ConversionError: the file is missing, not a PyTorch file, truncated, holds non-tensor objects, or is not laid
            out like an official LookWhere checkpoint.
    """
    path = Path(checkpoint_path)
    official = f"Pass the official lookwhere_dinov2.pt or lookwhere_franca.pt file (from {ORIGINAL_WEIGHTS})."
    if not path.exists():
        raise ConversionError(f"Checkpoint file {str(path)!r} does not exist. {official}")
    if path.is_dir():
        hint = ""
        if (path / "config.json").is_file():
            hint = " It looks like an already converted folder: load it with from_pretrained instead."
        raise ConversionError(f"{str(path)!r} is a directory; --checkpoint_path must be the official .pt file.{hint}")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    not_torch = f"{str(path)!r} is not a PyTorch checkpoint"
    if path.suffix == ".safetensors":
        official += " A .safetensors file written by save_pretrained loads with from_pretrained (pass its folder)."
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if magic[:2] == b"PK" or magic[:1] == b"\x80":  # a zip or legacy torch.save file with forbidden objects
            raise ConversionError(
                f"{str(path)!r} holds Python objects other than tensors and plain containers, so it is not an official "
                f"LookWhere checkpoint (those load with weights_only=True). Refusing to unpickle it "
                f"({first_line(err)})."
            ) from None
        raise ConversionError(f"{not_torch} ({first_line(err)}). {official}") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError, IndexError) as err:
        if magic == b"PK\x03\x04":
            raise ConversionError(
                f"{str(path)!r} looks like a PyTorch checkpoint but cannot be read: it is truncated or corrupted "
                f"({first_line(err)}). Download it again ({ORIGINAL_WEIGHTS}) and compare its size."
            ) from None
        raise ConversionError(f"{not_torch} ({first_line(err)}). {official}") from None
    _check_layout(checkpoint, str(path))
    return checkpoint


def _check_layout(checkpoint, name: str) -> None:
    """`{"selector": {"backbone", "head"}, "extractor"}` with non-empty state dicts of tensors as leaves."""
    expected = (
        "{'selector': {'backbone': <timm ViT state dict>, 'head': {w1.*, w2.*}}, 'extractor': <timm ViT state dict>}"
    )
    if not isinstance(checkpoint, dict):
        raise ConversionError(f"{name} holds a {type(checkpoint).__name__}; an official checkpoint is {expected}.")
    if set(checkpoint) != {"selector", "extractor"}:
        raise ConversionError(
            f"{name} has top-level keys {name_listing(checkpoint)}; an official LookWhere checkpoint has exactly "
            f"'selector' and 'extractor': {expected}."
        )
    selector = checkpoint["selector"]
    if not isinstance(selector, dict) or set(selector) != {"backbone", "head"}:
        keys = name_listing(selector) if isinstance(selector, dict) else type(selector).__name__
        raise ConversionError(
            f"{name}['selector'] must have keys 'backbone' and 'head', got {keys}. Expected {expected}."
        )
    for part, state in (
        ("selector.backbone", selector["backbone"]),
        ("selector.head", selector["head"]),
        ("extractor", checkpoint["extractor"]),
    ):
        if not isinstance(state, dict) or not state:
            raise ConversionError(f"{name}['{part}'] must be a non-empty state dict, got {type(state).__name__}.")
        not_tensors = [str(key) for key, value in state.items() if not isinstance(value, torch.Tensor)]
        if not_tensors:
            raise ConversionError(f"{name}['{part}'] holds non-tensor entries: {name_listing(not_tensors)}.")


# --------------------------------------------------------------------------------------------------- architecture
def mlp_ratio_for(hidden_size: int, mlp_hidden: int, swiglu: bool, name: str = "backbone") -> int:
    """The integer `mlp_ratio` (as `Dinov2WithRegistersConfig` stores it) whose MLP is `mlp_hidden` wide
    ([`lookwhere_hf.flops.mlp_width`]), e.g. 4 for Franca's 2048-wide SwiGLU (timm `fc1` 4096 = 2 x 2048).

    Raises:
        ConversionError: no integer ratio gives that width.
    """
    for ratio in range(1, 4 * (mlp_hidden // hidden_size + 2)):
        if mlp_width(hidden_size, ratio, swiglu) == mlp_hidden:
            return ratio
    kind = "SwiGLU (width (int(hidden*mlp_ratio*2/3)+7)//8*8)" if swiglu else "MLP (width hidden*mlp_ratio)"
    raise ConversionError(
        f"{name}: its MLP is {mlp_hidden} wide for hidden size {hidden_size}; transformers' DINOv2-with-registers "
        f"{kind} with an integer mlp_ratio cannot build that width, so this checkpoint cannot be converted."
    )


def _shape(state: dict, key: str, name: str) -> tuple[int, ...]:
    if key not in state:
        raise ConversionError(f"{name} lacks {[key]}: it is not a timm ViT in the vit_base_patch14_reg4_dinov2 layout.")
    return tuple(state[key].shape)


def infer_backbone_config(state: dict, name: str, num_attention_heads: int | None = None) -> dict:
    """`Dinov2WithRegistersConfig` arguments of a timm DINOv2-style ViT, read off its tensor shapes (`name` is used in
    error messages). Only the shapes the architecture depends on are read; every tensor is checked when renaming."""
    proj = _shape(state, "patch_embed.proj.weight", name)
    if len(proj) != 4 or proj[2] != proj[3]:
        raise ConversionError(f"{name}: patch_embed.proj.weight must be (hidden, channels, p, p), got {proj}.")
    hidden, channels, patch = proj[:3]
    registers = 0
    if "reg_token" in state:
        if len(_shape(state, "reg_token", name)) != 3:
            raise ConversionError(
                f"{name}: reg_token must be (1, registers, {hidden}), got {_shape(state, 'reg_token', name)}."
            )
        registers = _shape(state, "reg_token", name)[1]
    positions = _shape(state, "pos_embed", name)
    count = positions[1] if len(positions) == 3 else 0
    grid = math.isqrt(count)
    if count == 0 or grid * grid != count:
        hint = ""
        if count > 1 and math.isqrt(count - 1) ** 2 == count - 1:
            hint = " (it seems to include a CLS slot; LookWhere's position embeddings are patch-only)"
        raise ConversionError(f"{name}: pos_embed {positions} is not (1, patches, hidden) of a square grid{hint}.")
    blocks = {int(match[1]) for key in state if (match := re.match(r"blocks\.(\d+)\.", key))}
    if not blocks or blocks != set(range(len(blocks))):
        raise ConversionError(f"{name}: expected transformer blocks blocks.0 ... blocks.N-1, found {sorted(blocks)}.")
    fc1, fc2 = _shape(state, "blocks.0.mlp.fc1.weight", name), _shape(state, "blocks.0.mlp.fc2.weight", name)
    if len(fc1) != 2 or len(fc2) != 2 or fc1[0] not in (fc2[1], 2 * fc2[1]):
        raise ConversionError(
            f"{name}: blocks.0.mlp.fc1 / fc2 have shapes {fc1} / {fc2}; expected fc1 as wide as fc2's input (GELU MLP) "
            "or twice as wide (packed SwiGLU)."
        )
    swiglu = fc1[0] == 2 * fc2[1]
    if num_attention_heads is None:
        if hidden % 64:
            raise ConversionError(
                f"{name}: hidden size {hidden} is not a multiple of 64, so the number of attention heads cannot be "
                "inferred (DINOv2/Franca use 64-dim heads). Pass --num_attention_heads."
            )
        num_attention_heads = hidden // 64
    if hidden % num_attention_heads:
        raise ConversionError(f"num_attention_heads={num_attention_heads} does not divide hidden size {hidden}.")
    return {
        "hidden_size": hidden,
        "num_hidden_layers": len(blocks),
        "num_attention_heads": num_attention_heads,
        "num_register_tokens": registers,
        "patch_size": patch,
        "num_channels": channels,
        "image_size": grid * patch,
        "use_swiglu_ffn": swiglu,
        "mlp_ratio": mlp_ratio_for(hidden, fc2[1], swiglu, name),
        "qkv_bias": "blocks.0.attn.qkv.bias" in state,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-6,
        "layerscale_value": 1.0,
    }


def detect_variant(backbone: dict) -> str:
    """ "dinov2" (GELU MLP, registers), "franca" (SwiGLU, no registers) or "custom"."""
    if not backbone["use_swiglu_ffn"] and backbone["num_register_tokens"] > 0:
        return "dinov2"
    if backbone["use_swiglu_ffn"] and backbone["num_register_tokens"] == 0:
        return "franca"
    return "custom"


def infer_config(
    checkpoint: dict, variant: str = "auto", num_attention_heads: int | None = None, k_ratio: float = 0.1
) -> tuple[LookWhereConfig, str]:
    """The [`LookWhereConfig`] of an official checkpoint and its variant ("dinov2", "franca" or "custom")."""
    if variant not in VARIANTS:
        raise ConversionError(f"--variant must be one of {VARIANTS}, got {variant!r}.")
    selector = infer_backbone_config(checkpoint["selector"]["backbone"], "selector.backbone", num_attention_heads)
    extractor = infer_backbone_config(checkpoint["extractor"], "extractor", num_attention_heads)
    for key in ("hidden_size", "num_register_tokens", "patch_size", "num_channels", "use_swiglu_ffn", "mlp_ratio"):
        if selector[key] != extractor[key]:
            raise ConversionError(
                f"The selector and extractor backbones differ in {key} ({selector[key]} vs {extractor[key]}); "
                "LookWhere's selector hands its CLS/register tokens to the extractor, so both must share it. Is this "
                "an official LookWhere checkpoint?"
            )
    head, hidden = checkpoint["selector"]["head"], selector["hidden_size"]
    missing = [key for key in HEAD_KEYS if key not in head]
    if missing:
        raise ConversionError(f"selector.head lacks {missing}; expected {list(HEAD_KEYS)}.")
    w1, w2 = tuple(head["w1.weight"].shape), tuple(head["w2.weight"].shape)
    if w1 != (4 * hidden, hidden):
        raise ConversionError(
            f"selector.head.w1 must be ({4 * hidden}, {hidden}) (an MLP hidden -> 4*hidden), got {w1}."
        )
    r = math.isqrt(w2[0]) if len(w2) == 2 else 0
    if len(w2) != 2 or w2[1] != 4 * hidden or r * r != w2[0]:
        raise ConversionError(f"selector.head.w2 must be (r*r, {4 * hidden}) for an integer r, got {w2}.")
    # r = ceil(pretrain grid / low-res grid); the extractor's grid is the release's pretraining grid (37).
    low_grid = selector["image_size"] // selector["patch_size"]
    high_grid = extractor["image_size"] // extractor["patch_size"]
    pretrain_grid = high_grid if -(-high_grid // low_grid) == r else r * low_grid
    found = detect_variant(extractor)
    if variant != "auto" and found != variant:
        described = {"dinov2": "GELU MLP with registers", "franca": "SwiGLU MLP without registers"}
        raise ConversionError(
            f"--variant {variant} expects a {described[variant]}, but this checkpoint has a "
            f"{'SwiGLU' if extractor['use_swiglu_ffn'] else 'GELU'} MLP and {extractor['num_register_tokens']} "
            "registers. Use --variant auto."
        )
    config = LookWhereConfig(
        selector_config=selector,
        extractor_config=extractor,
        k_ratio=k_ratio,
        selector_pretrain_grid=pretrain_grid,
        selector_head_act="gelu",
        low_res_antialias=False,
    )
    return config, found


# --------------------------------------------------------------------------------------------------- renaming
def rename_table(backbone) -> list[tuple[str, tuple[str, ...]]]:
    """`(timm key, transformers keys)` for one backbone (a `Dinov2WithRegistersConfig`). Several transformers keys
    mean: split the timm tensor along its first dimension into that many equal parts, in that order (timm's fused
    `qkv` into q, k, v; `SwiGLUPacked`'s `fc1` into the gate, then the value half)."""
    table = [
        ("cls_token", ("embeddings.cls_token",)),
        ("pos_embed", ("embeddings.position_embeddings",)),
        ("patch_embed.proj.weight", ("embeddings.patch_embeddings.projection.weight",)),
        ("patch_embed.proj.bias", ("embeddings.patch_embeddings.projection.bias",)),
        ("norm.weight", ("layernorm.weight",)),
        ("norm.bias", ("layernorm.bias",)),
    ]
    if backbone.num_register_tokens:  # without registers (Franca) the model's register parameter is empty
        table.append(("reg_token", ("embeddings.register_tokens",)))
    qkv_kinds = ("weight", "bias") if backbone.qkv_bias else ("weight",)
    for i in range(backbone.num_hidden_layers):
        src, dst = f"blocks.{i}.", f"encoder.layer.{i}."
        table += [
            (f"{src}{norm}.{kind}", (f"{dst}{norm}.{kind}",))
            for norm in ("norm1", "norm2")
            for kind in ("weight", "bias")
        ]
        table += [
            (f"{src}attn.qkv.{kind}", tuple(f"{dst}attention.{p}_proj.{kind}" for p in "qkv")) for kind in qkv_kinds
        ]
        table += [(f"{src}attn.proj.{kind}", (f"{dst}attention.o_proj.{kind}",)) for kind in ("weight", "bias")]
        table += [
            (f"{src}ls1.gamma", (f"{dst}layer_scale1.lambda1",)),
            (f"{src}ls2.gamma", (f"{dst}layer_scale2.lambda1",)),
        ]
        for kind in ("weight", "bias"):
            if backbone.use_swiglu_ffn:
                table.append((f"{src}mlp.fc1.{kind}", (f"{dst}mlp.gate_proj.{kind}", f"{dst}mlp.up_proj.{kind}")))
                table.append((f"{src}mlp.fc2.{kind}", (f"{dst}mlp.down_proj.{kind}",)))
            else:
                table.append((f"{src}mlp.fc1.{kind}", (f"{dst}mlp.fc1.{kind}",)))
                table.append((f"{src}mlp.fc2.{kind}", (f"{dst}mlp.fc2.{kind}",)))
    return table


def convert_state_dict(
    checkpoint: dict, config: LookWhereConfig, target_shapes: dict[str, torch.Size]
) -> dict[str, torch.Tensor]:
    """Every tensor of an official checkpoint, renamed for [`LookWhereModel`] (float32, contiguous), with strict
    accounting against `target_shapes` (the model's `state_dict()` shapes).

    Raises:
        ConversionError: a source tensor is missing, has the wrong shape or has no place in the model, or a model
            parameter is left empty.
    """
    head_table = [(key, (key.replace("w1", "fc1").replace("w2", "fc2"),)) for key in HEAD_KEYS]
    parts = (
        ("selector.backbone", checkpoint["selector"]["backbone"], "selector.", rename_table(config.selector_config)),
        ("selector.head", checkpoint["selector"]["head"], "selector.head.", head_table),
        ("extractor", checkpoint["extractor"], "extractor.", rename_table(config.extractor_config)),
    )
    unknown = [prefix + dst for _, _, prefix, table in parts for _, dsts in table for dst in dsts]
    unknown = [name for name in unknown if name not in target_shapes]
    if unknown:  # the rename table and the model's parameter names disagree: a bug, not a bad checkpoint
        raise RuntimeError(f"The rename table names parameters LookWhereModel does not have: {name_listing(unknown)}.")
    converted, leftover = {}, []
    for part, state, prefix, table in parts:
        missing = [src for src, _ in table if src not in state]
        if missing:
            raise ConversionError(
                f"{part} lacks {name_listing(missing)}: every tensor of the official layout is needed."
            )
        wrong = []
        for src, destinations in table:
            first = target_shapes[prefix + destinations[0]]
            expected = (len(destinations) * first[0], *first[1:])
            if tuple(state[src].shape) != expected:
                wrong.append(f"{src}: {tuple(state[src].shape)} (expected {expected})")
                continue
            for dst, chunk in zip(destinations, state[src].chunk(len(destinations), dim=0), strict=True):
                converted[prefix + dst] = chunk.detach().to(torch.float32).contiguous()
        if wrong:
            raise ConversionError(f"{part} has tensors of the wrong shape: " + "; ".join(wrong))
        used = {src for src, _ in table}
        leftover += [f"{part}.{key}" for key in state if key not in used]
    if leftover:
        raise ConversionError(
            f"{len(leftover)} tensor(s) of the checkpoint have no place in LookWhereModel, so converting would "
            f"silently drop them: {name_listing(leftover)}. This is not the official LookWhere layout (or an "
            "unsupported variant)."
        )
    for name, shape in target_shapes.items():  # parameters without values, e.g. 0 register tokens
        if name not in converted and math.prod(shape) == 0:
            converted[name] = torch.zeros(shape)
    unfilled = sorted(set(target_shapes) - set(converted))
    if unfilled:
        raise ConversionError(f"The checkpoint leaves LookWhereModel parameters empty: {name_listing(unfilled)}.")
    return converted


# --------------------------------------------------------------------------------------------------- check + push
@torch.no_grad()
def self_check(output_dir: str | os.PathLike, reference_model: LookWhereModel, log=print) -> dict:
    """The numeric check: reload the folder with the Auto classes, run it on `skimage.data.astronaut()` through its
    saved image processor, and require finite outputs equal to the in-memory converted model's."""
    from skimage import data
    from transformers import AutoImageProcessor, AutoModel

    model = AutoModel.from_pretrained(output_dir).eval()
    inputs = AutoImageProcessor.from_pretrained(output_dir)(images=data.astronaut(), return_tensors="pt")
    outputs = model(**inputs, output_dense_features=True)
    reference = reference_model.eval()(**inputs, output_dense_features=True)
    finite = all(torch.isfinite(t).all() for t in (outputs.last_hidden_state, outputs.selector_map))
    diff = max(
        float((reference.last_hidden_state - outputs.last_hidden_state).abs().max()),
        float((reference.selector_map - outputs.selector_map).abs().max()),
    )
    # Same weights, same input, same kernels: the reloaded folder reproduces the converted model (1e-5 leaves room
    # for a different attention kernel choice after reloading).
    if not finite or not torch.equal(reference.selected_indices, outputs.selected_indices) or diff > 1e-5:
        raise ConversionError(
            f"Self-check failed: the reloaded folder {output_dir} does not reproduce the converted model (finite "
            f"outputs: {finite}, max abs difference {diff:.3g})."
        )
    report = {
        "pixel_values": tuple(inputs["pixel_values"].shape),
        "low_res_pixel_values": tuple(inputs["low_res_pixel_values"].shape),
        "k": int(outputs.selected_indices.shape[1]),
        "cls_norm": float(outputs.pooler_output.norm()),
        "finite": finite,
        "max_abs_diff_vs_converted": diff,
    }
    log(
        f"Self-check: reloaded {type(model).__name__} from {output_dir}; astronaut photo -> pixel_values "
        f"{report['pixel_values']}, low_res_pixel_values {report['low_res_pixel_values']}; the extractor ran on "
        f"k={report['k']} patches, CLS norm {report['cls_norm']:.3f}; matches the converted model (max abs diff "
        f"{diff:.2g})."
    )
    return report


# --------------------------------------------------------------------------------------------------- conversion
@dataclass
class ConversionResult:
    """What [`convert_checkpoint`] did."""

    output_dir: str
    variant: str
    config: LookWhereConfig
    num_parameters: int
    files: list[str] = field(default_factory=list)
    self_check: dict | None = None
    pushed_to: str | None = None


def convert_checkpoint(
    checkpoint_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    high_res: int | None = None,
    k_ratio: float = 0.1,
    variant: str = "auto",
    push_to_hub: str | None = None,
    num_attention_heads: int | None = None,
    run_self_check: bool = True,
    log=print,
) -> ConversionResult:
    """Convert an official LookWhere checkpoint into a `save_pretrained` folder (and optionally push it to the Hub).

    Args:
        checkpoint_path: `lookwhere_dinov2.pt` or `lookwhere_franca.pt` (or any checkpoint in that layout).
        output_dir: the folder to write (created; existing files of the same names are overwritten).
        high_res (`int`, *optional*): default input size of the image processor; defaults to the extractor's
            pretraining size (518). Any multiple of the patch size works at inference time.
        k_ratio (`float`): fraction of high-res patches the extractor sees, stored in the config.
        variant (`str`): "auto" (detect), "dinov2" or "franca" (checked against the tensors).
        push_to_hub (`str`, *optional*): a Hub repo id to upload the folder to after the self-check.
        num_attention_heads (`int`, *optional*): heads, if the hidden size is not 64 per head.
        run_self_check (`bool`): reload the folder and run it on a real photo ([`self_check`]).
        log: where progress messages go (`print` by default).
    """
    if not (isinstance(k_ratio, (int, float)) and 0.0 < k_ratio <= 1.0):
        raise ConversionError(
            f"--k_ratio must be in (0, 1] (the fraction of patches the extractor sees), got {k_ratio!r}."
        )
    if num_attention_heads is not None and (not isinstance(num_attention_heads, int) or num_attention_heads < 1):
        raise ConversionError(f"--num_attention_heads must be a positive int, got {num_attention_heads!r}.")
    if run_self_check:
        try:
            import skimage.data  # noqa: F401  (the self-check's real photo)
        except ImportError:
            raise ConversionError(
                "The self-check runs the converted model on scikit-image's astronaut photo, but scikit-image is not "
                "installed: `pip install scikit-image`, or pass --skip_self_check."
            ) from None
    checkpoint_path, output_dir = Path(checkpoint_path), Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ConversionError(f"--output_dir {str(output_dir)!r} exists and is not a directory.")

    log(f"Reading {checkpoint_path} ...")
    checkpoint = load_original_checkpoint(checkpoint_path)
    config, found = infer_config(checkpoint, variant, num_attention_heads, k_ratio)
    sel, ext, patch = config.selector_config, config.extractor_config, config.patch_size
    high_res = config.high_res_size if high_res is None else high_res
    if not isinstance(high_res, int) or high_res < patch or high_res % patch:
        raise ConversionError(
            f"--high_res must be a positive multiple of the patch size {patch}, got {high_res!r} "
            f"(e.g. {config.high_res_size} or {2 * config.high_res_size})."
        )
    log(
        f"Found the {found} layout: hidden {ext.hidden_size}, {ext.num_attention_heads} heads, patch {patch}, "
        f"{ext.num_register_tokens} registers, {'SwiGLU' if ext.use_swiglu_ffn else 'GELU'} MLP (mlp_ratio "
        f"{ext.mlp_ratio}); selector {sel.num_hidden_layers} layers at {config.low_res_size} px, head r="
        f"{config.selector_upsample_factor}; extractor {ext.num_hidden_layers} layers, position embeddings for "
        f"{config.high_res_size} px."
    )

    model = LookWhereModel(config).eval()
    target_shapes = {name: tensor.shape for name, tensor in model.state_dict().items()}
    model.load_state_dict(convert_state_dict(checkpoint, config, target_shapes), strict=True)
    num_source = sum(
        len(s) for s in (checkpoint["selector"]["backbone"], checkpoint["selector"]["head"], checkpoint["extractor"])
    )
    num_parameters = sum(p.numel() for p in model.parameters())
    log(
        f"Mapped all {num_source} source tensors onto the {len(target_shapes)} LookWhereModel parameters "
        f"({num_parameters / 1e6:.1f}M values); none left over, none missing."
    )

    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    LookWhereImageProcessor.from_model_config(config, size={"height": high_res, "width": high_res}).save_pretrained(
        output_dir
    )
    provenance = conversion_provenance(
        checkpoint_path, output_dir, high_res, k_ratio, variant, num_source, ext.use_swiglu_ffn
    )
    card = render_model_card(
        config, found, repo_id=push_to_hub or f"USER/{output_dir.name}", provenance=provenance, high_res=high_res
    )
    (output_dir / "README.md").write_text(card, encoding="utf-8")
    files = sorted(str(p.relative_to(output_dir)) for p in output_dir.rglob("*") if p.is_file())
    log(f"Wrote {output_dir}: {', '.join(files)}.")

    result = ConversionResult(str(output_dir), found, config, num_parameters, files)
    if run_self_check:
        result.self_check = self_check(output_dir, model, log=log)
    if push_to_hub:
        result.pushed_to = push_folder_to_hub(output_dir, push_to_hub, log=log)
    log(f"Done. Load it with AutoModel.from_pretrained({str(output_dir)!r}) after `import lookwhere_hf`.")
    return result


@dataclass
class ConversionArguments:
    """Arguments of `python -m lookwhere_hf.models.lookwhere.convert_lookwhere_original_to_hf`."""

    checkpoint_path: str = field(metadata={"help": "The official lookwhere_dinov2.pt / lookwhere_franca.pt file."})
    output_dir: str = field(metadata={"help": "Folder to write the converted model to."})
    high_res: int | None = field(
        default=None,
        metadata={"help": "Default input size of the image processor (a multiple of 14); default: 518 (pretraining)."},
    )
    k_ratio: float = field(default=0.1, metadata={"help": "Fraction of high-res patches the extractor sees."})
    variant: str = field(
        default="auto",
        metadata={"help": "auto, dinov2 or franca (checked against the tensors).", "choices": list(VARIANTS)},
    )
    push_to_hub: str | None = field(default=None, metadata={"help": "Hub repo id (USER/NAME) to upload the folder to."})
    num_attention_heads: int | None = field(
        default=None, metadata={"help": "Attention heads; inferred as hidden_size // 64 when not given."}
    )
    skip_self_check: bool = field(default=False, metadata={"help": "Do not reload the folder and run it on a photo."})


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 on success, 2 on a conversion error)."""
    return run_converter(ConversionArguments, convert_checkpoint, argv, __doc__.split("\n\n")[0])


__all__ = [
    "ConversionError",
    "ConversionResult",
    "convert_checkpoint",
    "convert_state_dict",
    "infer_config",
    "load_original_checkpoint",
    "main",
    "rename_table",
]


if __name__ == "__main__":
    sys.exit(main())
