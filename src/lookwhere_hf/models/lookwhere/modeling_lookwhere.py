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
- Task heads: [`LookWhereForImageClassification`] (anytime / budgeted rungs: `anytime_rungs.py`),
  [`LookWhereForSemanticSegmentation`]; pretraining: [`LookWhereForPreTraining`] (losses: `distillation_losses.py`).

Sibling modules hold what is a concept of its own: `cls_only_layer.py`, `anytime_rungs.py`, `input_checks.py`,
`model_outputs.py` (the output classes, importable from here too) and `dinov2_weights.py` (building from DINOv2).

Output flags follow transformers' vision models: `output_hidden_states` / `output_attentions` (and any other
`TransformersKwargs`) are passed down as `**kwargs` to the two `Dinov2WithRegistersEncoder`s, which record their
per-layer outputs with their own `_can_record_outputs` hooks. All three classes return the same four fields:
`hidden_states` / `attentions` for the extractor and `selector_hidden_states` / `selector_attentions` for the selector,
each a tuple with `num_hidden_layers + 1` (hidden states: the encoder input, then every layer's output, before the final
layer norm) or `num_hidden_layers` (attentions) entries. When not passed, the flags default to the LookWhere config's.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutput
from transformers.modeling_utils import PreTrainedModel
from transformers.models.dinov2_with_registers.configuration_dinov2_with_registers import Dinov2WithRegistersConfig
from transformers.models.dinov2_with_registers.modeling_dinov2_with_registers import (
    Dinov2WithRegistersEncoder,
    Dinov2WithRegistersLayerScale,
    Dinov2WithRegistersPatchEmbeddings,
)
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple

from .anytime_rungs import anytime_rung_flops, resolve_exit_thresholds, run_rungs
from .cls_only_layer import can_skip_last_layer_tokens, cls_only_layer_forward
from .configuration_lookwhere import LookWhereConfig, to_pair
from .dense_spreading import spread_to_grid
from .dinov2_weights import config_from_dinov2, copy_dinov2_weights, load_dinov2, resize_position_embeddings
from .input_checks import check_inputs
from .model_outputs import (
    LookWhereForPreTrainingOutput,
    LookWhereImageClassifierOutput,
    LookWhereModelOutput,
    LookWhereSemanticSegmenterOutput,
)
from .selection import make_low_res_view, select_top_k, selector_scores_to_map


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
        """Whether [`cls_only_layer_forward`] gives exactly the full last layer's CLS output here (see
        [`~cls_only_layer.can_skip_last_layer_tokens`] for when it does not)."""
        return can_skip_last_layer_tokens(self.encoder.layer[-1])


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
        teacher = load_dinov2(dinov2)
        config = config_from_dinov2(
            teacher.config, selector_depth, low_res_size, high_res_size, k_ratio, **config_kwargs
        )
        model = cls(config)
        copy_dinov2_weights(model if isinstance(model, LookWhereModel) else model.lookwhere, teacher)
        return model

    def _check_inputs(self, pixel_values, low_res_pixel_values) -> tuple[int, int]:
        """Shape checks of the inputs shared by all heads ([`~input_checks.check_inputs`]); the high-resolution grid."""
        return check_inputs(self.config, pixel_values, low_res_pixel_values)


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
        thresholds = resolve_exit_thresholds(self.config, self.training, k, anytime, budget, exit_thresholds)
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

    def _forward_rungs(self, pixel_values, low_res_pixel_values, labels, thresholds, **kwargs):
        """Anytime (`thresholds is None`) or budgeted classification; see the class docstring and
        [`~anytime_rungs.run_rungs`]."""
        config, body = self.config, self.lookwhere
        if config.num_labels < 1:
            raise ValueError("Anytime classification needs a classification head (`num_labels >= 1`).")
        grid = body._check_inputs(pixel_values, low_res_pixel_values)
        if low_res_pixel_values is None:
            low_res_pixel_values = body.low_res_view(pixel_values)
        selector_map, prefix, selector_patches, _ = body._run_selector(pixel_values, low_res_pixel_values, grid)
        rungs = run_rungs(
            self, pixel_values, low_res_pixel_values, grid, selector_map, prefix, selector_patches, thresholds
        )
        loss = None
        if labels is not None and thresholds is None:  # anytime: every rung and the glance head train
            per_rung = rungs["rung_logits"].unbind(dim=1)
            loss = sum(self.loss_function(labels, out, config, **kwargs) for out in per_rung) / len(per_rung)
        elif labels is not None:
            loss = self.loss_function(labels, rungs["logits"], config, **kwargs)
        return LookWhereImageClassifierOutput(loss=loss, selector_map=selector_map, **rungs)


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
        k_min, k_max, cls_loss_weight, dense_loss_weight, map_loss_weight, k_seed, map_layer (*optional*):
            overrides written to `config.pretrain_<name>` (e.g. `k_min` -> `config.pretrain_k_min`); when absent the
            config's values are used (defaults 16, 128, 1.0, 1.0, 0.1, 0 and -1).
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
        map_layer: int | None = None,
    ) -> None:
        overrides = {
            "k_min": k_min,
            "k_max": k_max,
            "cls_loss_weight": cls_loss_weight,
            "dense_loss_weight": dense_loss_weight,
            "map_loss_weight": map_loss_weight,
            "k_seed": k_seed,
            "map_layer": map_layer,
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
                teacher = load_dinov2(teacher)
        teacher = load_dinov2(teacher)
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
        map_layer: int | None = None,
        **config_kwargs,
    ) -> LookWhereForPreTraining:
        """Build the student from a teacher ([`LookWherePreTrainedModel.from_dinov2`]: extractor = teacher copy,
        selector = its first `selector_depth` layers + a new head) and attach the teacher, frozen.

        With `init_from_teacher=False` the student has the same architecture but random weights. The pretraining
        settings (`k_min`, ..., `k_seed`) become `config.pretrain_<name>`; absent ones keep the config defaults.
        """
        teacher = load_dinov2(teacher)
        settings = {
            "k_min": k_min,
            "k_max": k_max,
            "cls_loss_weight": cls_loss_weight,
            "dense_loss_weight": dense_loss_weight,
            "map_loss_weight": map_loss_weight,
            "k_seed": k_seed,
            "map_layer": map_layer,
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

        targets = compute_teacher_targets(self.teacher, pixel_values, map_layer=self.config.pretrain_map_layer)
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
