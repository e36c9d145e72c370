"""The inference benchmark: LookWhere against the full-resolution model (latency, peak memory, FLOPs).

LookWhere against a full-resolution DINOv2-with-registers of the same size. Both have the released ViT-B/14 size
(LookWhere: selector depth 3 at 154 px + extractor depth 12; the full model: transformers' `Dinov2WithRegistersModel`,
depth 12, 4 registers) with random weights (the cost of a forward does not depend on the values), SDPA attention, the
same number of torch threads, float32 on CPU. The full model sees every high-resolution patch; LookWhere's extractor
sees `k = floor(k_ratio * patches)` of them. For every (resolution, batch size, k_ratio) the benchmark measures:

- latency: median over repeated forwards after a warm-up forward (the number of repeats adapts to the forward's
  duration, within `--min-repeats` / `--max-repeats`). Both models run in one forked process per (resolution, batch),
  interleaved round by round ([`lookwhere_hf.benchmarking.time_interleaved`]: the full model, then LookWhere's CLS path
  `model(x, k=k, cls_only=True)` and dense path `model(x, k=k, output_dense_features=True)` for every k), so that
  changes of the machine's load hit all alike;
- peak memory: the increase of a process's peak resident set size (Linux `VmHWM`, reset through
  `/proc/self/clear_refs` right before the forward) over its resident size just before the first forward in a freshly
  forked process (one process per LookWhere k / mode; the full model's first forward in the latency process). It sees
  every allocation torch makes on the CPU (activations, attention, the dense grid), not the weights, which are already
  resident, nor kernel/thread-pool buffers (primed on a tiny input first);
- analytic FLOPs ([`lookwhere_hf.flops`]) of both.

```bash
lookwhere-hf benchmark --quick                                  # k = 10%, batch 1 (~2-3 min on 2 cores)
lookwhere-hf benchmark --output benchmarks/RESULTS.md           # full grid (~15-20 min on 2 cores)
lookwhere-hf benchmark --skip 1036x8 --no-memory                # leave out the slowest parts
```
(`python benchmarks/bench_inference.py` and `python -m lookwhere_hf.benchmarking` take the same arguments.)

The markdown table goes to stdout and, with `--output`, replaces the "## Inference speed" section of that file (other
sections are kept); the plot (speedup and FLOPs ratio vs k_ratio, peak memory; needs matplotlib) is saved next to it.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..flops import full_resolution_flops, lookwhere_flops
from ..models.lookwhere.configuration_lookwhere import LookWhereConfig
from ..models.lookwhere.modeling_lookwhere import LookWhereModel
from .timing import (
    INFERENCE_SECTION,
    build_full_resolution_model,
    format_spread,
    measurement,
    peak_rss_kb,
    process_status_kb,
    random_weight_model,
    reset_peak_rss,
    run_in_fresh_process,
    time_interleaved,
)

__all__ = [
    "DEFAULT_PLOT_NAME",
    "INFERENCE_SECTION",
    "build_benchmark_model",
    "call_benchmark_model",
    "render_markdown",
    "run_benchmark",
    "save_plot",
    "summary_lines",
]

DEFAULT_PLOT_NAME = "inference_speed.png"


# ----------------------------------------------------------------------------------------------------- workers
def build_benchmark_model(kind: str, resolution: int):
    """The benchmark's ViT-B/14 model with random weights: `kind` "full" (transformers' `Dinov2WithRegistersModel` at
    `resolution`) or "lookwhere" (`LookWhereModel`), SDPA attention, its kernels primed on a tiny input."""
    config = LookWhereConfig()
    config._attn_implementation = "sdpa"
    # Prime kernels and thread pools on a tiny input so that their one-time buffers are not counted as memory.
    if kind == "full":
        model = build_full_resolution_model(config, resolution, attn_implementation="sdpa")
        with torch.inference_mode():
            model(pixel_values=torch.randn(1, 3, 56, 56))
        return model
    model = random_weight_model(LookWhereModel, config)
    with torch.inference_mode():
        model(torch.randn(1, 3, 56, 56), output_dense_features=True)
    return model


def call_benchmark_model(model, kind: str, pixel_values, k=None, mode="cls"):
    """One forward of a [`build_benchmark_model`] model: the full model, or LookWhere's CLS (`mode="cls"`, the CLS
    token only, as image classification computes it) or dense path with `k` patches."""
    if kind == "full":
        return model(pixel_values=pixel_values)
    if mode == "cls":  # the CLS token only, as image classification computes it
        return model(pixel_values, k=k, cls_only=True)
    return model(pixel_values, k=k, output_dense_features=True)


def _first_forward_peak(model, kind, pixel_values, k=None, mode="cls") -> tuple[float, float, str]:
    """(peak MB above the resident size before, seconds, method) of one forward."""
    reset = reset_peak_rss()
    before = process_status_kb("VmRSS") or 0
    start = time.perf_counter()
    out = call_benchmark_model(model, kind, pixel_values, k, mode)
    seconds = time.perf_counter() - start
    peak = max(0, peak_rss_kb() - before) / 1024
    del out
    return peak, seconds, "VmHWM" if reset else "ru_maxrss"


@measurement("memory")
def _measure_memory(job: dict) -> dict:
    """Forked child: peak memory of the first forward of one model / k / mode in a fresh process."""
    torch.set_num_threads(job["threads"])
    torch.manual_seed(0)
    pixel_values = torch.randn(job["batch_size"], 3, job["resolution"], job["resolution"])
    model = build_benchmark_model(job["model"], job["resolution"])
    with torch.inference_mode():
        peak, seconds, method = _first_forward_peak(
            model, job["model"], pixel_values, job.get("k"), job.get("mode", "cls")
        )
    return {"peak_mb": peak, "first_s": seconds, "memory_method": method}


@measurement("latency")
def _measure_latency(job: dict) -> dict:
    """Forked child: both models at one (resolution, batch), timed with [`time_interleaved`]; the full model's first
    forward gives its peak memory. The number of rounds adapts to the forwards' durations."""
    torch.set_num_threads(job["threads"])
    torch.manual_seed(0)
    pixel_values = torch.randn(job["batch_size"], 3, job["resolution"], job["resolution"])
    full = build_benchmark_model("full", job["resolution"])
    with torch.inference_mode():
        peak, first_full, method = _first_forward_peak(full, "full", pixel_values)
    lookwhere = build_benchmark_model("lookwhere", job["resolution"])
    variants = [(k, mode) for k in job["ks"] for mode in job["modes"]]
    calls = {"full": lambda: call_benchmark_model(full, "full", pixel_values)}
    for k, mode in variants:
        calls[(k, mode)] = lambda k=k, mode=mode: call_benchmark_model(lookwhere, "lookwhere", pixel_values, k, mode)
    with torch.inference_mode():
        first = {}
        for variant in variants:  # warm-up
            start = time.perf_counter()
            calls[variant]()
            first[variant] = time.perf_counter() - start

        def repeats(seconds: float) -> int:
            wanted = math.ceil(job["target_seconds"] / max(seconds, 1e-6))
            return max(job["min_repeats"], min(job["max_repeats"], wanted))

        counts = {"full": repeats(first_full), **{v: repeats(max(first.values())) for v in variants}}
        long_first = first_full > job["long_forward_seconds"]
        if long_first:  # a very long forward counts its first run as a sample
            counts["full"] -= 1
        else:
            calls["full"]()  # the first forward above was cold; warm up once more
        timings = time_interleaved(calls, counts)
    if long_first:
        timings["full"].wall.append(first_full)
    result = {}
    for key, timing in timings.items():
        result[key] = {
            "median_s": timing.median,
            "min_s": min(timing.wall),
            "max_s": max(timing.wall),
            "n": len(timing.wall),
            "cpu_s": timing.cpu_median,
        }
    result["full"].update(peak_mb=peak, memory_method=method)
    return result


# ----------------------------------------------------------------------------------------------------- driver
def run_benchmark(args: argparse.Namespace) -> list[dict]:
    """Measure every (resolution, batch size, k_ratio, mode) of `args` (see [`parse_args`]); one row per combination."""
    config = LookWhereConfig()
    common = dict(
        threads=args.threads,
        target_seconds=args.target_seconds,
        min_repeats=args.min_repeats,
        max_repeats=args.max_repeats,
        long_forward_seconds=args.long_forward_seconds,
    )

    def k_of(resolution: int, k_ratio: float) -> int:
        return lookwhere_flops(config, resolution, k_ratio=k_ratio).k

    pairs = [(res, batch) for res in args.resolutions for batch in args.batch_sizes if (res, batch) not in args.skip]
    jobs = []
    for res, batch in pairs:
        ks = [k_of(res, r) for r in args.k_ratios]
        jobs.append(dict(common, task="latency", resolution=res, batch_size=batch, ks=ks, modes=args.modes))
        if not args.no_memory:
            jobs += [
                dict(common, task="memory", model="lookwhere", resolution=res, batch_size=batch, k=k, mode=mode)
                for k in ks
                for mode in args.modes
            ]
    latency, memory = {}, {}
    bar = tqdm(jobs, desc="benchmark", file=sys.stderr)
    for job in bar:
        label = f"{job['resolution']}px b{job['batch_size']}"
        if job["task"] == "latency":
            bar.set_postfix_str(f"{label}: latency of both models + full-model memory")
            latency[(job["resolution"], job["batch_size"])] = run_in_fresh_process(job)
        else:
            bar.set_postfix_str(f"{label}: LookWhere memory, k={job['k']} {job['mode']}")
            memory[(job["resolution"], job["batch_size"], job["k"], job["mode"])] = run_in_fresh_process(job)
    rows = []
    for res, batch in pairs:
        measured = latency[(res, batch)]
        full = measured["full"]
        full_flops = full_resolution_flops(config, res, batch)
        for k_ratio in args.k_ratios:
            k = k_of(res, k_ratio)
            cls = measured[(k, "cls")]
            for mode in args.modes:
                lw = measured[(k, mode)]
                flops = lookwhere_flops(config, res, k=k, mode=mode, batch_size=batch, cls_only=mode == "cls")
                grid_mb = batch * flops.grid[0] * flops.grid[1] * config.hidden_size * 4 / 2**20
                rows.append(
                    dict(
                        resolution=res,
                        batch_size=batch,
                        k_ratio=k_ratio,
                        k=k,
                        mode=mode,
                        lw_s=lw["median_s"],
                        lw_min_s=lw["min_s"],
                        lw_max_s=lw["max_s"],
                        lw_n=lw["n"],
                        lw_cls_s=cls["median_s"],
                        lw_cpu_s=lw["cpu_s"],
                        full_cpu_s=full["cpu_s"],
                        lw_cls_cpu_s=cls["cpu_s"],
                        full_s=full["median_s"],
                        full_min_s=full["min_s"],
                        full_max_s=full["max_s"],
                        full_n=full["n"],
                        lw_flops=flops.total,
                        full_flops=full_flops,
                        lw_peak_mb=memory.get((res, batch, k, mode), {}).get("peak_mb"),
                        lw_cls_peak_mb=memory.get((res, batch, k, "cls"), {}).get("peak_mb"),
                        full_peak_mb=full.get("peak_mb"),
                        grid_mb=grid_mb,
                        memory_method=full.get("memory_method"),
                    )
                )
    return rows


# ----------------------------------------------------------------------------------------------------- reporting
def _mb(value) -> str:
    return "-" if value is None else f"{value:.0f}"


def _ratio(numerator, denominator) -> str:
    return f"{numerator / denominator:.1f}x" if denominator and denominator == denominator else "-"


def render_markdown(rows: list[dict], machine: str, command: str, started: str, loads: tuple, plot_path) -> str:
    """The "## Inference speed" section: settings, the table, the targets check and the plot."""
    lines = [
        INFERENCE_SECTION,
        "",
        "LookWhere (this package, ViT-B/14: selector depth 3 at 154 px + extractor depth 12, 4 registers) against",
        "transformers' `Dinov2WithRegistersModel` of the same size on the full high-resolution input. Random weights,",
        "float32, SDPA attention for both, both measured in the same run with the same threads.",
        "",
        f"- Command: `{command}`",
        f"- Machine: {machine}",
        f"- Run: {started}; load average (1/5/15 min) at start {loads[0]}, at end {loads[1]}",
        "- Latency: median over the repeats (n) after a warm-up forward; spread = (max - min) / median of the samples.",
        "  Both models run in one process per (resolution, batch), interleaved round by round (full, then LookWhere",
        "  CLS and dense for each k). CLS = `model(x, k=k, cls_only=True)`; dense =",
        "  `model(x, k=k, output_dense_features=True)`",
        "  (features on the full patch grid). The full model's row is the same forward for both modes (it computes",
        "  every patch).",
        "- Peak memory: increase of the process's peak RSS (Linux VmHWM, reset via /proc/self/clear_refs) during the",
        "  first forward in a freshly forked process, over the RSS just before it (weights and kernel/thread-pool",
        "  buffers, primed on a tiny input, excluded). `grid` = size of the dense feature map itself (batch x patches",
        "  x 768 x 4 bytes).",
        "- CPU-time speedup: the same ratio with the median process CPU time (all threads) of each forward instead of",
        "  wall time; less sensitive to other processes taking the cores, but it counts OpenMP spin-waiting.",
        "- FLOPs: analytic (`lookwhere_hf.flops`, multiply-add = 2 FLOPs, attention matmuls included).",
        "",
        "| px | batch | k_ratio | k | mode | LookWhere ms (n, spread) | full ms (n, spread) | speedup "
        "| CPU-time speedup | GFLOPs LW / full | FLOPs ratio | peak MB LW / full | grid MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['resolution']} | {r['batch_size']} | {r['k_ratio']:.2f} | {r['k']} | {r['mode']} "
            f"| {r['lw_s'] * 1e3:.0f} ({r['lw_n']}, {format_spread(r['lw_s'], r['lw_min_s'], r['lw_max_s'])}) "
            f"| {r['full_s'] * 1e3:.0f} "
            f"({r['full_n']}, {format_spread(r['full_s'], r['full_min_s'], r['full_max_s'])}) "
            f"| **{r['full_s'] / r['lw_s']:.1f}x** | {_ratio(r['full_cpu_s'], r['lw_cpu_s'])} "
            f"| {r['lw_flops'] / 1e9:.1f} / {r['full_flops'] / 1e9:.0f} "
            f"| {r['full_flops'] / r['lw_flops']:.1f}x "
            f"| {_mb(r['lw_peak_mb'])} / {_mb(r['full_peak_mb'])} | {r['grid_mb']:.0f} |"
        )
    lines += ["", *summary_lines(rows)]
    if plot_path:
        lines += ["", f"![LookWhere speedup and FLOPs ratio vs k_ratio]({plot_path})"]
    return "\n".join(lines) + "\n"


def _find(rows, **match):
    return [r for r in rows if all(r[k] == v for k, v in match.items())]


def summary_lines(rows: list[dict]) -> list[str]:
    """The speed targets (>= 9x at 518 px, >= 18x at 1036 px, k = 10%; dense <= +5% over CLS), checked on `rows`."""
    out = ["Targets (ratios from this run):", ""]
    for res, target in ((518, 9.0), (1036, 18.0)):
        for r in _find(rows, resolution=res, k_ratio=0.1, mode="cls"):
            speedup = r["full_s"] / r["lw_s"]
            verdict = "met" if speedup >= target else f"missed by {100 * (1 - speedup / target):.0f}%"
            out.append(
                f"- {res} px, k = 10%, batch {r['batch_size']}: {speedup:.1f}x faster (target >= {target:.0f}x: "
                f"{verdict}; CPU-time ratio {_ratio(r['full_cpu_s'], r['lw_cpu_s'])}; FLOPs ratio "
                f"{r['full_flops'] / r['lw_flops']:.1f}x)"
            )
    for r in _find(rows, resolution=1036, mode="dense"):
        slowdown = r["lw_s"] / r["lw_cls_s"] - 1
        verdict = "met" if slowdown <= 0.05 else "missed"
        cpu_note = ""
        if r.get("lw_cpu_s") and r.get("lw_cls_cpu_s"):
            cpu_note = f"; CPU time {100 * (r['lw_cpu_s'] / r['lw_cls_cpu_s'] - 1):+.1f}%"
        out.append(
            f"- dense vs CLS, 1036 px, k = {r['k_ratio']:.0%}, batch {r['batch_size']}: {100 * slowdown:+.1f}% wall "
            f"(target <= +5%: {verdict}){cpu_note}"
        )
    dense = [r for r in _find(rows, mode="dense") if r["lw_peak_mb"] is not None and r["lw_cls_peak_mb"] is not None]
    if dense:
        ratios = ", ".join(
            f"{r['resolution']} px b{r['batch_size']} k={r['k_ratio']:.2f}: "
            f"{(r['lw_peak_mb'] - r['lw_cls_peak_mb']) / r['grid_mb']:.2f}"
            for r in dense
        )
        out.append(
            "- dense-path extra peak memory over the CLS path, in units of the dense feature map's own size "
            f"(constant = grows like the grid): {ratios}"
        )
    return out


def save_plot(rows: list[dict], path: Path) -> None:
    """Speedup and FLOPs ratio vs k_ratio (left) and peak memory (right), as a PNG (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (speed_ax, mem_ax) = plt.subplots(1, 2, figsize=(12, 4.6), dpi=110)
    colors = {}
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    for r in rows:
        colors.setdefault((r["resolution"], r["batch_size"]), palette[len(colors) % len(palette)])
    for (res, batch), color in colors.items():
        cls = sorted(_find(rows, resolution=res, batch_size=batch, mode="cls"), key=lambda r: r["k_ratio"])
        if not cls:
            continue
        ks = [r["k_ratio"] for r in cls]
        label = f"{res} px, batch {batch}: measured"
        speed_ax.plot(ks, [r["full_s"] / r["lw_s"] for r in cls], "o-", color=color, label=label)
        dense = sorted(_find(rows, resolution=res, batch_size=batch, mode="dense"), key=lambda r: r["k_ratio"])
        if dense:
            speed_ax.plot(ks, [r["full_s"] / r["lw_s"] for r in dense], "x:", color=color, label=f"{label}, dense")
        if batch == min(b for (rr, b) in colors if rr == res):
            ratios = [r["full_flops"] / r["lw_flops"] for r in cls]
            gray = "gray" if res == 518 else "black"
            speed_ax.plot(ks, ratios, "s--", color=gray, alpha=0.6, label=f"{res} px: FLOPs ratio")
        for mode, marker in (("cls", "o-"), ("dense", "x:")):
            rs = sorted(_find(rows, resolution=res, batch_size=batch, mode=mode), key=lambda r: r["k_ratio"])
            if rs and rs[0]["lw_peak_mb"] is not None:
                peaks = [r["lw_peak_mb"] for r in rs]
                mem_ax.plot(ks, peaks, marker, color=color, label=f"LookWhere {mode}, {res} px b{batch}")
        if cls[0]["full_peak_mb"] is not None:
            mem_ax.axhline(
                cls[0]["full_peak_mb"], color=color, linestyle="--", alpha=0.5, label=f"full DINOv2, {res} px b{batch}"
            )
    speed_ax.set_xlabel("k_ratio (fraction of high-res patches computed)")
    speed_ax.set_ylabel("full-resolution DINOv2 / LookWhere")
    speed_ax.set_title("speedup (measured) and FLOPs ratio")
    speed_ax.set_yscale("log")
    speed_ax.grid(True, which="both", alpha=0.3)
    speed_ax.legend(fontsize=7)
    mem_ax.set_xlabel("k_ratio")
    mem_ax.set_ylabel("peak memory of a forward (MB)")
    mem_ax.set_title("peak memory (RSS increase)")
    mem_ax.grid(True, which="both", alpha=0.3)
    mem_ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
