"""PyTorch LookupViT: heavy layers on a few compressed tokens, cheap layers on the full-resolution lookup tokens.

Paper: "LookupViT: Compressing visual information to a limited number of tokens" (Koner, Jain, Jain, Tresp, Paul;
ECCV 2024; arXiv:2407.12753). There is no official code. What the paper (abstract and method as summarized in the
project brief; the full text could not be read from this machine) fixes, and what we chose where it is silent:

- **Two token sets.** *Lookup tokens*: the `N = G_h x G_w` patch tokens of the image (patch embedding + their own
  learned position embeddings). *Compressed tokens*: an `M = h x w` grid made by downsampling the lookup grid.
  Choices: the downsampling is a bilinear resize (`align_corners=False`, antialiased by default:
  `config.compressed_resize_antialias`) of the patch embeddings *before* position embeddings; the compressed tokens
  then get their own learned position embeddings (stored at `config.position_grid`, the largest configured grid, and
  resized bicubically, without antialiasing, to other grids; the lookup ones likewise for other image sizes). No CLS
  or register tokens.
- **Block** (pre-norm residuals throughout, each branch with LayerScale and stochastic depth as a DINOv2 block):
  1. *Gather* (MHBC lookup -> compressed): `z_c += O_g(softmax_N(S) V_l)` with `S = Q(LN(z_c)) K(LN(z_l))^T /
     sqrt(d)` per head, shape `(B, heads, M, N)`.
  2. *Refine*: MHSA + MLP on the compressed tokens only: transformers' `Dinov2WithRegistersLayer` (its attention goes
     through `ALL_ATTENTION_FUNCTIONS`: eager / SDPA / flash / flex). This is the `O(M^2)` part.
  3. *Scatter* (MHBC compressed -> lookup): `z_l += O_s(softmax_M(S^T) V_c)` with `V_c = V_s(LN(z_c))` of the
     *refined* compressed tokens. The paper shares the attention between the two directions; we reuse the gather
     step's **pre-softmax logits** `S`, transposed, and normalize them over the compressed tokens. The scatter step has
     therefore no query / key projections and computes no second `Q K^T` (per block it saves `2 N M D` FLOPs of
     logits and `2 (N + M) D^2` of lookup-query / compressed-key projections). Choice: logits, not probabilities:
     `softmax_N(S)^T` would not sum to one over the compressed tokens each lookup token reads.
  4. *Low-cost MLP* on the lookup tokens: `z_l += MLP(LN(z_l))` with hidden width `lookup_mlp_ratio * D` (1.0 by
     default, a quarter of the compressed MLP's 4.0).
  The classifier reads only the compressed tokens, so in [`LookupViTForImageClassification`] the last block stops
  after step 2 (its scatter and lookup MLP, and the lookup final norm, are frozen: they cannot reach the logits).
  The cross-attentions are computed with explicit matmuls, not the attention registry: fused kernels (SDPA / flash)
  do not return the logits that the scatter step reuses, and recomputing them would be the second `Q K^T` the paper
  avoids.
- **Flexible compute**: `compressed_grid=` per call. In training mode without it, each forward draws a grid uniformly
  from `config.compressed_grids` (torch's global generator: seed it for a reproducible draw); in eval mode the default
  is `config.compressed_grid`.
- **Read-out** (choice; we could not confirm the paper's): classification uses the mean of the compressed tokens after
  the final LayerNorm. Segmentation (the dense extension the paper only mentions) uses the lookup tokens after their own
  final LayerNorm, one linear head per patch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import ModelOutput
from transformers.modeling_utils import PreTrainedModel
from transformers.models.dinov2_with_registers.modeling_dinov2_with_registers import (
    Dinov2WithRegistersDropPath,
    Dinov2WithRegistersLayer,
    Dinov2WithRegistersLayerScale,
    Dinov2WithRegistersPatchEmbeddings,
)
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple

from .configuration_lookupvit import LookupViTConfig, check_grid_fits, grid_pair


def resize_position_embeddings(
    position_embeddings: torch.Tensor, source_grid: tuple[int, int], grid: tuple[int, int]
) -> torch.Tensor:
    """`(1, S_h * S_w, D)` -> `(1, G_h * G_w, D)`: bicubic, `align_corners=False`, no antialiasing (in float32 for
    half-precision weights)."""
    source_grid, grid = tuple(source_grid), tuple(grid)
    if source_grid == grid:
        return position_embeddings
    dim = position_embeddings.shape[-1]
    grid_2d = position_embeddings.reshape(1, *source_grid, dim).permute(0, 3, 1, 2)
    if grid_2d.dtype in (torch.float16, torch.bfloat16):
        grid_2d = grid_2d.float()
    resized = F.interpolate(grid_2d, size=grid, mode="bicubic", align_corners=False, antialias=False)
    return resized.to(position_embeddings.dtype).permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim)


# ----------------------------------------------------------------------------------------------------- outputs
@dataclass
class LookupViTModelOutput(ModelOutput):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, h * w, hidden_size)`):
        Compressed tokens after the final layer norm, row-major over the `h x w` compressed grid.
    pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
        Mean of `last_hidden_state` over the compressed tokens (the classification read-out).
    lookup_last_hidden_state (`torch.FloatTensor` of shape `(batch_size, grid_h * grid_w, hidden_size)`):
        Lookup (patch) tokens after their final layer norm, row-major over the patch grid.
    compressed_grid (`torch.LongTensor` of shape `(batch_size, 2)`):
        The `(h, w)` compressed grid this forward used, one row per image (the same in every row), so that
        `pipeline(..., batch_size=N)` can split a batch like any other field.
    hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states=True`):
        `num_hidden_layers + 1` compressed-token states `(batch_size, h * w, hidden_size)`: the input, then every
        block's output (the last one before the final layer norm).
    lookup_hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states=True`):
        The same for the lookup tokens, `(batch_size, grid_h * grid_w, hidden_size)` each.
    attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`):
        `num_hidden_layers` gather attention maps `(batch_size, num_heads, h * w, grid_h * grid_w)`: for every
        compressed token, its attention over the lookup tokens (softmax of the shared logits over the lookup axis).
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    lookup_last_hidden_state: torch.FloatTensor | None = None
    compressed_grid: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    lookup_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class LookupViTImageClassifierOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `(1,)`, *optional*):
        Classification (or regression) loss, when `labels` are given.
    logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
        Classification scores (before softmax / sigmoid), from the mean compressed token.
    compressed_grid (`torch.LongTensor` of shape `(batch_size, 2)`):
        The `(h, w)` compressed grid this forward used, one row per image (the same in every row), so that
        `pipeline(..., batch_size=N)` can split a batch like any other field.
    hidden_states, lookup_hidden_states, attentions (*optional*):
        Per-layer outputs on request, exactly as in [`LookupViTModelOutput`].
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    compressed_grid: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    lookup_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class LookupViTSemanticSegmenterOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `(1,)`, *optional*):
        Cross-entropy over the label pixels (logits bilinearly upsampled to the label size), when `labels` are given.
    logits (`torch.FloatTensor` of shape `(batch_size, num_labels, grid_h, grid_w)`):
        Per-patch class scores from the lookup tokens, on the patch grid. Upsample them to the image size for a mask
        (the image processor's `post_process_semantic_segmentation` does).
    compressed_grid (`torch.LongTensor` of shape `(batch_size, 2)`):
        The `(h, w)` compressed grid this forward used, one row per image (the same in every row), so that
        `pipeline(..., batch_size=N)` can split a batch like any other field.
    hidden_states, lookup_hidden_states, attentions (*optional*):
        Per-layer outputs on request, exactly as in [`LookupViTModelOutput`].
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    compressed_grid: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    lookup_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


# ----------------------------------------------------------------------------------------------------- modules
class LookupViTEmbeddings(nn.Module):
    """Patch embedding, the compressed tokens made from it, and the position embeddings of both streams.

    Parameters: `patch_embeddings.projection` (a `patch_size`-strided conv), `lookup_position_embeddings
    (1, G * G, D)` for `G = image_size // patch_size` and `compressed_position_embeddings (1, h0 * w0, D)` for
    `(h0, w0) = config.position_grid`.
    """

    def __init__(self, config: LookupViTConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_size = config.patch_size
        self.patch_embeddings = Dinov2WithRegistersPatchEmbeddings(config)
        token_grid, position_grid = config.token_grid, config.position_grid
        self.lookup_position_embeddings = nn.Parameter(
            torch.zeros(1, token_grid[0] * token_grid[1], config.hidden_size)
        )
        self.compressed_position_embeddings = nn.Parameter(
            torch.zeros(1, position_grid[0] * position_grid[1], config.hidden_size)
        )
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self, pixel_values: torch.Tensor, compressed_grid: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(B, C, H, W)` -> lookup tokens `(B, N, D)` and compressed tokens `(B, h * w, D)`."""
        grid = (pixel_values.shape[-2] // self.patch_size, pixel_values.shape[-1] // self.patch_size)
        patches = self.patch_embeddings(pixel_values.to(self.patch_embeddings.projection.weight.dtype))  # (B, N, D)
        batch_size, _, dim = patches.shape
        patch_grid = patches.transpose(1, 2).reshape(batch_size, dim, *grid)
        # resized in float32 for half precisions (not every device has antialiased half-precision kernels)
        low_precision = patch_grid.dtype in (torch.float16, torch.bfloat16)
        compressed = F.interpolate(
            patch_grid.float() if low_precision else patch_grid,
            size=compressed_grid,
            mode="bilinear",
            align_corners=False,
            antialias=self.config.compressed_resize_antialias,
        ).to(patch_grid.dtype)
        compressed = compressed.flatten(2).transpose(1, 2)  # (B, h * w, D)
        lookup_pos = resize_position_embeddings(self.lookup_position_embeddings, self.config.token_grid, grid)
        compressed_pos = resize_position_embeddings(
            self.compressed_position_embeddings, self.config.position_grid, compressed_grid
        )
        lookup = self.dropout(patches + lookup_pos.to(patches.dtype))
        compressed = self.dropout(compressed + compressed_pos.to(patches.dtype))
        return lookup, compressed


class LookupViTGather(nn.Module):
    """MHBC lookup -> compressed: compressed queries over lookup keys / values. Returns the update of the compressed
    tokens and the per-head logits `S = Q K^T / sqrt(d)` that the scatter step reuses."""

    def __init__(self, config: LookupViTConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = config.attention_probs_dropout_prob
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def _heads(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.view(*tokens.shape[:2], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self, compressed: torch.Tensor, lookup: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normed `(B, M, D)` compressed and `(B, N, D)` lookup tokens -> (update `(B, M, D)`, logits
        `(B, heads, M, N)`, probabilities `(B, heads, M, N)`)."""
        query = self._heads(self.q_proj(compressed))
        key = self._heads(self.k_proj(lookup))
        value = self._heads(self.v_proj(lookup))
        logits = torch.matmul(query, key.transpose(-1, -2)) * self.scaling
        probs = logits.softmax(dim=-1)
        attended = torch.matmul(F.dropout(probs, p=self.dropout, training=self.training), value)
        return self.o_proj(attended.transpose(1, 2).flatten(2)), logits, probs


class LookupViTScatter(nn.Module):
    """MHBC compressed -> lookup: lookup tokens read the compressed tokens through the gather step's logits,
    transposed. Only a value and an output projection: no queries, no keys, no second `Q K^T`."""

    def __init__(self, config: LookupViTConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.dropout = config.attention_probs_dropout_prob
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, compressed: torch.Tensor, gather_logits: torch.Tensor) -> torch.Tensor:
        """Normed compressed tokens `(B, M, D)` and the gather logits `(B, heads, M, N)` -> lookup update
        `(B, N, D)`."""
        value = self.v_proj(compressed).view(*compressed.shape[:2], self.num_heads, self.head_dim).transpose(1, 2)
        probs = gather_logits.transpose(-1, -2).softmax(dim=-1)  # (B, heads, N, M), normalized over compressed tokens
        attended = torch.matmul(F.dropout(probs, p=self.dropout, training=self.training), value)
        return self.o_proj(attended.transpose(1, 2).flatten(2))


class LookupViTLookupMLP(nn.Module):
    """The lookup stream's low-cost MLP: `hidden -> lookup_mlp_ratio * hidden -> hidden`."""

    def __init__(self, config: LookupViTConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.lookup_mlp_size)
        self.activation_fn = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.lookup_mlp_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(hidden_states)))


class LookupViTLayer(GradientCheckpointingLayer):
    """One LookupViT block: gather -> refine (`Dinov2WithRegistersLayer` on the compressed tokens) -> scatter ->
    lookup MLP, every step a pre-norm residual branch with LayerScale and stochastic depth."""

    def __init__(self, config: LookupViTConfig) -> None:
        super().__init__()
        eps = config.layer_norm_eps
        self.gather_norm_compressed = nn.LayerNorm(config.hidden_size, eps=eps)
        self.gather_norm_lookup = nn.LayerNorm(config.hidden_size, eps=eps)
        self.gather = LookupViTGather(config)
        self.gather_layer_scale = Dinov2WithRegistersLayerScale(config)
        self.compressed_layer = Dinov2WithRegistersLayer(config)
        self.scatter_norm = nn.LayerNorm(config.hidden_size, eps=eps)
        self.scatter = LookupViTScatter(config)
        self.scatter_layer_scale = Dinov2WithRegistersLayerScale(config)
        self.lookup_mlp_norm = nn.LayerNorm(config.hidden_size, eps=eps)
        self.lookup_mlp = LookupViTLookupMLP(config)
        self.lookup_mlp_layer_scale = Dinov2WithRegistersLayerScale(config)
        rate = config.drop_path_rate
        self.drop_path = Dinov2WithRegistersDropPath(rate) if rate > 0.0 else nn.Identity()

    def forward(
        self,
        lookup: torch.Tensor,
        compressed: torch.Tensor,
        update_lookup: bool = True,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`(B, N, D)` lookup and `(B, M, D)` compressed tokens -> both updated, and the gather attention
        `(B, heads, M, N)`. With `update_lookup=False` the scatter and lookup MLP are skipped (the last block of a model
        that reads only the compressed tokens) and `lookup` comes back unchanged. `kwargs` go to the compressed
        self-attention (attention-implementation options)."""
        update, logits, probs = self.gather(self.gather_norm_compressed(compressed), self.gather_norm_lookup(lookup))
        compressed = compressed + self.drop_path(self.gather_layer_scale(update))
        compressed = self.compressed_layer(compressed, **kwargs)
        if not update_lookup:
            return lookup, compressed, probs
        update = self.scatter(self.scatter_norm(compressed), logits)
        lookup = lookup + self.drop_path(self.scatter_layer_scale(update))
        lookup = lookup + self.drop_path(self.lookup_mlp_layer_scale(self.lookup_mlp(self.lookup_mlp_norm(lookup))))
        return lookup, compressed, probs


# ----------------------------------------------------------------------------------------------------- models
_BACKBONE_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "hidden_act", "layer_norm_eps")
_BACKBONE_FIELDS += ("qkv_bias", "patch_size", "num_channels", "image_size")


def _load_backbone(model, expected: tuple[str, ...]) -> PreTrainedModel:
    """A bare ViT / DINOv2(-with-registers) backbone from a model instance (bare or with a task head) or a path."""
    from transformers import AutoModel

    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        model = AutoModel.from_pretrained(model)
    backbone = model
    if not hasattr(model, "embeddings"):
        for name in ("vit", "dinov2_with_registers", "dinov2"):
            backbone = getattr(model, name, None) or backbone
    model_type = getattr(getattr(backbone, "config", None), "model_type", None)
    if model_type not in expected or not hasattr(backbone, "embeddings"):
        raise ValueError(
            f"Expected a transformers model of type {' / '.join(expected)} (or a path to one), got "
            f"{type(model).__name__} (model_type={model_type!r})."
        )
    return backbone


def _square_size(value, name: str) -> int:
    """An `int` size, or a square `(s, s)` pair, as an `int` (LookupViT's image and patch sizes are square)."""
    if isinstance(value, (list, tuple)):
        if value[0] != value[1]:
            raise ValueError(f"LookupViT needs a square `{name}`, got {value}.")
        return int(value[0])
    return int(value)


class LookupViTPreTrainedModel(PreTrainedModel):
    config_class = LookupViTConfig
    config: LookupViTConfig
    base_model_prefix = "lookupvit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["LookupViTEmbeddings", "LookupViTLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # Every Auto class of the family and its class in this file (see `save_pretrained`).
    _family_auto_classes = {
        "AutoModel": "LookupViTModel",
        "AutoModelForImageClassification": "LookupViTForImageClassification",
        "AutoModelForSemanticSegmentation": "LookupViTForSemanticSegmentation",
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

    def _set_gradient_checkpointing(self, enable: bool = True, *args, every_n_layers: int = 1, **kwargs) -> None:
        """Checkpoint whole LookupViT blocks (every `every_n_layers`-th), not also the DINOv2 layer inside each: a
        checkpointed block recomputes that layer anyway, and transformers' default would flag both levels."""
        super()._set_gradient_checkpointing(enable, *args, every_n_layers=every_n_layers, **kwargs)
        blocks = [module for module in self.modules() if isinstance(module, LookupViTLayer)]
        for index, block in enumerate(blocks):
            block.gradient_checkpointing = enable and index % every_n_layers == 0
            block.compressed_layer.gradient_checkpointing = False

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
        elif isinstance(module, LookupViTEmbeddings):
            init.trunc_normal_(module.lookup_position_embeddings, mean=0.0, std=std)
            init.trunc_normal_(module.compressed_position_embeddings, mean=0.0, std=std)
        elif isinstance(module, Dinov2WithRegistersLayerScale):
            init.constant_(module.lambda1, self.config.layerscale_value)

    # ------------------------------------------------------------------ pretrained initialisation
    @classmethod
    def from_vit(cls, vit, **config_kwargs) -> LookupViTPreTrainedModel:
        """A LookupViT initialised from a transformers ViT (`ViTModel`, a model with a `.vit` backbone, or a path).

        Copied: the patch embedding; the patch position embeddings (without the CLS slot) into
        `lookup_position_embeddings` (resized, bicubic, when `image_size=` asks for another grid), and the same
        resized to `config.position_grid` into `compressed_position_embeddings`; every layer's `layernorm_before` /
        `attention` / `layernorm_after` / `mlp` into `compressed_layer.{norm1, attention, norm2, mlp}` (LayerScale set
        to 1, so each is the ViT layer exactly); the final `layernorm` into both final norms (`layernorm`,
        `lookup_layernorm`). Newly initialised: the gather and scatter cross-attentions, the lookup MLP and their norms
        and LayerScales, and the task head. The CLS token and the pooler are dropped. `config_kwargs` are further
        [`LookupViTConfig`] fields (`compressed_grid`, `compressed_grids`, `lookup_mlp_ratio`, `num_labels`,
        `image_size`, ...); `patch_size` must stay the backbone's.

        Example (save the matching image processor next to the model: `pipeline(model=folder)` needs both):

        ```python
        >>> from lookwhere_hf import LookupViTForImageClassification, image_processor_for

        >>> model = LookupViTForImageClassification.from_vit("google/vit-base-patch16-224", num_labels=10)
        >>> model.save_pretrained("my-lookupvit")
        >>> image_processor_for(model).save_pretrained("my-lookupvit")  # = lookupvit_image_processor(model.config)
        ```
        """
        backbone = _load_backbone(vit, ("vit",))
        vit_config = backbone.config
        kwargs = {name: getattr(vit_config, name) for name in _BACKBONE_FIELDS}
        kwargs.update(mlp_ratio=vit_config.intermediate_size / vit_config.hidden_size, layerscale_value=1.0)
        renames = {"layernorm_before.": "norm1.", "layernorm_after.": "norm2."}
        return cls._from_backbone(backbone, backbone.layers, renames, {**kwargs, **config_kwargs})

    @classmethod
    def from_dinov2(cls, dinov2, **config_kwargs) -> LookupViTPreTrainedModel:
        """A LookupViT initialised from a transformers DINOv2-with-registers or DINOv2 model (bare, with a task head,
        or a path).

        Copied: the patch embedding; the patch position embeddings (without the CLS slot) into
        `lookup_position_embeddings` (resized, bicubic, when `image_size=` asks for another grid), and the same
        resized to `config.position_grid` into `compressed_position_embeddings`; every layer (norms, attention,
        LayerScales, MLP or SwiGLU) into `compressed_layer`; the final `layernorm` into both final norms. Newly
        initialised: the gather and scatter cross-attentions, the lookup MLP and their norms and LayerScales, and the
        task head. CLS, register and mask tokens are dropped. `config_kwargs` are further [`LookupViTConfig`] fields;
        `patch_size` must stay the backbone's. Save the processor next to the model as in [`from_vit`]:
        `image_processor_for(model).save_pretrained(folder)`.
        """
        backbone = _load_backbone(dinov2, ("dinov2_with_registers", "dinov2"))
        dcfg = backbone.config
        kwargs = {name: getattr(dcfg, name) for name in _BACKBONE_FIELDS}
        kwargs.update(mlp_ratio=dcfg.mlp_ratio, layerscale_value=dcfg.layerscale_value)
        kwargs.update(use_swiglu_ffn=dcfg.use_swiglu_ffn)
        return cls._from_backbone(backbone, backbone.encoder.layer, {}, {**kwargs, **config_kwargs})

    @classmethod
    def _from_backbone(cls, backbone, layers, renames: dict, config_kwargs: dict) -> LookupViTPreTrainedModel:
        """Shared by `from_vit` / `from_dinov2`: build the config, then copy what their docstrings list."""
        for name in ("image_size", "patch_size"):
            config_kwargs[name] = _square_size(config_kwargs[name], name)
        source_patch = _square_size(backbone.config.patch_size, "patch_size")
        source_size = _square_size(backbone.config.image_size, "image_size")
        if config_kwargs["patch_size"] != source_patch:
            raise ValueError(
                f"`patch_size` must be the backbone's ({source_patch}): its patch embedding is copied; got "
                f"{config_kwargs['patch_size']}."
            )
        source_grid = (source_size // source_patch, source_size // source_patch)
        model = cls(LookupViTConfig(**config_kwargs))
        body = model if isinstance(model, LookupViTModel) else model.lookupvit
        config = model.config
        emb = body.embeddings
        with torch.no_grad():
            patch_pos = backbone.embeddings.position_embeddings[:, 1:]  # drop the CLS slot
            emb.patch_embeddings.projection.load_state_dict(
                backbone.embeddings.patch_embeddings.projection.state_dict()
            )
            emb.lookup_position_embeddings.copy_(resize_position_embeddings(patch_pos, source_grid, config.token_grid))
            emb.compressed_position_embeddings.copy_(
                resize_position_embeddings(patch_pos, source_grid, config.position_grid)
            )
            for layer, source in zip(body.encoder.layer, layers):
                weights = {}
                for name, tensor in source.state_dict().items():
                    for old, new in renames.items():
                        name = name.replace(old, new) if name.startswith(old) else name
                    weights[name] = tensor
                target = layer.compressed_layer
                missing = set(target.state_dict()) - set(weights)
                if not all(name.startswith("layer_scale") for name in missing):
                    raise ValueError(f"The backbone layer lacks {sorted(missing)}; it is not a ViT / DINOv2 layer.")
                target.load_state_dict(weights, strict=False)
                if missing:  # ViT layers have no LayerScale: 1 makes the DINOv2 layer compute the ViT layer
                    target.layer_scale1.lambda1.fill_(1.0)
                    target.layer_scale2.lambda1.fill_(1.0)
            body.layernorm.load_state_dict(backbone.layernorm.state_dict())
            body.lookup_layernorm.load_state_dict(backbone.layernorm.state_dict())
        return model

    # ------------------------------------------------------------------ inputs
    def _check_pixel_values(self, pixel_values) -> tuple[int, int]:
        """Shape checks; returns the lookup token grid."""
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4:
            got = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
            raise ValueError(
                f"`pixel_values` must be a float tensor of shape (batch_size, {self.config.num_channels}, height, "
                f"width), got {got}. Use the model's image processor to turn images into model inputs."
            )
        batch_size, channels, height, width = pixel_values.shape
        if batch_size == 0:
            raise ValueError("`pixel_values` is an empty batch (batch_size 0); pass at least one image.")
        if channels != self.config.num_channels:
            raise ValueError(
                f"`pixel_values` must have {self.config.num_channels} channels, got {channels} in shape "
                f"{tuple(pixel_values.shape)}."
            )
        p = self.config.patch_size
        if height < p or width < p or height % p or width % p:
            raise ValueError(
                f"`pixel_values` height and width must be positive multiples of the patch size {p}, got "
                f"{height}x{width}. Resize the images (e.g. to {max(height // p, 1) * p}x{max(width // p, 1) * p})."
            )
        return height // p, width // p

    def resolve_compressed_grid(self, compressed_grid, token_grid: tuple[int, int]) -> tuple[int, int]:
        """The `(h, w)` grid of a forward: `compressed_grid` if given; else, in training mode, one of
        `config.compressed_grids` drawn uniformly (torch's global generator); else `config.compressed_grid`.
        Raises `ValueError` for a malformed grid or one larger than the input's token grid."""
        if compressed_grid is None:
            if self.training and len(self.config.compressed_grids) > 1:
                choice = int(torch.randint(len(self.config.compressed_grids), (1,)).item())
                compressed_grid = self.config.compressed_grids[choice]
            elif self.training:
                compressed_grid = self.config.compressed_grids[0]
            else:
                compressed_grid = self.config.compressed_grid
        grid = grid_pair(compressed_grid)
        check_grid_fits(grid, token_grid)
        return grid


class LookupViTEncoder(nn.Module):
    """The stack of [`LookupViTLayer`]s, collecting per-layer outputs on request."""

    def __init__(self, config: LookupViTConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList([LookupViTLayer(config) for _ in range(config.num_hidden_layers)])

    def forward(
        self,
        lookup: torch.Tensor,
        compressed: torch.Tensor,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        output_lookup_tokens: bool = True,
        **kwargs: Unpack[TransformersKwargs],
    ):
        """Returns `(lookup, compressed, compressed_states, lookup_states, attentions)`; the last three are tuples or
        `None`. With `output_lookup_tokens=False` the last block does not update the lookup tokens (nothing reads
        them), and `lookup_states` has no entry for it."""
        compressed_states = (compressed,) if output_hidden_states else None
        lookup_states = (lookup,) if output_hidden_states else None
        attentions = () if output_attentions else None
        last = len(self.layer) - 1
        for i, layer in enumerate(self.layer):
            update_lookup = output_lookup_tokens or i < last
            lookup, compressed, probs = layer(lookup, compressed, update_lookup, **kwargs)
            if output_hidden_states:
                compressed_states += (compressed,)
                lookup_states += (lookup,) if update_lookup else ()
            if output_attentions:
                attentions += (probs,)
        return lookup, compressed, compressed_states, lookup_states, attentions


class LookupViTModel(LookupViTPreTrainedModel):
    """The bare LookupViT: compressed tokens (and their mean) plus the full-resolution lookup tokens."""

    def __init__(self, config: LookupViTConfig) -> None:
        super().__init__(config)
        self.embeddings = LookupViTEmbeddings(config)
        self.encoder = LookupViTEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.lookup_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embeddings

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        compressed_grid: int | tuple[int, int] | None = None,
        output_lookup_tokens: bool = True,
        **kwargs: Unpack[TransformersKwargs],
    ) -> LookupViTModelOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                Normalized images; height and width multiples of `config.patch_size`.
            compressed_grid (`int` or `(h, w)`, *optional*):
                Compressed-token grid of this forward (the compute knob: the refine step costs `O((h w)^2)`); at most
                the token grid `(height / patch_size, width / patch_size)`. Default: a random one of
                `config.compressed_grids` in training mode, `config.compressed_grid` in eval mode.
            output_lookup_tokens (`bool`, *optional*, defaults to `True`):
                Whether to finish the lookup stream. `False` (what the classifier passes) skips the last block's
                scatter and lookup MLP, whose results only the lookup tokens carry: `lookup_last_hidden_state` is then
                `None` and `lookup_hidden_states` has `num_hidden_layers` entries.
            kwargs (`TransformersKwargs`):
                `output_hidden_states` / `output_attentions` (default: the config's) return the per-layer tuples of
                [`LookupViTModelOutput`]; other keys go to the compressed self-attention.
        """
        output_hidden_states = kwargs.pop("output_hidden_states", None)
        output_attentions = kwargs.pop("output_attentions", None)
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if output_attentions is None:
            output_attentions = self.config.output_attentions
        token_grid = self._check_pixel_values(pixel_values)
        grid = self.resolve_compressed_grid(compressed_grid, token_grid)
        lookup, compressed = self.embeddings(pixel_values, grid)
        lookup, compressed, compressed_states, lookup_states, attentions = self.encoder(
            lookup, compressed, bool(output_hidden_states), bool(output_attentions), output_lookup_tokens, **kwargs
        )
        compressed = self.layernorm(compressed)
        return LookupViTModelOutput(
            last_hidden_state=compressed,
            pooler_output=compressed.mean(dim=1),
            lookup_last_hidden_state=self.lookup_layernorm(lookup) if output_lookup_tokens else None,
            compressed_grid=torch.tensor(grid, device=compressed.device).expand(compressed.shape[0], -1),
            hidden_states=compressed_states,
            lookup_hidden_states=lookup_states,
            attentions=attentions,
        )


class _LookupViTTaskModel(LookupViTPreTrainedModel):
    """Shared set-up of the task heads: the LookupViT body, dropout and a linear head.

    Each head reads one stream only, so a few parameters never reach its output (`_unused_modules`). They are frozen
    (`requires_grad=False`): they would get no gradient, which DDP without `find_unused_parameters` refuses. They stay
    in the state dict, so one checkpoint serves both heads.
    """

    accepts_loss_kwargs = False

    def __init__(self, config: LookupViTConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.lookupvit = LookupViTModel(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    def _unused_modules(self) -> list[nn.Module]:
        """The modules whose parameters never reach this head's output (each head says which)."""
        return []

    def post_init(self) -> None:
        super().post_init()
        self._freeze_unused_parameters()

    def _freeze_unused_parameters(self) -> None:
        """The one place that freezes what the head's forward never uses; also run after `from_pretrained`, which
        re-creates the loaded parameters with `requires_grad=True`."""
        if hasattr(self, "lookupvit"):  # not in `PreTrainedModel.__init__`, before the body exists
            for module in self._unused_modules():
                module.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        loaded = super().from_pretrained(*args, **kwargs)
        (loaded[0] if isinstance(loaded, tuple) else loaded)._freeze_unused_parameters()
        return loaded


class LookupViTForImageClassification(_LookupViTTaskModel):
    """LookupViT with a linear classifier on the mean compressed token.

    The classifier reads only the compressed tokens: the forward skips the last block's scatter and lookup MLP (their
    results only the lookup tokens would carry), and those and the lookup final norm are frozen.
    """

    def _unused_modules(self) -> list[nn.Module]:
        last = self.lookupvit.encoder.layer[-1]
        names = ("scatter_norm", "scatter", "scatter_layer_scale", "lookup_mlp_norm", "lookup_mlp")
        return [getattr(last, name) for name in (*names, "lookup_mlp_layer_scale")] + [self.lookupvit.lookup_layernorm]

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        compressed_grid: int | tuple[int, int] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> LookupViTImageClassifierOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, or `(batch_size, num_labels)` floats, *optional*):
            Class indices (single-label), multi-hot targets (multi-label) or values (regression, `num_labels == 1`),
            following `config.problem_type` as transformers' classifiers do.
        compressed_grid (`int` or `(h, w)`, *optional*):
            See [`LookupViTModel.forward`].

        Returns `logits (batch_size, num_labels)` and, on request, the per-layer outputs of [`LookupViTModelOutput`].
        """
        outputs = self.lookupvit(pixel_values, compressed_grid=compressed_grid, output_lookup_tokens=False, **kwargs)
        logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits, self.config)
        return LookupViTImageClassifierOutput(
            loss=loss,
            logits=logits,
            compressed_grid=outputs.compressed_grid,
            hidden_states=outputs.hidden_states,
            lookup_hidden_states=outputs.lookup_hidden_states,
            attentions=outputs.attentions,
        )


class LookupViTForSemanticSegmentation(_LookupViTTaskModel):
    """LookupViT with a per-patch linear head on the lookup tokens (the compressed final norm is frozen: unused)."""

    def _unused_modules(self) -> list[nn.Module]:
        return [self.lookupvit.layernorm]

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        compressed_grid: int | tuple[int, int] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> LookupViTSemanticSegmenterOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, height, width)`, *optional*):
            Per-pixel class indices; `config.semantic_loss_ignore_index` (255) is ignored. The logits are bilinearly
            upsampled to the label size for the loss.
        compressed_grid (`int` or `(h, w)`, *optional*):
            See [`LookupViTModel.forward`].

        Returns `logits (batch_size, num_labels, grid_h, grid_w)` on the patch grid and, on request, the per-layer
        outputs of [`LookupViTModelOutput`].
        """
        outputs = self.lookupvit(pixel_values, compressed_grid=compressed_grid, **kwargs)
        grid = (pixel_values.shape[-2] // self.config.patch_size, pixel_values.shape[-1] // self.config.patch_size)
        logits = self.classifier(self.dropout(outputs.lookup_last_hidden_state))  # (B, N, C)
        logits = logits.transpose(1, 2).reshape(logits.shape[0], -1, *grid)
        loss = None
        if labels is not None:
            if labels.ndim != 3 or labels.shape[0] != logits.shape[0]:
                raise ValueError(
                    f"Segmentation `labels` must have shape (batch_size, height, width), got {tuple(labels.shape)}."
                )
            if self.config.num_labels < 2:
                raise ValueError("Semantic segmentation needs `num_labels >= 2` in the config.")
            loss = self.loss_function(logits, labels.long(), ignore_index=self.config.semantic_loss_ignore_index)
        return LookupViTSemanticSegmenterOutput(
            loss=loss,
            logits=logits,
            compressed_grid=outputs.compressed_grid,
            hidden_states=outputs.hidden_states,
            lookup_hidden_states=outputs.lookup_hidden_states,
            attentions=outputs.attentions,
        )


def lookupvit_image_processor(config: LookupViTConfig, **overrides):
    """The one-view image processor for a LookupViT config: transformers' `BeitImageProcessor` (resize to
    `config.image_size`, RGB conversion, rescale, ImageNet normalization; no crop, no label reduction), which also has
    the `post_process_semantic_segmentation` that `pipeline("image-segmentation")` calls. `overrides` are further
    `BeitImageProcessor` arguments (e.g. `image_mean` / `image_std` of the ViT a model was initialised from)."""
    from transformers import BeitImageProcessor
    from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    settings = dict(
        size={"height": config.image_size, "width": config.image_size},
        do_center_crop=False,
        do_reduce_labels=False,
        do_convert_rgb=True,  # grayscale and RGBA photos too, as the other families' processors take them
        image_mean=list(IMAGENET_DEFAULT_MEAN),
        image_std=list(IMAGENET_DEFAULT_STD),
    )
    return BeitImageProcessor(**{**settings, **overrides})


__all__ = [
    "LookupViTForImageClassification",
    "LookupViTForSemanticSegmentation",
    "LookupViTImageClassifierOutput",
    "LookupViTModel",
    "LookupViTModelOutput",
    "LookupViTPreTrainedModel",
    "LookupViTSemanticSegmenterOutput",
    "lookupvit_image_processor",
]
