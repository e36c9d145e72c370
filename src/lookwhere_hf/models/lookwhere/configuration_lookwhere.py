"""LookWhere model configuration."""

from __future__ import annotations

from transformers import Dinov2WithRegistersConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

# ViT-B/14 with 4 registers, as in the released LookWhere-DINOv2 model.
_VIT_B14 = {
    "hidden_size": 768,
    "num_attention_heads": 12,
    "mlp_ratio": 4,
    "patch_size": 14,
    "num_register_tokens": 4,
    "layer_norm_eps": 1e-6,
    "qkv_bias": True,
    "layerscale_value": 1.0,
}
SELECTOR_DEFAULTS = {**_VIT_B14, "num_hidden_layers": 3, "image_size": 154}
EXTRACTOR_DEFAULTS = {**_VIT_B14, "num_hidden_layers": 12, "image_size": 518}

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


class LookWhereConfig(PreTrainedConfig):
    r"""
    Configuration of a LookWhere model: a shallow low-resolution *selector* that predicts where the important
    high-resolution patches are, and a full-depth *extractor* that only computes those patches.

    Both halves are DINOv2-with-registers transformers and are configured with
    [`~transformers.Dinov2WithRegistersConfig`] sub-configs. The selector's `image_size` is the low-resolution
    size (154 for the release), the extractor's `image_size` is the high-resolution size its position embeddings
    were trained at (518 for the release). Other high-resolution sizes work at inference time: the position
    embeddings are resized to the input grid.

    Args:
        selector_config (`dict` or `Dinov2WithRegistersConfig`, *optional*):
            The selector backbone (defaults: ViT-B/14, 4 registers, depth 3, image_size 154).
        extractor_config (`dict` or `Dinov2WithRegistersConfig`, *optional*):
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
            official fine-tuning does.
        classifier_dropout (`float`, *optional*, defaults to 0.0):
            Dropout before the classification / segmentation head.
        semantic_loss_ignore_index (`int`, *optional*, defaults to 255):
            Label value ignored by the semantic segmentation loss.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the truncated normal initializer of the heads.

    Example:

    ```python
    >>> from lookwhere_hf import LookWhereConfig, LookWhereModel

    >>> config = LookWhereConfig(k_ratio=0.25)
    >>> model = LookWhereModel(config)
    ```"""

    model_type = "lookwhere"
    sub_configs_defaults = {
        "selector_config": SubConfigSpec(Dinov2WithRegistersConfig, init_kwargs=SELECTOR_DEFAULTS),
        "extractor_config": SubConfigSpec(Dinov2WithRegistersConfig, init_kwargs=EXTRACTOR_DEFAULTS),
    }

    selector_config: dict | PreTrainedConfig | None = None
    extractor_config: dict | PreTrainedConfig | None = None
    k_ratio: float = 0.1
    selector_pretrain_grid: int = 37
    selector_head_act: str = "gelu"
    num_spread_neighbors: int = 5
    low_res_antialias: bool = False
    freeze_selector: bool = True
    classifier_dropout: float = 0.0
    semantic_loss_ignore_index: int = 255
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self._validate_lookwhere()

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
    def _validate_lookwhere(self) -> None:
        sel, ext = self.selector_config, self.extractor_config
        if not (isinstance(self.k_ratio, (int, float)) and 0.0 < self.k_ratio <= 1.0):
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


__all__ = ["LookWhereConfig", "to_pair"]
