"""Convert an official Glance-and-Focus checkpoint (GFNet-Pytorch release, `*.pth.tar`) to a transformers folder.

The release (github.com/blackfeather-wang/GFNet-Pytorch, README and `inference.py`) stores one dict per model:

```
model_name              "resnet50", "mobilenetv3_large_100", ... (a key of the official configs.py)
patch_size              96 / 128 / 144: side of the focus crops, and of the glance view
model_prime_state_dict  global (glance) encoder   \\  saved through nn.DataParallel:
model_state_dict        local (focus) encoder     /   keys prefixed "module."
fc                      network.Full_layer: rnn.{weight,bias}_{ih,hh}_l0 + fc.* (GRU) or fc_2 ... fc_5 (cascade)
policy                  network.ActorCritic: state_encoder.*, gru.*_l0, actor.0.*, critic.0.*
flops                   cumulative Multiply-Adds of stopping after each step (its length is T)
model_flops, policy_flops, fc_flops, anytime_classification (top-1 % per step),
dynamic_threshold       39 x T max-softmax thresholds, one row per exit profile p = k / 20, k = 1 .. 39
budgeted_batch_classification  [Multiply-Adds per profile, top-1 % per profile]
```

Supported backbones:

- **ResNet-50** (`resnet50`): the official `models/resnet.py`, torchvision's layout, onto transformers'
  `ResNetModel` (a rename table: `conv1` / `bn1` -> `embedder.embedder`, `layerS.B.convK` / `bnK` ->
  `encoder.stages.{S-1}.layers.B.layer.{K-1}`, `downsample.0/1` -> `shortcut`). Depths and widths are read off the
  tensors, so reduced variants convert too.
- **MobileNet-V3-Large 1.0** (`mobilenetv3_large_100`): the official `models/mobilenetv3.py` is Ross Wightman's
  `geffnet` MobileNet-V3, whose parameter names timm kept (`conv_stem`, `bn1`, `blocks.S.B.*`, `conv_head`,
  `classifier`), so it maps one-to-one onto timm's `mobilenetv3_large_100` inside transformers' `TimmWrapperModel`
  (`timm_model.` + the same name). We picked it over EfficientNet (transformers' EfficientNet pads like TensorFlow,
  the official one like PyTorch) and RegNet (pycls names, a longer table) because it needs no renaming at all, and
  because MobileNet-V3 is the paper's headline (latency on a phone).

Semantics carried over (see `modeling_glance_focus.py`): the glance view is the normalized image resized to
`patch_size` with `align_corners=True` (bicubic for both), crops at `floor(a * (side - patch))`, the policy's mean at
test time, step-0 logits from the GRU classifier (ResNet) or from the glance encoder's own `classifier`
(MobileNet-V3), the cascade classifier `fc_{t+1}` on the concatenated step features (MobileNet-V3). One change of
presentation: the official actor outputs `(row, column)`, ours `(x, y)`, so the actor's two output rows are swapped.
The cascade's `fc_{T+1} .. fc_5` (never used by a `T`-step model) are not carried over; the converter says so.

The stored results go into the config's budget fields: `budget_rung_gflops` from `flops` (2 FLOPs per Multiply-Add),
and with `--budget_gflops` the thresholds of the most accurate stored exit profile whose recorded cost fits that
budget (`budget_thresholds`, `budget_expected_gflops`, `budget_calibration_accuracy`), so that
`pipeline("image-classification")` runs budgeted inference with the release's own thresholds.

Usage:

```bash
python -m lookwhere_hf.models.glance_focus.convert_gfnet_original_to_hf \
    --checkpoint_path resnet50_patch_size_96_T_5.pth.tar --output_dir gfnet-resnet50-96 [--budget_gflops 2.0] \
    [--flops_unit auto|madds|mega_madds|giga_madds] [--push_to_hub USER/gfnet-resnet50-96]
lookwhere-hf convert-gfnet --checkpoint_path ... --output_dir ...     # the same
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
from transformers import ResNetConfig, TimmWrapperConfig

from ...budget import NEVER_EXIT
from ..conversion_utils import ConversionError, first_line, name_listing, push_folder_to_hub, run_converter
from .configuration_glance_focus import GlanceFocusConfig
from .image_processing_glance_focus import GlanceFocusImageProcessor
from .modeling_glance_focus import GlanceFocusForImageClassification

ORIGINAL_CODE = "https://github.com/blackfeather-wang/GFNet-Pytorch"
# What the official configs.py says about the backbones we convert (the rest is read off the tensors).
BACKBONES = {
    "resnet50": {
        "image_size": 224,
        "glance_interpolation": "bicubic",
        "glance_logits": "classifier",
        "encoder_loss_weight": 1.0,
        "classifier_dropout": 0.0,
    },
    "mobilenetv3_large_100": {
        "image_size": 224,
        "glance_interpolation": "bicubic",
        "glance_logits": "glance_head",
        "encoder_loss_weight": 5.0,
        "classifier_dropout": 0.2,
    },
}
ENCODER_PARTS = (("model_prime_state_dict", "glance"), ("model_state_dict", "focus"))
FLOPS_UNITS = {"madds": 1.0, "mega_madds": 1e6, "giga_madds": 1e9}
DATA_PARALLEL_PREFIX = "module."


# --------------------------------------------------------------------------------------------------- reading
def load_original_checkpoint(checkpoint_path: str | os.PathLike, allow_pickle: bool = False) -> dict:
    """Read an official GFNet checkpoint (`torch.load`, `weights_only=True` unless `allow_pickle`), strip the
    `nn.DataParallel` prefix of the encoders' keys and check the layout.

    Raises:
        ConversionError: the file is missing, not a PyTorch file, truncated, holds objects other than tensors and
            plain containers (without `allow_pickle`), or is not laid out like an official GFNet checkpoint.
    """
    path = Path(checkpoint_path)
    official = f"Pass a GFNet checkpoint from the official release ({ORIGINAL_CODE}, 'Pre-trained Models')."
    if not path.exists():
        raise ConversionError(f"Checkpoint file {str(path)!r} does not exist. {official}")
    if path.is_dir():
        hint = (
            " It looks like an already converted folder: load it with from_pretrained."
            if (path / "config.json").is_file()
            else ""
        )
        raise ConversionError(f"{str(path)!r} is a directory; --checkpoint_path must be the .pth.tar file.{hint}")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as err:
        if magic[:2] == b"PK" or magic[:1] == b"\x80":
            raise ConversionError(
                f"{str(path)!r} holds Python objects other than tensors and plain containers ({first_line(err)}). "
                "If you trust the file (e.g. downloaded from the official release links), pass --allow_pickle to "
                "unpickle it."
            ) from None
        raise ConversionError(f"{str(path)!r} is not a PyTorch checkpoint ({first_line(err)}). {official}") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError, IndexError) as err:
        state = "is truncated or corrupted" if magic == b"PK\x03\x04" else "is not a PyTorch checkpoint"
        raise ConversionError(f"{str(path)!r} {state} ({first_line(err)}). {official}") from None
    return normalize_checkpoint(checkpoint, str(path))


def normalize_checkpoint(checkpoint, name: str = "the checkpoint") -> dict:
    """Check the top-level layout and return a copy whose state dicts have plain (unprefixed) keys."""
    if not isinstance(checkpoint, dict):
        raise ConversionError(f"{name} holds a {type(checkpoint).__name__}, not the dict of an official checkpoint.")
    required = [part for part, _ in ENCODER_PARTS] + ["fc", "policy"]
    missing = [key for key in required if key not in checkpoint]
    if missing:
        hint = ""
        if "policy" in missing and "fc" in checkpoint:
            hint = (
                " A stage-1 training checkpoint has no trained policy; convert a stage-2 or stage-3 checkpoint "
                "(or the released files)."
            )
        raise ConversionError(
            f"{name} lacks {missing} (it has {name_listing(checkpoint)}); an official GFNet checkpoint has "
            f"{required} plus model_name, patch_size and flops.{hint}"
        )
    normalized = dict(checkpoint)
    for key in required:
        state = checkpoint[key]
        if not isinstance(state, dict) or not state:
            raise ConversionError(f"{name}[{key!r}] must be a non-empty state dict, got {type(state).__name__}.")
        not_tensors = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
        if not_tensors:
            raise ConversionError(f"{name}[{key!r}] holds non-tensor entries: {name_listing(not_tensors)}.")
        if all(str(k).startswith(DATA_PARALLEL_PREFIX) for k in state):
            state = {k[len(DATA_PARALLEL_PREFIX) :]: v for k, v in state.items()}
        normalized[key] = state
    return normalized


# --------------------------------------------------------------------------------------------------- architecture
@dataclass
class OfficialArchitecture:
    """What one official checkpoint is, read off its metadata and tensor shapes."""

    model_name: str
    patch_size: int
    num_steps: int
    num_labels: int
    feature_size: int
    state_channels: int
    state_grid: int
    policy_conv: bool
    policy_conv_channels: int
    policy_mlp_size: int
    policy_hidden_size: int
    classifier_type: str
    classifier_hidden_size: int
    resnet_depths: tuple[int, ...] | None = None
    resnet_hidden_sizes: tuple[int, ...] | None = None
    resnet_embedding_size: int | None = None


def _shape(state: dict, key: str, part: str) -> tuple[int, ...]:
    if key not in state:
        raise ConversionError(f"{part} lacks {key!r}; it is not laid out like the official code's {part}.")
    return tuple(state[key].shape)


def _resnet_layout(state: dict, part: str) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """Depths, stage widths and stem width of a torchvision-layout Bottleneck ResNet."""
    blocks: dict[int, set[int]] = {}
    for key in state:
        if match := re.match(r"layer(\d+)\.(\d+)\.", key):
            blocks.setdefault(int(match[1]), set()).add(int(match[2]))
    if sorted(blocks) != [1, 2, 3, 4] or any(sorted(b) != list(range(len(b))) for b in blocks.values()):
        raise ConversionError(
            f"{part}: expected the four stages layer1 ... layer4 of a ResNet with blocks numbered from 0, found "
            f"{ {k: sorted(v) for k, v in sorted(blocks.items())} }."
        )
    if "layer1.0.conv3.weight" not in state:
        raise ConversionError(f"{part}: no layer1.0.conv3; only Bottleneck ResNets (ResNet-50 and up) are supported.")
    depths = tuple(len(blocks[s]) for s in (1, 2, 3, 4))
    widths = tuple(_shape(state, f"layer{s}.0.conv3.weight", part)[0] for s in (1, 2, 3, 4))
    stem = _shape(state, "conv1.weight", part)[0]
    return depths, widths, stem


def read_architecture(
    checkpoint: dict, model_name: str | None = None, patch_size: int | None = None, num_steps: int | None = None
) -> OfficialArchitecture:
    """The [`OfficialArchitecture`] of a normalized checkpoint. `model_name`, `patch_size` and `num_steps` are taken
    from the file (`model_name`, `patch_size`, `len(flops)`) unless given; given values must agree with the file."""
    for key, given in (("model_name", model_name), ("patch_size", patch_size)):
        stored = checkpoint.get(key)
        if given is not None and stored is not None and given != stored:
            raise ConversionError(f"--{key} {given!r} contradicts the checkpoint's {key} {stored!r}; drop the flag.")
    model_name = model_name if model_name is not None else checkpoint.get("model_name")
    patch_size = patch_size if patch_size is not None else checkpoint.get("patch_size")
    if model_name is None or patch_size is None:
        raise ConversionError(
            "The checkpoint does not say its model_name / patch_size (a training checkpoint, not a released one): "
            "pass --model_name and --patch_size (and --num_steps)."
        )
    if model_name not in BACKBONES:
        raise ConversionError(
            f"model_name {model_name!r} is not supported; this converter handles {sorted(BACKBONES)}. (The release's "
            "DenseNet, RegNet, EfficientNet and MobileNet-V3 1.25 checkpoints need their own rename tables.)"
        )
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
        raise ConversionError(f"patch_size must be a positive int, got {patch_size!r}.")
    flops = checkpoint.get("flops")
    if num_steps is None:
        if flops is None:
            raise ConversionError("The checkpoint has no `flops` list, whose length is T: pass --num_steps.")
        num_steps = len(flops)
    elif flops is not None and len(flops) != num_steps:
        raise ConversionError(f"--num_steps {num_steps} contradicts the checkpoint's {len(flops)} `flops` entries.")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ConversionError(f"num_steps must be an int >= 1, got {num_steps!r}.")

    fc, policy, encoder = checkpoint["fc"], checkpoint["policy"], checkpoint["model_state_dict"]
    if "rnn.weight_ih_l0" in fc:
        classifier_type = "gru"
        gates, feature_size = _shape(fc, "rnn.weight_ih_l0", "fc")
        classifier_hidden = gates // 3
        num_labels = _shape(fc, "fc.weight", "fc")[0]
    elif "fc_2.weight" in fc:
        classifier_type = "concat"
        num_labels, double = _shape(fc, "fc_2.weight", "fc")
        feature_size, classifier_hidden = double // 2, GlanceFocusConfig.classifier_hidden_size  # unused by a cascade
        lengths = sorted(int(m[1]) for key in fc if (m := re.fullmatch(r"fc_(\d+)\.weight", key)))
        if num_steps > max(lengths):
            raise ConversionError(
                f"The cascade classifier has heads for up to {max(lengths)} steps (fc_2 ... fc_{max(lengths)}), not "
                f"for num_steps={num_steps}."
            )
    else:
        raise ConversionError(
            f"fc has neither a GRU (rnn.weight_ih_l0) nor a cascade (fc_2.weight); its keys: {name_listing(fc)}."
        )

    # The encoders' last feature map, which the policy reads: ResNet layer4's output, MobileNet-V3's blocks' output
    # (conv_head's input).
    resnet = None
    if model_name == "resnet50":
        layouts = {part: _resnet_layout(checkpoint[part], part) for part, _ in ENCODER_PARTS}
        if len(set(layouts.values())) != 1:
            raise ConversionError(f"The glance and focus ResNets differ in depth or width: {layouts}.")
        resnet = layouts["model_state_dict"]
        map_channels = pooled = resnet[1][-1]
        expected_classifier = "gru"
    else:
        pooled, map_channels = _shape(encoder, "conv_head.weight", "model_state_dict")[:2]
        expected_classifier = "concat"
    if pooled != feature_size or classifier_type != expected_classifier:
        raise ConversionError(
            f"A GFNet {model_name} has a {expected_classifier} classifier on its {pooled}-wide pooled feature; this "
            f"checkpoint's classifier is a {classifier_type} on {feature_size} features."
        )

    policy_conv = len(_shape(policy, "state_encoder.0.weight", "policy")) == 4
    state_grid = math.ceil(patch_size / 32)  # the official state_dim: channels * ceil(p / 32) ** 2
    if policy_conv:
        conv_channels, state_channels = _shape(policy, "state_encoder.0.weight", "policy")[:2]
        policy_hidden, flat = _shape(policy, "state_encoder.3.weight", "policy")
        mlp_size, per_position = 2048, conv_channels
    else:
        mlp_size, flat = _shape(policy, "state_encoder.0.weight", "policy")
        policy_hidden = _shape(policy, "state_encoder.2.weight", "policy")[0]
        conv_channels, state_channels = 32, map_channels
        per_position = map_channels
    if state_channels != map_channels:
        raise ConversionError(
            f"The policy reads {state_channels}-channel feature maps, but the encoders' maps have {map_channels}."
        )
    if flat != per_position * state_grid**2:
        raise ConversionError(
            f"The policy's state encoder reads {flat} values, but a {patch_size} px crop gives a "
            f"{state_grid}x{state_grid} feature map ({per_position * state_grid**2} values): is patch_size "
            f"{patch_size} right?"
        )

    arch = OfficialArchitecture(
        model_name=model_name,
        patch_size=patch_size,
        num_steps=num_steps,
        num_labels=num_labels,
        feature_size=feature_size,
        state_channels=state_channels,
        state_grid=state_grid,
        policy_conv=policy_conv,
        policy_conv_channels=conv_channels,
        policy_mlp_size=mlp_size,
        policy_hidden_size=policy_hidden,
        classifier_type=classifier_type,
        classifier_hidden_size=classifier_hidden,
    )
    if resnet is not None:
        arch.resnet_depths, arch.resnet_hidden_sizes, arch.resnet_embedding_size = resnet
    return arch


def backbone_config(arch: OfficialArchitecture):
    """The transformers config of the encoders."""
    if arch.model_name == "resnet50":
        return ResNetConfig(
            num_channels=3,
            embedding_size=arch.resnet_embedding_size,
            hidden_sizes=list(arch.resnet_hidden_sizes),
            depths=list(arch.resnet_depths),
            layer_type="bottleneck",
            hidden_act="relu",
            downsample_in_first_stage=False,
            downsample_in_bottleneck=False,
        )
    # The official model is built with drop_rate 0.2 (applied to the head feature: our classifier_dropout) and
    # drop_connect_rate 0.2 (timm's drop_path_rate); both act in training only.
    return TimmWrapperConfig(architecture=arch.model_name, model_args={"drop_path_rate": 0.2})


def build_config(arch: OfficialArchitecture, **budget) -> GlanceFocusConfig:
    """The [`GlanceFocusConfig`] of an official architecture (plus `budget_*` fields)."""
    facts = BACKBONES[arch.model_name]
    return GlanceFocusConfig(
        backbone_config=backbone_config(arch),
        num_labels=arch.num_labels,
        image_size=facts["image_size"],
        patch_size=arch.patch_size,
        glance_size=None,  # the official glance view is patch_size wide
        glance_interpolation=facts["glance_interpolation"],
        num_steps=arch.num_steps,
        classifier_type=arch.classifier_type,
        classifier_hidden_size=arch.classifier_hidden_size,
        glance_logits=facts["glance_logits"],
        policy_conv=arch.policy_conv,
        policy_conv_channels=arch.policy_conv_channels,
        policy_mlp_size=arch.policy_mlp_size,
        policy_hidden_size=arch.policy_hidden_size,
        encoder_loss_weight=facts["encoder_loss_weight"],
        classifier_dropout=facts["classifier_dropout"],
        **budget,
    )


# --------------------------------------------------------------------------------------------------- renaming
def resnet_rename_table(depths) -> list[tuple[str, str]]:
    """`(official key, transformers ResNetModel key)` of one torchvision-layout Bottleneck ResNet (no head)."""
    norm = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    table = [("conv1.weight", "embedder.embedder.convolution.weight")]
    table += [(f"bn1.{k}", f"embedder.embedder.normalization.{k}") for k in norm]
    for stage, depth in enumerate(depths):
        for block in range(depth):
            src, dst = f"layer{stage + 1}.{block}.", f"encoder.stages.{stage}.layers.{block}."
            for index in range(3):
                table.append((f"{src}conv{index + 1}.weight", f"{dst}layer.{index}.convolution.weight"))
                table += [(f"{src}bn{index + 1}.{k}", f"{dst}layer.{index}.normalization.{k}") for k in norm]
            if block == 0:
                table.append((f"{src}downsample.0.weight", f"{dst}shortcut.convolution.weight"))
                table += [(f"{src}downsample.1.{k}", f"{dst}shortcut.normalization.{k}") for k in norm]
    return table


def encoder_rename_table(arch: OfficialArchitecture, state: dict) -> tuple[list[tuple[str, str]], str]:
    """`(official key, backbone key)` pairs of one encoder and the name of its own classifier head."""
    if arch.model_name == "resnet50":
        return resnet_rename_table(arch.resnet_depths), "fc"
    head = "classifier"
    return [(key, f"timm_model.{key}") for key in state if not key.startswith(f"{head}.")], head


def policy_rename_table(arch: OfficialArchitecture) -> list[tuple[str, str]]:
    """`(official ActorCritic key, GlanceFocusPolicy key)`; the state encoder keeps its module indices."""
    encoder = (
        ["state_encoder.0.weight", "state_encoder.3.weight", "state_encoder.3.bias"]
        if arch.policy_conv
        else [f"state_encoder.{i}.{k}" for i in (0, 2) for k in ("weight", "bias")]
    )
    table = [(key, key) for key in encoder]
    table += [(f"gru.{k}_l0", f"gru.{k}") for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    table += [(f"{m}.0.{k}", f"{m}.0.{k}") for m in ("actor", "critic") for k in ("weight", "bias")]
    return table


def classifier_rename_table(arch: OfficialArchitecture) -> list[tuple[str, str]]:
    """`(official Full_layer key, GlanceFocusClassifier key)` of the parts a `num_steps` model uses."""
    if arch.classifier_type == "gru":
        table = [(f"rnn.{k}_l0", f"rnn.{k}") for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        return table + [(f"fc.{k}", f"fc.{k}") for k in ("weight", "bias")]
    return [(f"fc_{n}.{k}", f"fc_{n}.{k}") for n in range(2, arch.num_steps + 1) for k in ("weight", "bias")]


def convert_state_dict(
    checkpoint: dict, arch: OfficialArchitecture, target_shapes: dict[str, torch.Size]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Every tensor of a normalized official checkpoint renamed for [`GlanceFocusForImageClassification`], with
    strict accounting against `target_shapes` (the model's `state_dict()` shapes). Returns the state dict and the
    official keys deliberately left out (the cascade heads a `num_steps` model never uses).

    Raises:
        ConversionError: a tensor is missing or of the wrong shape, a tensor has no place in the model, or a model
            tensor is left empty.
    """
    parts = []
    for part, role in ENCODER_PARTS:
        table, head = encoder_rename_table(arch, checkpoint[part])
        table = [(src, f"{role}_encoder.backbone.{dst}") for src, dst in table]
        table += [(f"{head}.{k}", f"{role}_head.{k}") for k in ("weight", "bias")]
        parts.append((part, table))
    parts.append(("policy", [(src, f"policy.{dst}") for src, dst in policy_rename_table(arch)]))
    parts.append(("fc", [(src, f"classifier.{dst}") for src, dst in classifier_rename_table(arch)]))
    unknown = [dst for _, table in parts for _, dst in table if dst not in target_shapes]
    if unknown:  # the tables and the model disagree: a bug here, not a bad checkpoint
        raise RuntimeError(f"The rename tables name tensors the model does not have: {name_listing(unknown)}.")

    converted, leftover, skipped = {}, [], []
    for part, table in parts:
        state = checkpoint[part]
        missing = [src for src, _ in table if src not in state]
        if missing:
            raise ConversionError(
                f"{part} lacks {name_listing(missing)}: every tensor of the official layout is needed."
            )
        wrong = [
            f"{src}: {tuple(state[src].shape)} (expected {tuple(target_shapes[dst])})"
            for src, dst in table
            if tuple(state[src].shape) != tuple(target_shapes[dst])
        ]
        if wrong:
            raise ConversionError(f"{part} has tensors of the wrong shape: " + "; ".join(wrong))
        for src, dst in table:
            tensor = state[src].detach()
            converted[dst] = (tensor if not tensor.is_floating_point() else tensor.to(torch.float32)).contiguous()
        used = {src for src, _ in table}
        for key in state:
            if key in used:
                continue
            unused_head = part == "fc" and re.fullmatch(r"fc_(\d+)\.(weight|bias)", key)
            if unused_head and int(unused_head[1]) > arch.num_steps:
                skipped.append(f"fc.{key}")
            else:
                leftover.append(f"{part}.{key}")
    if leftover:
        raise ConversionError(
            f"{len(leftover)} tensor(s) of the checkpoint have no place in the model, so converting would silently "
            f"drop them: {name_listing(leftover)}. This is not the official {arch.model_name} layout."
        )
    # The official actor outputs (row, column); ours (x, y) = (column, row).
    for key in ("policy.actor.0.weight", "policy.actor.0.bias"):
        converted[key] = converted[key].flip(0).contiguous()
    unfilled = sorted(set(target_shapes) - set(converted))
    if unfilled:
        raise ConversionError(f"The checkpoint leaves model tensors empty: {name_listing(unfilled)}.")
    return converted, skipped


# --------------------------------------------------------------------------------------------------- budget
def _number_list(value, name: str) -> list[float]:
    """A stored list of numbers (a list / tuple of Python, NumPy or 0-d torch numbers, or a 1-d tensor / array) as
    floats."""
    if hasattr(value, "tolist") and not isinstance(value, (list, tuple)):  # a torch tensor or a NumPy array
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not value:
        raise ConversionError(
            f"The checkpoint's {name} must be a non-empty list of numbers, got {type(value).__name__}."
        )
    out = []
    for item in value:
        try:
            number = float(item)  # Python, NumPy and 0-d torch numbers
        except (TypeError, ValueError, RuntimeError):
            number = None
        if isinstance(item, (bool, str, bytes)) or number is None or not math.isfinite(number):
            raise ConversionError(f"The checkpoint's {name} holds a non-number {item!r}.")
        out.append(number)
    return out


def flops_scale(flops: list[float], flops_unit: str = "auto") -> tuple[float, str]:
    """Multiply-Adds per stored unit, and the unit's name. `auto` reads it off the magnitude: a GFNet step costs
    between ~3e7 (MobileNet-V3 glance) and ~2e9 (ResNet-50 at 144 px) Multiply-Adds, and a whole sequence less than
    ~1.5e10, so values above 1e5 are raw counts, values in [15, 1e5] millions, values below 15 billions."""
    if flops_unit != "auto":
        if flops_unit not in FLOPS_UNITS:
            raise ConversionError(f"--flops_unit must be auto or one of {sorted(FLOPS_UNITS)}, got {flops_unit!r}.")
        return FLOPS_UNITS[flops_unit], flops_unit
    top = max(flops)
    unit = "madds" if top > 1e5 else "mega_madds" if top >= 15 else "giga_madds"
    return FLOPS_UNITS[unit], unit


def budget_fields(
    checkpoint: dict,
    arch: OfficialArchitecture,
    budget_gflops: float | None = None,
    flops_unit: str = "auto",
    log=print,
) -> dict:
    """The config's `budget_*` fields from the release's stored results (see the module docstring)."""
    if "flops" not in checkpoint:
        if budget_gflops is not None:
            raise ConversionError("--budget_gflops needs the checkpoint's flops and dynamic_threshold; it has neither.")
        return {}
    flops = _number_list(checkpoint["flops"], "flops")
    scale, unit = flops_scale(flops, flops_unit)
    rung_gflops = [2.0 * f * scale / 1e9 for f in flops]
    fields = {"budget_rung_gflops": rung_gflops, "budget_image_size": [BACKBONES[arch.model_name]["image_size"]] * 2}
    log(
        f"Stored cost per step (read as {unit}; 2 FLOPs per Multiply-Add): "
        + ", ".join(f"{g:.3f}" for g in rung_gflops)
        + " GFLOPs (cumulative)."
    )
    if "anytime_classification" in checkpoint:
        accuracy = _number_list(checkpoint["anytime_classification"], "anytime_classification")
        log("Stored anytime top-1 per step (ImageNet val): " + ", ".join(f"{a:.2f}%" for a in accuracy) + ".")
    if budget_gflops is None:
        return fields
    if not isinstance(budget_gflops, (int, float)) or not budget_gflops > 0:
        raise ConversionError(f"--budget_gflops must be a positive number of GFLOPs per image, got {budget_gflops!r}.")
    for key in ("dynamic_threshold", "budgeted_batch_classification"):
        if key not in checkpoint:
            raise ConversionError(f"--budget_gflops needs the checkpoint's {key}, which it lacks.")
    table = checkpoint["dynamic_threshold"]
    table = [
        _number_list(row, "dynamic_threshold's rows") for row in (table.tolist() if hasattr(table, "tolist") else table)
    ]
    profile_flops, profile_accuracy = (
        _number_list(values, f"budgeted_batch_classification[{i}]")
        for i, values in enumerate(checkpoint["budgeted_batch_classification"][:2])
    )
    if not (len(table) == len(profile_flops) == len(profile_accuracy)) or any(
        len(row) != arch.num_steps for row in table
    ):
        raise ConversionError(
            f"dynamic_threshold ({len(table)} rows) and budgeted_batch_classification ({len(profile_flops)}, "
            f"{len(profile_accuracy)} entries) must describe the same exit profiles, with {arch.num_steps} "
            "thresholds per row."
        )
    costs = [2.0 * f * scale / 1e9 for f in profile_flops]
    fitting = [i for i, cost in enumerate(costs) if cost <= budget_gflops]
    if not fitting:
        raise ConversionError(
            f"No stored exit profile fits {budget_gflops} GFLOPs per image; the cheapest costs {min(costs):.3f} "
            f"GFLOPs. Pass a larger --budget_gflops, or calibrate your own with lookwhere_hf.budget.calibrate_budget."
        )
    best = max(fitting, key=lambda i: (profile_accuracy[i], -costs[i]))
    # Above 1 (the official 1e8: no image exits there) -> NEVER_EXIT; below 0 (every image exits) -> 0.
    thresholds = [NEVER_EXIT if t > 1.0 else max(t, 0.0) for t in table[best][:-1]]
    log(
        f"Budget {budget_gflops} GFLOPs: stored exit profile p = {(best + 1) / 20:.2f} (row {best}), "
        f"{costs[best]:.3f} GFLOPs and {profile_accuracy[best]:.2f}% top-1 as recorded; thresholds {thresholds}."
    )
    return {
        **fields,
        "budget_thresholds": thresholds,
        "budget_target_gflops": float(budget_gflops),
        "budget_expected_gflops": costs[best],
        "budget_calibration_accuracy": profile_accuracy[best] / 100.0,
    }


# --------------------------------------------------------------------------------------------------- check + push
@torch.no_grad()
def self_check(output_dir: str | os.PathLike, converted: GlanceFocusForImageClassification, log=print) -> dict:
    """Reload the folder with the Auto classes, run it on `skimage.data.astronaut()` through its saved image
    processor with every step, and require finite per-step logits equal to the in-memory converted model's, the same
    crop boxes, and boxes that follow the official rule `floor(a * (side - patch))` from the reported centres."""
    from skimage import data
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from .modeling_glance_focus import crop_boxes_from_centers

    model = AutoModelForImageClassification.from_pretrained(output_dir).eval()
    inputs = AutoImageProcessor.from_pretrained(output_dir)(images=data.astronaut(), return_tensors="pt")
    outputs = model(**inputs, anytime=True)
    reference = converted.eval()(**inputs, anytime=True)
    logits, expected = outputs.rung_logits, reference.rung_logits
    finite = bool(torch.isfinite(logits).all())
    diff = float((logits - expected).abs().max())
    height, width = inputs["pixel_values"].shape[-2:]
    rule = crop_boxes_from_centers(outputs.crop_centers, height, width, model.config.patch_size)
    same_boxes = torch.equal(outputs.crop_boxes, reference.crop_boxes) and torch.equal(outputs.crop_boxes, rule)
    # Same weights and input, but float32 kernels may sum in another order (their SIMD paths depend on the tensors'
    # memory alignment, which differs after reloading): a few ulps per layer, far below 1e-4 of the logits' scale,
    # which any misplaced tensor exceeds by orders of magnitude.
    scale = max(1.0, float(expected.abs().max()))
    if not finite or not same_boxes or diff > 1e-4 * scale:
        raise ConversionError(
            f"Self-check failed: the reloaded folder {output_dir} does not reproduce the converted model (finite "
            f"logits: {finite}, same crop boxes: {same_boxes}, max abs logit difference {diff:.3g})."
        )
    boxes = outputs.crop_boxes[0].tolist()
    report = {"crop_boxes": boxes, "top1_per_step": [int(s.argmax()) for s in logits[:, 0]], "max_abs_diff": diff}
    log(
        f"Self-check: reloaded {type(model).__name__} from {output_dir}; astronaut photo -> focus crops (x0, y0, x1, "
        f"y1) {boxes}, top-1 class per step {report['top1_per_step']}; matches the converted model."
    )
    return report


# --------------------------------------------------------------------------------------------------- conversion
@dataclass
class ConversionResult:
    """What [`convert_checkpoint`] did."""

    output_dir: str
    architecture: OfficialArchitecture
    config: GlanceFocusConfig
    num_parameters: int
    skipped: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    self_check: dict | None = None
    pushed_to: str | None = None


def convert_checkpoint(
    checkpoint_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    budget_gflops: float | None = None,
    flops_unit: str = "auto",
    model_name: str | None = None,
    patch_size: int | None = None,
    num_steps: int | None = None,
    allow_pickle: bool = False,
    push_to_hub: str | None = None,
    run_self_check: bool = True,
    log=print,
) -> ConversionResult:
    """Convert an official GFNet checkpoint into a `save_pretrained` folder (model, image processor).

    Args:
        checkpoint_path: a released `*.pth.tar` (or a stage-2/3 training checkpoint with `model_name`, `patch_size`
            and `num_steps` given).
        output_dir: the folder to write (created; files of the same names are overwritten).
        budget_gflops (`float`, *optional*): pick the stored exit thresholds for this mean cost per image.
        flops_unit (`str`): unit of the stored Multiply-Adds, `auto` (from the magnitude) or one of `FLOPS_UNITS`.
        model_name, patch_size, num_steps: for checkpoints that do not store them.
        allow_pickle (`bool`): unpickle objects other than tensors (only for files you trust).
        push_to_hub (`str`, *optional*): a Hub repo id to upload the folder to after the self-check.
        run_self_check (`bool`): reload the folder and run it on a real photo ([`self_check`]).
        log: where progress messages go (`print` by default).
    """
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
    checkpoint = load_original_checkpoint(checkpoint_path, allow_pickle=allow_pickle)
    arch = read_architecture(checkpoint, model_name, patch_size, num_steps)
    log(
        f"Found {arch.model_name}: {arch.num_steps} steps, {arch.patch_size} px crops and glance view, "
        f"{arch.num_labels} classes, {arch.classifier_type} classifier on {arch.feature_size} features, policy "
        f"{'conv' if arch.policy_conv else 'MLP'} state encoder on a {arch.state_channels}x{arch.state_grid}x"
        f"{arch.state_grid} map, hidden {arch.policy_hidden_size}"
        + (f", ResNet depths {list(arch.resnet_depths)}" if arch.resnet_depths else "")
        + "."
    )
    config = build_config(arch, **budget_fields(checkpoint, arch, budget_gflops, flops_unit, log=log))

    with torch.device("meta"):  # no random initialisation: every tensor comes from the checkpoint
        model = GlanceFocusForImageClassification(config).eval()
    target_shapes = {name: tensor.shape for name, tensor in model.state_dict().items()}
    state_dict, skipped = convert_state_dict(checkpoint, arch, target_shapes)
    model.load_state_dict(state_dict, strict=True, assign=True)
    left_on_meta = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if left_on_meta:  # e.g. a non-persistent buffer, which no state dict fills
        raise RuntimeError(f"Tensors without values after loading the checkpoint: {name_listing(left_on_meta)}.")
    num_parameters = sum(p.numel() for p in model.parameters())
    log(
        f"Mapped {len(state_dict)} tensors onto the model ({num_parameters / 1e6:.1f}M values); none missing."
        + (f" Left out, as a {arch.num_steps}-step model never uses them: {name_listing(skipped)}." if skipped else "")
    )

    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    GlanceFocusImageProcessor.from_model_config(config).save_pretrained(output_dir)
    files = sorted(str(p.relative_to(output_dir)) for p in output_dir.rglob("*") if p.is_file())
    log(f"Wrote {output_dir}: {', '.join(files)}.")

    result = ConversionResult(str(output_dir), arch, config, num_parameters, skipped, files)
    if run_self_check:
        result.self_check = self_check(output_dir, model, log=log)
    if push_to_hub:
        result.pushed_to = push_folder_to_hub(output_dir, push_to_hub, log=log, commit_message="Upload GFNet")
    log(
        f"Done. Load it with AutoModelForImageClassification.from_pretrained({str(output_dir)!r}) after "
        "`import lookwhere_hf`."
    )
    return result


@dataclass
class ConversionArguments:
    """Arguments of `python -m lookwhere_hf.models.glance_focus.convert_gfnet_original_to_hf`."""

    checkpoint_path: str = field(metadata={"help": "An official GFNet checkpoint (*.pth.tar)."})
    output_dir: str = field(metadata={"help": "Folder to write the converted model to."})
    budget_gflops: float | None = field(
        default=None,
        metadata={"help": "Use the stored exit thresholds of the most accurate profile within this many GFLOPs/image."},
    )
    flops_unit: str = field(
        default="auto",
        metadata={"help": "Unit of the stored Multiply-Adds.", "choices": ["auto", *FLOPS_UNITS]},
    )
    model_name: str | None = field(default=None, metadata={"help": "For checkpoints without model_name."})
    patch_size: int | None = field(default=None, metadata={"help": "For checkpoints without patch_size."})
    num_steps: int | None = field(default=None, metadata={"help": "For checkpoints without flops (T)."})
    allow_pickle: bool = field(
        default=False, metadata={"help": "Unpickle Python objects other than tensors (only files you trust)."}
    )
    push_to_hub: str | None = field(default=None, metadata={"help": "Hub repo id (USER/NAME) to upload the folder to."})
    skip_self_check: bool = field(default=False, metadata={"help": "Do not reload the folder and run it on a photo."})


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 on success, 2 on a conversion error)."""
    return run_converter(ConversionArguments, convert_checkpoint, argv, __doc__.split("\n\n")[0])


__all__ = [
    "ConversionError",
    "ConversionResult",
    "OfficialArchitecture",
    "budget_fields",
    "build_config",
    "convert_checkpoint",
    "convert_state_dict",
    "load_original_checkpoint",
    "main",
    "read_architecture",
]


if __name__ == "__main__":
    sys.exit(main())
