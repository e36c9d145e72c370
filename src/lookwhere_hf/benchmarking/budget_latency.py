"""Wall time of budgeted LookWhere classification against fixed-`k` at the release size (issue 12).

Random ViT-B/14 weights (selector at 154 px, extractor at 518 px, 1000 classes, a glance head, the default focus
rungs 2.5 / 5 / 10 / 25 %), one batch of images. With random weights the confidences carry no meaning, so the exit
thresholds are set from the batch's own anytime confidences to *force* given exit proportions (default: a quarter
each at the glance and the first two focus rungs, an eighth at each of the last two). The budgeted forward is timed
against the fixed-`k` forward at the same mean FLOPs per image (the largest `k` whose FLOPs do not exceed the
budgeted mean) and at the same mean `k` (the exits' mean, the glance counting 0), in interleaved rounds in one forked
process.

```bash
python benchmarks/bench_inference.py --budget-latency               # batch 16, 518 px, 2 threads
```
"""

from __future__ import annotations

import argparse

import torch

from ..budget import profile_thresholds, simulate_exits
from ..flops import lookwhere_flops
from ..models.lookwhere.configuration_lookwhere import LookWhereConfig
from ..models.lookwhere.modeling_lookwhere import LookWhereForImageClassification
from .timing import measurement, random_weight_model, run_in_fresh_process, time_interleaved

__all__ = [
    "BUDGET_SECTION",
    "exit_counts",
    "forced_exit_thresholds",
    "render_budget_markdown",
    "run_budget_latency",
]

BUDGET_SECTION = "## Budgeted classification: wall time at the release size"
# Images exiting at each rung (glance, then the four focus rungs), in eighths of the batch.
DEFAULT_EXIT_EIGHTHS = (2, 2, 2, 1, 1)


def exit_counts(eighths, batch_size: int) -> list[int]:
    """Images exiting at each rung for a batch: the cumulative shares `cumsum(eighths) / 8` rounded to whole images, so
    the counts are never negative and add up to `batch_size` for any batch size (rounding each rung on its own gave
    `[2, 2, 2, 1, -1]` for a batch of 6)."""
    if sum(eighths) != 8 or min(eighths) < 0:
        raise ValueError(f"Exit proportions {eighths} must be non-negative eighths of the batch summing to 8.")
    cumulative, total = [], 0
    for share in eighths:
        total += share
        cumulative.append(round(total * batch_size / 8))
    return [cumulative[0]] + [b - a for a, b in zip(cumulative, cumulative[1:])]


def forced_exit_thresholds(confidences: torch.Tensor, counts: list[int]) -> list[float]:
    """Thresholds that make exactly `counts[r]` images exit at rung `r`, from anytime confidences `(num_rungs, B)`.

    The thresholds of `lookwhere_hf.budget`'s exit profiles (at each rung, halfway between the `counts[r]`-th most
    confident image still running and the next), checked to give exactly these counts. Raises `ValueError` if the
    counts do not add up to the batch or two confidences tie at a cut (more images would leave there).
    """
    num_rungs, batch_size = confidences.shape
    if len(counts) != num_rungs or sum(counts) != batch_size or min(counts) < 0:
        raise ValueError(f"Exit counts {counts} must give one count per rung ({num_rungs}) summing to {batch_size}.")
    shares = torch.tensor(counts, dtype=torch.float64) / batch_size
    thresholds = profile_thresholds(confidences.T, shares)
    got = torch.bincount(simulate_exits(confidences.T, thresholds), minlength=num_rungs).tolist()
    if got != list(counts):
        rung = next(r for r, (a, b) in enumerate(zip(got, counts)) if a != b)
        raise ValueError(f"Confidences tie at the cut of rung {rung}; use another batch or seed.")
    return thresholds


@measurement("budget")
def _measure_budget(job: dict) -> dict:
    """Forked child: the budgeted forward and the two fixed-`k` forwards, interleaved."""
    torch.set_num_threads(job["threads"])
    config = LookWhereConfig(num_labels=1000, glance_head=True)
    config._attn_implementation = "sdpa"
    model = random_weight_model(LookWhereForImageClassification, config)
    generator = torch.Generator().manual_seed(0)
    size, batch_size = job["resolution"], job["batch_size"]
    # Per-image contrast, so that the random head's confidences spread over the batch.
    scale = 0.5 + 3 * torch.rand(batch_size, 1, 1, 1, generator=generator)
    pixel_values = torch.randn(batch_size, 3, size, size, generator=generator) * scale
    counts = exit_counts(job["exit_eighths"], batch_size)
    with torch.inference_mode():
        anytime = model(pixel_values, anytime=True)
        confidences = anytime.rung_logits.softmax(-1).amax(-1).T  # (num_rungs, batch_size)
        thresholds = forced_exit_thresholds(confidences, counts)
        budgeted = model(pixel_values, exit_thresholds=thresholds)
        exits = torch.bincount(budgeted.exit_rung, minlength=len(counts)).tolist()
        mean_flops = float(budgeted.flops.double().mean())
        rung_k = budgeted.rung_k[0].tolist()
        mean_k = sum(rung_k[r] * n for r, n in enumerate(exits)) / batch_size
        num_patches = (size // config.patch_size) ** 2

        def flops_at(k: int) -> int:
            return lookwhere_flops(config, size, k=k, num_labels=config.num_labels).total

        k_equal_flops = max(k for k in range(1, num_patches + 1) if flops_at(k) <= mean_flops)
        k_equal_k = max(1, round(mean_k))
        calls = {
            "budgeted": lambda: model(pixel_values, exit_thresholds=thresholds),
            "fixed_equal_flops": lambda: model(pixel_values, k=k_equal_flops, budget=False),
            "fixed_equal_k": lambda: model(pixel_values, k=k_equal_k, budget=False),
        }
        timings = time_interleaved(calls, job["repeats"], warmup=1)
    return {
        "exits": exits,
        "rung_k": rung_k,
        "rung_gflops": [f / 1e9 for f in budgeted.rung_flops[0].tolist()],
        "mean_gflops": mean_flops / 1e9,
        "mean_k": mean_k,
        "k_equal_flops": k_equal_flops,
        "gflops_equal_flops": flops_at(k_equal_flops) / 1e9,
        "k_equal_k": k_equal_k,
        "gflops_equal_k": flops_at(k_equal_k) / 1e9,
        **{
            name: {"median_s": t.median, "min_s": min(t.wall), "max_s": max(t.wall), "cpu_s": t.cpu_median}
            for name, t in timings.items()
        },
    }


def run_budget_latency(args: argparse.Namespace) -> list[dict]:
    """One measurement per resolution / batch size of `args` (`--budget-latency`)."""
    jobs = [
        dict(
            task="budget",
            resolution=res,
            batch_size=batch,
            threads=args.threads,
            repeats=args.max_repeats,
            exit_eighths=DEFAULT_EXIT_EIGHTHS,
        )
        for res in args.resolutions
        for batch in args.batch_sizes
    ]
    return [{**job, **run_in_fresh_process(job)} for job in jobs]


def render_budget_markdown(rows: list[dict], machine: str, command: str, started: str, loads: tuple) -> str:
    lines = [
        BUDGET_SECTION,
        "",
        "Budgeted LookWhere (`model(x, exit_thresholds=...)`; glance + focus rungs 2.5 / 5 / 10 / 25 %) against the",
        "fixed-`k` model (`model(x, k=k, budget=False)`), ViT-B/14 random weights, 1000 classes, float32, SDPA. The",
        "thresholds force the exit proportions below (random weights give meaningless confidences). Fixed `k` at",
        "equal mean FLOPs: the largest `k` whose FLOPs do not exceed the budgeted mean; at equal mean `k`: the exits'",
        "mean `k` (the glance counting 0). Interleaved rounds in one process; median wall and CPU time per batch",
        "(spread = (max - min) / median).",
        "",
        f"- Command: `{command}`",
        f"- Machine: {machine}",
        f"- Run: {started}; load average (1/5/15 min) at start {loads[0]}, at end {loads[1]}",
        "",
        "| px | batch | exits per rung (k) | forward | GFLOPs / image | wall s (spread) | CPU s | wall / budgeted |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        exits = ", ".join(f"{n} (k={k})" for n, k in zip(r["exits"], r["rung_k"]))
        base = r["budgeted"]["median_s"]
        for name, label, gflops in (
            ("budgeted", f"budgeted (mean k {r['mean_k']:.0f})", r["mean_gflops"]),
            ("fixed_equal_flops", f"fixed k = {r['k_equal_flops']} (equal FLOPs)", r["gflops_equal_flops"]),
            ("fixed_equal_k", f"fixed k = {r['k_equal_k']} (equal mean k)", r["gflops_equal_k"]),
        ):
            t = r[name]
            spread = 100 * (t["max_s"] - t["min_s"]) / t["median_s"]
            lines.append(
                f"| {r['resolution']} | {r['batch_size']} | {exits} | {label} | {gflops:.1f} "
                f"| {t['median_s']:.2f} ({spread:.0f}%) | {t['cpu_s']:.2f} | {t['median_s'] / base:.2f} |"
            )
    return "\n".join(lines) + "\n"
