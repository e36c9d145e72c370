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

This script infers the architecture from the tensors, maps every tensor onto [`LookWhereModel`], refuses to write
anything if a source tensor is left over or a target parameter is left empty, and writes a `save_pretrained` folder
(safetensors weights, `config.json`, `preprocessor_config.json`, the modeling code for `trust_remote_code`, and a
filled-in model card `README.md`). It then reloads the folder and runs a forward pass on a real photo as a self-check.

Usage:

```bash
python -m lookwhere_hf.models.lookwhere.convert_lookwhere_original_to_hf \
    --checkpoint_path lookwhere_dinov2.pt --output_dir lookwhere-dinov2-vitb14 [--high_res 518] [--k_ratio 0.1] \
    [--variant auto|dinov2|franca] [--push_to_hub USER/lookwhere-dinov2-vitb14]
```
"""

from __future__ import annotations

import datetime
import hashlib
import math
import os
import pickle
import re
import string
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...flops import full_resolution_flops, lookwhere_flops

VARIANTS = ("auto", "dinov2", "franca")
# Where the timm checkpoints use a key, which backbone tensors every block must have.
_BLOCK_KEYS = (
    "norm1.weight",
    "norm1.bias",
    "attn.qkv.weight",
    "attn.proj.weight",
    "attn.proj.bias",
    "ls1.gamma",
    "norm2.weight",
    "norm2.bias",
    "mlp.fc1.weight",
    "mlp.fc2.weight",
    "ls2.gamma",
)
_HEAD_KEYS = ("w1.weight", "w1.bias", "w2.weight", "w2.bias")
ORIGINAL_REPO = "https://github.com/antofuller/lookwhere"
ORIGINAL_WEIGHTS = "https://huggingface.co/antofuller/lookwhere"
PAPER = "https://arxiv.org/abs/2505.18051"

# Facts about the two released checkpoints used by the model cards.
VARIANT_INFO = {
    "dinov2": {
        "title": "LookWhere-DINOv2",
        "teacher": "DINOv2 with registers",
        "base_model": "antofuller/lookwhere",
        "checkpoint": "lookwhere_dinov2.pt",
        "mlp": "GELU MLP (ratio 4)",
        "tags": ["dinov2"],
        "description": (
            "This variant was distilled from DINOv2 with registers: GELU MLPs, 4 register tokens, so the selector hands "
            "CLS + 4 registers to the extractor. The authors report it as the stronger of their two released models."
        ),
    },
    "franca": {
        "title": "LookWhere-Franca",
        "teacher": "Franca",
        "base_model": "antofuller/lookwhere",
        "checkpoint": "lookwhere_franca.pt",
        "mlp": "SwiGLU MLP",
        "tags": ["franca"],
        "description": (
            "This variant was distilled from Franca: SwiGLU MLPs and no register tokens, so the selector hands only its "
            "CLS token to the extractor. The authors report LookWhere-DINOv2 as the stronger of their two released models."
        ),
    },
    "custom": {
        "title": "LookWhere",
        "teacher": "a self-supervised ViT",
        "base_model": None,  # not one of the official releases: no known base model
        "checkpoint": "a LookWhere checkpoint",
        "mlp": "MLP",
        "tags": [],
        "description": "This checkpoint does not match either official release layout; its architecture is listed below.",
    },
}


class ConversionError(ValueError):
    """A checkpoint could not be converted; the message says what was wrong and what to do."""


# --------------------------------------------------------------------------------------------------- reading
def load_original_checkpoint(checkpoint_path: str | os.PathLike) -> dict:
    """Read an official LookWhere `.pt` file with `torch.load(weights_only=True)` and check its layout.

    Raises:
        ConversionError: the file is missing, not a PyTorch file, truncated, holds non-tensor objects, or is not laid
            out like an official LookWhere checkpoint.
    """
    path = Path(checkpoint_path)
    if not path.exists():
        raise ConversionError(
            f"Checkpoint file {str(path)!r} does not exist. Pass the path of lookwhere_dinov2.pt or "
            f"lookwhere_franca.pt (download them from {ORIGINAL_WEIGHTS})."
        )
    if path.is_dir():
        hint = (
            " It looks like an already converted transformers folder: load it with from_pretrained instead."
            if (path / "config.json").is_file()
            else ""
        )
        raise ConversionError(f"{str(path)!r} is a directory; --checkpoint_path must be the official .pt file.{hint}")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        pickled_torch_file = magic.startswith(b"PK") or magic.startswith(b"\x80")  # zip or legacy torch.save
        if pickled_torch_file and ("weights only" in str(err).lower() or "weights_only" in str(err).lower()):
            raise ConversionError(
                f"{str(path)!r} holds Python objects other than tensors and plain containers, so it is not an official "
                f"LookWhere checkpoint (those load with weights_only=True). Refusing to unpickle it ({first_line})."
            ) from None
        raise ConversionError(
            f"{str(path)!r} is not a PyTorch checkpoint ({first_line}). Pass the official lookwhere_dinov2.pt or "
            f"lookwhere_franca.pt file.{_safetensors_hint(path)}"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError, IndexError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if magic == b"PK\x03\x04":
            raise ConversionError(
                f"{str(path)!r} looks like a PyTorch checkpoint but cannot be read: it is truncated or corrupted "
                f"({first_line}). Download it again ({ORIGINAL_WEIGHTS}) and compare its size."
            ) from None
        raise ConversionError(
            f"{str(path)!r} is not a PyTorch checkpoint ({first_line}). Pass the official lookwhere_dinov2.pt or "
            f"lookwhere_franca.pt file.{_safetensors_hint(path)}"
        ) from None
    check_checkpoint_layout(checkpoint, str(path))
    return checkpoint


def _safetensors_hint(path: Path) -> str:
    if path.suffix == ".safetensors":
        return (
            " A .safetensors file is not an official LookWhere release; if it was written by save_pretrained, load "
            "its folder with from_pretrained."
        )
    return ""


def _some(names, limit: int = 12) -> str:
    names = sorted(map(str, names))
    shown = ", ".join(repr(n) for n in names[:limit])
    return f"[{shown}{f', ... ({len(names)} in all)' if len(names) > limit else ''}]"


def check_checkpoint_layout(checkpoint, name: str = "checkpoint") -> None:
    """Check the top-level structure `{"selector": {"backbone", "head"}, "extractor"}` with tensor leaves."""
    expected = (
        "{'selector': {'backbone': <timm ViT state dict>, 'head': {w1.*, w2.*}}, 'extractor': <timm ViT state dict>}"
    )
    if not isinstance(checkpoint, dict):
        raise ConversionError(
            f"{name} holds a {type(checkpoint).__name__}, not a dict; an official LookWhere checkpoint is {expected}."
        )
    if set(checkpoint) != {"selector", "extractor"}:
        raise ConversionError(
            f"{name} has top-level keys {_some(checkpoint)}; an official LookWhere checkpoint has exactly "
            f"'selector' and 'extractor': {expected}."
        )
    selector = checkpoint["selector"]
    if not isinstance(selector, dict) or set(selector) != {"backbone", "head"}:
        keys = _some(selector) if isinstance(selector, dict) else type(selector).__name__
        raise ConversionError(
            f"{name}['selector'] must be a dict with keys 'backbone' and 'head', got {keys}. Expected {expected}."
        )
    for part, state in (
        ("selector.backbone", selector["backbone"]),
        ("selector.head", selector["head"]),
        ("extractor", checkpoint["extractor"]),
    ):
        if not isinstance(state, dict) or not state:
            raise ConversionError(
                f"{name}['{part}'] must be a non-empty dict of tensors (a state dict), got {type(state).__name__}."
            )
        not_tensors = [str(key) for key, value in state.items() if not isinstance(value, torch.Tensor)]
        if not_tensors:
            raise ConversionError(f"{name}['{part}'] holds non-tensor entries: {not_tensors[:10]}.")
    missing_head = [key for key in _HEAD_KEYS if key not in selector["head"]]
    if missing_head:
        raise ConversionError(f"{name}['selector']['head'] lacks {missing_head}; expected {list(_HEAD_KEYS)}.")


# --------------------------------------------------------------------------------------------------- architecture
@dataclass
class BackboneSpec:
    """Architecture of one timm ViT backbone, read off its tensors."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_register_tokens: int
    patch_size: int
    num_channels: int
    grid: int
    use_swiglu_ffn: bool
    mlp_hidden: int  # fc2's input width: the MLP hidden size (SwiGLU: per half)
    mlp_ratio: int
    qkv_bias: bool

    @property
    def image_size(self) -> int:
        return self.grid * self.patch_size

    def config_dict(self) -> dict:
        return {
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_register_tokens": self.num_register_tokens,
            "patch_size": self.patch_size,
            "num_channels": self.num_channels,
            "image_size": self.image_size,
            "use_swiglu_ffn": self.use_swiglu_ffn,
            "mlp_ratio": self.mlp_ratio,
            "qkv_bias": self.qkv_bias,
            "hidden_act": "gelu",
            "layer_norm_eps": 1e-6,
            "layerscale_value": 1.0,
        }


def _swiglu_hidden(hidden_size: int, mlp_ratio: float) -> int:
    """The SwiGLU hidden size transformers' `Dinov2WithRegistersSwiGLUFFN` builds for `mlp_ratio`."""
    return (int(int(hidden_size * mlp_ratio) * 2 / 3) + 7) // 8 * 8


def mlp_ratio_for(hidden_size: int, mlp_hidden: int, swiglu: bool, name: str = "backbone") -> int:
    """The (integer, as `Dinov2WithRegistersConfig` requires) `mlp_ratio` giving an MLP of hidden width `mlp_hidden`.

    Plain MLP: `hidden_size * mlp_ratio == mlp_hidden`. SwiGLU (transformers' `Dinov2WithRegistersSwiGLUFFN`):
    `(int(hidden_size * mlp_ratio * 2 / 3) + 7) // 8 * 8 == mlp_hidden`, e.g. 4 for Franca's 2048-wide ViT-B MLP
    (timm `SwiGLUPacked` with `mlp_ratio=5.33334`: `fc1` 4096 = 2 x 2048).

    Raises:
        ConversionError: no integer ratio gives that width.
    """
    for ratio in range(1, 4 * max(1, mlp_hidden // hidden_size + 2)):
        width = _swiglu_hidden(hidden_size, ratio) if swiglu else hidden_size * ratio
        if width == mlp_hidden:
            return ratio
    kind = "SwiGLU (width (int(hidden*mlp_ratio*2/3)+7)//8*8)" if swiglu else "MLP (width hidden*mlp_ratio)"
    raise ConversionError(
        f"{name}: its MLP is {mlp_hidden} wide for hidden size {hidden_size}; transformers' DINOv2-with-registers "
        f"{kind} with an integer mlp_ratio cannot build that width, so this checkpoint cannot be converted."
    )


def _shape(state: dict, key: str) -> tuple:
    return tuple(state[key].shape)


def infer_backbone_spec(state: dict, name: str, num_attention_heads: int | None = None) -> BackboneSpec:
    """Read the architecture of a timm DINOv2-style ViT from its state dict (`name` is used in error messages)."""
    required = (
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "norm.weight",
        "norm.bias",
    )
    missing = [key for key in required if key not in state]
    if missing:
        raise ConversionError(
            f"{name} lacks {missing}: it is not a timm ViT state dict in the vit_base_patch14_reg4_dinov2 layout "
            f"(its keys start with {sorted(state)[:6]})."
        )
    proj = state["patch_embed.proj.weight"]
    if proj.ndim != 4 or proj.shape[2] != proj.shape[3]:
        raise ConversionError(
            f"{name}: patch_embed.proj.weight must be (hidden, channels, p, p), got {tuple(proj.shape)}."
        )
    hidden, channels, patch = int(proj.shape[0]), int(proj.shape[1]), int(proj.shape[2])
    if _shape(state, "cls_token") != (1, 1, hidden):
        raise ConversionError(f"{name}: cls_token must be (1, 1, {hidden}), got {_shape(state, 'cls_token')}.")
    registers = 0
    if "reg_token" in state:
        reg = _shape(state, "reg_token")
        if len(reg) != 3 or reg[0] != 1 or reg[2] != hidden:
            raise ConversionError(f"{name}: reg_token must be (1, num_registers, {hidden}), got {reg}.")
        registers = reg[1]
    pos = _shape(state, "pos_embed")
    if len(pos) != 3 or pos[0] != 1 or pos[2] != hidden:
        raise ConversionError(f"{name}: pos_embed must be (1, num_patches, {hidden}), got {pos}.")
    grid = math.isqrt(pos[1])
    if grid * grid != pos[1]:
        hint = (
            " (it seems to include a CLS slot; LookWhere's position embeddings are patch-only)"
            if math.isqrt(pos[1] - 1) ** 2 == pos[1] - 1
            else ""
        )
        raise ConversionError(f"{name}: pos_embed has {pos[1]} positions, not a square patch grid{hint}.")

    block_ids = set()
    for key in state:
        match = re.match(r"blocks\.(\d+)\.", key)
        if match:
            block_ids.add(int(match.group(1)))
    depth = len(block_ids)
    if depth == 0 or block_ids != set(range(depth)):
        raise ConversionError(
            f"{name}: expected transformer blocks blocks.0 ... blocks.N-1, found {sorted(block_ids)}."
        )
    for i in range(depth):
        missing = [f"blocks.{i}.{key}" for key in _BLOCK_KEYS if f"blocks.{i}.{key}" not in state]
        if missing:
            raise ConversionError(f"{name} lacks {missing} (every block needs {list(_BLOCK_KEYS)}).")

    fc1, fc2 = _shape(state, "blocks.0.mlp.fc1.weight"), _shape(state, "blocks.0.mlp.fc2.weight")
    if len(fc1) != 2 or len(fc2) != 2 or fc1[1] != hidden or fc2[0] != hidden:
        raise ConversionError(
            f"{name}: blocks.0.mlp.fc1/fc2 have shapes {fc1} / {fc2}, which do not fit hidden size {hidden}."
        )
    if fc1[0] == 2 * fc2[1]:
        swiglu = True
    elif fc1[0] == fc2[1]:
        swiglu = False
    else:
        raise ConversionError(
            f"{name}: blocks.0.mlp.fc1 is {fc1[0]} wide and fc2 takes {fc2[1]} inputs; expected equal widths (GELU MLP) "
            "or fc1 twice as wide (packed SwiGLU)."
        )
    mlp_hidden = fc2[1]
    if num_attention_heads is None:
        if hidden % 64:
            raise ConversionError(
                f"{name}: hidden size {hidden} is not a multiple of 64, so the number of attention heads cannot be "
                "inferred (DINOv2/Franca use 64-dim heads). Pass --num_attention_heads."
            )
        num_attention_heads = hidden // 64
    if hidden % num_attention_heads:
        raise ConversionError(f"num_attention_heads={num_attention_heads} does not divide hidden size {hidden}.")

    spec = BackboneSpec(
        hidden_size=hidden,
        num_hidden_layers=depth,
        num_attention_heads=num_attention_heads,
        num_register_tokens=registers,
        patch_size=patch,
        num_channels=channels,
        grid=grid,
        use_swiglu_ffn=swiglu,
        mlp_hidden=mlp_hidden,
        mlp_ratio=mlp_ratio_for(hidden, mlp_hidden, swiglu, name),
        qkv_bias="blocks.0.attn.qkv.bias" in state,
    )
    # Every block must have the shapes of block 0.
    expected = {
        "norm1.weight": (hidden,),
        "norm1.bias": (hidden,),
        "attn.qkv.weight": (3 * hidden, hidden),
        "attn.qkv.bias": (3 * hidden,),
        "attn.proj.weight": (hidden, hidden),
        "attn.proj.bias": (hidden,),
        "ls1.gamma": (hidden,),
        "norm2.weight": (hidden,),
        "norm2.bias": (hidden,),
        "mlp.fc1.weight": fc1,
        "mlp.fc1.bias": (fc1[0],),
        "mlp.fc2.weight": fc2,
        "mlp.fc2.bias": (hidden,),
        "ls2.gamma": (hidden,),
    }
    wrong = []
    for i in range(depth):
        for key, shape in expected.items():
            full = f"blocks.{i}.{key}"
            if full in state and _shape(state, full) != shape:
                wrong.append(f"{full}: {_shape(state, full)} (expected {shape})")
    for key, shape in (("norm.weight", (hidden,)), ("norm.bias", (hidden,)), ("patch_embed.proj.bias", (hidden,))):
        if _shape(state, key) != shape:
            wrong.append(f"{key}: {_shape(state, key)} (expected {shape})")
    if wrong:
        raise ConversionError(f"{name} has tensors of the wrong shape: " + "; ".join(wrong))
    return spec


@dataclass
class CheckpointSpec:
    """Everything inferred from an official checkpoint."""

    selector: BackboneSpec
    extractor: BackboneSpec
    upsample_factor: int  # r: the head predicts r*r scores per low-res patch
    selector_pretrain_grid: int
    variant: str  # "dinov2", "franca" or "custom"


def detect_variant(spec: BackboneSpec) -> str:
    if not spec.use_swiglu_ffn and spec.num_register_tokens > 0:
        return "dinov2"
    if spec.use_swiglu_ffn and spec.num_register_tokens == 0:
        return "franca"
    return "custom"


def infer_checkpoint_spec(
    checkpoint: dict, variant: str = "auto", num_attention_heads: int | None = None
) -> CheckpointSpec:
    """Infer both backbones, the selector head size and the variant from an official checkpoint."""
    if variant not in VARIANTS:
        raise ConversionError(f"--variant must be one of {VARIANTS}, got {variant!r}.")
    selector = infer_backbone_spec(checkpoint["selector"]["backbone"], "selector.backbone", num_attention_heads)
    extractor = infer_backbone_spec(checkpoint["extractor"], "extractor", num_attention_heads)
    for field_name in (
        "hidden_size",
        "num_register_tokens",
        "patch_size",
        "num_channels",
        "use_swiglu_ffn",
        "mlp_hidden",
    ):
        a, b = getattr(selector, field_name), getattr(extractor, field_name)
        if a != b:
            raise ConversionError(
                f"The selector and extractor backbones differ in {field_name} ({a} vs {b}); LookWhere's selector hands "
                "its CLS/register tokens to the extractor, so both must share it. Is this an official LookWhere checkpoint?"
            )
    head = checkpoint["selector"]["head"]
    hidden = selector.hidden_size
    w1, w2 = tuple(head["w1.weight"].shape), tuple(head["w2.weight"].shape)
    if w1 != (4 * hidden, hidden) or tuple(head["w1.bias"].shape) != (4 * hidden,):
        raise ConversionError(
            f"selector.head.w1 must be ({4 * hidden}, {hidden}) (an MLP hidden -> 4*hidden), got {w1}."
        )
    r = math.isqrt(w2[0]) if len(w2) == 2 else 0
    if len(w2) != 2 or w2[1] != 4 * hidden or r * r != w2[0] or tuple(head["w2.bias"].shape) != (w2[0],):
        raise ConversionError(f"selector.head.w2 must be (r*r, {4 * hidden}) for an integer r, got {w2}.")
    # r = ceil(pretrain_grid / low_grid); the extractor's grid is the pretraining grid of the release (37).
    pretrain_grid = extractor.grid if -(-extractor.grid // selector.grid) == r else r * selector.grid
    found = detect_variant(extractor)
    if variant != "auto" and found != variant:
        described = {"dinov2": "GELU MLP with registers", "franca": "SwiGLU MLP without registers"}
        raise ConversionError(
            f"--variant {variant} expects a {described[variant]}, but this checkpoint has a "
            f"{'SwiGLU' if extractor.use_swiglu_ffn else 'GELU'} MLP and {extractor.num_register_tokens} registers. "
            "Use --variant auto."
        )
    return CheckpointSpec(selector, extractor, r, pretrain_grid, found)


def build_config(spec: CheckpointSpec, k_ratio: float = 0.1):
    """The [`LookWhereConfig`] of a converted checkpoint."""
    from .configuration_lookwhere import LookWhereConfig

    return LookWhereConfig(
        selector_config=spec.selector.config_dict(),
        extractor_config=spec.extractor.config_dict(),
        k_ratio=k_ratio,
        selector_pretrain_grid=spec.selector_pretrain_grid,
        selector_head_act="gelu",
        low_res_antialias=False,
    )


# --------------------------------------------------------------------------------------------------- mapping
def _backbone_to_hf(state: dict, spec: BackboneSpec, prefix: str) -> tuple[dict, set]:
    """Map one timm backbone onto `{prefix}embeddings / encoder / layernorm`; returns (tensors, used source keys)."""
    out, used = {}, set()

    def take(key):
        used.add(key)
        return state[key]

    out[f"{prefix}embeddings.cls_token"] = take("cls_token")
    if "reg_token" in state:
        out[f"{prefix}embeddings.register_tokens"] = take("reg_token")
    else:  # no registers (Franca): the model's register parameter is empty, (1, 0, hidden)
        out[f"{prefix}embeddings.register_tokens"] = state["cls_token"].new_zeros(1, 0, spec.hidden_size)
    out[f"{prefix}embeddings.position_embeddings"] = take("pos_embed")
    out[f"{prefix}embeddings.patch_embeddings.projection.weight"] = take("patch_embed.proj.weight")
    out[f"{prefix}embeddings.patch_embeddings.projection.bias"] = take("patch_embed.proj.bias")
    for i in range(spec.num_hidden_layers):
        src, dst = f"blocks.{i}.", f"{prefix}encoder.layer.{i}."
        for norm in ("norm1", "norm2"):
            for kind in ("weight", "bias"):
                out[f"{dst}{norm}.{kind}"] = take(f"{src}{norm}.{kind}")
        kinds = ("weight", "bias") if spec.qkv_bias else ("weight",)
        for kind in kinds:
            # timm's fused qkv projection stacks q, k and v along the output dimension.
            q, k, v = take(f"{src}attn.qkv.{kind}").chunk(3, dim=0)
            out[f"{dst}attention.q_proj.{kind}"] = q
            out[f"{dst}attention.k_proj.{kind}"] = k
            out[f"{dst}attention.v_proj.{kind}"] = v
        for kind in ("weight", "bias"):
            out[f"{dst}attention.o_proj.{kind}"] = take(f"{src}attn.proj.{kind}")
        out[f"{dst}layer_scale1.lambda1"] = take(f"{src}ls1.gamma")
        out[f"{dst}layer_scale2.lambda1"] = take(f"{src}ls2.gamma")
        for kind in ("weight", "bias"):
            fc1, fc2 = take(f"{src}mlp.fc1.{kind}"), take(f"{src}mlp.fc2.{kind}")
            if spec.use_swiglu_ffn:
                # timm SwiGLUPacked (GluMlp, gate_last=False): act(first half) * second half.
                gate, value = fc1.chunk(2, dim=0)
                out[f"{dst}mlp.gate_proj.{kind}"] = gate
                out[f"{dst}mlp.up_proj.{kind}"] = value
                out[f"{dst}mlp.down_proj.{kind}"] = fc2
            else:
                out[f"{dst}mlp.fc1.{kind}"] = fc1
                out[f"{dst}mlp.fc2.{kind}"] = fc2
    for kind in ("weight", "bias"):
        out[f"{prefix}layernorm.{kind}"] = take(f"norm.{kind}")
    return out, used


def convert_state_dict(checkpoint: dict, spec: CheckpointSpec) -> dict[str, torch.Tensor]:
    """All tensors of an official checkpoint, renamed (and q/k/v, SwiGLU halves split) for [`LookWhereModel`].

    Raises:
        ConversionError: listing every source tensor that was not used.
    """
    selector_state, head_state = checkpoint["selector"]["backbone"], checkpoint["selector"]["head"]
    extractor_state = checkpoint["extractor"]
    converted, used_selector = _backbone_to_hf(selector_state, spec.selector, "selector.")
    extractor_tensors, used_extractor = _backbone_to_hf(extractor_state, spec.extractor, "extractor.")
    converted.update(extractor_tensors)
    for src, dst in (("w1", "fc1"), ("w2", "fc2")):
        for kind in ("weight", "bias"):
            converted[f"selector.head.{dst}.{kind}"] = head_state[f"{src}.{kind}"]
    unused = (
        [f"selector.backbone.{k}" for k in selector_state if k not in used_selector]
        + [f"selector.head.{k}" for k in head_state if k not in _HEAD_KEYS]
        + [f"extractor.{k}" for k in extractor_state if k not in used_extractor]
    )
    if unused:
        raise ConversionError(
            f"{len(unused)} tensor(s) of the checkpoint have no place in LookWhereModel, so converting would silently "
            f"drop them: {unused}. This is not the official LookWhere layout (or an unsupported variant)."
        )
    return {name: tensor.detach().to(torch.float32).contiguous() for name, tensor in converted.items()}


def load_into_model(model, converted: dict[str, torch.Tensor]) -> None:
    """Copy converted tensors into `model`, refusing unfilled parameters, unknown names and shape mismatches."""
    target = model.state_dict()
    unfilled = sorted(set(target) - set(converted))
    unknown = sorted(set(converted) - set(target))
    wrong = [
        f"{n}: {tuple(converted[n].shape)} vs {tuple(target[n].shape)}"
        for n in converted
        if n in target and converted[n].shape != target[n].shape
    ]
    problems = []
    if unfilled:
        problems.append(f"parameters the checkpoint does not fill: {unfilled}")
    if unknown:
        problems.append(f"converted tensors with no parameter: {unknown}")
    if wrong:
        problems.append(f"shape mismatches (converted vs model): {wrong}")
    if problems:
        raise ConversionError("The checkpoint does not fit the inferred LookWhereModel; " + "; ".join(problems))
    model.load_state_dict(converted, strict=True)


# --------------------------------------------------------------------------------------------------- FLOPs + card
def analytic_flops(config, high_res: int, k_ratio: float) -> dict:
    """Analytic FLOPs of LookWhere (selector at `config.low_res_size` + extractor on `P + k` tokens) and of the full
    teacher-sized ViT on all patches at `high_res`, both per image.

    Counted by `lookwhere_hf.flops` (one multiply-add = 2 FLOPs; patch embedding, attention and MLP matmuls and the
    selector head; layer norms, softmax, the map resize and top-k are not counted), CLS mode.
    """
    lookwhere = lookwhere_flops(config, high_res, k_ratio=k_ratio)
    selector, extractor, full = lookwhere.selector, lookwhere.extractor, full_resolution_flops(config, high_res)
    k, num_patches = lookwhere.k, lookwhere.grid[0] * lookwhere.grid[1]
    return {
        "high_res": high_res,
        "k_ratio": k_ratio,
        "k": k,
        "num_patches": num_patches,
        "selector": selector,
        "extractor": extractor,
        "lookwhere": selector + extractor,
        "full": full,
        "reduction": full / (selector + extractor),
    }


def flops_table(config, resolutions=(518, 1036), k_ratios=(0.05, 0.1, 0.25)) -> str:
    """Markdown table of [`analytic_flops`] for a grid of resolutions and k ratios."""
    rows = [
        "| resolution | k_ratio | k / patches | selector GFLOPs | extractor GFLOPs | LookWhere GFLOPs | full ViT GFLOPs | reduction |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for res in resolutions:
        for ratio in k_ratios:
            f = analytic_flops(config, res, ratio)
            rows.append(
                f"| {res}x{res} | {ratio:g} | {f['k']} / {f['num_patches']} | {f['selector'] / 1e9:.1f} | "
                f"{f['extractor'] / 1e9:.1f} | {f['lookwhere'] / 1e9:.1f} | {f['full'] / 1e9:.1f} | "
                f"{f['reduction']:.1f}x |"
            )
    return "\n".join(rows)


def architecture_table(config) -> str:
    sel, ext = config.selector_config, config.extractor_config

    def mlp(cfg):
        if cfg.use_swiglu_ffn:
            return f"SwiGLU, width {_swiglu_hidden(cfg.hidden_size, cfg.mlp_ratio)}"
        return f"GELU, width {int(cfg.hidden_size * cfg.mlp_ratio)}"

    rows = [
        "| | selector | extractor |",
        "|---|---|---|",
        f"| input | {config.low_res_size}x{config.low_res_size} (low-res view) | any multiple of {config.patch_size} "
        f"(position embeddings trained at {config.high_res_size}x{config.high_res_size}) |",
        f"| layers | {sel.num_hidden_layers} | {ext.num_hidden_layers} |",
        f"| hidden size / heads | {sel.hidden_size} / {sel.num_attention_heads} | {ext.hidden_size} / {ext.num_attention_heads} |",
        f"| MLP | {mlp(sel)} | {mlp(ext)} |",
        f"| CLS + registers | 1 + {sel.num_register_tokens} | seeded by the selector's |",
        f"| head | MLP {sel.hidden_size} -> {4 * sel.hidden_size} -> {config.selector_upsample_factor**2} "
        f"(exact GELU) per low-res patch | none (features) |",
    ]
    return "\n".join(rows)


def _vit_name(config) -> str:
    """"ViT-B/14" and the like for the extractor's size."""
    sizes = {(384, 12): "S", (768, 12): "B", (1024, 24): "L", (1536, 40): "g"}
    ext = config.extractor_config
    size = sizes.get((ext.hidden_size, ext.num_hidden_layers))
    if size is None:
        return f"ViT, hidden {ext.hidden_size}, depth {ext.num_hidden_layers}, patch {config.patch_size}"
    return f"ViT-{size}/{config.patch_size}"


def default_template_path() -> Path:
    """`model_cards/TEMPLATE.md` of a source checkout (the converter falls back to a short card without it)."""
    return Path(__file__).resolve().parents[4] / "model_cards" / "TEMPLATE.md"


_FALLBACK_TEMPLATE = """---
license: ${license}
license_name: ${license_name}
license_link: ${license_link}
library_name: transformers
pipeline_tag: image-feature-extraction
tags:
${tags_yaml}
${base_model_yaml}${datasets_yaml}---

# ${title} (${vit_name}) for transformers

LookWhere (Fuller et al., 2025, arXiv:2505.18051) converted with `lookwhere_hf`. Load it with
`AutoModel.from_pretrained("${repo_id}", trust_remote_code=True)`.

${architecture_table}

${flops_table}

${provenance}
"""


def render_model_card(
    config,
    variant: str,
    repo_id: str = "USER/lookwhere",
    provenance: str | None = None,
    high_res: int | None = None,
    template_path: str | os.PathLike | None = None,
) -> str:
    """Fill the model card template for a converted model.

    Args:
        config: the [`LookWhereConfig`] of the converted model.
        variant: "dinov2", "franca" or "custom".
        repo_id: the Hub repo id used in the usage snippets.
        provenance: markdown describing the conversion (file, hash, versions, self-check); a generic note if None.
        high_res: the image processor's default input size.
        template_path: a template to fill instead of `model_cards/TEMPLATE.md`.
    """
    info = VARIANT_INFO[variant]
    path = Path(template_path) if template_path is not None else default_template_path()
    template = path.read_text(encoding="utf-8") if path.is_file() else _FALLBACK_TEMPLATE
    if template_path is not None and not path.is_file():
        raise ConversionError(f"Model card template {str(path)!r} does not exist.")
    high_res = high_res or config.high_res_size
    tags = [
        "lookwhere",
        "vision",
        "image-feature-extraction",
        "vit",
        "adaptive-computation",
        "token-selection",
        "distillation",
    ] + info["tags"]
    if provenance is None:
        provenance = (
            f"Converted from the official `{info['checkpoint']}` ({ORIGINAL_WEIGHTS}) with\n\n"
            "```bash\n"
            f"python -m lookwhere_hf.models.lookwhere.convert_lookwhere_original_to_hf --checkpoint_path {info['checkpoint']} "
            f"--output_dir {repo_id.split('/')[-1]} --variant {variant if variant != 'custom' else 'auto'}\n"
            "```\n\n"
            "The converter maps every tensor of the original file (and refuses to write a model if any tensor is "
            "left over or any parameter is left empty), then reloads the folder and runs a forward pass on a real "
            "photo. Its numerical parity with the official timm-based forward (selector map, selected patches, CLS, "
            "dense features; max abs error <= 1e-4 in float32) is tested in `tests/test_conversion.py`."
        )
    values = {
        "title": info["title"],
        "teacher": info["teacher"],
        "variant": variant,
        "base_model": info["base_model"] or "",
        "base_model_yaml": f"base_model: {info['base_model']}\n" if info["base_model"] else "",
        "checkpoint": info["checkpoint"],
        "repo_id": repo_id,
        "license": "other",
        "license_name": "lookwhere-upstream",
        "license_link": ORIGINAL_REPO,
        "tags_yaml": "\n".join(f"- {t}" for t in tags),
        "datasets_yaml": "datasets:\n- ILSVRC/imagenet-1k\n" if variant != "custom" else "",
        "vit_name": _vit_name(config),
        "high_res": str(high_res),
        "patch_size": str(config.patch_size),
        "low_res": str(config.low_res_size),
        "pretrain_res": str(config.high_res_size),
        "k_ratio": f"{config.k_ratio:g}",
        "num_prefix": str(config.num_prefix_tokens),
        "num_registers": str(config.selector_config.num_register_tokens),
        "prefix_text": (
            f"CLS and {config.selector_config.num_register_tokens} register tokens"
            if config.selector_config.num_register_tokens
            else "CLS token"
        ),
        "variant_description": info["description"],
        "selector_depth": str(config.selector_config.num_hidden_layers),
        "extractor_depth": str(config.extractor_config.num_hidden_layers),
        "upsample_factor": str(config.selector_upsample_factor),
        "architecture_table": architecture_table(config),
        "flops_table": flops_table(config),
        "provenance": provenance.strip(),
        "original_repo": ORIGINAL_REPO,
        "original_weights": ORIGINAL_WEIGHTS,
        "paper": PAPER,
    }
    try:
        return string.Template(template).substitute(values)
    except (KeyError, ValueError) as err:
        raise ConversionError(
            f"Model card template {str(path)!r} has an unknown or malformed placeholder: {err}."
        ) from None


RELEASE_CARDS = {"dinov2": "lookwhere-dinov2-vitb14.md", "franca": "lookwhere-franca-vitb14.md"}


def release_config(variant: str):
    """The [`LookWhereConfig`] the official `lookwhere_<variant>.pt` converts to (ViT-B/14, selector depth 3 at 154 px,
    extractor depth 12 at 518 px; Franca: SwiGLU MLP, no registers)."""
    from .configuration_lookwhere import EXTRACTOR_DEFAULTS, SELECTOR_DEFAULTS, LookWhereConfig

    if variant not in RELEASE_CARDS:
        raise ValueError(f"variant must be one of {sorted(RELEASE_CARDS)}, got {variant!r}.")
    backbone = {} if variant == "dinov2" else {"use_swiglu_ffn": True, "num_register_tokens": 0, "mlp_ratio": 4}
    return LookWhereConfig(
        selector_config={**SELECTOR_DEFAULTS, **backbone}, extractor_config={**EXTRACTOR_DEFAULTS, **backbone}
    )


def write_release_cards(directory: str | os.PathLike, repo_owner: str = "your-username") -> list[str]:
    """(Re)write `model_cards/lookwhere-{dinov2,franca}-vitb14.md` from the template for the two official releases."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for variant, name in RELEASE_CARDS.items():
        card = render_model_card(release_config(variant), variant, repo_id=f"{repo_owner}/{name[:-3]}")
        (directory / name).write_text(card, encoding="utf-8")
        written.append(str(directory / name))
    return written


# --------------------------------------------------------------------------------------------------- conversion
@dataclass
class ConversionResult:
    """What [`convert_checkpoint`] did."""

    output_dir: str
    variant: str
    config: object
    num_parameters: int
    files: list[str] = field(default_factory=list)
    self_check: dict | None = None
    pushed_to: str | None = None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def self_check(output_dir: str | os.PathLike, reference_model=None, log=print) -> dict:
    """Reload a converted folder with the Auto classes, run it on `skimage.data.astronaut()` and report the outputs.

    If `reference_model` (the in-memory converted model) is given, the reloaded model must reproduce its outputs.
    """
    from skimage import data
    from transformers import AutoImageProcessor, AutoModel

    from . import LookWhereModel  # noqa: F401  (registers the Auto classes)

    start = time.perf_counter()
    model = AutoModel.from_pretrained(output_dir).eval()
    processor = AutoImageProcessor.from_pretrained(output_dir)
    inputs = processor(images=data.astronaut(), return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs, output_dense_features=True)
    grid = (
        inputs["pixel_values"].shape[-2] // model.config.patch_size,
        inputs["pixel_values"].shape[-1] // model.config.patch_size,
    )
    report = {
        "model_class": type(model).__name__,
        "processor_class": type(processor).__name__,
        "pixel_values": tuple(inputs["pixel_values"].shape),
        "low_res_pixel_values": tuple(inputs["low_res_pixel_values"].shape),
        "grid": grid,
        "k": int(outputs.selected_indices.shape[1]),
        "cls_norm": float(outputs.pooler_output.norm()),
        "selector_map_range": (float(outputs.selector_map.min()), float(outputs.selector_map.max())),
        "top_patches_rc": [divmod(int(i), grid[1]) for i in outputs.selected_indices[0, :5]],
        "dense_features": tuple(outputs.dense_features.shape),
        "finite": bool(torch.isfinite(outputs.last_hidden_state).all() and torch.isfinite(outputs.selector_map).all()),
        "seconds": None,
    }
    if not report["finite"]:
        raise ConversionError(f"Self-check failed: the reloaded model from {output_dir} gives non-finite outputs.")
    if reference_model is not None:
        with torch.no_grad():
            ref = reference_model.eval()(**inputs, output_dense_features=True)
        diff = max(
            float((ref.last_hidden_state - outputs.last_hidden_state).abs().max()),
            float((ref.selector_map - outputs.selector_map).abs().max()),
        )
        if not torch.equal(ref.selected_indices, outputs.selected_indices) or diff > 1e-5:
            raise ConversionError(
                f"Self-check failed: the reloaded folder {output_dir} does not reproduce the converted "
                f"model (max abs difference {diff:.3g})."
            )
        report["max_abs_diff_vs_converted"] = diff
    report["seconds"] = round(time.perf_counter() - start, 2)
    log(
        f"Self-check: reloaded {report['model_class']} + {report['processor_class']} from {output_dir}; astronaut photo "
        f"-> pixel_values {report['pixel_values']}, low_res_pixel_values {report['low_res_pixel_values']}; selector "
        f"map over {grid[0]}x{grid[1]} patches (logits {report['selector_map_range'][0]:.2f} .. "
        f"{report['selector_map_range'][1]:.2f}); extractor ran on k={report['k']} patches, first picks (row, col) "
        f"{report['top_patches_rc']}; CLS norm {report['cls_norm']:.3f}; dense features {report['dense_features']}"
        + (
            f"; matches the in-memory model (max abs diff {report['max_abs_diff_vs_converted']:.2g})"
            if "max_abs_diff_vs_converted" in report
            else ""
        )
        + f" [{report['seconds']} s]."
    )
    return report


def push_folder_to_hub(output_dir: str | os.PathLike, repo_id: str, private: bool = False, log=print) -> str:
    """Upload a converted folder to the Hub (`huggingface_hub.create_repo` + `upload_folder`), with clear errors."""
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id or ""):
        raise ConversionError(f"--push_to_hub expects a repo id like 'USER/lookwhere-dinov2-vitb14', got {repo_id!r}.")
    import huggingface_hub
    from huggingface_hub import constants

    later = (
        f"The converted model is complete in {str(output_dir)!r}; upload it later with "
        f"`hf upload {repo_id} {output_dir}` (or `huggingface-cli upload {repo_id} {output_dir}`)."
    )
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "0").upper() in ("1", "ON", "YES", "TRUE"):
        raise ConversionError(f"Cannot push to the Hub: offline mode is on (HF_HUB_OFFLINE). {later}")
    try:
        huggingface_hub.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = huggingface_hub.upload_folder(
            repo_id=repo_id, folder_path=str(output_dir), commit_message="Upload LookWhere converted with lookwhere_hf"
        )
    except Exception as err:  # network, authentication and permission errors all end here
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConversionError(
            f"Pushing to the Hub repo {repo_id!r} failed ({type(err).__name__}: {first_line}). Check your network and "
            f"that you are logged in (`hf auth login`) with write access. {later}"
        ) from None
    url = getattr(info, "commit_url", None) or f"https://huggingface.co/{repo_id}"
    log(f"Pushed {output_dir} to https://huggingface.co/{repo_id} ({url}).")
    return url


def convert_checkpoint(
    checkpoint_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    high_res: int | None = None,
    k_ratio: float = 0.1,
    variant: str = "auto",
    push_to_hub: str | None = None,
    num_attention_heads: int | None = None,
    run_self_check: bool = True,
    card_template: str | os.PathLike | None = None,
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
        run_self_check (`bool`): reload the folder and run it on a real photo.
        card_template (*optional*): a model card template instead of `model_cards/TEMPLATE.md`.
        log: where progress messages go (`print` by default).

    Returns:
        [`ConversionResult`].
    """
    from . import LookWhereImageProcessor, LookWhereModel

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
    checkpoint_path = Path(checkpoint_path)
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ConversionError(f"--output_dir {str(output_dir)!r} exists and is not a directory.")

    log(f"Reading {checkpoint_path} ...")
    checkpoint = load_original_checkpoint(checkpoint_path)
    spec = infer_checkpoint_spec(checkpoint, variant, num_attention_heads)
    patch = spec.extractor.patch_size
    high_res = spec.extractor.image_size if high_res is None else high_res
    if not isinstance(high_res, int) or high_res < patch or high_res % patch:
        raise ConversionError(
            f"--high_res must be a positive multiple of the patch size {patch}, got {high_res!r} "
            f"(e.g. {spec.extractor.image_size} or {2 * spec.extractor.image_size})."
        )
    sel, ext = spec.selector, spec.extractor
    log(
        f"Found the {VARIANT_INFO[spec.variant]['title']} layout: hidden {ext.hidden_size}, {ext.num_attention_heads} "
        f"heads, patch {patch}, {ext.num_register_tokens} registers, {'SwiGLU' if ext.use_swiglu_ffn else 'GELU'} MLP "
        f"(width {ext.mlp_hidden}, mlp_ratio {ext.mlp_ratio:g}); selector {sel.num_hidden_layers} layers at "
        f"{sel.image_size}px ({sel.grid}x{sel.grid} patches), head r={spec.upsample_factor} "
        f"({spec.upsample_factor**2} scores per low-res patch); extractor {ext.num_hidden_layers} layers, position "
        f"embeddings for {ext.image_size}px ({ext.grid}x{ext.grid})."
    )

    config = build_config(spec, k_ratio)
    converted = convert_state_dict(checkpoint, spec)
    model = LookWhereModel(config).eval()
    load_into_model(model, converted)
    num_source = sum(
        len(s) for s in (checkpoint["selector"]["backbone"], checkpoint["selector"]["head"], checkpoint["extractor"])
    )
    num_parameters = sum(p.numel() for p in model.parameters())
    log(
        f"Mapped all {num_source} source tensors onto {len(converted)} LookWhereModel parameters "
        f"({num_parameters / 1e6:.1f}M values); none left over, none missing."
    )

    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    processor = LookWhereImageProcessor(
        size={"height": high_res, "width": high_res},
        low_res_size={"height": config.low_res_size, "width": config.low_res_size},
    )
    processor.save_pretrained(output_dir)

    import transformers

    import lookwhere_hf

    provenance = (
        f"Converted from `{checkpoint_path.name}` (sha256 `{_sha256(checkpoint_path)}`, {checkpoint_path.stat().st_size:,} bytes; "
        f"official weights: {ORIGINAL_WEIGHTS}) on {datetime.date.today().isoformat()} with lookwhere_hf "
        f"{lookwhere_hf.__version__}, transformers {transformers.__version__}, torch {torch.__version__}:\n\n"
        "```bash\n"
        f"python -m lookwhere_hf.models.lookwhere.convert_lookwhere_original_to_hf --checkpoint_path {checkpoint_path.name} "
        f"--output_dir {output_dir.name} --high_res {high_res} --k_ratio {k_ratio:g} --variant {variant}\n"
        "```\n\n"
        f"All {num_source} source tensors were mapped (timm's fused `qkv` split into q/k/v"
        + (", the packed SwiGLU `fc1` split into gate then value halves" if ext.use_swiglu_ffn else "")
        + ", tensors stored in float32); the converter refuses to write a model if any tensor is left over or any "
        "parameter is left empty. Numerical parity with the official timm-based forward is tested in "
        "`tests/test_conversion.py` of lookwhere_hf (max abs error <= 1e-4 in float32)."
    )
    repo_id = push_to_hub or f"USER/{output_dir.name}"
    card = render_model_card(
        config, spec.variant, repo_id=repo_id, provenance=provenance, high_res=high_res, template_path=card_template
    )
    (output_dir / "README.md").write_text(card, encoding="utf-8")
    files = sorted(str(p.relative_to(output_dir)) for p in output_dir.rglob("*") if p.is_file())
    log(f"Wrote {output_dir}: {', '.join(files)}.")

    result = ConversionResult(str(output_dir), spec.variant, config, num_parameters, files)
    if run_self_check:
        result.self_check = self_check(output_dir, reference_model=model, log=log)
    if push_to_hub:
        result.pushed_to = push_folder_to_hub(output_dir, push_to_hub, log=log)
    log(
        f"Done. Load it with AutoModel.from_pretrained({str(output_dir)!r}) after `import lookwhere_hf` "
        "(or with trust_remote_code=True)."
    )
    return result


# --------------------------------------------------------------------------------------------------- CLI
@dataclass
class ConversionArguments:
    """Arguments of `python -m lookwhere_hf.models.lookwhere.convert_lookwhere_original_to_hf`."""

    checkpoint_path: str = field(metadata={"help": "The official lookwhere_dinov2.pt / lookwhere_franca.pt file."})
    output_dir: str = field(metadata={"help": "Folder to write the converted model to."})
    high_res: int | None = field(
        default=None,
        metadata={
            "help": "Default input size of the image processor (a multiple of 14); defaults to the extractor's "
            "pretraining size, 518."
        },
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
    from transformers import HfArgumentParser

    parser = HfArgumentParser(ConversionArguments, description=__doc__.split("\n\n")[0])
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    try:
        convert_checkpoint(
            args.checkpoint_path,
            args.output_dir,
            high_res=args.high_res,
            k_ratio=args.k_ratio,
            variant=args.variant,
            push_to_hub=args.push_to_hub,
            num_attention_heads=args.num_attention_heads,
            run_self_check=not args.skip_self_check,
        )
    except ConversionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


__all__ = [
    "ConversionError",
    "ConversionResult",
    "analytic_flops",
    "convert_checkpoint",
    "convert_state_dict",
    "flops_table",
    "infer_checkpoint_spec",
    "load_original_checkpoint",
    "main",
    "render_model_card",
]


if __name__ == "__main__":
    sys.exit(main())
