"""LookupViT model configuration."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig


def grid_pair(value, name: str = "compressed_grid") -> tuple[int, int]:
    """A compressed-token grid given as an int `s` (an `s x s` grid) or a `(height, width)` pair -> `(h, w)` ints.

    Raises `ValueError` (naming `name`) for anything else: bools, floats, strings, pairs of the wrong length, sizes < 1.
    """
    values = list(value) if isinstance(value, (list, tuple)) else [value, value]
    if len(values) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in values):
        raise ValueError(
            f"`{name}` must be an int s (an s x s grid of compressed tokens) or a (height, width) pair of ints, "
            f"got {value!r}."
        )
    if min(values) < 1:
        raise ValueError(f"`{name}` must have sizes >= 1, got {value!r}.")
    return values[0], values[1]


def check_grid_fits(grid: tuple[int, int], token_grid: tuple[int, int], name: str = "compressed_grid") -> None:
    """`ValueError` unless the compressed grid fits in the lookup (patch) token grid: compressed tokens are a
    downsampling of the lookup tokens, never an upsampling."""
    if grid[0] > token_grid[0] or grid[1] > token_grid[1]:
        raise ValueError(
            f"`{name}` {grid[0]}x{grid[1]} is larger than the lookup token grid {token_grid[0]}x{token_grid[1]} "
            "(image size / patch size). Pick a compressed grid of at most the token grid, or feed larger images."
        )


@strict
class LookupViTConfig(PreTrainedConfig):
    r"""
    Configuration of a LookupViT model (Koner et al., ECCV 2024, arXiv:2407.12753): a ViT whose expensive layers run
    on a small `h x w` grid of *compressed* tokens, while the `N` full-resolution *lookup* (patch) tokens only go
    through cross-attention and a narrow MLP.

    The transformer fields are those of [`~transformers.Dinov2WithRegistersConfig`] (the compressed stream's
    self-attention + MLP is transformers' `Dinov2WithRegistersLayer`, built from this config, so that it follows the
    attention implementation the model is loaded with). Values are checked when the config is built and on
    `validate()` / `save_pretrained` (`validate_lookupvit`); a wrong value raises a `ValueError` naming the field.

    Args:
        hidden_size (`int`, *optional*, defaults to 768): width of both token streams.
        num_hidden_layers (`int`, *optional*, defaults to 12): number of LookupViT blocks.
        num_attention_heads (`int`, *optional*, defaults to 12): heads of every attention (self and cross).
        mlp_ratio (`float`, *optional*, defaults to 4.0): compressed-stream MLP width / `hidden_size`.
        lookup_mlp_ratio (`float`, *optional*, defaults to 1.0): lookup-stream MLP width / `hidden_size` (the paper's
            "low-cost MLP": a reduced hidden factor; 1.0 is a quarter of the compressed stream's 4.0).
        hidden_act (`str`, *optional*, defaults to `"gelu"`): MLP activation (both streams).
        layer_norm_eps (`float`, *optional*, defaults to 1e-6): epsilon of every LayerNorm.
        qkv_bias (`bool`, *optional*, defaults to `True`): bias on the query / key / value projections.
        layerscale_value (`float`, *optional*, defaults to 1.0): initial LayerScale of every residual branch
            (1.0 = a plain ViT block).
        use_swiglu_ffn (`bool`, *optional*, defaults to `False`): SwiGLU MLP in the compressed stream.
        hidden_dropout_prob (`float`, *optional*, defaults to 0.0): dropout on the embeddings.
        attention_probs_dropout_prob (`float`, *optional*, defaults to 0.0): dropout on attention probabilities.
        drop_path_rate (`float`, *optional*, defaults to 0.0): stochastic depth of every residual branch.
        image_size (`int`, *optional*, defaults to 224): input size the lookup position embeddings are trained at
            (other sizes work: the embeddings are resized to the input's token grid).
        patch_size (`int`, *optional*, defaults to 16): lookup-token patch size.
        num_channels (`int`, *optional*, defaults to 3): image channels.
        compressed_grid (`int` or `(h, w)`, *optional*, defaults to 7): the compressed grid used when none is
            passed and the model is in eval mode. Override per call with `compressed_grid=`.
        compressed_grids (`list`, *optional*): the grids drawn from at random (uniformly, torch's global generator)
            for every training forward without an explicit `compressed_grid=`, so that one model serves all of them
            (the paper's multi-resolution training). Defaults to `[compressed_grid]`.
        compressed_resize_antialias (`bool`, *optional*, defaults to `True`): whether the bilinear downsampling that
            makes the compressed tokens from the lookup grid antialiases (averages all lookup tokens under a
            compressed token, as `jax.image.resize` does) instead of sampling 4 of them.
        classifier_dropout (`float`, *optional*, defaults to 0.0): dropout before the task heads.
        semantic_loss_ignore_index (`int`, *optional*, defaults to 255): label ignored by the segmentation loss.
        initializer_range (`float`, *optional*, defaults to 0.02): std of the truncated normal initializer.

    Example:

    ```python
    >>> from lookwhere_hf import LookupViTConfig, LookupViTModel

    >>> config = LookupViTConfig(compressed_grid=7, compressed_grids=[5, 7, 10])
    >>> model = LookupViTModel(config)
    ```"""

    model_type = "lookupvit"
    # Output fields that are not predictions: the `Trainer` leaves them out, so that `EvalPrediction.predictions` is
    # the logits alone, as for any transformers classifier (they stay in the forward's output).
    keys_to_ignore_at_inference = ["compressed_grid", "lookup_last_hidden_state"]

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    mlp_ratio: float | int = 4.0
    lookup_mlp_ratio: float | int = 1.0
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    layerscale_value: float | int = 1.0
    use_swiglu_ffn: bool = False
    hidden_dropout_prob: float | int = 0.0
    attention_probs_dropout_prob: float | int = 0.0
    drop_path_rate: float | int = 0.0
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    compressed_grid: int | list[int] | tuple[int, int] = 7
    compressed_grids: list | tuple | None = None
    compressed_resize_antialias: bool = True
    classifier_dropout: float | int = 0.0
    semantic_loss_ignore_index: int = 255
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        # Stored as JSON-friendly [h, w] lists (a round trip through config.json gives the same values).
        self.compressed_grid = list(grid_pair(self.compressed_grid))
        if self.compressed_grids is None:
            self.compressed_grids = [list(self.compressed_grid)]
        elif isinstance(self.compressed_grids, (list, tuple)):
            self.compressed_grids = [
                list(grid_pair(grid, f"compressed_grids[{i}]")) for i, grid in enumerate(self.compressed_grids)
            ]
        self.validate_lookupvit()

    # ------------------------------------------------------------------ derived sizes
    @property
    def token_grid(self) -> tuple[int, int]:
        """The lookup token grid at `image_size`."""
        return self.image_size // self.patch_size, self.image_size // self.patch_size

    @property
    def position_grid(self) -> tuple[int, int]:
        """Grid of the learned compressed-token position embeddings: the largest height and width among
        `compressed_grid` and `compressed_grids` (other grids get them resized, as the lookup ones are)."""
        grids = [grid_pair(self.compressed_grid)] + [grid_pair(g, "compressed_grids") for g in self.compressed_grids]
        return max(g[0] for g in grids), max(g[1] for g in grids)

    @property
    def lookup_mlp_size(self) -> int:
        return int(self.hidden_size * self.lookup_mlp_ratio)

    # ------------------------------------------------------------------ validation
    def validate_lookupvit(self) -> None:
        """The one place where LookupViT's values are checked (a `@strict` class validator: it runs when the config is
        built, on `validate()` and on `save_pretrained`). Raises `ValueError` naming the field."""
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "patch_size", "num_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be divisible by `num_attention_heads` "
                f"({self.num_attention_heads}): every head gets hidden_size / num_attention_heads channels."
            )
        if self.image_size < self.patch_size or self.image_size % self.patch_size:
            raise ValueError(
                f"`image_size` ({self.image_size}) must be a positive multiple of `patch_size` ({self.patch_size})."
            )
        for name in ("mlp_ratio", "lookup_mlp_ratio"):
            ratio = getattr(self, name)
            if isinstance(ratio, bool) or not ratio > 0 or int(self.hidden_size * ratio) < 1:
                raise ValueError(f"`{name}` must be > 0 (at least one MLP channel), got {ratio!r}.")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate", "classifier_dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not 0.0 <= value < 1.0:
                raise ValueError(f"`{name}` must be in [0, 1), got {value!r}.")
        grid = grid_pair(self.compressed_grid)
        check_grid_fits(grid, self.token_grid)
        grids = self.compressed_grids
        if not isinstance(grids, (list, tuple)) or len(grids) == 0:
            raise ValueError(
                "`compressed_grids` must be a non-empty list of grids (ints s for s x s, or (h, w) pairs) that "
                f"training draws from, got {grids!r}."
            )
        seen = set()
        for i, value in enumerate(grids):
            pair = grid_pair(value, f"compressed_grids[{i}]")
            check_grid_fits(pair, self.token_grid, f"compressed_grids[{i}]")
            if pair in seen:
                raise ValueError(f"`compressed_grids` lists {pair[0]}x{pair[1]} twice: {grids!r}; list each grid once.")
            seen.add(pair)


__all__ = ["LookupViTConfig", "check_grid_fits", "grid_pair"]
