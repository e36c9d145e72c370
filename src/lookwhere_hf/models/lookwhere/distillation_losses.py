"""Distillation targets and losses for LookWhere pretraining.

A frozen DINOv2(-with-registers) teacher sees the full high-resolution image and provides three targets
(DESIGN.md section 2, "Pretraining"):

- its final-normed CLS token, `(B, D)`;
- its final-normed patch tokens, `(B, N, D)` with `N = grid_h * grid_w`;
- its **attention map** `(B, N)`: the last layer's pre-softmax attention logits `q . k / sqrt(d)`, averaged over
  heads and over all patch-token queries, restricted to the patch keys.

The attention map is computed without building any `(N + P) x (N + P)` attention matrix. The logits are bilinear
in `(q_i, k_j)`, so their mean over queries is the mean query dotted with each key:
`mean_i(q_i . k_j) = (mean_i q_i) . k_j`, and since `q_proj` is affine, `mean_i q_proj(x_i) = q_proj(mean_i x_i)`.
The teacher therefore runs its layers `0 .. L-2` as usual; in the last layer the `norm1` output of the patch tokens
gives one averaged query per image and the keys of all patches, then the last layer runs normally (with whatever
attention implementation the teacher uses: SDPA / flash / eager).

Averaging the log-softmax attention *probabilities* over queries instead of the logits differs only by a
per-image constant (the mean log-partition function), which a log-softmax over keys removes: both give the same
target distribution.

The losses:

- `map_distillation_loss`: `KL(softmax(teacher_map) || softmax(selector_map))`, computed from log-softmaxes, summed
  over positions and averaged over the batch;
- `cls_distillation_loss`: mean squared error between the extractor's output CLS token and the teacher's CLS;
- `dense_distillation_loss`: squared error averaged over channels, then over positions and the batch, between the
  extractor's patch tokens spread to the full grid and the teacher's patch tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_lookwhere import to_pair


@dataclass
class TeacherTargets:
    """What the student is trained to reproduce (all float32, no gradient).

    Attributes:
        cls_token (`torch.FloatTensor` of shape `(batch_size, hidden_size)`): the teacher's final-normed CLS token.
        patch_tokens (`torch.FloatTensor` of shape `(batch_size, grid_h * grid_w, hidden_size)`): its final-normed
            patch tokens, row-major.
        attention_map (`torch.FloatTensor` of shape `(batch_size, grid_h * grid_w)`): last-layer attention logits
            averaged over heads and patch queries, restricted to the patch keys.
        grid (`tuple[int, int]`): `(grid_h, grid_w)`.
    """

    cls_token: torch.Tensor
    patch_tokens: torch.Tensor
    attention_map: torch.Tensor
    grid: tuple[int, int]


def teacher_num_prefix_tokens(teacher: nn.Module) -> int:
    """CLS + registers of a `Dinov2WithRegistersModel` (plain `Dinov2Model`: CLS only)."""
    return 1 + int(getattr(teacher.config, "num_register_tokens", 0) or 0)


def mean_query_attention_logits(layer: nn.Module, hidden_states: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """Attention logits of one DINOv2 layer averaged over heads and patch queries, for the patch keys only.

    Uses `mean_i(q_i . k_j) = q(mean_i x_i) . k_j` (the query projection is affine), so the cost is one key
    projection of the patch tokens and one query projection per image: no attention matrix is built.

    Args:
        layer (`Dinov2WithRegistersLayer` or `Dinov2Layer`): the layer whose attention is summarized.
        hidden_states (`torch.Tensor` of shape `(batch_size, num_prefix_tokens + num_patches, hidden_size)`):
            the layer's input.
        num_prefix_tokens (`int`): CLS + register tokens at the start of the sequence.

    Returns:
        `torch.Tensor` of shape `(batch_size, num_patches)`: `mean_{h, i in patches} q_{h,i} . k_{h,j} * scaling`.
    """
    attention = layer.attention
    normed = layer.norm1(hidden_states)[:, num_prefix_tokens:]  # (B, N, D)
    batch_size, num_patches, _ = normed.shape
    num_heads, head_dim = attention.num_attention_heads, attention.head_dim
    mean_query = attention.q_proj(normed.mean(dim=1)).view(batch_size, num_heads, head_dim)  # (B, H, d)
    keys = attention.k_proj(normed).view(batch_size, num_patches, num_heads, head_dim)  # (B, N, H, d)
    logits = torch.einsum("bhd,bnhd->bn", mean_query.float(), keys.float())
    return logits * (attention.scaling / num_heads)


@torch.no_grad()
def compute_teacher_targets(teacher: nn.Module, pixel_values: torch.Tensor, map_layer: int = -1) -> TeacherTargets:
    """Run the frozen teacher once and return its CLS, patch tokens and attention-map target.

    Args:
        teacher (`Dinov2WithRegistersModel` or `Dinov2Model`): the frozen teacher (any dtype / attention
            implementation).
        pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`): normalized high-resolution
            images; height and width multiples of the teacher's patch size.
        map_layer (`int`, *optional*, defaults to -1): the layer whose attention map is the target
            ([`mean_query_attention_logits`] of its input), a Python index into the teacher's layers.

    Returns:
        [`TeacherTargets`] in float32.
    """
    layers = teacher.encoder.layer
    if isinstance(map_layer, bool) or not isinstance(map_layer, int) or not -len(layers) <= map_layer < len(layers):
        raise ValueError(
            f"map_layer={map_layer!r} is not a layer of this {len(layers)}-layer teacher: use an integer in "
            f"[{-len(layers)}, {len(layers) - 1}] (-1, the default, is the last layer)."
        )
    map_layer %= len(layers)
    patch = to_pair(teacher.config.patch_size)[0]
    grid = (pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch)
    num_prefix = teacher_num_prefix_tokens(teacher)
    dtype = teacher.embeddings.patch_embeddings.projection.weight.dtype
    hidden = teacher.embeddings(pixel_values.to(dtype))
    for index, layer in enumerate(layers):
        if index == map_layer:
            attention_map = mean_query_attention_logits(layer, hidden, num_prefix)
        hidden = layer(hidden, None)
    hidden = teacher.layernorm(hidden).float()
    return TeacherTargets(
        cls_token=hidden[:, 0], patch_tokens=hidden[:, num_prefix:], attention_map=attention_map, grid=grid
    )


def map_distillation_loss(selector_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
    """`KL(softmax(teacher_map) || softmax(selector_map))` over positions, averaged over the batch.

    Args:
        selector_map (`torch.Tensor` of shape `(batch_size, num_patches)`): selector map logits.
        teacher_map (`torch.Tensor` of shape `(batch_size, num_patches)`): teacher attention-map logits.

    Returns:
        Scalar `torch.Tensor`.
    """
    log_student = F.log_softmax(selector_map.float(), dim=-1)
    log_teacher = F.log_softmax(teacher_map.float(), dim=-1)
    return F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)


def cls_distillation_loss(student_cls: torch.Tensor, teacher_cls: torch.Tensor) -> torch.Tensor:
    """Mean squared error between `(batch_size, hidden_size)` CLS tokens."""
    return F.mse_loss(student_cls.float(), teacher_cls.float())


def dense_distillation_loss(student_patches: torch.Tensor, teacher_patches: torch.Tensor) -> torch.Tensor:
    """Squared error averaged over channels, then over positions and the batch.

    Args:
        student_patches (`torch.Tensor` of shape `(batch_size, num_patches, hidden_size)`): the extractor's tokens
            spread to every high-resolution position.
        teacher_patches (`torch.Tensor` of shape `(batch_size, num_patches, hidden_size)`): the teacher's tokens.
    """
    return (student_patches.float() - teacher_patches.float()).pow(2).mean(dim=-1).mean()


@torch.no_grad()
def top_k_agreement(selector_map: torch.Tensor, teacher_map: torch.Tensor, k: int) -> torch.Tensor:
    """Fraction of the teacher's top-`k` positions that are also in the selector's top-`k`, averaged over the batch.

    Returns a scalar in `[0, 1]` (chance level is `k / num_patches`).
    """
    student_top = torch.topk(selector_map, k, dim=-1).indices
    teacher_top = torch.topk(teacher_map, k, dim=-1).indices
    hits = torch.zeros_like(selector_map, dtype=torch.bool).scatter_(1, student_top, True)
    return hits.gather(1, teacher_top).float().mean()


__all__ = [
    "TeacherTargets",
    "cls_distillation_loss",
    "compute_teacher_targets",
    "dense_distillation_loss",
    "map_distillation_loss",
    "mean_query_attention_logits",
    "teacher_num_prefix_tokens",
    "top_k_agreement",
]
