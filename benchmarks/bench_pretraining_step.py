#!/usr/bin/env python
"""Where the time of one LookWhere pretraining step goes: teacher / selector / extractor / loss / optimizer.

Random weights at the released size: a DINOv2-with-registers ViT-B/14 teacher at 518 px (1369 patches), a student
built from it with `LookWhereForPreTraining.from_teacher` (selector depth 3 at 154 px, extractor = ViT-B/14), the
extractor on k = k_max = 128 patches (the most expensive k of the [16, 128] range), batch 2, AdamW.

One step is: teacher targets (no grad) -> selector forward -> top-k -> extractor forward -> spreading + losses ->
backward -> optimizer step. Backward is split with gradient hooks: the loss part (spreading + losses) ends when the
extractor's output tokens receive their gradient, the extractor part when the selector's prefix tokens receive theirs,
the rest is the selector's backward.

    python benchmarks/bench_pretraining_step.py --threads 2 --steps 3 --output pretraining_step.json

On a CPU shared with other jobs, set `OMP_WAIT_POLICY=PASSIVE` in the environment: with OpenMP's default spin-waiting
the small student matmuls wait for a descheduled second thread and the split measures contention instead of the
method (see benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2).")
    parser.add_argument("--steps", type=int, default=3, help="Timed steps after one warm-up step.")
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--image_size", type=int, default=518)
    parser.add_argument("--low_res_size", type=int, default=154)
    parser.add_argument("--selector_depth", type=int, default=3)
    parser.add_argument("--k", type=int, default=128, help="Extractor patches (k_max of the release).")
    parser.add_argument("--teacher_dtype", type=str, default=None, help="e.g. bfloat16 (default float32).")
    parser.add_argument("--attn_implementation", type=str, default="sdpa")
    parser.add_argument("--unfused_optimizer", action="store_true", help="Per-parameter AdamW loop instead of fused.")
    parser.add_argument("--output", type=str, default=None, help="Write the numbers as JSON here.")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1 or args.threads < 1:
        parser.error("--steps, --batch_size and --threads must be positive.")
    if args.image_size % 14 or args.low_res_size % 14:
        parser.error("--image_size and --low_res_size must be multiples of the patch size 14.")
    if not 1 <= args.k <= (args.image_size // 14) ** 2:
        parser.error(f"--k must be between 1 and {(args.image_size // 14) ** 2}.")
    return args


def build(args):
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    from lookwhere_hf import LookWhereForPreTraining

    torch.manual_seed(0)
    config = Dinov2WithRegistersConfig(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4, patch_size=14,
        image_size=args.image_size, num_register_tokens=4, layerscale_value=1.0,
        attn_implementation=args.attn_implementation,
    )  # fmt: skip
    teacher = Dinov2WithRegistersModel(config).eval()
    model = LookWhereForPreTraining.from_teacher(
        teacher,
        selector_depth=args.selector_depth,
        low_res_size=args.low_res_size,
        k_min=args.k,
        k_max=args.k,
        teacher_dtype=args.teacher_dtype,
    ).train()
    return model


def timed_step(model, optimizer, pixel_values, k):
    """One full step, returning seconds per phase."""
    from lookwhere_hf.models.lookwhere.dense_spreading import spread_to_grid
    from lookwhere_hf.models.lookwhere.distillation_losses import (
        cls_distillation_loss,
        compute_teacher_targets,
        dense_distillation_loss,
        map_distillation_loss,
    )
    from lookwhere_hf.models.lookwhere.selection import select_top_k

    body, cfg = model.lookwhere, model.config
    times, marks = {}, {}
    clock = time.perf_counter

    t = clock()
    targets = compute_teacher_targets(model.teacher, pixel_values)
    times["teacher_forward"] = clock() - t

    t = clock()
    selector_map, prefix, _, _ = body.select(pixel_values)
    times["selector_forward"] = clock() - t

    t = clock()
    indices = select_top_k(selector_map, k)
    tokens, _ = body.extractor(pixel_values, indices, prefix)
    times["extractor_forward"] = clock() - t

    t = clock()
    grid = targets.grid
    dense = spread_to_grid(tokens[:, cfg.num_prefix_tokens :], indices, grid, cfg.num_spread_neighbors)
    loss = (
        cfg.pretrain_cls_loss_weight * cls_distillation_loss(tokens[:, 0], targets.cls_token)
        + cfg.pretrain_dense_loss_weight * dense_distillation_loss(dense, targets.patch_tokens)
        + cfg.pretrain_map_loss_weight * map_distillation_loss(selector_map, targets.attention_map)
    )
    times["loss_forward"] = clock() - t

    def mark(name):
        def hook(grad):
            marks.setdefault(name, clock())

        return hook

    tokens.register_hook(mark("tokens"))
    prefix.register_hook(mark("prefix"))
    t = clock()
    loss.backward()
    end = clock()
    times["loss_backward"] = marks["tokens"] - t
    times["extractor_backward"] = marks["prefix"] - marks["tokens"]
    times["selector_backward"] = end - marks["prefix"]

    t = clock()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    times["optimizer"] = clock() - t
    return times


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model = build(args)
    params = [p for p in model.parameters() if p.requires_grad]
    # fused AdamW (CPU and CUDA), as the Trainer's default `adamw_torch_fused`; the per-parameter loop is ~5x slower
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05, fused=not args.unfused_optimizer)
    pixel_values = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    print(
        f"teacher {sum(p.numel() for p in model.teacher.parameters()) / 1e6:.1f}M params, student "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params; batch {args.batch_size}, "
        f"{args.image_size}px ({(args.image_size // 14) ** 2} patches), selector {args.low_res_size}px depth "
        f"{args.selector_depth}, k={args.k}, {args.threads} threads, load average {os.getloadavg()[0]:.1f}"
    )
    timed_step(model, optimizer, pixel_values, args.k)  # warm-up
    runs = []
    for i in range(args.steps):
        t = time.perf_counter()
        phases = timed_step(model, optimizer, pixel_values, args.k)
        phases["step_total"] = time.perf_counter() - t
        runs.append(phases)
        print(f"step {i + 1}/{args.steps}: {phases['step_total']:.3f} s")

    # Cross-check: the same step through `model.forward` (which the phases above re-trace step by step).
    whole = []
    for _ in range(args.steps):
        t = time.perf_counter()
        model(pixel_values, k=args.k).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        whole.append(time.perf_counter() - t)

    median = {name: statistics.median(run[name] for run in runs) for name in runs[0]}
    median["step_via_model_forward"] = statistics.median(whole)
    groups = {
        "teacher (forward, no grad)": median["teacher_forward"],
        "selector (fwd + bwd)": median["selector_forward"] + median["selector_backward"],
        "extractor (fwd + bwd)": median["extractor_forward"] + median["extractor_backward"],
        "loss: spreading + losses (fwd + bwd)": median["loss_forward"] + median["loss_backward"],
        "optimizer (AdamW)": median["optimizer"],
    }
    total = median["step_total"]
    student = total - median["teacher_forward"]
    print("\n| part | median s / step | share |\n|---|---|---|")
    for name, seconds in groups.items():
        print(f"| {name} | {seconds:.3f} | {100 * seconds / total:.1f}% |")
    print(f"| **step total** | {total:.3f} | 100% |")
    print(f"| (same step through `model(...)`) | {median['step_via_model_forward']:.3f} | |")
    print(f"\nstudent side (everything but the teacher): {student:.3f} s = {100 * student / total:.1f}% of the step")
    if args.output:
        result = {
            "args": vars(args),
            "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
            "median_seconds": median,
            "groups": groups,
            "student_share": student / total,
            "load_average_at_end": os.getloadavg(),
            "runs": runs,
        }
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
