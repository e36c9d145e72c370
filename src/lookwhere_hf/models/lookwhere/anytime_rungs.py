"""LookWhere's anytime and budgeted classification: the rung ladder `[glance] + config.anytime_k_ratios`, its FLOPs,
the exit thresholds of a call and the loop over the rungs (used by `LookWhereForImageClassification`).

A sibling of `modeling_lookwhere.py`: saved model folders copy it for `trust_remote_code`, so it imports only torch
and its siblings.
"""

from __future__ import annotations

import torch

from .configuration_lookwhere import LookWhereConfig, to_pair
from .selection import select_top_k

__all__ = ["anytime_rung_flops", "resolve_exit_thresholds", "run_rungs"]


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


def resolve_exit_thresholds(
    config: LookWhereConfig, training: bool, k, anytime: bool, budget: bool | None, exit_thresholds
) -> list[float] | None:
    """The exit thresholds of one call of `LookWhereForImageClassification` (`None`: no early exits, i.e. fixed-`k`
    or anytime mode), checked; `training`: the model's mode (budgeted inference is on by default only in eval mode)."""
    if exit_thresholds is not None:
        if budget is False:
            raise ValueError("`exit_thresholds` were given with `budget=False`; drop one of them.")
        budget = True
    if budget is None:
        budget = (
            config.budget_thresholds is not None and config.use_budget and not training and k is None and not anytime
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


def run_rungs(
    model,
    pixel_values: torch.Tensor,
    low_res_pixel_values: torch.Tensor,
    grid: tuple[int, int],
    selector_map: torch.Tensor,
    prefix: torch.Tensor,
    selector_patches: torch.Tensor,
    thresholds: list[float] | None,
) -> dict[str, torch.Tensor | None]:
    """Anytime (`thresholds is None`: every rung for every image) or budgeted classification (an image leaves at the
    first rung whose max softmax probability reaches that rung's threshold; the last rung always exits), after the
    selector has run once.

    `model` is a `LookWhereForImageClassification` (its `lookwhere.extractor`, `classifier`, `glance_classifier`,
    `dropout` and `config`). The top-`k_max` patches are ranked once and each is embedded once (the ranking is nested:
    rung `i`'s patches are a prefix of rung `i+1`'s); each focus rung is a full extractor pass on its prefix whose last
    layer computes the CLS token only. In budgeted mode images leave the batch as they exit: each rung runs on the
    images still going, as one smaller batch.

    Returns the fields of `LookWhereImageClassifierOutput` but the loss: `logits`, `selected_indices`, `rung_logits`
    (`(batch_size, num_rungs, num_labels)` in anytime mode, else None), `exit_rung`, `flops`, `rung_flops`, `rung_k`.
    """
    config, extractor = model.config, model.lookwhere.extractor
    ks = config.rung_ks(grid[0] * grid[1])
    indices = select_top_k(selector_map, ks[-1])
    glance = getattr(model, "glance_classifier", None) is not None
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
            rung_out = model.glance_classifier(model.dropout(features))
        else:
            new = extractor.embeddings.embed_selected(pixel_values, indices[running, previous_k:k], running)
            embedded = new if embedded is None else torch.cat((embedded, new), dim=1)
            tokens, _ = extractor.encode(embedded, prefix[running], cls_only=True)
            rung_out = model.classifier(model.dropout(tokens[:, 0]))
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

    return {
        "logits": rung_logits[-1] if thresholds is None else logits,
        "selected_indices": indices,
        "rung_logits": torch.stack(rung_logits, dim=1) if thresholds is None else None,
        "exit_rung": exit_rung,
        "flops": rung_flops[exit_rung],
        "rung_flops": rung_flops.expand(batch_size, -1),
        "rung_k": torch.tensor(rung_k, device=device).expand(batch_size, -1),
    }
