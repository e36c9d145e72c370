"""The output classes of LookWhere's models (transformers `ModelOutput` dataclasses).

A sibling of `modeling_lookwhere.py`: saved model folders copy it for `trust_remote_code`, so it imports only torch
and transformers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.modeling_outputs import ModelOutput

__all__ = [
    "LookWhereForPreTrainingOutput",
    "LookWhereImageClassifierOutput",
    "LookWhereModelOutput",
    "LookWhereSemanticSegmenterOutput",
]


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
