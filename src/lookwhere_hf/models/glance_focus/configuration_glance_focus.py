"""Glance-and-Focus (GFNet) model configuration."""

from __future__ import annotations

import math

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

# Backbones whose `last_hidden_state` is a `(batch, channels, height, width)` feature map.
CONV_BACKBONES = (
    "bit",
    "convnext",
    "convnextv2",
    "efficientnet",
    "mobilenet_v1",
    "mobilenet_v2",
    "regnet",
    "resnet",
    "timm_wrapper",
)
# Vision transformers whose `last_hidden_state` holds prefix tokens (CLS, registers) then the patch tokens, row-major;
# the patch tokens are reshaped into the feature map.
VIT_BACKBONES = ("dinov2", "dinov2_with_registers", "vit")
GLANCE_INTERPOLATIONS = ("bicubic", "bilinear")
CLASSIFIER_TYPES = ("gru", "concat")
GLANCE_LOGITS = ("classifier", "glance_head")


def _is_number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


@strict
class GlanceFocusConfig(PreTrainedConfig):
    r"""
    Configuration of a Glance-and-Focus network (GFNet; Wang et al., NeurIPS 2020 / TPAMI 2022, arXiv:2201.03014).

    A *glance* encoder sees the whole image downscaled to `glance_size`; at each of the `num_steps - 1` later *focus*
    steps a *policy* (actor-critic, a Gaussian over the crop centre) picks a `patch_size` crop of the full-resolution
    image, which a *focus* encoder (same architecture, its own weights) encodes. A recurrent classifier reads the step
    features and predicts after every step, so an image may stop after any step (anytime / budgeted classification).

    Both encoders are built from `backbone_config`, any transformers vision backbone whose output is a feature map:
    ResNet, RegNet, MobileNet (V1 / V2), ConvNeXt (V1 / V2), EfficientNet, BiT, timm models through
    [`~transformers.TimmWrapperConfig`], or a ViT (DINOv2, DINOv2 with registers, ViT), whose patch tokens are reshaped
    into a feature map. The defaults are the official ResNet-50 model (96 px crops of 224 px images).

    Values are checked when the config is built and when it is saved (`validate_glance_focus`); a wrong value raises a
    `ValueError` naming the field.

    Args:
        backbone_config (`dict` or `PreTrainedConfig`, *optional*):
            The encoders' architecture (default: transformers' `ResNetConfig()`, a ResNet-50). A dict needs its
            `model_type`.
        image_size (`int`, *optional*, defaults to 224):
            Side of the full-resolution input the image processor produces. The model takes any size of at least
            `patch_size`; the crop boxes are computed from the input's real size.
        patch_size (`int`, *optional*, defaults to 96):
            Side in pixels of the square crops the focus encoder sees (the official code uses 96, 128 or 144 for
            224 px images).
        glance_size (`int`, *optional*):
            Side the whole image is downscaled to for the glance encoder; defaults to `patch_size`, as in the
            official code.
        glance_interpolation (`str`, *optional*, defaults to `"bicubic"`):
            `"bicubic"` or `"bilinear"`: how the glance view is made from the normalized full-resolution tensor
            (`F.interpolate(..., align_corners=True)`, the official `get_prime`; bicubic for ResNet / MobileNet-V3 /
            EfficientNet, bilinear for DenseNet / RegNet).
        num_steps (`int`, *optional*, defaults to 4):
            `T`: the glance plus `T - 1` focus steps (3 to 5 in the paper).
        classifier_type (`str`, *optional*, defaults to `"gru"`):
            `"gru"`: a GRU over the step features with a linear layer after every step (official ResNet / DenseNet /
            RegNet). `"concat"`: the official cascade for MobileNet-V3 / EfficientNet, step `t >= 1` classifies the
            concatenated features of steps `0..t` with its own linear layer (step 0 then uses the glance encoder's
            head, see `glance_logits`).
        classifier_hidden_size (`int`, *optional*, defaults to 1024):
            Hidden size of the classifier's GRU.
        glance_logits (`str`, *optional*, defaults to `"classifier"`):
            Where the step-0 (glance) logits come from: `"classifier"` (the GRU classifier, official ResNet /
            DenseNet) or `"glance_head"` (the glance encoder's own linear head, official RegNet / MobileNet-V3 /
            EfficientNet inference; required with `classifier_type="concat"`).
        policy_conv (`bool`, *optional*, defaults to `False`):
            The policy's state encoder: `False`, an MLP on the flattened feature map (official ResNet / DenseNet);
            `True`, a 1x1 convolution to `policy_conv_channels` channels, then a linear layer (official MobileNet-V3
            / EfficientNet / RegNet).
        policy_conv_channels (`int`, *optional*, defaults to 32):
            Channels of the 1x1 convolution of a convolutional state encoder.
        policy_mlp_size (`int`, *optional*, defaults to 2048):
            Width of the first layer of the MLP state encoder.
        policy_hidden_size (`int`, *optional*, defaults to 1024):
            Hidden size of the policy's GRU (official: 1024 for ResNet / DenseNet, 256 for the others).
        policy_action_std (`float`, *optional*, defaults to 0.1):
            Standard deviation of the Gaussian over the crop centre (the official `action_std`), in (0, 1].
        encoder_loss_weight (`float`, *optional*, defaults to 1.0):
            Weight of the encoders' own heads' losses in the training loss (the official `dsn_ratio`: 1 for ResNet /
            DenseNet / RegNet, 5 for MobileNet-V3 / EfficientNet). See [`GlanceFocusForImageClassification`].
        classifier_dropout (`float`, *optional*, defaults to 0.0):
            Dropout on the pooled step features before the classifiers.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the truncated normal initializer of the linear layers of the heads and policy.
        budget_thresholds (`list[float]`, *optional*):
            Exit thresholds on the max softmax probability, one per step except the last (which always exits): an
            image leaves at the first step whose confidence is `>=` that step's threshold. Written by
            `lookwhere_hf.budget.calibrate_budget` (the same fields and rule as `LookWhereConfig`); when set (and
            `use_budget`), the eval-mode forward, and so `pipeline("image-classification")`, runs budgeted inference.
        use_budget (`bool`, *optional*, defaults to `True`):
            Whether saved `budget_thresholds` are used by default in eval mode.
        budget_rung_gflops (`list[float]`, *optional*):
            Calibration record: cumulative GFLOPs per image of each step.
        budget_image_size (`list[int]`, *optional*):
            Calibration record: the `(height, width)` of the input the calibration ran at.
        budget_target_gflops (`float`, *optional*):
            Calibration record: the mean GFLOPs per image the thresholds were fitted for.
        budget_expected_gflops (`float`, *optional*):
            Calibration record: the mean GFLOPs per image the thresholds gave on the calibration split.
        budget_calibration_accuracy (`float`, *optional*):
            Calibration record: top-1 accuracy of budgeted inference on the calibration split.

    Example:

    ```python
    >>> from lookwhere_hf import GlanceFocusConfig, GlanceFocusForImageClassification

    >>> config = GlanceFocusConfig(num_labels=10, patch_size=128, num_steps=5)  # ResNet-50 encoders
    >>> model = GlanceFocusForImageClassification(config)
    ```"""

    model_type = "glance_focus"
    # Output fields that are not predictions: the `Trainer` leaves them out, so that `EvalPrediction.predictions` is
    # the logits alone, as for any transformers classifier (they stay in the forward's output).
    keys_to_ignore_at_inference = [
        "rung_logits",
        "encoder_logits",
        "rung_flops",
        "exit_rung",
        "flops",
        "crop_boxes",
        "crop_centers",
        "policy_states",
        "policy_actions",
        "policy_log_probs",
        "state_values",
    ]
    sub_configs_defaults = {"backbone_config": SubConfigSpec(config_class=AutoConfig, model_type="resnet")}

    backbone_config: dict | PreTrainedConfig | None = None
    image_size: int = 224
    patch_size: int = 96
    glance_size: int | None = None
    glance_interpolation: str = "bicubic"
    num_steps: int = 4
    classifier_type: str = "gru"
    classifier_hidden_size: int = 1024
    glance_logits: str = "classifier"
    policy_conv: bool = False
    policy_conv_channels: int = 32
    policy_mlp_size: int = 2048
    policy_hidden_size: int = 1024
    policy_action_std: float | int = 0.1
    encoder_loss_weight: float | int = 1.0
    classifier_dropout: float | int = 0.0
    initializer_range: float = 0.02
    budget_thresholds: list[float] | None = None
    use_budget: bool = True
    budget_rung_gflops: list[float] | None = None
    budget_image_size: list[int] | None = None
    budget_target_gflops: float | None = None
    budget_expected_gflops: float | None = None
    budget_calibration_accuracy: float | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        # Checked here too (not only by `@strict`'s `validate()`), so that a bad value is a plain `ValueError`.
        self.validate_glance_focus()

    # ------------------------------------------------------------------ derived values
    @property
    def glance_side(self) -> int:
        """The glance view's side: `glance_size`, or `patch_size` when it is not set."""
        return self.patch_size if self.glance_size is None else self.glance_size

    @property
    def num_rungs(self) -> int:
        """Exits of anytime / budgeted classification: one per step (the name `lookwhere_hf.budget` uses)."""
        return self.num_steps

    @property
    def backbone_kind(self) -> str:
        """`"conv"` (the backbone outputs a feature map) or `"vit"` (patch tokens reshaped into one)."""
        return "vit" if self.backbone_config.model_type in VIT_BACKBONES else "conv"

    # ------------------------------------------------------------------ validation
    def validate_glance_focus(self) -> None:
        """The one place where Glance-and-Focus values are checked (a `@strict` class validator: it runs when the config
        is built, on `validate()` and on `save_pretrained`). Raises `ValueError` naming the field."""
        model_type = getattr(self.backbone_config, "model_type", None)
        if model_type not in CONV_BACKBONES + VIT_BACKBONES:
            raise ValueError(
                f"`backbone_config` ({type(self.backbone_config).__name__}, model_type={model_type!r}) is not a vision "
                "backbone with feature maps: the policy reads the encoders' last feature map. Use one of "
                f"{', '.join(CONV_BACKBONES + VIT_BACKBONES)} (timm models through `TimmWrapperConfig`)."
            )
        positive_ints = (
            "image_size",
            "patch_size",
            "classifier_hidden_size",
            "policy_hidden_size",
            "policy_mlp_size",
            "policy_conv_channels",
        )
        for name in positive_ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
        if self.glance_size is not None and (
            isinstance(self.glance_size, bool) or not isinstance(self.glance_size, int) or self.glance_size < 1
        ):
            raise ValueError(f"`glance_size` must be a positive int or None (= patch_size), got {self.glance_size!r}.")
        if self.patch_size > self.image_size:
            raise ValueError(
                f"`patch_size` ({self.patch_size}) is larger than the image (`image_size` {self.image_size}): a focus "
                "crop must fit inside the image. Use a smaller patch size or a larger image size."
            )
        if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int) or self.num_steps < 1:
            raise ValueError(
                f"`num_steps` must be an int >= 1 (the glance plus num_steps - 1 focus steps), got {self.num_steps!r}."
            )
        if self.glance_interpolation not in GLANCE_INTERPOLATIONS:
            raise ValueError(
                f"`glance_interpolation` must be one of {GLANCE_INTERPOLATIONS}, got {self.glance_interpolation!r}."
            )
        if self.classifier_type not in CLASSIFIER_TYPES:
            raise ValueError(f"`classifier_type` must be one of {CLASSIFIER_TYPES}, got {self.classifier_type!r}.")
        if self.glance_logits not in GLANCE_LOGITS:
            raise ValueError(f"`glance_logits` must be one of {GLANCE_LOGITS}, got {self.glance_logits!r}.")
        if self.classifier_type == "concat" and self.glance_logits != "glance_head":
            raise ValueError(
                "`classifier_type='concat'` has no classifier for the glance step alone (the official cascade starts "
                "at two steps); set `glance_logits='glance_head'`."
            )
        std = self.policy_action_std
        if not _is_number(std) or not 0.0 < std <= 1.0:
            raise ValueError(
                f"`policy_action_std` must be in (0, 1] (the standard deviation of the crop centre, a fraction of the "
                f"free range), got {std!r}; the official value is 0.1."
            )
        if not _is_number(self.encoder_loss_weight) or self.encoder_loss_weight < 0:
            raise ValueError(f"`encoder_loss_weight` must be a number >= 0, got {self.encoder_loss_weight!r}.")
        if not _is_number(self.classifier_dropout) or not 0.0 <= self.classifier_dropout < 1.0:
            raise ValueError(f"`classifier_dropout` must be in [0, 1), got {self.classifier_dropout!r}.")
        if not _is_number(self.initializer_range) or not self.initializer_range > 0:
            raise ValueError(
                f"`initializer_range` must be a positive number (the standard deviation of the heads' and policy's "
                f"initial weights), got {self.initializer_range!r}."
            )
        if self.backbone_kind == "vit":
            patch = self.backbone_config.patch_size
            patch = patch[0] if isinstance(patch, (list, tuple)) else patch
            for name, side in (("patch_size", self.patch_size), ("glance_size", self.glance_side)):
                if side % patch:
                    raise ValueError(
                        f"`{name}` ({side}) must be a multiple of the ViT backbone's patch size ({patch}), so that its "
                        "patch tokens tile the view."
                    )
        self._validate_budget()

    def _validate_budget(self) -> None:
        """Checks of the saved budget (the fields and rules of `LookWhereConfig`, with one rung per step)."""
        num_rungs = self.num_rungs
        thresholds = self.budget_thresholds
        if thresholds is not None:
            if not isinstance(thresholds, (list, tuple)) or len(thresholds) != num_rungs - 1:
                raise ValueError(
                    f"`budget_thresholds` must hold one threshold per step except the last ({num_rungs - 1} for "
                    f"num_steps={self.num_steps}), got {thresholds!r}. Recalibrate with "
                    "`lookwhere_hf.budget.calibrate_budget` after changing `num_steps`, or set it to None."
                )
            if not all(_is_number(value) and value >= 0.0 for value in thresholds):
                raise ValueError(
                    f"`budget_thresholds` must be finite max-softmax values >= 0 (above 1 disables a step), got "
                    f"{list(thresholds)}."
                )
        gflops = self.budget_rung_gflops
        if gflops is not None:
            if not isinstance(gflops, (list, tuple)) or len(gflops) != num_rungs:
                raise ValueError(
                    f"`budget_rung_gflops` must hold the cumulative GFLOPs of each of the {num_rungs} steps, got "
                    f"{gflops!r}."
                )
            if (
                not all(_is_number(value) for value in gflops)
                or any(not a < b for a, b in zip(gflops, gflops[1:]))
                or not gflops[0] > 0
            ):
                raise ValueError(f"`budget_rung_gflops` must be positive and increasing numbers, got {list(gflops)}.")
        size = self.budget_image_size
        if size is not None and (
            not isinstance(size, (list, tuple))
            or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
        ):
            raise ValueError(f"`budget_image_size` must be a (height, width) pair of positive ints, got {size!r}.")
        for name in ("budget_target_gflops", "budget_expected_gflops"):
            value = getattr(self, name)
            if value is not None and (not _is_number(value) or not value > 0):
                raise ValueError(f"`{name}` must be a positive number of GFLOPs, got {value!r}.")
        accuracy = self.budget_calibration_accuracy
        if accuracy is not None and (not _is_number(accuracy) or not 0.0 <= accuracy <= 1.0):
            raise ValueError(f"`budget_calibration_accuracy` must be in [0, 1], got {accuracy!r}.")


__all__ = ["GlanceFocusConfig"]
