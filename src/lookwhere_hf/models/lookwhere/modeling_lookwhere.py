"""PyTorch LookWhere: a low-resolution selector decides where to look, a high-resolution extractor sees only there.

Paper: "LookWhere? Efficient Visual Recognition by Learning Where to Look and What to See from Self-Supervision"
(Fuller et al., 2025, arXiv:2505.18051).

Structure of the code:

- [`LookWhereEmbeddings`]: CLS / register tokens, patch embedding and patch-only position embeddings (resized
  bicubically, without antialiasing, for other grids). `embed_selected` embeds only the chosen patches.
- [`LookWhereSelector`]: shallow DINOv2-with-registers encoder on the low-resolution view plus the MLP head that
  scores every high-resolution patch (see `selection.py` for the map layout and top-k).
- [`LookWhereExtractor`]: full-depth DINOv2-with-registers encoder on the selected high-resolution patches, seeded
  with the selector's CLS + register tokens. For image-level outputs its last layer computes the CLS token only
  ([`cls_only_layer_forward`]: keys / values of every token, the rest of the layer for CLS).
- [`LookWhereModel`]: the two together; optional dense features via `dense_spreading.spread_to_grid`.
- Task heads: [`LookWhereForImageClassification`], [`LookWhereForSemanticSegmentation`].

Output flags follow transformers' vision models: `output_hidden_states` / `output_attentions` (and any other
`TransformersKwargs`) are passed down as `**kwargs` to the two `Dinov2WithRegistersEncoder`s, which record their
per-layer outputs with their own `_can_record_outputs` hooks. All three classes return the same four fields:
`hidden_states` / `attentions` for the extractor and `selector_hidden_states` / `selector_attentions` for the selector,
each a tuple with `num_hidden_layers + 1` (hidden states: the encoder input, then every layer's output, before the final
layer norm) or `num_hidden_layers` (attentions) entries. When not passed, the flags default to the LookWhere config's.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutput, ModelOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.models.dinov2_with_registers.configuration_dinov2_with_registers import Dinov2WithRegistersConfig
from transformers.models.dinov2_with_registers.modeling_dinov2_with_registers import (
    Dinov2WithRegistersAttention,
    Dinov2WithRegistersEncoder,
    Dinov2WithRegistersLayer,
    Dinov2WithRegistersLayerScale,
    Dinov2WithRegistersPatchEmbeddings,
    eager_attention_forward,
)
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple

from .configuration_lookwhere import LookWhereConfig, to_pair
from .dense_spreading import spread_to_grid
from .selection import make_low_res_view, select_top_k, selector_scores_to_map


def resize_position_embeddings(
    position_embeddings: torch.Tensor, source_grid: int, grid: tuple[int, int]
) -> torch.Tensor:
    """Resize patch-only position embeddings `(1, source_grid**2, D)` to `(1, grid_h * grid_w, D)`.

    Bicubic, `align_corners=False`, **no antialiasing**, computed in float32 (the official LookWhere code; note that
    transformers' DINOv2 `interpolate_pos_encoding` antialiases and gives other numbers).
    """
    if (source_grid, source_grid) == tuple(grid):
        return position_embeddings
    dim = position_embeddings.shape[-1]
    grid_2d = position_embeddings.reshape(1, source_grid, source_grid, dim).permute(0, 3, 1, 2)
    resized = F.interpolate(grid_2d.float(), size=tuple(grid), mode="bicubic", align_corners=False, antialias=False)
    return resized.to(position_embeddings.dtype).permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim)


def _load_dinov2(dinov2) -> PreTrainedModel:
    """A DINOv2(-with-registers) backbone from a model instance (bare or with a task head) or a path / Hub id."""
    from transformers import AutoModel

    if isinstance(dinov2, (str, bytes)) or hasattr(dinov2, "__fspath__"):
        dinov2 = AutoModel.from_pretrained(dinov2)
    if hasattr(dinov2, "embeddings") and hasattr(dinov2, "encoder"):
        backbone = dinov2
    else:
        backbone = getattr(dinov2, "dinov2_with_registers", None) or getattr(dinov2, "dinov2", None)
    model_type = getattr(getattr(backbone, "config", None), "model_type", None)
    if model_type not in ("dinov2_with_registers", "dinov2"):
        raise ValueError(
            "Expected a DINOv2-with-registers or DINOv2 model (transformers `Dinov2WithRegistersModel` / "
            f"`Dinov2Model`, or a path to one), got {type(dinov2).__name__} (model_type={model_type!r})."
        )
    return backbone


def _block_flops(backbone_config, num_tokens: int, num_queries: int | None = None) -> int:
    """FLOPs of one DINOv2(-with-registers) block on `num_tokens` tokens: q/k/v/o projections, the two attention
    matmuls and the MLP (plain or SwiGLU). With `num_queries` (the CLS-only last layer: 1), keys and values are
    computed for all `num_tokens` tokens and the rest for `num_queries` of them. The same formula as
    `lookwhere_hf.flops.transformer_layer_flops`, which model folders copied for `trust_remote_code` cannot import
    (tests check the two agree)."""
    queries = num_tokens if num_queries is None else num_queries
    dim = backbone_config.hidden_size
    heads = backbone_config.num_attention_heads
    attn_dim = heads * (getattr(backbone_config, "head_dim", None) or dim // heads)
    mlp_hidden, num_in = int(dim * backbone_config.mlp_ratio), 1
    if getattr(backbone_config, "use_swiglu_ffn", False):
        mlp_hidden, num_in = (int(mlp_hidden * 2 / 3) + 7) // 8 * 8, 2
    return (
        4 * (num_tokens + queries) * dim * attn_dim
        + 4 * queries * num_tokens * attn_dim
        + (2 * queries * dim * mlp_hidden * (num_in + 1))
    )


def cls_only_layer_forward(
    layer: Dinov2WithRegistersLayer, hidden_states: torch.Tensor, **kwargs: Unpack[TransformersKwargs]
) -> torch.Tensor:
    """The CLS output `(B, 1, D)` of a transformers `Dinov2WithRegistersLayer` on `hidden_states (B, N, D)`.

    Exactly the layer's own computation, with its own submodules and attention function, restricted to what the CLS
    output depends on: `norm1` and the key / value projections run on all `N` tokens; the query, the attention (one
    query row), `o_proj`, both layer scales, `norm2` and the MLP on the CLS token only. The other tokens' outputs
    would need all of that for every token and are not used by an image-level head. The same random draws as the
    full layer in training mode only without attention dropout (its mask has one row here instead of `N`); the
    caller checks that ([`LookWhereExtractor.can_skip_last_layer_tokens`]).
    """
    attention = layer.attention
    batch_size, num_tokens, _ = hidden_states.shape
    normed = layer.norm1(hidden_states)
    query = attention.q_proj(normed[:, :1]).view(batch_size, 1, -1, attention.head_dim).transpose(1, 2)
    key = attention.k_proj(normed).view(batch_size, num_tokens, -1, attention.head_dim).transpose(1, 2)
    value = attention.v_proj(normed).view(batch_size, num_tokens, -1, attention.head_dim).transpose(1, 2)
    attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
        attention.config._attn_implementation, eager_attention_forward
    )
    attn_output, _ = attention_interface(
        attention,
        query,
        key,
        value,
        None,
        dropout=0.0 if not attention.training else attention.attention_dropout,
        scaling=attention.scaling,
        **kwargs,
    )
    attn_output = attention.o_proj(attn_output.reshape(batch_size, 1, -1).contiguous())
    hidden = layer.drop_path(layer.layer_scale1(attn_output)) + hidden_states[:, :1]
    return layer.drop_path(layer.layer_scale2(layer.mlp(layer.norm2(hidden)))) + hidden


def _confidence(logits: torch.Tensor) -> torch.Tensor:
    """The exit score: max softmax probability `(B, C)` -> `(B,)`, in float32 or better."""
    return logits.softmax(dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32)).amax(dim=-1)


def anytime_rung_flops(
    config: LookWhereConfig, low_res_grid: tuple[int, int], ks: list[int], num_labels: int, glance: bool
) -> list[int]:
    """Cumulative FLOPs per image of exiting at each rung of anytime classification (glance first if `glance`).

    Convention of `lookwhere_hf.flops` (a multiply-add is 2 FLOPs; linear layers, attention matmuls and patch
    embeddings counted; norms, softmax, resizes and top-k not). What each rung adds:

    - selector (patch embedding, encoder, map head): once, before the first rung;
    - glance: a linear `2 * hidden -> num_labels` on the selector's output;
    - focus rung `i`: the patch embedding of its `k_i - k_{i-1}` *new* patches only (the ranking is nested, so the
      patches of earlier rungs are already embedded), an extractor pass on `prefix + k_i` tokens whose last layer
      computes only the CLS token (keys and values of all tokens, see [`LookWhereExtractor.encode`]), and the head.
      The extractor pass cannot be reused across rungs: every token attends to every other in every layer, so
      adding patches changes all the earlier tokens' states from the first layer on.

    For a single focus rung without glance this equals `lookwhere_flops(config, k=k, num_labels=...).total`.
    """
    sel, ext = config.selector_config, config.extractor_config
    dim, prefix = config.hidden_size, config.num_prefix_tokens
    num_low = low_res_grid[0] * low_res_grid[1]
    sel_patch, ext_patch = to_pair(sel.patch_size)[0], to_pair(ext.patch_size)[0]
    cost = 2 * num_low * sel.num_channels * sel_patch * sel_patch * dim
    cost += sel.num_hidden_layers * _block_flops(sel, prefix + num_low)
    cost += 2 * num_low * (dim * 4 * dim + 4 * dim * config.selector_upsample_factor**2)
    cumulative = []
    if glance:
        cost += 2 * 2 * dim * num_labels
        cumulative.append(cost)
    previous_k = 0
    for k in ks:
        cost += 2 * (k - previous_k) * ext.num_channels * ext_patch * ext_patch * dim
        cost += (ext.num_hidden_layers - 1) * _block_flops(ext, prefix + k) + 2 * dim * num_labels
        cost += _block_flops(ext, prefix + k, num_queries=1)
        cumulative.append(cost)
        previous_k = k
    return cumulative


# ----------------------------------------------------------------------------------------------------- outputs
@dataclass
class LookWhereModelOutput(ModelOutput):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, num_prefix_tokens + k, hidden_size)`):
        Extractor output after the final layer norm: CLS, registers, then the `k` selected patch tokens in the order
        of `selected_indices`. With `cls_only=True`: the CLS token only, `(batch_size, 1, hidden_size)`.
    pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
        The extractor's output CLS token.
    selector_map (`torch.FloatTensor` of shape `(batch_size, grid_h * grid_w)`):
        Selector map logits for every high-resolution patch, row-major.
    selected_indices (`torch.LongTensor` of shape `(batch_size, k)`):
        Row-major indices of the high-resolution patches the extractor computed, by descending selector score.
    selector_prefix_tokens (`torch.FloatTensor` of shape `(batch_size, num_prefix_tokens, hidden_size)`):
        The selector's CLS + register tokens after its final norm (the extractor's prefix inputs).
    selector_patch_tokens (`torch.FloatTensor` of shape `(batch_size, low_h * low_w, hidden_size)`):
        The selector's low-resolution patch tokens after its final norm.
    dense_features (`torch.FloatTensor` of shape `(batch_size, hidden_size, grid_h, grid_w)`, *optional*):
        The `k` output patch tokens spread to the full high-resolution grid (returned with `output_dense_features`).
    hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states=True`):
        Extractor hidden states, `extractor_config.num_hidden_layers + 1` tensors of shape
        `(batch_size, num_prefix_tokens + k, hidden_size)`: the extractor's input (the selector's prefix tokens and the
        `k` embedded patches), then the output of every layer (the last one before the final layer norm).
    attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`):
        Extractor attention weights, `extractor_config.num_hidden_layers` tensors of shape
        `(batch_size, num_heads, num_prefix_tokens + k, num_prefix_tokens + k)` (eager attention only).
    selector_hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states=True`):
        Selector hidden states, `selector_config.num_hidden_layers + 1` tensors of shape
        `(batch_size, num_prefix_tokens + low_h * low_w, hidden_size)`, laid out as `hidden_states`.
    selector_attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`):
        Selector attention weights, `selector_config.num_hidden_layers` tensors of shape
        `(batch_size, num_heads, num_prefix_tokens + low_h * low_w, num_prefix_tokens + low_h * low_w)` (eager only).
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    selector_map: torch.FloatTensor | None = None
    selected_indices: torch.LongTensor | None = None
    selector_prefix_tokens: torch.FloatTensor | None = None
    selector_patch_tokens: torch.FloatTensor | None = None
    dense_features: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    selector_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    selector_attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class LookWhereImageClassifierOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `(1,)`, *optional*):
        Classification (or regression) loss, when `labels` are given.
    logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
        Classification scores (before softmax / sigmoid).
    selector_map (`torch.FloatTensor` of shape `(batch_size, grid_h * grid_w)`):
        Selector map logits.
    selected_indices (`torch.LongTensor` of shape `(batch_size, k)`):
        The high-resolution patches the extractor computed.
    hidden_states, attentions, selector_hidden_states, selector_attentions (*optional*):
        Extractor and selector per-layer outputs, on request, exactly as in [`LookWhereModelOutput`] (fixed-`k` mode
        only).
    rung_logits (`torch.FloatTensor` of shape `(batch_size, num_rungs, num_labels)`, *optional*, anytime mode):
        The glance's logits (with `config.glance_head`), then those of every focus rung. `logits` is the last one.
    exit_rung (`torch.LongTensor` of shape `(batch_size,)`, *optional*, anytime and budgeted modes):
        The rung each image's `logits` come from (the last one in anytime mode).
    flops (`torch.LongTensor` of shape `(batch_size,)`, *optional*, anytime and budgeted modes):
        FLOPs spent on each image up to its exit (`rung_flops[i, exit_rung[i]]`).
    rung_flops (`torch.LongTensor` of shape `(batch_size, num_rungs)`, *optional*, anytime and budgeted modes):
        Cumulative FLOPs per image of exiting at each rung, in the convention of `lookwhere_hf.flops` (see
        [`anytime_rung_flops`]); every row is the same ladder.
    rung_k (`torch.LongTensor` of shape `(batch_size, num_rungs)`, *optional*, anytime and budgeted modes):
        High-resolution patches each rung's extractor pass sees (0 for the glance); every row is the same.

    Every field holds one row per image along dim 0, so that `pipeline(..., batch_size=N)` can split a batch.
    Fields other than `logits` are left out of the `Trainer`'s predictions (`config.keys_to_ignore_at_inference`).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    selector_map: torch.FloatTensor | None = None
    selected_indices: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    selector_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    selector_attentions: tuple[torch.FloatTensor, ...] | None = None
    rung_logits: torch.FloatTensor | None = None
    exit_rung: torch.LongTensor | None = None
    flops: torch.LongTensor | None = None
    rung_flops: torch.LongTensor | None = None
    rung_k: torch.LongTensor | None = None


@dataclass
class LookWhereSemanticSegmenterOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `(1,)`, *optional*):
        Cross-entropy over the label pixels (logits upsampled to the label size), when `labels` are given.
    logits (`torch.FloatTensor` of shape `(batch_size, num_labels, grid_h, grid_w)`):
        Per-patch class scores on the high-resolution patch grid. Upsample them to the image size for a mask
        (`LookWhereImageProcessor.post_process_semantic_segmentation` does).
    selector_map (`torch.FloatTensor` of shape `(batch_size, grid_h * grid_w)`):
        Selector map logits.
    selected_indices (`torch.LongTensor` of shape `(batch_size, k)`):
        The high-resolution patches the extractor computed.
    hidden_states, attentions, selector_hidden_states, selector_attentions (*optional*):
        Extractor and selector per-layer outputs, on request, exactly as in [`LookWhereModelOutput`].
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    selector_map: torch.FloatTensor | None = None
    selected_indices: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    selector_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    selector_attentions: tuple[torch.FloatTensor, ...] | None = None


# ----------------------------------------------------------------------------------------------------- modules
class LookWhereEmbeddings(nn.Module):
    """CLS and register tokens, patch embedding, and position embeddings for patch tokens only.

    Parameters: `cls_token (1, 1, D)`, `register_tokens (1, R, D)`, `patch_embeddings.projection` (a
    `patch_size`-strided conv) and `position_embeddings (1, grid * grid, D)` for `grid = image_size // patch_size`.
    """

    def __init__(self, config: Dinov2WithRegistersConfig) -> None:
        super().__init__()
        self.patch_size = to_pair(config.patch_size)[0]
        self.grid = to_pair(config.image_size)[0] // self.patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.register_tokens = nn.Parameter(torch.zeros(1, config.num_register_tokens, config.hidden_size))
        self.patch_embeddings = Dinov2WithRegistersPatchEmbeddings(config)
        self.position_embeddings = nn.Parameter(torch.zeros(1, self.grid * self.grid, config.hidden_size))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        # grid -> (weights key, resized position embeddings); inference only, see `position_embeddings_for`.
        self._resized_position_cache: dict = {}

    def position_embeddings_for(self, grid: tuple[int, int]) -> torch.Tensor:
        """Position embeddings `(1, grid_h * grid_w, D)` for a patch grid, resized if it is not the trained one.

        In eval mode without gradients the resized embeddings are cached per grid; the cache entry is keyed on the
        parameter's storage, dtype, device and version counter, so loading or updating the weights invalidates it.
        """
        grid = (int(grid[0]), int(grid[1]))
        weights = self.position_embeddings
        if grid == (self.grid, self.grid):
            return weights
        if (
            torch.compiler.is_compiling()  # first: `is_inference()` below cannot be traced
            or torch.jit.is_tracing()
            or self.training
            or torch.is_grad_enabled()
            or weights.is_inference()  # no version counter to detect updates
        ):
            return resize_position_embeddings(weights, self.grid, grid)
        key = (weights.data_ptr(), weights.dtype, weights.device, weights._version)
        cached = self._resized_position_cache.get(grid)
        if cached is None or cached[0] != key:
            if len(self._resized_position_cache) >= 8:
                self._resized_position_cache.clear()
            cached = (key, resize_position_embeddings(weights, self.grid, grid))
            self._resized_position_cache[grid] = cached
        return cached[1]

    def prefix_tokens(self, batch_size: int) -> torch.Tensor:
        """The learned CLS + register tokens, `(batch_size, 1 + R, D)` (they get no position embedding)."""
        return torch.cat((self.cls_token, self.register_tokens), dim=1).expand(batch_size, -1, -1)

    def embed_all(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Embed every patch: `(B, C, H, W)` -> `(B, (H/p) * (W/p), D)`, position embeddings added."""
        grid = (pixel_values.shape[-2] // self.patch_size, pixel_values.shape[-1] // self.patch_size)
        tokens = self.patch_embeddings(pixel_values)
        return self.dropout(tokens + self.position_embeddings_for(grid).to(tokens.dtype))

    def embed_selected(
        self, pixel_values: torch.Tensor, indices: torch.LongTensor, batch_rows: torch.LongTensor | None = None
    ) -> torch.Tensor:
        """Embed only the patches at `indices`: `(B, C, H, W)`, `(B, k)` -> `(B, k, D)`, position embeddings added.

        The patches are cut out of the image and projected with the patch-embedding weights; the other
        `(H/p) * (W/p) - k` patches are never projected. With `batch_rows` (`(n,)`), `indices` is `(n, k)` and row `i`
        takes its patches from image `batch_rows[i]` (a sub-batch, without copying the images).
        """
        batch_size, channels, height, width = pixel_values.shape
        p = self.patch_size
        grid = (height // p, width // p)
        projection = self.patch_embeddings.projection
        if channels != projection.in_channels:
            raise ValueError(f"Expected {projection.in_channels} image channels, got {channels}.")
        # (B, G_h, G_w, C, p, p) view of the image; only the k selected patches are copied out of it.
        patch_view = pixel_values.reshape(batch_size, channels, grid[0], p, grid[1], p).permute(0, 2, 4, 1, 3, 5)
        rows = torch.div(indices, grid[1], rounding_mode="floor")
        if batch_rows is None:
            batch_rows = torch.arange(batch_size, device=indices.device)
        patches = patch_view[batch_rows.unsqueeze(1), rows, indices - rows * grid[1]]  # (n, k, C, p, p)
        patches = patches.reshape(indices.shape[0], indices.shape[1], channels * p * p).to(projection.weight.dtype)
        tokens = F.linear(patches, projection.weight.reshape(projection.out_channels, -1), projection.bias)
        positions = self.position_embeddings_for(grid)[0].to(tokens.dtype)  # (G_h * G_w, D)
        return self.dropout(tokens + positions[indices])


class LookWhereSelectorHead(nn.Module):
    """MLP `hidden -> 4 * hidden -> r * r` scoring the `r x r` high-resolution patches under each low-res patch."""

    def __init__(self, hidden_size: int, num_outputs: int, activation: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, 4 * hidden_size)
        self.act = ACT2FN[activation]
        self.fc2 = nn.Linear(4 * hidden_size, num_outputs)

    def forward(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        """`(B, N_lo, D)` -> `(B, N_lo, r * r)`."""
        return self.fc2(self.act(self.fc1(patch_tokens)))


class LookWhereSelector(nn.Module):
    """The low-resolution DINOv2-with-registers encoder and the selector head."""

    def __init__(self, config: LookWhereConfig) -> None:
        super().__init__()
        self.config = config.selector_config
        self.embeddings = LookWhereEmbeddings(config.selector_config)
        self.encoder = Dinov2WithRegistersEncoder(config.selector_config)
        self.layernorm = nn.LayerNorm(config.selector_config.hidden_size, eps=config.selector_config.layer_norm_eps)
        r = config.selector_upsample_factor
        self.head = LookWhereSelectorHead(config.selector_config.hidden_size, r * r, config.selector_head_act)

    def forward(self, low_res_pixel_values: torch.Tensor, grid: tuple[int, int], **kwargs: Unpack[TransformersKwargs]):
        """Returns `(selector_map (B, G_h*G_w), prefix (B, P, D), patch_tokens (B, N_lo, D), encoder_outputs)`;
        `kwargs` (output flags, ...) go to the encoder, whose outputs carry the recorded hidden states / attentions."""
        batch_size = low_res_pixel_values.shape[0]
        p = self.embeddings.patch_size
        low_grid = (low_res_pixel_values.shape[-2] // p, low_res_pixel_values.shape[-1] // p)
        patches = self.embeddings.embed_all(low_res_pixel_values)
        hidden = torch.cat((self.embeddings.prefix_tokens(batch_size).to(patches.dtype), patches), dim=1)
        encoder_outputs = self.encoder(hidden, **kwargs)
        hidden = self.layernorm(encoder_outputs.last_hidden_state)
        num_prefix = 1 + self.config.num_register_tokens
        prefix, patch_tokens = hidden[:, :num_prefix], hidden[:, num_prefix:]
        selector_map = selector_scores_to_map(self.head(patch_tokens), low_grid, grid)
        return selector_map, prefix, patch_tokens, encoder_outputs


class LookWhereExtractor(nn.Module):
    """The high-resolution DINOv2-with-registers encoder that runs on the selected patches only."""

    def __init__(self, config: LookWhereConfig) -> None:
        super().__init__()
        self.config = config.extractor_config
        self.embeddings = LookWhereEmbeddings(config.extractor_config)
        self.encoder = Dinov2WithRegistersEncoder(config.extractor_config)
        self.layernorm = nn.LayerNorm(config.extractor_config.hidden_size, eps=config.extractor_config.layer_norm_eps)

    def forward(
        self,
        pixel_values: torch.Tensor,
        indices: torch.LongTensor,
        prefix: torch.Tensor,
        cls_only: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ):
        """`(B, C, H, W)`, `(B, k)`, `(B, P, D)` -> (normed tokens `(B, P + k, D)`, encoder outputs); `kwargs` go to
        the encoder; `cls_only` as in [`encode`].

        The extractor's own `embeddings.cls_token` / `register_tokens` are not used: the selector's prefix tokens take
        their place (they stay in the state dict, frozen, see `LookWherePreTrainedModel._freeze_unused_parameters`)."""
        return self.encode(self.embeddings.embed_selected(pixel_values, indices), prefix, cls_only=cls_only, **kwargs)

    def encode(
        self, tokens: torch.Tensor, prefix: torch.Tensor, cls_only: bool = False, **kwargs: Unpack[TransformersKwargs]
    ):
        """Run the encoder on already embedded patches: `(B, k, D)`, `(B, P, D)` -> (normed tokens `(B, P + k, D)`,
        encoder outputs). Anytime classification embeds each patch once and re-encodes growing prefixes of them.

        With `cls_only`, only the normed CLS token `(B, 1, D)` is returned, and the last layer computes only what it
        needs ([`cls_only_layer_forward`]) when [`can_skip_last_layer_tokens`]; otherwise the full last layer runs
        and the CLS token is cut out of its output. The caller makes sure no per-layer outputs are recorded (their
        last entry would be incomplete)."""
        hidden = torch.cat((prefix.to(tokens.dtype), tokens), dim=1)
        if not (cls_only and self.can_skip_last_layer_tokens()):
            encoder_outputs = self.encoder(hidden, **kwargs)
            sequence = encoder_outputs.last_hidden_state
            return self.layernorm(sequence[:, :1] if cls_only else sequence), encoder_outputs
        # `Dinov2WithRegistersEncoder.forward` without its last layer (no outputs are recorded on this path).
        kwargs = {
            key: value for key, value in kwargs.items() if key not in ("output_hidden_states", "output_attentions")
        }
        *layers, last_layer = self.encoder.layer
        for layer_module in layers:
            hidden = layer_module(hidden, None, **kwargs)
        if last_layer.gradient_checkpointing and last_layer.training:  # as the layer's own `forward` does
            cls_token = last_layer._gradient_checkpointing_func(
                partial(cls_only_layer_forward, last_layer, **kwargs), hidden
            )
        else:
            cls_token = cls_only_layer_forward(last_layer, hidden, **kwargs)
        return self.layernorm(cls_token), BaseModelOutput(last_hidden_state=cls_token)

    def can_skip_last_layer_tokens(self) -> bool:
        """Whether [`cls_only_layer_forward`] gives exactly the full last layer's CLS output here. It does not:

        - when the last layer is not exactly transformers' `Dinov2WithRegistersLayer` with a
          `Dinov2WithRegistersAttention` (a subclass, a replaced or wrapped module, FSDP2's layer class): their own
          `forward` may compute something else, and this path does not call it;
        - in training mode with attention dropout: the dropout mask would be drawn for one query row instead of all,
          so the random stream (and the output) would differ from the full layer's;
        - when the layer or its attention module has a replaced `forward` (accelerate's `device_map` / offloading
          hooks: they move inputs and weights around the layer's own `forward`) or forward / backward hooks of its
          own (`register_forward_hook`, ...): they would not run. transformers' output-capturing hooks do not count:
          they record only inside the encoder's `forward` with `output_hidden_states` / `output_attentions`, which
          this path never has. Global hooks (`torch.nn.modules.module.register_module_forward_hook`) still run on
          the submodules this path calls, with the CLS token's shapes.

        With gradient checkpointing, the CLS-only layer is checkpointed as the full one would be.
        """
        last_layer = self.encoder.layer[-1]
        attention = getattr(last_layer, "attention", None)
        if type(last_layer) is not Dinov2WithRegistersLayer or type(attention) is not Dinov2WithRegistersAttention:
            return False
        if attention.training and attention.attention_dropout > 0:
            return False
        for module in (last_layer, attention):
            if hasattr(module, "_hf_hook") or "forward" in vars(module):
                return False
            hooks = (
                *module._forward_pre_hooks.values(),
                *module._forward_hooks.values(),
                *module._backward_pre_hooks.values(),
                *module._backward_hooks.values(),
            )
            if any(getattr(hook, "__name__", None) != "output_capturing_hook" for hook in hooks):
                return False
        return True


# ----------------------------------------------------------------------------------------------------- models
class LookWherePreTrainedModel(PreTrainedModel):
    config_class = LookWhereConfig
    config: LookWhereConfig
    base_model_prefix = "lookwhere"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["LookWhereEmbeddings", "Dinov2WithRegistersLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    # Task heads set this: their selector head is frozen, and the whole selector when `config.freeze_selector`.
    _freezes_selector = False
    # Every Auto class of the family and its class in this file (see `save_pretrained`).
    _family_auto_classes = {
        "AutoModel": "LookWhereModel",
        "AutoModelForImageClassification": "LookWhereForImageClassification",
        "AutoModelForSemanticSegmentation": "LookWhereForSemanticSegmentation",
        "AutoModelForPreTraining": "LookWhereForPreTraining",
    }

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, with `config.auto_map` naming every Auto class of the family (transformers
        writes only the class being saved), so that with `trust_remote_code=True` each of them loads from the folder
        of any saved class: e.g. `AutoModelForImageClassification` from a pretrained or converted bare model."""
        if self._auto_class is not None:  # the code is copied next to the weights (`register_for_auto_class`)
            module = type(self).__module__.rsplit(".", 1)[-1]
            family = {auto: f"{module}.{name}" for auto, name in self._family_auto_classes.items()}
            self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **family}
        return super().save_pretrained(save_directory, *args, **kwargs)

    def post_init(self) -> None:
        super().post_init()
        self._freeze_unused_parameters()

    def _freeze_unused_parameters(self) -> None:
        """The one place that decides which parameters are not trained (`requires_grad=False`).

        - The extractor's `embeddings.cls_token` / `register_tokens`, in every class: the selector's prefix tokens
          replace them, so they never get a gradient. Trainable, they would sit in the optimizer for nothing and
          make DDP without `find_unused_parameters` (what the Trainer uses with gradient checkpointing) stop with
          "Expected to have finished reduction in the prior iteration". They stay in the state dict.
        - In the task heads, the selector head: the task loss reaches the selector only through its prefix tokens
          (the top-k of its map carries no gradient), so with `freeze_selector=False` the selector encoder is
          trained and its head, for the same reason as above, is not.
        - In the task heads, the whole selector when `config.freeze_selector` (the official fine-tuning).

        Runs at the end of `__init__` (`post_init`) and again after `from_pretrained`, which re-creates the loaded
        parameters with `requires_grad=True`.
        """
        for module in self.modules():
            if isinstance(module, LookWhereExtractor):
                module.embeddings.cls_token.requires_grad_(False)
                module.embeddings.register_tokens.requires_grad_(False)
        if self._freezes_selector:
            selector = self.lookwhere.selector
            (selector if self.config.freeze_selector else selector.head).requires_grad_(False)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # `output_loading_info=True` gives a tuple
        model._freeze_unused_parameters()
        return loaded

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            init.trunc_normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, LookWhereEmbeddings):
            init.trunc_normal_(module.position_embeddings, mean=0.0, std=std)
            init.trunc_normal_(module.cls_token, mean=0.0, std=std)
            init.zeros_(module.register_tokens)
        elif isinstance(module, Dinov2WithRegistersLayerScale):
            init.constant_(module.lambda1, self.config.extractor_config.layerscale_value)

    @classmethod
    def from_dinov2(
        cls,
        dinov2,
        selector_depth: int = 3,
        low_res_size: int = 154,
        high_res_size: int | None = None,
        k_ratio: float = 0.1,
        **config_kwargs,
    ) -> LookWherePreTrainedModel:
        """Build a LookWhere model from a DINOv2-with-registers (or plain DINOv2) checkpoint.

        The extractor is an exact copy of `dinov2` (weights and architecture; the CLS position embedding is folded into
        the CLS token, since LookWhere gives CLS no position embedding); the selector takes its patch
        embedding, CLS/register tokens, first `selector_depth` layers and final norm, with position embeddings resized
        (bicubic, no antialias) to the low-resolution grid, and a freshly initialized head.

        Args:
            dinov2 (`Dinov2WithRegistersModel`, `Dinov2Model`, a model with such a `.dinov2*` backbone, or a path /
                Hub id that `AutoModel.from_pretrained` loads as one).
            selector_depth (`int`): number of teacher layers the selector keeps (3 in the release).
            low_res_size (`int`): the selector's input size (154 in the release).
            high_res_size (`int`, *optional*): the extractor's image size; defaults to the teacher's `image_size`.
            k_ratio (`float`): fraction of high-res patches the extractor sees.
            config_kwargs: other [`LookWhereConfig`] fields (`num_labels`, `id2label`, `freeze_selector`, ...).

        Example (save the matching image processor next to the model: `pipeline(model=folder)` needs both):

        ```python
        >>> from lookwhere_hf import LookWhereForImageClassification, image_processor_for

        >>> model = LookWhereForImageClassification.from_dinov2("facebook/dinov2-with-registers-base", num_labels=10)
        >>> model.save_pretrained("my-lookwhere")
        >>> image_processor_for(model).save_pretrained("my-lookwhere")  # = LookWhereImageProcessor.from_model_config
        ```
        """
        teacher = _load_dinov2(dinov2)
        tcfg = teacher.config
        if not 1 <= selector_depth <= tcfg.num_hidden_layers:
            raise ValueError(
                f"`selector_depth` must be between 1 and the teacher's depth {tcfg.num_hidden_layers}, "
                f"got {selector_depth}."
            )
        patch = to_pair(tcfg.patch_size)[0]
        high_res_size = high_res_size if high_res_size is not None else to_pair(tcfg.image_size)[0]
        backbone = {
            key: getattr(tcfg, key)
            for key in (
                "hidden_size",
                "num_attention_heads",
                "mlp_ratio",
                "hidden_act",
                "layer_norm_eps",
                "patch_size",
                "num_channels",
                "qkv_bias",
                "layerscale_value",
                "use_swiglu_ffn",
            )
        }
        backbone["num_register_tokens"] = getattr(tcfg, "num_register_tokens", 0)
        teacher_grid = to_pair(tcfg.image_size)[0] // patch
        config = LookWhereConfig(
            selector_config={**backbone, "num_hidden_layers": selector_depth, "image_size": low_res_size},
            extractor_config={**backbone, "num_hidden_layers": tcfg.num_hidden_layers, "image_size": high_res_size},
            k_ratio=k_ratio,
            selector_pretrain_grid=config_kwargs.pop("selector_pretrain_grid", high_res_size // patch),
            **config_kwargs,
        )
        model = cls(config)
        body = model if isinstance(model, LookWhereModel) else model.lookwhere
        state = teacher.state_dict()
        for part in (body.selector, body.extractor):
            emb = part.embeddings
            with torch.no_grad():
                # DINOv2 adds its first position embedding to CLS; LookWhere's CLS gets none, so fold it in.
                emb.cls_token.copy_(state["embeddings.cls_token"] + state["embeddings.position_embeddings"][:, :1])
                if emb.register_tokens.numel():
                    emb.register_tokens.copy_(state["embeddings.register_tokens"])
                emb.patch_embeddings.projection.load_state_dict(
                    {
                        n.split(".")[-1]: t
                        for n, t in state.items()
                        if n.startswith("embeddings.patch_embeddings.projection.")
                    }
                )
                patch_pos = state["embeddings.position_embeddings"][:, 1:]  # drop the CLS slot
                emb.position_embeddings.copy_(resize_position_embeddings(patch_pos, teacher_grid, (emb.grid, emb.grid)))
            depth = len(part.encoder.layer)
            part.encoder.layer.load_state_dict(
                {
                    n[len("encoder.layer.") :]: t
                    for n, t in state.items()
                    if n.startswith("encoder.layer.") and int(n.split(".")[2]) < depth
                }
            )
            part.layernorm.load_state_dict(
                {n.split(".")[-1]: t for n, t in state.items() if n.startswith("layernorm.")}
            )
        return model

    # ------------------------------------------------------------------ input checks shared by all heads
    def _check_inputs(self, pixel_values, low_res_pixel_values) -> tuple[int, int]:
        """Shape checks of the inputs (Python-level, on shapes only: free under torch.compile and torch.export).
        NaN / inf values are not checked here: that needs a reduction and a device-to-host sync on every forward (a
        stall of the GPU queue) and a data-dependent branch that `torch.compile(fullgraph=True)` / `torch.export`
        cannot trace; `LookWhereImageProcessor` refuses such images instead. Returns the high-resolution grid."""
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4:
            got = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
            raise ValueError(
                f"`pixel_values` must be a float tensor of shape (batch_size, 3, height, width), got {got}. "
                "Use LookWhereImageProcessor to turn images into model inputs."
            )
        batch_size, channels, height, width = pixel_values.shape
        if batch_size == 0:
            raise ValueError("`pixel_values` is an empty batch (batch_size 0); pass at least one image.")
        expected_channels = self.config.extractor_config.num_channels
        if channels != expected_channels:
            raise ValueError(
                f"`pixel_values` must have {expected_channels} channels (RGB), got {channels} in shape "
                f"{tuple(pixel_values.shape)}. Convert grayscale/RGBA images to RGB (LookWhereImageProcessor does)."
            )
        p = self.config.patch_size
        if height < p or width < p:
            raise ValueError(
                f"`pixel_values` of shape {tuple(pixel_values.shape)} are smaller than one {p}x{p} patch; resize the "
                f"images to at least {p}x{p} pixels (LookWhereImageProcessor does, and refuses images without pixels)."
            )
        if height % p or width % p:
            raise ValueError(
                f"`pixel_values` height and width must be multiples of the patch size {p}, got {height}x{width}. "
                f"Resize the images (e.g. LookWhereImageProcessor(size={{'height': {height // p * p or p}, "
                f"'width': {width // p * p or p}}}))."
            )
        if low_res_pixel_values is not None:
            lp = to_pair(self.config.selector_config.patch_size)[0]
            if low_res_pixel_values.ndim != 4 or low_res_pixel_values.shape[:2] != pixel_values.shape[:2]:
                raise ValueError(
                    "`low_res_pixel_values` must have shape (batch_size, channels, low_h, low_w) with the batch size "
                    f"and channels of `pixel_values` {tuple(pixel_values.shape[:2])}, got "
                    f"{tuple(low_res_pixel_values.shape)}. Omit it to let the model make it from `pixel_values`."
                )
            if min(low_res_pixel_values.shape[-2:]) < lp:
                raise ValueError(
                    f"`low_res_pixel_values` of shape {tuple(low_res_pixel_values.shape)} are smaller than one "
                    f"{lp}x{lp} selector patch. Omit it to let the model make it from `pixel_values`."
                )
            if low_res_pixel_values.shape[-2] % lp or low_res_pixel_values.shape[-1] % lp:
                raise ValueError(
                    f"`low_res_pixel_values` height and width must be multiples of the selector patch size {lp}, "
                    f"got {tuple(low_res_pixel_values.shape[-2:])}."
                )
        return height // p, width // p


class LookWhereModel(LookWherePreTrainedModel):
    """The bare LookWhere model: selector + extractor, returning extractor tokens, the selector map and, on request,
    dense high-resolution features."""

    def __init__(self, config: LookWhereConfig) -> None:
        super().__init__(config)
        self.selector = LookWhereSelector(config)
        self.extractor = LookWhereExtractor(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.extractor.embeddings.patch_embeddings

    def low_res_view(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The selector's input made from `pixel_values` exactly as the official inference does."""
        size = self.config.low_res_size
        return make_low_res_view(pixel_values, (size, size), antialias=self.config.low_res_antialias)

    def select(
        self,
        pixel_values: torch.Tensor,
        low_res_pixel_values: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, object]:
        """Run the selector only: `(selector_map (B, G_h*G_w), prefix (B, P, D), patch_tokens, encoder_outputs)`.

        Runs without gradients when the selector is frozen (`requires_grad=False` on all its parameters).
        """
        grid = self._check_inputs(pixel_values, low_res_pixel_values)
        return self._run_selector(pixel_values, low_res_pixel_values, grid, **kwargs)

    def _run_selector(
        self, pixel_values, low_res_pixel_values, grid: tuple[int, int], **kwargs: Unpack[TransformersKwargs]
    ):
        """[`select`] on already validated inputs."""
        if low_res_pixel_values is None:
            low_res_pixel_values = self.low_res_view(pixel_values)
        trainable = any(p.requires_grad for p in self.selector.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and trainable):
            return self.selector(low_res_pixel_values, grid, **kwargs)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        low_res_pixel_values: torch.Tensor | None = None,
        k: int | None = None,
        output_dense_features: bool | None = None,
        cls_only: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> LookWhereModelOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
                Normalized high-resolution images; height and width multiples of the patch size (14).
            low_res_pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, low_h, low_w)`, *optional*):
                The selector's view. Made from `pixel_values` (bilinear resize to `config.low_res_size`) if absent.
            k (`int`, *optional*):
                Number of high-resolution patches the extractor computes; defaults to
                `floor(config.k_ratio * num_patches)`.
            output_dense_features (`bool`, *optional*):
                Also return `dense_features (batch_size, hidden_size, grid_h, grid_w)`.
            cls_only (`bool`, *optional*, defaults to `False`):
                Return only the extractor's CLS token: `last_hidden_state` is then `(batch_size, 1, hidden_size)`.
                The extractor's last layer computes keys and values of all tokens but its query, attention output,
                MLP and the final norm for the CLS token only (exact: the other tokens' last-layer outputs never
                reach the CLS token). What image-level heads ([`LookWhereForImageClassification`]) use; it cannot be
                combined with dense features, hidden states or attentions, which need every token's output.
            kwargs (`TransformersKwargs`):
                Passed to the selector and extractor encoders: `output_hidden_states` / `output_attentions` (default:
                the config's; attentions need eager attention) return the per-layer tuples described in
                [`LookWhereModelOutput`].
        """
        for flag in ("output_hidden_states", "output_attentions"):
            if kwargs.get(flag) is None:  # the encoders would read their own sub-config's flag otherwise
                kwargs[flag] = getattr(self.config, flag)
        if cls_only:
            requested = {"output_dense_features": output_dense_features, **kwargs}
            flags = ("output_dense_features", "output_hidden_states", "output_attentions")
            wanted = [name for name in flags if requested[name]]
            if wanted:
                raise ValueError(
                    f"`cls_only=True` computes the last layer for the CLS token only, but {', '.join(wanted)} "
                    "needs every token's output (flags left unset come from the config); pass `cls_only=False`."
                )
        grid = self._check_inputs(pixel_values, low_res_pixel_values)
        k = self.config.num_selected(grid[0] * grid[1], k)

        selector_map, prefix, selector_patches, selector_out = self._run_selector(
            pixel_values, low_res_pixel_values, grid, **kwargs
        )
        indices = select_top_k(selector_map, k)
        sequence_output, extractor_out = self.extractor(pixel_values, indices, prefix, cls_only=cls_only, **kwargs)

        dense = None
        if output_dense_features:
            # The indices come from this forward's top-k: on the grid by construction, no host-side range check.
            dense = self.spread(sequence_output[:, self.config.num_prefix_tokens :], indices, grid, check_indices=False)

        return LookWhereModelOutput(
            last_hidden_state=sequence_output,
            pooler_output=sequence_output[:, 0],
            selector_map=selector_map,
            selected_indices=indices,
            selector_prefix_tokens=prefix,
            selector_patch_tokens=selector_patches,
            dense_features=dense,
            hidden_states=extractor_out.hidden_states,
            attentions=extractor_out.attentions,
            selector_hidden_states=selector_out.hidden_states,
            selector_attentions=selector_out.attentions,
        )

    def spread(
        self, patch_tokens: torch.Tensor, indices: torch.LongTensor, grid: tuple[int, int], check_indices: bool = True
    ) -> torch.Tensor:
        """Dense features `(B, D, grid_h, grid_w)` from `k` patch tokens `(B, k, D)` at `indices (B, k)` (see
        [`~dense_spreading.spread_to_grid`] for `check_indices`)."""
        dense = spread_to_grid(
            patch_tokens, indices, grid, self.config.num_spread_neighbors, check_indices=check_indices
        )
        return dense.transpose(1, 2).reshape(patch_tokens.shape[0], -1, grid[0], grid[1])


class _LookWhereTaskModel(LookWherePreTrainedModel):
    """Shared set-up of the task heads: the LookWhere body (selector frozen if the config says so) and dropout.

    `accepts_loss_kwargs = False`: the Trainer then averages the loss over gradient-accumulation steps itself. Its
    `num_items_in_batch` counts labels that are not -100, which for segmentation includes the ignored 255 pixels, and
    the regression / multi-label losses do not use it.
    """

    _freezes_selector = True
    _has_glance_head = False
    accepts_loss_kwargs = False

    def __init__(self, config: LookWhereConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.lookwhere = LookWhereModel(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        if self._has_glance_head and config.glance_head and config.num_labels > 0:
            # Glance exit: the selector's CLS concatenated with the mean of its low-res patch tokens (the input of
            # transformers' `Dinov2ForImageClassification` head). The patch mean carries the low-res view's content,
            # which the CLS of a 3-layer selector, trained only to seed the extractor, need not summarize.
            self.glance_classifier = nn.Linear(2 * config.hidden_size, config.num_labels)
        self.post_init()


class LookWhereForImageClassification(_LookWhereTaskModel):
    """LookWhere with a linear classifier on the extractor's output CLS token.

    Three modes, one head:

    - **fixed `k`** (default): the extractor sees `floor(config.k_ratio * num_patches)` patches (or `k=`).
    - **anytime** (`anytime=True`): logits at every rung of the ladder `[glance] + config.anytime_k_ratios`, with
      their cumulative FLOPs. The selector runs once; the top-`k_max` patches are ranked once and each patch is
      embedded once (the ranking is nested: rung `i`'s patches are a prefix of rung `i+1`'s); each focus rung is a
      full extractor pass on its prefix (see [`anytime_rung_flops`] for why that part cannot be shared).
    - **budgeted** (`budget=True`, or by default in eval mode when `config.budget_thresholds` is set and
      `config.use_budget`): an image exits at the first rung whose max softmax probability is `>=` that rung's
      threshold; the last rung always exits. Images leave the batch as they exit: each rung runs on the images still
      going, as one smaller batch (no padding, no compute for exited images). `pipeline("image-classification")`
      gets this mode when thresholds are saved; turn it off with `model.config.use_budget = False` (or
      `budget=False` per call).

    Max softmax is the exit score, as in GFNet: it needs no extra parameters, and calibration turns it into a
    budget whatever its scale, because thresholds are fitted as quantiles on held-out data.

    In all three modes the head reads only the extractor's CLS token, so the extractor's last layer computes only
    that token (`LookWhereModel(..., cls_only=True)`; exact, about 5% fewer FLOPs at 518 px, k = 10%), except when
    hidden states or attentions are requested, and where skipping the other tokens would not be exact (a custom
    last layer, hooks on it, attention dropout in training: [`LookWhereExtractor.can_skip_last_layer_tokens`]).
    """

    _has_glance_head = True

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        low_res_pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        k: int | None = None,
        anytime: bool = False,
        budget: bool | None = None,
        exit_thresholds: list[float] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> LookWhereImageClassifierOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, or `(batch_size, num_labels)` floats, *optional*):
            Class indices (single-label), multi-hot targets (multi-label) or values (regression, `num_labels == 1`),
            following `config.problem_type` as transformers' classifiers do. In anytime mode the loss is the mean of
            the rung losses (every rung and the glance head train).
        k (`int`, *optional*):
            Fixed-`k` mode: number of high-resolution patches (default from `config.k_ratio`).
        anytime (`bool`, *optional*, defaults to `False`):
            Return the logits of every rung (`rung_logits`), their cumulative FLOPs (`rung_flops`) and `rung_k`.
            Also on in training mode with `labels` when `config.train_all_rungs`.
        budget (`bool`, *optional*):
            Budgeted mode. `None`: on in eval mode when `config.budget_thresholds` is set, `config.use_budget` is
            true and neither `k` nor `anytime` is given. `False`: off.
        exit_thresholds (`list[float]`, *optional*):
            Budgeted mode with these thresholds (one per rung except the last) instead of the config's.
        kwargs (`TransformersKwargs`):
            Passed to [`LookWhereModel.forward`] (output flags, fixed-`k` mode only) and to the loss function.

        Returns `logits (batch_size, num_labels)`, the selection (`selector_map`, `selected_indices`) and, on request,
        the per-layer outputs of [`LookWhereModelOutput`]; in anytime / budgeted mode also `exit_rung`, `flops`,
        `rung_flops`, `rung_k` (and `rung_logits (batch_size, num_rungs, num_labels)` when anytime).
        """
        if "cls_only" in kwargs:  # `LookWhereModel`'s flag; it would collide with the one passed below
            raise ValueError(
                "LookWhereForImageClassification takes no `cls_only`: its head reads only the CLS token, so the "
                "extractor's last layer computes that token alone whenever that is exact. To run the full last layer, "
                "pass `output_hidden_states=True`, or call `model.lookwhere(...)` without `cls_only`."
            )
        thresholds = self._resolve_exit_mode(k, anytime, budget, exit_thresholds)
        if self.training and self.config.train_all_rungs and labels is not None and k is None and thresholds is None:
            anytime = True
        if anytime or thresholds is not None:
            for flag in ("output_hidden_states", "output_attentions"):
                if kwargs.get(flag):
                    raise ValueError(f"`{flag}` is only supported in fixed-k mode; pass `anytime=False, budget=False`.")
            return self._forward_rungs(pixel_values, low_res_pixel_values, labels, thresholds, **kwargs)
        # Only the CLS token reaches the head: the extractor's last layer computes nothing else, unless the caller
        # asks for the per-layer outputs (flags left unset come from the config).
        per_layer = any(
            kwargs.get(flag) if kwargs.get(flag) is not None else getattr(self.config, flag)
            for flag in ("output_hidden_states", "output_attentions")
        )
        outputs = self.lookwhere(
            pixel_values, low_res_pixel_values=low_res_pixel_values, k=k, cls_only=not per_layer, **kwargs
        )
        logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits, self.config, **kwargs)
        return LookWhereImageClassifierOutput(
            loss=loss,
            logits=logits,
            selector_map=outputs.selector_map,
            selected_indices=outputs.selected_indices,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            selector_hidden_states=outputs.selector_hidden_states,
            selector_attentions=outputs.selector_attentions,
        )

    def _resolve_exit_mode(self, k, anytime: bool, budget: bool | None, exit_thresholds) -> list[float] | None:
        """The exit thresholds of this call (`None`: no early exits, i.e. fixed-`k` or anytime mode)."""
        config = self.config
        if exit_thresholds is not None:
            if budget is False:
                raise ValueError("`exit_thresholds` were given with `budget=False`; drop one of them.")
            budget = True
        if budget is None:
            budget = (
                config.budget_thresholds is not None
                and config.use_budget
                and not self.training
                and k is None
                and not anytime
            )
        if not budget:
            return None
        if anytime:
            raise ValueError("`anytime=True` computes every rung for every image; it cannot be combined with `budget`.")
        if k is not None:
            raise ValueError("`k` sets a fixed number of patches; budgeted inference picks the rung per image.")
        thresholds = exit_thresholds if exit_thresholds is not None else config.budget_thresholds
        if thresholds is None:
            raise ValueError(
                "Budgeted inference needs exit thresholds: calibrate them with "
                "`lookwhere_hf.budget.calibrate_budget(model, eval_data, target_gflops)` or pass `exit_thresholds=`."
            )
        thresholds = [float(t) for t in thresholds]
        if not all(0.0 <= t < float("inf") for t in thresholds):
            raise ValueError(
                f"Exit thresholds must be finite max-softmax values >= 0 (above 1 disables a rung), got {thresholds}."
            )
        if len(thresholds) != config.num_rungs - 1:
            raise ValueError(
                f"Expected {config.num_rungs - 1} exit thresholds (one per rung except the last; rungs: "
                f"{'glance + ' if config.glance_head else ''}k_ratios {list(config.anytime_k_ratios)}), got "
                f"{len(thresholds)}."
            )
        if config.num_labels < 2:
            raise ValueError("Budgeted inference exits on the max softmax probability and needs `num_labels >= 2`.")
        return thresholds

    def _forward_rungs(self, pixel_values, low_res_pixel_values, labels, thresholds, **kwargs):
        """Anytime (`thresholds is None`) or budgeted classification; see the class docstring."""
        config, body = self.config, self.lookwhere
        if config.num_labels < 1:
            raise ValueError("Anytime classification needs a classification head (`num_labels >= 1`).")
        grid = body._check_inputs(pixel_values, low_res_pixel_values)
        ks = config.rung_ks(grid[0] * grid[1])
        if low_res_pixel_values is None:
            low_res_pixel_values = body.low_res_view(pixel_values)
        selector_map, prefix, selector_patches, _ = body._run_selector(pixel_values, low_res_pixel_values, grid)
        indices = select_top_k(selector_map, ks[-1])
        glance = getattr(self, "glance_classifier", None) is not None
        rung_k = ([0] if glance else []) + ks
        lp = to_pair(config.selector_config.patch_size)[0]
        low_grid = (low_res_pixel_values.shape[-2] // lp, low_res_pixel_values.shape[-1] // lp)
        device = pixel_values.device
        rung_flops = torch.tensor(anytime_rung_flops(config, low_grid, ks, config.num_labels, glance), device=device)

        batch_size = pixel_values.shape[0]
        running = torch.arange(batch_size, device=device)  # images still going, as indices into the batch
        exit_rung = torch.full((batch_size,), len(rung_k) - 1, dtype=torch.long, device=device)
        rung_logits, logits = [], None
        embedded, previous_k = None, 0  # patch tokens of the running images, `(n_running, previous_k, D)`
        for rung, k in enumerate(rung_k):
            if k == 0:
                features = torch.cat((prefix[:, 0], selector_patches.mean(dim=1)), dim=-1)
                rung_out = self.glance_classifier(self.dropout(features))
            else:
                new = body.extractor.embeddings.embed_selected(pixel_values, indices[running, previous_k:k], running)
                embedded = new if embedded is None else torch.cat((embedded, new), dim=1)
                tokens, _ = body.extractor.encode(embedded, prefix[running], cls_only=True)
                rung_out = self.classifier(self.dropout(tokens[:, 0]))
                previous_k = k
            if thresholds is None:
                rung_logits.append(rung_out)
                continue
            if logits is None:
                logits = rung_out.new_zeros(batch_size, rung_out.shape[-1])
            last = rung == len(rung_k) - 1
            leaving = (
                torch.ones(len(running), dtype=torch.bool, device=device)
                if last
                else _confidence(rung_out) >= thresholds[rung]
            )
            logits = logits.index_put((running[leaving],), rung_out[leaving])
            exit_rung[running[leaving]] = rung
            staying = ~leaving
            running = running[staying]
            if embedded is not None:
                embedded = embedded[staying]
            if len(running) == 0:
                break

        loss = None
        if thresholds is None:
            logits = rung_logits[-1]
            if labels is not None:
                loss = sum(self.loss_function(labels, out, config, **kwargs) for out in rung_logits) / len(rung_logits)
        elif labels is not None:
            loss = self.loss_function(labels, logits, config, **kwargs)
        return LookWhereImageClassifierOutput(
            loss=loss,
            logits=logits,
            selector_map=selector_map,
            selected_indices=indices,
            rung_logits=torch.stack(rung_logits, dim=1) if thresholds is None else None,
            exit_rung=exit_rung,
            flops=rung_flops[exit_rung],
            rung_flops=rung_flops.expand(batch_size, -1),
            rung_k=torch.tensor(rung_k, device=device).expand(batch_size, -1),
        )


class LookWhereForSemanticSegmentation(_LookWhereTaskModel):
    """LookWhere with a per-patch linear head on the dense features (the `k` computed tokens spread to the grid)."""

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        low_res_pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        k: int | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> LookWhereSemanticSegmenterOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, height, width)`, *optional*):
            Per-pixel class indices; `config.semantic_loss_ignore_index` (255) is ignored. The logits are bilinearly
            upsampled to the label size for the loss.
        kwargs (`TransformersKwargs`):
            Passed to [`LookWhereModel.forward`] (output flags) and to the loss function.

        Returns `logits (batch_size, num_labels, grid_h, grid_w)` on the high-resolution patch grid and, on request,
        the per-layer outputs of [`LookWhereModelOutput`].
        """
        outputs = self.lookwhere(
            pixel_values, low_res_pixel_values=low_res_pixel_values, k=k, output_dense_features=True, **kwargs
        )
        features = self.dropout(outputs.dense_features.permute(0, 2, 3, 1))  # (B, G_h, G_w, D)
        logits = self.classifier(features).permute(0, 3, 1, 2)  # (B, C, G_h, G_w)
        loss = None
        if labels is not None:
            loss = self.segmentation_loss(logits, labels, **kwargs)
        return LookWhereSemanticSegmenterOutput(
            loss=loss,
            logits=logits,
            selector_map=outputs.selector_map,
            selected_indices=outputs.selected_indices,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            selector_hidden_states=outputs.selector_hidden_states,
            selector_attentions=outputs.selector_attentions,
        )

    def segmentation_loss(
        self, logits: torch.Tensor, labels: torch.Tensor, **kwargs: Unpack[TransformersKwargs]
    ) -> torch.Tensor:
        """Cross-entropy of `logits (B, C, G_h, G_w)` bilinearly upsampled to `labels (B, H, W)`, ignoring
        `config.semantic_loss_ignore_index` (transformers' `ForSemanticSegmentationLoss`, which also takes
        `num_items_in_batch` from `kwargs`)."""
        if labels.ndim != 3 or labels.shape[0] != logits.shape[0]:
            raise ValueError(
                f"Segmentation `labels` must have shape (batch_size, height, width), got {tuple(labels.shape)}."
            )
        if self.config.num_labels < 2:
            raise ValueError("Semantic segmentation needs `num_labels >= 2` in the config.")
        return self.loss_function(logits, labels.long(), ignore_index=self.config.semantic_loss_ignore_index, **kwargs)


# ----------------------------------------------------------------------------------------------------- pretraining
@dataclass
class LookWhereForPreTrainingOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`):
        `cls_loss_weight * loss_cls + dense_loss_weight * loss_dense + map_loss_weight * loss_map`.
    loss_cls (`torch.FloatTensor` of shape `()`):
        MSE between the extractor's output CLS token and the teacher's final-normed CLS token (detached).
    loss_dense (`torch.FloatTensor` of shape `()`):
        Squared error (mean over channels, then positions and batch) between the extractor's `k` patch tokens spread
        to every high-resolution position and the teacher's final-normed patch tokens (detached).
    loss_map (`torch.FloatTensor` of shape `()`):
        `KL(softmax(teacher_map) || softmax(selector_map))`, averaged over the batch (detached).
    top_k_agreement (`torch.FloatTensor` of shape `()`):
        Fraction of the teacher map's top-`k` positions that are among the selector map's top-`k` (this step's `k`).
    selector_map (`torch.FloatTensor` of shape `(batch_size, grid_h * grid_w)`):
        Selector map logits.
    teacher_map (`torch.FloatTensor` of shape `(batch_size, grid_h * grid_w)`):
        The teacher's attention-map target (last-layer attention logits averaged over heads and patch queries).
    selected_indices (`torch.LongTensor` of shape `(batch_size, k)`):
        The high-resolution patches the extractor computed this step.
    """

    loss: torch.FloatTensor | None = None
    loss_cls: torch.FloatTensor | None = None
    loss_dense: torch.FloatTensor | None = None
    loss_map: torch.FloatTensor | None = None
    top_k_agreement: torch.FloatTensor | None = None
    selector_map: torch.FloatTensor | None = None
    teacher_map: torch.FloatTensor | None = None
    selected_indices: torch.LongTensor | None = None


class LookWhereForPreTraining(LookWherePreTrainedModel):
    """LookWhere pretraining by distillation from a frozen DINOv2(-with-registers) teacher.

    The student is a [`LookWhereModel`] stored under `lookwhere.` (as in the task models), so a pretraining
    checkpoint loads directly with `LookWhereModel.from_pretrained` / `LookWhereForImageClassification.from_pretrained`.
    The teacher is *not* a registered submodule: it follows the student through `.to()` / `.cuda()` / `.half()`,
    but it is not in `state_dict()`, `parameters()`, `save_pretrained`, Trainer / accelerate checkpoints, the
    optimizer or DDP. It stays in eval mode without gradients.

    One forward:

    1. the teacher sees the high-resolution image and gives its CLS, patch tokens and attention map
       ([`~distillation_losses.compute_teacher_targets`]);
    2. the selector sees the low-resolution view and predicts the map; the map KL trains it;
    3. the extractor computes the top-`k` patches of the selector map (sorted by score), seeded with the selector's
       CLS + register outputs. Patches beyond `k` are not computed at all, which is the exact, cheaper equivalent of
       masking them out of attention. `k` is drawn per step from `[k_min, k_max]` (clipped to the grid).
    4. its `k` patch tokens are spread to every position (K-nearest inverse distance, [`LookWhereModel.spread`]) and
       matched to the teacher's patch tokens; its CLS to the teacher's CLS.

    Gradients reach the selector through the map KL and through its prefix (CLS + register) tokens, which the
    extractor consumes; the top-k indices themselves carry none.

    Args:
        config ([`LookWhereConfig`]): the student. The pretraining settings are its `pretrain_*` fields (defaults
            and checks live there), so that they are saved with checkpoints.
        teacher (`Dinov2WithRegistersModel`, `Dinov2Model` or a path, *optional*): the frozen teacher. Can be set
            later with [`~LookWhereForPreTraining.set_teacher`]; the forward needs it.
        teacher_dtype (`torch.dtype` or `str`, *optional*): cast the teacher, e.g. `torch.bfloat16`.
        k_min, k_max, cls_loss_weight, dense_loss_weight, map_loss_weight, k_seed (*optional*): overrides written
            to `config.pretrain_<name>` (e.g. `k_min` -> `config.pretrain_k_min`); when absent the config's values
            are used (defaults 16, 128, 1.0, 1.0, 0.1 and 0).
    """

    accepts_loss_kwargs = False

    def __init__(
        self,
        config: LookWhereConfig,
        teacher=None,
        teacher_dtype: torch.dtype | str | None = None,
        k_min: int | None = None,
        k_max: int | None = None,
        cls_loss_weight: float | None = None,
        dense_loss_weight: float | None = None,
        map_loss_weight: float | None = None,
        k_seed: int | None = None,
    ) -> None:
        overrides = {
            "k_min": k_min,
            "k_max": k_max,
            "cls_loss_weight": cls_loss_weight,
            "dense_loss_weight": dense_loss_weight,
            "map_loss_weight": map_loss_weight,
            "k_seed": k_seed,
        }
        config.update({f"pretrain_{name}": value for name, value in overrides.items() if value is not None})
        config.validate_lookwhere()
        super().__init__(config)
        self.lookwhere = LookWhereModel(config)
        self.__dict__["_teacher"] = None
        self._num_training_forwards = 0
        self.post_init()
        if teacher is not None:
            self.set_teacher(teacher, teacher_dtype=teacher_dtype)

    # ------------------------------------------------------------------ settings
    def k_range(self, num_patches: int) -> tuple[int, int]:
        """`(k_min, k_max)` clipped to the number of high-resolution patches."""
        k_max = min(self.config.pretrain_k_max, num_patches)
        return min(self.config.pretrain_k_min, k_max), k_max

    def sample_k(self, step: int, num_patches: int) -> int:
        """The number of extractor patches for training step `step`, uniform in the clipped `[k_min, k_max]`.

        A pure function of `(k_seed, step)`: every process of a distributed run draws the same `k`, micro-batches of
        one accumulated step share it, and a resumed run draws the same sequence.
        """
        import random

        k_min, k_max = self.k_range(num_patches)
        return random.Random(int(self.config.pretrain_k_seed) * 1_000_003 + int(step)).randint(k_min, k_max)

    # ------------------------------------------------------------------ teacher handling
    @property
    def teacher(self) -> nn.Module | None:
        """The frozen teacher (not a registered submodule, so never saved)."""
        return self.__dict__.get("_teacher")

    def set_teacher(self, teacher, teacher_dtype: torch.dtype | str | None = None) -> None:
        """Attach a frozen teacher: a `Dinov2WithRegistersModel` / `Dinov2Model` (or a model holding one) or a path.

        Raises `ValueError` if its patch size or hidden size does not match the student.
        """
        if isinstance(teacher, (str, bytes)) or hasattr(teacher, "__fspath__"):
            # `from_pretrained(..., teacher=path)` builds this model under a meta-device context; load on CPU.
            with torch.device("cpu"):
                teacher = _load_dinov2(teacher)
        teacher = _load_dinov2(teacher)
        tcfg = teacher.config
        t_patch, t_hidden = to_pair(tcfg.patch_size)[0], tcfg.hidden_size
        if t_patch != self.config.patch_size:
            raise ValueError(
                f"The teacher's patch size ({t_patch}) differs from the student's ({self.config.patch_size}): the "
                "dense targets must be on the same patch grid. Use a teacher with the student's patch size, or build "
                "the student from the teacher (`LookWhereForPreTraining.from_teacher`)."
            )
        if t_hidden != self.config.hidden_size:
            raise ValueError(
                f"The teacher's hidden size ({t_hidden}) differs from the student's ({self.config.hidden_size}): the "
                "CLS and patch targets are matched feature by feature. Use a teacher of the student's width, or build "
                "the student from the teacher (`LookWhereForPreTraining.from_teacher`)."
            )
        if tcfg.num_channels != self.config.extractor_config.num_channels:
            raise ValueError(
                f"The teacher takes {tcfg.num_channels}-channel images, the student "
                f"{self.config.extractor_config.num_channels}-channel images."
            )
        if isinstance(teacher_dtype, str):
            teacher_dtype = getattr(torch, teacher_dtype, teacher_dtype)
        if teacher_dtype is not None and not isinstance(teacher_dtype, torch.dtype):
            raise ValueError(f"`teacher_dtype` must be a torch dtype such as 'bfloat16', got {teacher_dtype!r}.")
        teacher.requires_grad_(False)
        teacher.eval()
        device = next(self.parameters()).device
        teacher.to(device=device if device.type != "meta" else None, dtype=teacher_dtype)
        self.__dict__["_teacher"] = teacher

    def _apply(self, fn, *args, **kwargs):
        # `.to()`, `.cuda()`, `.half()` ... reach the (unregistered) teacher too.
        super()._apply(fn, *args, **kwargs)
        if self.teacher is not None:
            self.teacher._apply(fn, *args, **kwargs)
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    @classmethod
    def from_teacher(
        cls,
        teacher,
        selector_depth: int = 3,
        low_res_size: int = 154,
        high_res_size: int | None = None,
        teacher_dtype: torch.dtype | str | None = None,
        init_from_teacher: bool = True,
        k_min: int | None = None,
        k_max: int | None = None,
        cls_loss_weight: float | None = None,
        dense_loss_weight: float | None = None,
        map_loss_weight: float | None = None,
        k_seed: int | None = None,
        **config_kwargs,
    ) -> LookWhereForPreTraining:
        """Build the student from a teacher ([`LookWherePreTrainedModel.from_dinov2`]: extractor = teacher copy,
        selector = its first `selector_depth` layers + a new head) and attach the teacher, frozen.

        With `init_from_teacher=False` the student has the same architecture but random weights. The pretraining
        settings (`k_min`, ..., `k_seed`) become `config.pretrain_<name>`; absent ones keep the config defaults.
        """
        teacher = _load_dinov2(teacher)
        settings = {
            "k_min": k_min,
            "k_max": k_max,
            "cls_loss_weight": cls_loss_weight,
            "dense_loss_weight": dense_loss_weight,
            "map_loss_weight": map_loss_weight,
            "k_seed": k_seed,
        }
        config_kwargs.update({f"pretrain_{name}": value for name, value in settings.items() if value is not None})
        model = cls.from_dinov2(
            teacher,
            selector_depth=selector_depth,
            low_res_size=low_res_size,
            high_res_size=high_res_size,
            **config_kwargs,
        )
        if not init_from_teacher:
            model = cls(model.config)
        model.set_teacher(teacher, teacher_dtype=teacher_dtype)
        return model

    # ------------------------------------------------------------------ forward
    def _resolve_k(self, num_patches: int, k: int | None, step: int | None) -> int:
        if k is not None:
            return self.config.num_selected(num_patches, int(k) if isinstance(k, torch.Tensor) else k)
        if step is not None:
            return self.sample_k(int(step), num_patches)
        if self.training:
            self._num_training_forwards += 1
            return self.sample_k(self._num_training_forwards - 1, num_patches)
        return self.k_range(num_patches)[1]

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        low_res_pixel_values: torch.Tensor | None = None,
        k: int | None = None,
        step: int | None = None,
    ) -> LookWhereForPreTrainingOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
                Normalized high-resolution images (the teacher's and the extractor's input).
            low_res_pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, low_h, low_w)`, *optional*):
                The selector's view; made from `pixel_values` like at inference if absent.
            k (`int`, *optional*):
                Number of patches the extractor computes. If absent: drawn with [`sample_k`] from `step`; without
                `step`, from a per-instance count of training forwards; in eval mode `k_max` (clipped).
            step (`int`, *optional*):
                The optimizer step, which seeds the `k` draw (the example scripts pass the global step).

        Returns:
            [`LookWhereForPreTrainingOutput`].
        """
        from .distillation_losses import (
            cls_distillation_loss,
            compute_teacher_targets,
            dense_distillation_loss,
            map_distillation_loss,
            top_k_agreement,
        )

        if self.teacher is None:
            raise ValueError(
                "LookWhereForPreTraining needs a teacher: pass `teacher=` (a Dinov2WithRegistersModel / Dinov2Model or "
                "its path) to the constructor / `from_pretrained`, or call `model.set_teacher(...)`."
            )
        body = self.lookwhere
        grid = body._check_inputs(pixel_values, low_res_pixel_values)
        num_patches = grid[0] * grid[1]
        k = self._resolve_k(num_patches, k, step)

        targets = compute_teacher_targets(self.teacher, pixel_values)
        if targets.grid != grid:
            raise ValueError(f"Teacher grid {targets.grid} differs from the student grid {grid}.")

        selector_map, prefix, _, _ = body._run_selector(pixel_values, low_res_pixel_values, grid)
        indices = select_top_k(selector_map, k)
        tokens, _ = body.extractor(pixel_values, indices, prefix)
        num_prefix = self.config.num_prefix_tokens
        dense = spread_to_grid(
            tokens[:, num_prefix:], indices, grid, self.config.num_spread_neighbors, check_indices=False
        )

        loss_cls = cls_distillation_loss(tokens[:, 0], targets.cls_token)
        loss_dense = dense_distillation_loss(dense, targets.patch_tokens)
        loss_map = map_distillation_loss(selector_map, targets.attention_map)
        cfg = self.config
        loss = (
            cfg.pretrain_cls_loss_weight * loss_cls
            + cfg.pretrain_dense_loss_weight * loss_dense
            + cfg.pretrain_map_loss_weight * loss_map
        )
        return LookWhereForPreTrainingOutput(
            loss=loss,
            loss_cls=loss_cls.detach(),
            loss_dense=loss_dense.detach(),
            loss_map=loss_map.detach(),
            top_k_agreement=top_k_agreement(selector_map.detach(), targets.attention_map, k),
            selector_map=selector_map,
            teacher_map=targets.attention_map,
            selected_indices=indices,
        )


__all__ = [
    "LookWhereForImageClassification",
    "LookWhereForPreTraining",
    "LookWhereForPreTrainingOutput",
    "LookWhereForSemanticSegmentation",
    "LookWhereImageClassifierOutput",
    "LookWhereModel",
    "LookWhereModelOutput",
    "LookWherePreTrainedModel",
    "LookWhereSemanticSegmenterOutput",
    "anytime_rung_flops",
    "resize_position_embeddings",
]
