"""Analytic FLOPs of LookWhere and of the full-resolution DINOv2 it replaces.

Convention (the same as `torch.utils.flop_counter.FlopCounterMode`, which the tests check these numbers against):

- one multiply-add counts as **2 FLOPs**; a matrix product `(m, n) @ (n, p)` costs `2 * m * n * p`;
- counted: every linear layer (q/k/v/o projections, MLP or SwiGLU, selector head), both attention matmuls
  (`q @ k^T` and `attn @ v`, `2 * N^2 * d` each per layer), the patch embedding (for LookWhere's extractor only of
  the `k` selected patches, since the others are never projected), the selector head, and for dense outputs the
  inverse-distance spreading (`2 * K * D` per grid position);
- not counted: biases, layer norms, activations, softmax, residual adds, layer scale, resizes (low-resolution view,
  position embeddings, selector map) and the top-k / nearest-neighbour search. Together these are well under 1% of
  the total for ViT-B sizes.

Everything is per forward pass of `batch_size` images (default 1).

Example:

```python
>>> from lookwhere_hf import LookWhereConfig
>>> from lookwhere_hf.flops import lookwhere_flops, full_resolution_flops
>>> config = LookWhereConfig()  # ViT-B/14 selector (depth 3, 154 px) + extractor (depth 12)
>>> lw = lookwhere_flops(config, image_size=518, k_ratio=0.1)
>>> full = full_resolution_flops(config, image_size=518)
>>> round(full / lw.total, 1)  # about 9.8x fewer FLOPs at 518 px, k = 10%
9.8
```
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .models.lookupvit.configuration_lookupvit import check_grid_fits, grid_pair
from .models.lookwhere.configuration_lookwhere import to_pair

__all__ = [
    "LookWhereFlops",
    "mlp_width",
    "transformer_layer_flops",
    "dinov2_flops",
    "full_resolution_flops",
    "lookwhere_flops",
    "flops_comparison",
    "flops_table",
    "format_flops",
    "LookupViTFlops",
    "lookupvit_flops",
    "vit_flops_like",
]


def mlp_width(hidden_size: int, mlp_ratio: float, use_swiglu_ffn: bool = False) -> int:
    """Hidden width of the MLP that transformers' DINOv2(-with-registers) layer builds.

    Plain MLP (`fc1` / `fc2`): `int(hidden_size * mlp_ratio)`. SwiGLU (`Dinov2WithRegistersSwiGLUFFN`, gate + up
    projections of this width each): two thirds of that, rounded up to a multiple of 8, e.g. 2048 for ViT-B with
    `mlp_ratio=4` (Franca's MLP).
    """
    hidden = int(hidden_size * mlp_ratio)
    return (int(hidden * 2 / 3) + 7) // 8 * 8 if use_swiglu_ffn else hidden


def _mlp_hidden(backbone_config) -> tuple[int, int]:
    """`(hidden features, number of input-side projections)` of the block's MLP (2 for SwiGLU's gate + up)."""
    swiglu = bool(getattr(backbone_config, "use_swiglu_ffn", False))
    return mlp_width(backbone_config.hidden_size, backbone_config.mlp_ratio, swiglu), 2 if swiglu else 1


def transformer_layer_flops(backbone_config, num_tokens: int, num_queries: int | None = None) -> int:
    """FLOPs of one DINOv2(-with-registers) block on `num_tokens` tokens (batch 1).

    `2 * N * D * (4 * D_attn)` for q/k/v/o, `2 * 2 * N^2 * D_attn` for the two attention matmuls and the MLP
    (`2 * N * D * H * 2`, or `* 3` for SwiGLU). With `num_queries` `Q` (LookWhere classification's CLS-only last
    layer: 1), k/v run on the `N` tokens and q/o, the attention rows and the MLP on `Q` of them.
    """
    if num_queries is not None and (
        isinstance(num_queries, bool) or not isinstance(num_queries, int) or not 1 <= num_queries <= num_tokens
    ):
        raise ValueError(
            f"`num_queries` must be an int between 1 and `num_tokens` ({num_tokens}): the tokens whose layer output is "
            f"computed (1 for a CLS-only last layer), got {num_queries!r}; leave it unset for the full layer."
        )
    queries = num_tokens if num_queries is None else num_queries
    dim = backbone_config.hidden_size
    heads = backbone_config.num_attention_heads
    head_dim = getattr(backbone_config, "head_dim", None) or dim // heads
    attn_dim = heads * head_dim
    projections = 2 * (num_tokens + queries) * dim * attn_dim * 2
    attention = 2 * 2 * queries * num_tokens * attn_dim
    mlp_hidden, num_in = _mlp_hidden(backbone_config)
    mlp = 2 * queries * dim * mlp_hidden * (num_in + 1)
    return projections + attention + mlp


def _patch_embed_flops(backbone_config, num_patches: int) -> int:
    patch_h, patch_w = to_pair(backbone_config.patch_size)
    return 2 * num_patches * backbone_config.num_channels * patch_h * patch_w * backbone_config.hidden_size


def dinov2_flops(config, image_size=None, batch_size: int = 1) -> int:
    """FLOPs of a transformers `Dinov2WithRegistersModel` (or `Dinov2Model`) forward at `image_size`.

    Args:
        config (`Dinov2WithRegistersConfig` or `Dinov2Config`): the backbone configuration.
        image_size (`int` or `(height, width)`, *optional*): input size; defaults to `config.image_size`.
        batch_size (`int`): images per forward.

    Returns:
        `int`: FLOPs (patch embedding of every patch + all blocks on `1 + registers + patches` tokens).
    """
    return _vit_flops(config, image_size, batch_size, prefix_tokens=1 + getattr(config, "num_register_tokens", 0))


def _vit_flops(config, image_size, batch_size: int, prefix_tokens: int) -> int:
    """Patch embedding of every patch + all blocks on `prefix_tokens + patches` tokens, for the whole batch."""
    height, width = to_pair(image_size if image_size is not None else config.image_size)
    patch_h, patch_w = to_pair(config.patch_size)
    _check_size(height, width, patch_h, patch_w)
    num_patches = (height // patch_h) * (width // patch_w)
    layers = config.num_hidden_layers * transformer_layer_flops(config, prefix_tokens + num_patches)
    return batch_size * (_patch_embed_flops(config, num_patches) + layers)


def full_resolution_flops(config, image_size=None, batch_size: int = 1) -> int:
    """FLOPs of the full-resolution DINOv2 that a LookWhere model replaces: its extractor's architecture run on every
    high-resolution patch (`config` is a [`LookWhereConfig`]; `image_size` defaults to `config.high_res_size`)."""
    size = image_size if image_size is not None else config.high_res_size
    return dinov2_flops(config.extractor_config, size, batch_size)


@dataclass
class LookWhereFlops:
    """Breakdown of a LookWhere forward's FLOPs (all `int`, for the whole batch)."""

    selector_embedding: int
    selector_encoder: int
    selector_head: int
    extractor_embedding: int
    extractor_encoder: int
    spreading: int
    classifier: int
    k: int
    grid: tuple[int, int]

    @property
    def selector(self) -> int:
        return self.selector_embedding + self.selector_encoder + self.selector_head

    @property
    def extractor(self) -> int:
        return self.extractor_embedding + self.extractor_encoder

    @property
    def total(self) -> int:
        return self.selector + self.extractor + self.spreading + self.classifier

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(selector=self.selector, extractor=self.extractor, total=self.total)
        return out


def lookwhere_flops(
    config,
    image_size=None,
    k: int | None = None,
    k_ratio: float | None = None,
    mode: str = "cls",
    batch_size: int = 1,
    num_labels: int = 0,
    cls_only: bool | None = None,
) -> LookWhereFlops:
    """FLOPs of a LookWhere forward.

    Args:
        config ([`LookWhereConfig`]): the model configuration.
        image_size (`int` or `(height, width)`, *optional*): high-resolution input size; defaults to
            `config.high_res_size`. The selector always sees `config.low_res_size` (square).
        k (`int`, *optional*): number of selected patches; default `floor(k_ratio * num_patches)`.
        k_ratio (`float`, *optional*): overrides `config.k_ratio` when `k` is not given.
        mode (`str`): `"cls"` (image-level output, no spreading) or `"dense"` (adds the spreading of the `k` tokens to
            every grid position).
        batch_size (`int`): images per forward.
        num_labels (`int`): add a linear head with this many outputs (on CLS for `"cls"`, per grid position for
            `"dense"`); 0 for the bare model.
        cls_only (`bool`, *optional*): the extractor's last layer computes only the CLS token (keys and values of
            all tokens; `LookWhereModel(..., cls_only=True)`); by default with a CLS head (`"cls"` and
            `num_labels > 0`: `LookWhereForImageClassification`, which computes it so).

    Returns:
        [`LookWhereFlops`]: the breakdown; `.total` is the sum.
    """
    if mode not in ("cls", "dense"):
        raise ValueError(f"`mode` must be 'cls' or 'dense', got {mode!r}.")
    if cls_only is None:
        cls_only = mode == "cls" and num_labels > 0
    if not isinstance(cls_only, bool):
        raise ValueError(f"`cls_only` must be True, False or None (from the head), got {cls_only!r}.")
    if cls_only and mode == "dense":
        raise ValueError("`cls_only=True` counts the CLS token only in the last layer; dense outputs need every token.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}.")
    sel, ext = config.selector_config, config.extractor_config
    height, width = to_pair(image_size if image_size is not None else config.high_res_size)
    patch = config.patch_size
    _check_size(height, width, patch, patch)
    grid = (height // patch, width // patch)
    num_patches = grid[0] * grid[1]
    if k is None:
        ratio = config.k_ratio if k_ratio is None else k_ratio
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"`k_ratio` must be in (0, 1], got {ratio!r}.")
        k = max(1, int(ratio * num_patches))
    elif not 1 <= k <= num_patches:
        raise ValueError(f"`k` must be between 1 and the number of patches ({num_patches}), got {k}.")

    sel_patch = to_pair(sel.patch_size)[0]
    low_grid = config.low_res_size // sel_patch
    low_patches = low_grid * low_grid
    prefix = config.num_prefix_tokens
    dim = config.hidden_size
    rr = config.selector_upsample_factor**2

    selector_embedding = _patch_embed_flops(sel, low_patches)
    selector_encoder = sel.num_hidden_layers * transformer_layer_flops(sel, prefix + low_patches)
    selector_head = 2 * low_patches * (sel.hidden_size * 4 * sel.hidden_size + 4 * sel.hidden_size * rr)
    extractor_embedding = _patch_embed_flops(ext, k)
    extractor_encoder = ext.num_hidden_layers * transformer_layer_flops(ext, prefix + k)
    if cls_only:
        extractor_encoder += transformer_layer_flops(ext, prefix + k, 1) - transformer_layer_flops(ext, prefix + k)
    spreading = 0
    classifier = 2 * dim * num_labels
    if mode == "dense":
        spreading = 2 * num_patches * min(config.num_spread_neighbors, k) * dim
        classifier = 2 * num_patches * dim * num_labels
    parts = [
        selector_embedding,
        selector_encoder,
        selector_head,
        extractor_embedding,
        extractor_encoder,
        spreading,
        classifier,
    ]
    return LookWhereFlops(*(batch_size * p for p in parts), k=k, grid=grid)


def flops_comparison(config, image_size: int, k_ratio: float) -> dict:
    """LookWhere (CLS path, per image) against the full-resolution ViT of its extractor's size at `image_size`.

    Returns:
        `dict` with `image_size`, `k_ratio`, `k`, `num_patches`, the FLOPs of the `selector`, the `extractor`, their
        sum `lookwhere` and the `full` model, and `reduction` = full / lookwhere.
    """
    lookwhere = lookwhere_flops(config, image_size, k_ratio=k_ratio)
    full = full_resolution_flops(config, image_size)
    return {
        "image_size": image_size,
        "k_ratio": k_ratio,
        "k": lookwhere.k,
        "num_patches": lookwhere.grid[0] * lookwhere.grid[1],
        "selector": lookwhere.selector,
        "extractor": lookwhere.extractor,
        "lookwhere": lookwhere.total,
        "full": full,
        "reduction": full / lookwhere.total,
    }


def flops_table(config, resolutions=(518, 1036), k_ratios=(0.05, 0.1, 0.25)) -> str:
    """Markdown table of [`flops_comparison`] over square `resolutions` x `k_ratios` (the model cards' FLOPs table)."""
    rows = [
        "| resolution | k_ratio | k / patches | selector GFLOPs | extractor GFLOPs | LookWhere GFLOPs "
        "| full ViT GFLOPs | reduction |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for size in resolutions:
        for ratio in k_ratios:
            f = flops_comparison(config, size, ratio)
            rows.append(
                f"| {size}x{size} | {ratio:g} | {f['k']} / {f['num_patches']} | {f['selector'] / 1e9:.1f} | "
                f"{f['extractor'] / 1e9:.1f} | {f['lookwhere'] / 1e9:.1f} | {f['full'] / 1e9:.1f} | "
                f"{f['reduction']:.1f}x |"
            )
    return "\n".join(rows)


def format_flops(flops: float) -> str:
    """`123456789` -> `'0.12 GFLOPs'` (GFLOPs below 1e12, TFLOPs above)."""
    if flops >= 1e12:
        return f"{flops / 1e12:.2f} TFLOPs"
    return f"{flops / 1e9:.2f} GFLOPs"


def _check_size(height: int, width: int, patch_h: int, patch_w: int) -> None:
    if height < patch_h or width < patch_w or height % patch_h or width % patch_w:
        raise ValueError(
            f"The image size ({height}x{width}) must be a positive multiple of the patch size ({patch_h}x{patch_w})."
        )


# ----------------------------------------------------------------------------------------------------- LookupViT
@dataclass
class LookupViTFlops:
    """Breakdown of a LookupViT forward's FLOPs (all `int`, for the whole batch), same convention as above.

    Per block with `N` lookup tokens, `M = h * w` compressed tokens and width `D`: `gather` = q/o projections of the
    compressed tokens + k/v projections of the lookup tokens + the two matmuls `Q K^T` and `P V` (`2 * M * N * D`
    each); `refine` = one transformer layer on `M` tokens; `scatter` = v projection of the compressed tokens, `P^T V`
    (`2 * N * M * D`) and the output projection of the lookup tokens, with **no** `Q K^T` (the gather logits are
    reused; `scatter_saved` is what recomputing them would add); `lookup_mlp` = the narrow MLP on `N` tokens. The
    classifier's last block has no scatter and no lookup MLP (see `lookupvit_flops`).
    """

    embedding: int
    gather: int
    refine: int
    scatter: int
    lookup_mlp: int
    classifier: int
    scatter_saved: int
    compressed_grid: tuple[int, int]
    grid: tuple[int, int]

    @property
    def total(self) -> int:
        return self.embedding + self.gather + self.refine + self.scatter + self.lookup_mlp + self.classifier

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(total=self.total)
        return out


def lookupvit_flops(
    config,
    image_size=None,
    compressed_grid=None,
    mode: str = "cls",
    batch_size: int = 1,
    num_labels: int = 0,
) -> LookupViTFlops:
    """FLOPs of a LookupViT forward (eval mode).

    Args:
        config ([`LookupViTConfig`]): the model configuration.
        image_size (`int` or `(height, width)`, *optional*): input size; defaults to `config.image_size`.
        compressed_grid (`int` or `(h, w)`, *optional*): compressed grid; defaults to `config.compressed_grid`.
        mode (`str`): `"cls"`: `LookupViTForImageClassification`, a head on the mean compressed token; its last
            block skips the scatter and the lookup MLP, which only the lookup tokens would carry. `"dense"`:
            `LookupViTForSemanticSegmentation` (a head on every lookup token) or, with `num_labels=0`, the bare
            `LookupViTModel`; both streams are computed to the end.
        batch_size (`int`): images per forward.
        num_labels (`int`): outputs of the linear head.

    Returns:
        [`LookupViTFlops`]: the breakdown; `.total` is the sum.
    """
    if mode not in ("cls", "dense"):
        raise ValueError(f"`mode` must be 'cls' or 'dense', got {mode!r}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}.")
    height, width = to_pair(image_size if image_size is not None else config.image_size)
    patch = config.patch_size
    _check_size(height, width, patch, patch)
    grid = (height // patch, width // patch)
    compressed = grid_pair(compressed_grid if compressed_grid is not None else config.compressed_grid)
    check_grid_fits(compressed, grid)
    n, m, dim = grid[0] * grid[1], compressed[0] * compressed[1], config.hidden_size
    layers = config.num_hidden_layers

    embedding = _patch_embed_flops(config, n)
    gather = 2 * m * dim * dim * 2 + 2 * n * dim * dim * 2 + 2 * 2 * m * n * dim
    refine = transformer_layer_flops(config, m)
    scatter = 2 * m * dim * dim + 2 * n * m * dim + 2 * n * dim * dim
    lookup_mlp = 2 * n * dim * config.lookup_mlp_size * 2
    classifier = 2 * dim * num_labels if mode == "cls" else 2 * n * dim * num_labels
    # the classifier reads only the compressed tokens: its last block skips the scatter and the lookup MLP
    lookup_layers = layers - 1 if mode == "cls" else layers
    parts = [
        embedding,
        layers * gather,
        layers * refine,
        lookup_layers * scatter,
        lookup_layers * lookup_mlp,
        classifier,
    ]
    saved = lookup_layers * 2 * n * m * dim
    return LookupViTFlops(*(batch_size * p for p in parts), batch_size * saved, compressed, grid)


def vit_flops_like(config, image_size=None, batch_size: int = 1) -> int:
    """FLOPs of the plain ViT of a [`LookupViTConfig`]'s size (every block a full transformer layer on all `N` patch
    tokens, no CLS): the model LookupViT is compared with, and what `from_vit` starts from."""
    return _vit_flops(config, image_size, batch_size, prefix_tokens=0)
