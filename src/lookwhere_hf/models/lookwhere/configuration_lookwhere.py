"""LookWhere model configuration."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import Dinov2WithRegistersConfig, PreTrainedConfig

SELECTOR_HEAD_ACTIVATIONS = ("gelu", "gelu_pytorch_tanh")


def to_pair(value) -> tuple[int, int]:
    """An int or a `(height, width)` pair (list / tuple) -> `(height, width)` ints."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"Expected an int or a (height, width) pair, got {value!r}.")
        return int(value[0]), int(value[1])
    return int(value), int(value)


def _side(image_size) -> int:
    """The config stores square sizes; accept `[s, s]` / `(s, s)` for compatibility with DINOv2 configs."""
    height, width = to_pair(image_size)
    if height != width:
        raise ValueError(f"LookWhere configs store square image sizes, got image_size={image_size}.")
    return height


@strict
class LookWhereSelectorConfig(Dinov2WithRegistersConfig):
    r"""
    The selector backbone of a [`LookWhereConfig`]: a shallow DINOv2-with-registers ViT that sees the low-resolution
    view. Its `image_size` is the low-resolution input size. The defaults are the released selector (ViT-B/14, 4
    registers, depth 3, 154 px); every other field is a [`~transformers.Dinov2WithRegistersConfig`] field.

    `LookWhereSelectorConfig.from_pretrained(<lookwhere folder>)` reads the `selector_config` part of the folder's
    `config.json` (`base_config_key`). Its `model_type` is `"lookwhere_selector"`, so that only the extractor part of
    a LookWhere folder matches a plain `"dinov2_with_registers"` config (see [`LookWhereExtractorConfig`]).
    """

    model_type = "lookwhere_selector"
    base_config_key = "selector_config"

    num_hidden_layers: int = 3
    image_size: int | list[int] | tuple[int, int] = 154
    patch_size: int | list[int] | tuple[int, int] = 14

    def __post_init__(self, **kwargs):
        # Folders saved before the sub-config classes existed store the selector with the parent's model_type.
        kwargs.pop("model_type", None)
        super().__post_init__(**kwargs)


@strict
class LookWhereExtractorConfig(Dinov2WithRegistersConfig):
    r"""
    The extractor backbone of a [`LookWhereConfig`]: a full-depth DINOv2-with-registers ViT that computes the selected
    high-resolution patches. Its `image_size` is the high-resolution size its position embeddings were trained at.
    The defaults are the released extractor (ViT-B/14, 4 registers, depth 12, 518 px); every other field is a
    [`~transformers.Dinov2WithRegistersConfig`] field.

    `LookWhereExtractorConfig.from_pretrained(<lookwhere folder>)` reads the `extractor_config` part of the folder's
    `config.json` (`base_config_key`). It keeps the parent's `model_type` (`"dinov2_with_registers"`): the extractor
    *is* a DINOv2-with-registers ViT (the teacher's layout), so `Dinov2WithRegistersConfig.from_pretrained(<lookwhere
    folder>)` returns the extractor's architecture, the way transformers picks the sub-config whose `model_type`
    matches (as `LlamaConfig.from_pretrained(<llava folder>)` does). A folder saved before these classes existed
    (both parts said `"dinov2_with_registers"`) loads as before; save it again to get this behaviour there too.
    """

    base_config_key = "extractor_config"

    num_hidden_layers: int = 12
    image_size: int | list[int] | tuple[int, int] = 518
    patch_size: int | list[int] | tuple[int, int] = 14


_ARCHITECTURE_FIELDS = (
    "hidden_size",
    "num_attention_heads",
    "mlp_ratio",
    "patch_size",
    "num_register_tokens",
    "layer_norm_eps",
    "qkv_bias",
    "layerscale_value",
    "num_hidden_layers",
    "image_size",
)
# The released selector / extractor architectures, read from the sub-config classes' defaults.
SELECTOR_DEFAULTS = {name: LookWhereSelectorConfig.__dataclass_fields__[name].default for name in _ARCHITECTURE_FIELDS}
EXTRACTOR_DEFAULTS = {
    name: LookWhereExtractorConfig.__dataclass_fields__[name].default for name in _ARCHITECTURE_FIELDS
}


@strict
class LookWhereConfig(PreTrainedConfig):
    r"""
    Configuration of a LookWhere model: a shallow low-resolution *selector* that predicts where the important
    high-resolution patches are, and a full-depth *extractor* that only computes those patches.

    A composite config, as transformers' multimodal configs are: both halves are DINOv2-with-registers transformers,
    configured with a [`LookWhereSelectorConfig`] and a [`LookWhereExtractorConfig`] (both subclass
    [`~transformers.Dinov2WithRegistersConfig`]; plain dicts and `Dinov2WithRegistersConfig`s are accepted and
    converted). The selector's `image_size` is the low-resolution size (154 for the release), the extractor's
    `image_size` is the high-resolution size its position embeddings were trained at (518 for the release). Other
    high-resolution sizes work at inference time: the position embeddings are resized to the input grid.

    Values are checked when the config is built and when it is saved (`validate_lookwhere`); a wrong value raises a
    `ValueError` naming the field.

    Args:
        selector_config (`dict` or `LookWhereSelectorConfig`, *optional*):
            The selector backbone (defaults: ViT-B/14, 4 registers, depth 3, image_size 154).
        extractor_config (`dict` or `LookWhereExtractorConfig`, *optional*):
            The extractor backbone (defaults: ViT-B/14, 4 registers, depth 12, image_size 518).
        k_ratio (`float`, *optional*, defaults to 0.1):
            Fraction of the high-resolution patches the extractor sees (`k = floor(k_ratio * num_patches)`, at
            least 1). Can be overridden per call with `k=`.
        selector_pretrain_grid (`int`, *optional*, defaults to 37):
            High-resolution patch grid the selector head was pretrained for (518 / 14 = 37 for the release). The
            head predicts `r * r` scores per low-resolution patch with `r = ceil(selector_pretrain_grid /
            low_res_grid)`.
        selector_head_act (`str`, *optional*, defaults to `"gelu"`):
            Activation of the selector head MLP: `"gelu"` (exact erf, the official PyTorch inference) or
            `"gelu_pytorch_tanh"` (the tanh approximation the JAX pretraining used).
        num_spread_neighbors (`int`, *optional*, defaults to 5):
            Number of nearest selected positions whose tokens are averaged (inverse-distance weights) to fill the
            dense high-resolution feature map.
        low_res_antialias (`bool`, *optional*, defaults to `False`):
            Whether the low-resolution selector view is made with an antialiased bilinear resize (as JAX's
            `jax.image.resize` does in pretraining) instead of the plain bilinear resize of the official inference.
        freeze_selector (`bool`, *optional*, defaults to `True`):
            Whether task models (classification, segmentation) keep the selector frozen during fine-tuning, as the
            official fine-tuning does. With `False`, the selector encoder is trained through the prefix tokens it
            hands to the extractor; its head stays frozen (the top-k selection passes no gradient to it).
        classifier_dropout (`float`, *optional*, defaults to 0.0):
            Dropout before the classification / segmentation head.
        semantic_loss_ignore_index (`int`, *optional*, defaults to 255):
            Label value ignored by the semantic segmentation loss.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the truncated normal initializer of the heads.
        pretrain_k_min (`int`, *optional*, defaults to 16):
            Pretraining ([`LookWhereForPreTraining`]): fewest high-resolution patches the extractor sees in a step
            (`k` is drawn per step in `[pretrain_k_min, pretrain_k_max]`, clipped to the grid).
        pretrain_k_max (`int`, *optional*, defaults to 128):
            Pretraining: most high-resolution patches the extractor sees in a step; also the `k` of an eval pass.
        pretrain_cls_loss_weight (`float`, *optional*, defaults to 1.0):
            Pretraining: weight of the CLS-token distillation loss.
        pretrain_dense_loss_weight (`float`, *optional*, defaults to 1.0):
            Pretraining: weight of the dense (patch-token) distillation loss.
        pretrain_map_loss_weight (`float`, *optional*, defaults to 0.1):
            Pretraining: weight of the selector-map KL loss.
        pretrain_k_seed (`int`, *optional*, defaults to 0):
            Pretraining: seed of the per-step draw of `k` (`LookWhereForPreTraining.sample_k`).
        pretrain_map_layer (`int`, *optional*, defaults to -1):
            Pretraining: the teacher layer whose attention map (mean over heads and patch queries) the selector
            distils, as a Python index into the teacher's layers. The default, the last layer, is LookWhere's
            target; an earlier layer is an option for a teacher whose last-layer map ranks the object worse than an
            earlier layer's (e.g. small teachers trained from scratch, `benchmarks/varied_items/TEACHER_ATTEMPTS.md`).
        glance_head (`bool`, *optional*, defaults to `False`):
            Anytime / budgeted classification: add a *glance* exit, a linear classifier on the selector's output
            (its CLS token concatenated with the mean of its low-resolution patch tokens). It costs only the
            selector pass and is the first rung of the ladder.
        anytime_k_ratios (`list[float]`, *optional*, defaults to `[0.025, 0.05, 0.1, 0.25]`):
            The focus rungs of anytime / budgeted classification: strictly increasing fractions in (0, 1] of the
            high-resolution patches (`k = floor(ratio * num_patches)`, at least 1), each a prediction of the extractor
            on the top-`k` patches. The ladder is `[glance] + anytime_k_ratios`.
        train_all_rungs (`bool`, *optional*, defaults to `False`):
            Whether [`LookWhereForImageClassification`] in training mode (with `labels`, no `k`) trains every rung:
            the anytime forward, whose loss is the mean of the glance and focus rungs' losses. The example scripts
            set it with `--k_ratios` / `--glance_head`.
        budget_thresholds (`list[float]`, *optional*):
            Exit thresholds on the max softmax probability, one per rung except the last (which always exits):
            an image leaves at the first rung whose confidence is `>=` that rung's threshold. A threshold above 1
            disables its rung. Written by `lookwhere_hf.budget.calibrate_budget`; when set (and `use_budget`),
            [`LookWhereForImageClassification`] in eval mode, and so `pipeline("image-classification")`, runs
            budgeted inference.
        use_budget (`bool`, *optional*, defaults to `True`):
            Whether saved `budget_thresholds` are used by default in eval mode. Set to `False` (or pass `budget=False`
            to the forward) to get the fixed-`k_ratio` model back without losing the calibration.
        budget_rung_gflops (`list[float]`, *optional*):
            Calibration record: cumulative GFLOPs per image of each rung (glance first) at `budget_image_size`.
        budget_image_size (`list[int]`, *optional*):
            Calibration record: the `(height, width)` of the high-resolution input the calibration ran at.
        budget_target_gflops (`float`, *optional*):
            Calibration record: the mean GFLOPs per image the thresholds were fitted for.
        budget_expected_gflops (`float`, *optional*):
            Calibration record: the mean GFLOPs per image the thresholds gave on the calibration split.
        budget_calibration_accuracy (`float`, *optional*):
            Calibration record: top-1 accuracy of budgeted inference on the calibration split.

    Example:

    ```python
    >>> from lookwhere_hf import LookWhereConfig, LookWhereModel

    >>> config = LookWhereConfig(k_ratio=0.25)
    >>> model = LookWhereModel(config)
    ```"""

    model_type = "lookwhere"
    # Output fields that are not predictions: the `Trainer` leaves them out, so that `EvalPrediction.predictions` is
    # the logits alone, as for any transformers classifier (they stay in the forward's output).
    keys_to_ignore_at_inference = [
        "selector_map",
        "selected_indices",
        "selector_prefix_tokens",
        "selector_patch_tokens",
        "dense_features",
        "rung_logits",
        "exit_rung",
        "flops",
        "rung_flops",
        "rung_k",
    ]
    sub_configs_defaults = {
        "selector_config": LookWhereSelectorConfig,
        "extractor_config": LookWhereExtractorConfig,
    }

    selector_config: dict | PreTrainedConfig | None = None
    extractor_config: dict | PreTrainedConfig | None = None
    k_ratio: float | int = 0.1
    selector_pretrain_grid: int = 37
    selector_head_act: str = "gelu"
    num_spread_neighbors: int = 5
    low_res_antialias: bool = False
    freeze_selector: bool = True
    classifier_dropout: float | int = 0.0
    semantic_loss_ignore_index: int = 255
    initializer_range: float = 0.02
    pretrain_k_min: int = 16
    pretrain_k_max: int = 128
    pretrain_cls_loss_weight: float | int = 1.0
    pretrain_dense_loss_weight: float | int = 1.0
    pretrain_map_loss_weight: float | int = 0.1
    pretrain_k_seed: int = 0
    pretrain_map_layer: int = -1
    glance_head: bool = False
    anytime_k_ratios: list[float] | tuple[float, ...] = (0.025, 0.05, 0.1, 0.25)
    train_all_rungs: bool = False
    budget_thresholds: list[float] | None = None
    use_budget: bool = True
    budget_rung_gflops: list[float] | None = None
    budget_image_size: list[int] | None = None
    budget_target_gflops: float | None = None
    budget_expected_gflops: float | None = None
    budget_calibration_accuracy: float | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        for key, config_class in self.sub_configs.items():
            sub_config = getattr(self, key)
            if type(sub_config) is not config_class:
                # A plain `Dinov2WithRegistersConfig` (e.g. from `from_dinov2` or an older caller): same fields,
                # converted so that `base_config_key` and the sub-config's `model_type` hold.
                setattr(self, key, config_class(**sub_config.to_dict()))
        # Checked here too (not only by `@strict`'s `validate()`), so that a bad value is a plain `ValueError`.
        self.validate_lookwhere()

    # ------------------------------------------------------------------ derived sizes
    @property
    def patch_size(self) -> int:
        return _side(self.extractor_config.patch_size)

    @property
    def high_res_size(self) -> int:
        return _side(self.extractor_config.image_size)

    @property
    def low_res_size(self) -> int:
        return _side(self.selector_config.image_size)

    @property
    def hidden_size(self) -> int:
        return self.extractor_config.hidden_size

    @property
    def num_prefix_tokens(self) -> int:
        """CLS + registers, the tokens the selector hands to the extractor."""
        return 1 + self.selector_config.num_register_tokens

    @property
    def selector_upsample_factor(self) -> int:
        """`r`: the selector head predicts `r * r` high-resolution scores per low-resolution patch."""
        low_grid = self.low_res_size // _side(self.selector_config.patch_size)
        return -(-self.selector_pretrain_grid // low_grid)

    @property
    def num_rungs(self) -> int:
        """Exits of anytime / budgeted classification: the glance (if `glance_head`) plus one per focus rung."""
        return int(self.glance_head) + len(self.anytime_k_ratios)

    def rung_ks(self, num_patches: int) -> list[int]:
        """`k` of each focus rung for `num_patches` high-resolution patches (`floor(ratio * num_patches)`, >= 1).

        Raises `ValueError` if two rungs get the same `k` (the grid is too small for the ladder)."""
        ks = [max(1, int(ratio * num_patches)) for ratio in self.anytime_k_ratios]
        if any(a >= b for a, b in zip(ks, ks[1:])):
            raise ValueError(
                f"`anytime_k_ratios` {list(self.anytime_k_ratios)} give the rungs k={ks} on {num_patches} "
                "high-resolution patches: two rungs see the same patches. Use a larger input or fewer / wider-spaced "
                "ratios."
            )
        return ks

    def num_selected(self, num_patches: int, k: int | None = None) -> int:
        """How many of `num_patches` high-resolution patches the extractor keeps (`k` overrides `k_ratio`)."""
        if k is None:
            return max(1, int(self.k_ratio * num_patches))
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"`k` must be an int (number of high-res patches to keep), got {type(k).__name__}.")
        if not 1 <= k <= num_patches:
            raise ValueError(f"`k` must be between 1 and the number of high-res patches ({num_patches}), got k={k}.")
        return k

    # ------------------------------------------------------------------ validation
    def validate_lookwhere(self) -> None:
        """The one place where LookWhere's values are checked (a `@strict` class validator: it runs when the config is
        built, on `validate()` and on `save_pretrained`). Raises `ValueError` naming the field."""
        sel, ext = self.selector_config, self.extractor_config
        if isinstance(self.k_ratio, bool) or not 0.0 < self.k_ratio <= 1.0:
            raise ValueError(f"`k_ratio` must be in (0, 1] (the fraction of patches kept), got {self.k_ratio!r}.")
        if sel.hidden_size != ext.hidden_size:
            raise ValueError(
                "`selector_config.hidden_size` and `extractor_config.hidden_size` must be equal (the selector's "
                f"CLS/register tokens seed the extractor), got {sel.hidden_size} and {ext.hidden_size}."
            )
        if sel.num_register_tokens != ext.num_register_tokens:
            raise ValueError(
                "`selector_config.num_register_tokens` and `extractor_config.num_register_tokens` must be equal, got "
                f"{sel.num_register_tokens} and {ext.num_register_tokens}."
            )
        for name, cfg in (("selector_config", sel), ("extractor_config", ext)):
            patch, size = _side(cfg.patch_size), _side(cfg.image_size)
            if patch < 1 or size % patch != 0:
                raise ValueError(
                    f"`{name}.image_size` ({size}) must be a positive multiple of `{name}.patch_size` ({patch})."
                )
        if self.selector_pretrain_grid < 1:
            raise ValueError(f"`selector_pretrain_grid` must be a positive int, got {self.selector_pretrain_grid}.")
        if self.num_spread_neighbors < 1:
            raise ValueError(f"`num_spread_neighbors` must be >= 1, got {self.num_spread_neighbors}.")
        if self.selector_head_act not in SELECTOR_HEAD_ACTIVATIONS:
            raise ValueError(
                f"`selector_head_act` must be one of {SELECTOR_HEAD_ACTIVATIONS}, got {self.selector_head_act!r}."
            )
        if not 1 <= self.pretrain_k_min <= self.pretrain_k_max:
            raise ValueError(
                "`pretrain_k_min` and `pretrain_k_max` must satisfy 1 <= k_min <= k_max (the fewest and most high-res "
                f"patches the extractor sees per pretraining step), got pretrain_k_min={self.pretrain_k_min}, "
                f"pretrain_k_max={self.pretrain_k_max}."
            )
        if isinstance(self.pretrain_map_layer, bool) or not isinstance(self.pretrain_map_layer, int):
            raise ValueError(
                "`pretrain_map_layer` must be an integer index into the teacher's layers (-1: the last), got "
                f"{self.pretrain_map_layer!r}."
            )
        for name in ("pretrain_cls_loss_weight", "pretrain_dense_loss_weight", "pretrain_map_loss_weight"):
            weight = getattr(self, name)
            if isinstance(weight, bool) or not weight >= 0:  # `not >=` also rejects NaN
                raise ValueError(f"`{name}` must be a non-negative number, got {weight!r}.")
        self._validate_anytime()

    def _validate_anytime(self) -> None:
        """Checks of the anytime ladder and the saved budget (part of `validate_lookwhere`)."""
        ratios = self.anytime_k_ratios
        if not isinstance(ratios, (list, tuple)) or len(ratios) == 0:
            raise ValueError(f"`anytime_k_ratios` must be a non-empty list of fractions in (0, 1], got {ratios!r}.")
        for ratio in ratios:
            if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < ratio <= 1.0:
                raise ValueError(f"`anytime_k_ratios` must hold fractions in (0, 1], got {list(ratios)}.")
        if len(set(ratios)) != len(ratios):
            raise ValueError(f"`anytime_k_ratios` has duplicate rungs: {list(ratios)}. Give each ratio once.")
        if list(ratios) != sorted(ratios):
            raise ValueError(
                f"`anytime_k_ratios` must be increasing (the rungs are visited in order), got {list(ratios)}; "
                f"use {sorted(ratios)}."
            )
        num_rungs = self.num_rungs
        thresholds = self.budget_thresholds
        if thresholds is not None:
            if not isinstance(thresholds, (list, tuple)) or len(thresholds) != num_rungs - 1:
                raise ValueError(
                    f"`budget_thresholds` must hold one threshold per rung except the last ({num_rungs - 1} for "
                    f"glance_head={self.glance_head} and {len(ratios)} focus rungs), got {thresholds!r}. Recalibrate "
                    "with `lookwhere_hf.budget.calibrate_budget` after changing the rungs, or set it to None."
                )
            for value in thresholds:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < float("inf"):
                    raise ValueError(
                        f"`budget_thresholds` must be finite max-softmax values >= 0 (above 1 disables a rung), got "
                        f"{list(thresholds)}."
                    )
        gflops = self.budget_rung_gflops
        if gflops is not None:
            if not isinstance(gflops, (list, tuple)) or len(gflops) != num_rungs:
                raise ValueError(
                    f"`budget_rung_gflops` must hold the cumulative GFLOPs of each of the {num_rungs} rungs, got "
                    f"{gflops!r}."
                )
            if any(not a < b for a, b in zip(gflops, gflops[1:])) or not gflops[0] > 0:
                raise ValueError(f"`budget_rung_gflops` must be positive and increasing, got {list(gflops)}.")
        if self.budget_image_size is not None:
            size = self.budget_image_size
            if not isinstance(size, (list, tuple)) or len(size) != 2 or not all(int(v) > 0 for v in size):
                raise ValueError(f"`budget_image_size` must be a (height, width) pair, got {size!r}.")
        for name in ("budget_target_gflops", "budget_expected_gflops"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not value > 0):
                raise ValueError(f"`{name}` must be a positive number of GFLOPs, got {value!r}.")
        accuracy = self.budget_calibration_accuracy
        if accuracy is not None and (isinstance(accuracy, bool) or not 0.0 <= accuracy <= 1.0):
            raise ValueError(f"`budget_calibration_accuracy` must be in [0, 1], got {accuracy!r}.")


__all__ = ["LookWhereConfig", "LookWhereExtractorConfig", "LookWhereSelectorConfig", "to_pair"]
