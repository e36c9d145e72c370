"""Speed measurement: random-weight models, interleaved latency timing, and the inference benchmark.

LookWhere against a full-resolution DINOv2-with-registers of the same size. Both have the released ViT-B/14 size
(LookWhere: selector depth 3 at 154 px + extractor depth 12; the full model: transformers' `Dinov2WithRegistersModel`,
depth 12, 4 registers) with random weights (the cost of a forward does not depend on the values), SDPA attention, the
same number of torch threads, float32 on CPU. The full model sees every high-resolution patch; LookWhere's extractor
sees `k = floor(k_ratio * patches)` of them. For every (resolution, batch size, k_ratio) the benchmark measures:

- latency: median over repeated forwards after a warm-up forward (the number of repeats adapts to the forward's
  duration, within `--min-repeats` / `--max-repeats`). Both models run in one forked process per (resolution, batch),
  interleaved round by round ([`time_interleaved`]: the full model, then LookWhere's CLS path
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

OpenMP threads wait passively by default here (`--omp-wait-policy passive`; the benchmark re-runs itself in a fresh
interpreter with `OMP_WAIT_POLICY` set, since OpenMP reads it when torch loads): on a CPU shared with other processes,
spin-waiting threads stall every parallel region until their partner thread is scheduled, which slows LookWhere's many
small matmuls far more than the full model's large ones (measured: LookWhere 518 px 2.5 s with spinning vs 0.41 s
passive under the same load). Pass `--omp-wait-policy default` to keep your setting.

The markdown table goes to stdout and, with `--output`, replaces the "## Inference speed" section of that file (other
sections are kept); the plot (speedup and FLOPs ratio vs k_ratio, peak memory; needs matplotlib) is saved next to it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import multiprocessing as mp
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

from .flops import full_resolution_flops, lookwhere_flops
from .models.lookwhere.configuration_lookwhere import LookWhereConfig
from .models.lookwhere.modeling_lookwhere import LookWhereModel
from .utils import k_ratio_argument, positive_int_argument

__all__ = [
    "Timing",
    "build_full_resolution_model",
    "fast_random_init",
    "main",
    "random_weight_model",
    "run_benchmark",
    "time_interleaved",
]

SECTION = "## Inference speed"
DEFAULT_PLOT_NAME = "inference_speed.png"


# ----------------------------------------------------------------------------------------------------- models
def fast_random_init(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fill a model's parameters quickly with random values (normal(0, 0.02) for matrices, ones for norm weights and
    layer scales, zeros for biases). For speed measurements: the values do not change the cost of a forward pass."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim >= 2:
                param.normal_(0.0, 0.02, generator=generator)
            elif name.endswith("bias"):
                param.zero_()
            else:
                param.fill_(1.0)
    return model


def random_weight_model(model_class, config, seed: int = 0) -> torch.nn.Module:
    """`model_class(config)` in eval mode with [`fast_random_init`] weights, built without the (slow) default
    initialization."""
    with torch.device("meta"):
        model = model_class(config)
    return fast_random_init(model.to_empty(device="cpu"), seed).eval()


def build_full_resolution_model(
    lookwhere_config: LookWhereConfig, image_size: int, attn_implementation: str = "sdpa", seed: int = 0
) -> Dinov2WithRegistersModel:
    """transformers' `Dinov2WithRegistersModel` with the LookWhere extractor's architecture at `image_size`, random
    weights: the full-resolution model LookWhere is compared with."""
    fields = lookwhere_config.extractor_config.to_dict()
    for key in ("model_type", "transformers_version", "architectures", "_name_or_path", "auto_map"):
        fields.pop(key, None)
    config = Dinov2WithRegistersConfig(**{**fields, "image_size": image_size})
    config._attn_implementation = attn_implementation
    return random_weight_model(Dinov2WithRegistersModel, config, seed)


# ----------------------------------------------------------------------------------------------------- latency
@dataclass
class Timing:
    """Wall-clock and process CPU seconds of the timed calls of one function (CPU time counts all threads)."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.wall)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu) if self.cpu else float("nan")


def time_interleaved(
    calls: dict[str, Callable[[], object]], repeats: int | dict[str, int], warmup: int = 0, desc: str | None = None
) -> dict[str, Timing]:
    """Time several functions in interleaved rounds, so that changes of the machine's load hit all of them alike.

    Args:
        calls: name -> function to time (called without arguments).
        repeats: timed calls per function (the same for all, or per name); round `r` calls, in the order of `calls`,
            every function that still has fewer than its `repeats` samples.
        warmup: untimed rounds of all functions first.
        desc: progress-bar label (tqdm on stderr); no bar if None.

    Returns:
        name -> [`Timing`].
    """
    counts = dict.fromkeys(calls, repeats) if isinstance(repeats, int) else dict(repeats)
    if set(counts) != set(calls) or any(not isinstance(n, int) or n < 0 for n in counts.values()):
        raise ValueError(f"`repeats` must be an int >= 0 or one per call {sorted(calls)}, got {repeats!r}.")
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    timings = {name: Timing() for name in calls}
    for round_ in tqdm(
        range(max(counts.values(), default=0)), desc=desc, leave=False, disable=desc is None, file=sys.stderr
    ):
        for name, fn in calls.items():
            if round_ < counts[name]:
                start, start_cpu = time.perf_counter(), time.process_time()
                fn()
                timings[name].wall.append(time.perf_counter() - start)
                timings[name].cpu.append(time.process_time() - start_cpu)
    return timings


# ----------------------------------------------------------------------------------------------------- memory
def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _peak_rss_kb() -> int:
    hwm = _status_kb("VmHWM")
    if hwm is not None:
        return hwm
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# ----------------------------------------------------------------------------------------------------- workers
def _build(kind: str, resolution: int):
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


def _call(model, kind: str, pixel_values, k=None, mode="cls"):
    if kind == "full":
        return model(pixel_values=pixel_values)
    if mode == "cls":  # the CLS token only, as image classification computes it
        return model(pixel_values, k=k, cls_only=True)
    return model(pixel_values, k=k, output_dense_features=True)


def _first_forward_peak(model, kind, pixel_values, k=None, mode="cls") -> tuple[float, float, str]:
    """(peak MB above the resident size before, seconds, method) of one forward."""
    reset = _reset_peak_rss()
    before = _status_kb("VmRSS") or 0
    start = time.perf_counter()
    out = _call(model, kind, pixel_values, k, mode)
    seconds = time.perf_counter() - start
    peak = max(0, _peak_rss_kb() - before) / 1024
    del out
    return peak, seconds, "VmHWM" if reset else "ru_maxrss"


def _measure_memory(job: dict) -> dict:
    """Forked child: peak memory of the first forward of one model / k / mode in a fresh process."""
    torch.set_num_threads(job["threads"])
    torch.manual_seed(0)
    pixel_values = torch.randn(job["batch_size"], 3, job["resolution"], job["resolution"])
    model = _build(job["model"], job["resolution"])
    with torch.inference_mode():
        peak, seconds, method = _first_forward_peak(
            model, job["model"], pixel_values, job.get("k"), job.get("mode", "cls")
        )
    return {"peak_mb": peak, "first_s": seconds, "memory_method": method}


def _measure_latency(job: dict) -> dict:
    """Forked child: both models at one (resolution, batch), timed with [`time_interleaved`]; the full model's first
    forward gives its peak memory. The number of rounds adapts to the forwards' durations."""
    torch.set_num_threads(job["threads"])
    torch.manual_seed(0)
    pixel_values = torch.randn(job["batch_size"], 3, job["resolution"], job["resolution"])
    full = _build("full", job["resolution"])
    with torch.inference_mode():
        peak, first_full, method = _first_forward_peak(full, "full", pixel_values)
    lookwhere = _build("lookwhere", job["resolution"])
    variants = [(k, mode) for k in job["ks"] for mode in job["modes"]]
    calls = {"full": lambda: _call(full, "full", pixel_values)}
    for k, mode in variants:
        calls[(k, mode)] = lambda k=k, mode=mode: _call(lookwhere, "lookwhere", pixel_values, k, mode)
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


def _child(job: dict, queue) -> None:
    try:
        if job["task"] in ("official", "official_weights", "profile"):
            from .official_benchmark import MEASUREMENTS

            measure = MEASUREMENTS[job["task"]]
        elif job["task"] == "budget":
            from .budget_benchmark import MEASUREMENTS

            measure = MEASUREMENTS[job["task"]]
        else:
            measure = _measure_memory if job["task"] == "memory" else _measure_latency
        queue.put(("ok", measure(job)))
    except BaseException:  # report any failure to the parent
        queue.put(("error", traceback.format_exc()))


def run_in_fresh_process(job: dict) -> dict:
    """Fork a child for one measurement (fresh allocator and peak-RSS counter) and return its result."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    process = ctx.Process(target=_child, args=(job, queue))
    process.start()
    status, payload = queue.get()
    process.join()
    if status != "ok":
        raise RuntimeError(f"benchmark job {job} failed:\n{payload}")
    return payload


# ----------------------------------------------------------------------------------------------------- driver
def machine_description(threads: int) -> str:
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
        if names:
            cpu = f"{names[0]} ({len(names)} logical CPUs visible)"
    except OSError:
        pass
    return (
        f"{cpu}; {platform.system()} {platform.release()}; Python {platform.python_version()}; "
        f"torch {torch.__version__}; "
        f"transformers {transformers.__version__}; torch threads {threads}; "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}; float32, SDPA attention"
    )


def _load_average() -> str:
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


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
def _spread(median, low, high) -> str:
    return f"{100 * (high - low) / median:.0f}%" if median else "-"


def _mb(value) -> str:
    return "-" if value is None else f"{value:.0f}"


def _ratio(numerator, denominator) -> str:
    return f"{numerator / denominator:.1f}x" if denominator and denominator == denominator else "-"


def render_markdown(rows: list[dict], machine: str, command: str, started: str, loads: tuple, plot_path) -> str:
    """The "## Inference speed" section: settings, the table, the targets check and the plot."""
    lines = [
        SECTION,
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
            f"| {r['lw_s'] * 1e3:.0f} ({r['lw_n']}, {_spread(r['lw_s'], r['lw_min_s'], r['lw_max_s'])}) "
            f"| {r['full_s'] * 1e3:.0f} ({r['full_n']}, {_spread(r['full_s'], r['full_min_s'], r['full_max_s'])}) "
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


def write_section(path: Path, section: str, heading: str = SECTION) -> None:
    """Replace the `heading` section of `path` (up to the next `## ` heading) or append it."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    start = text.find(heading + "\n")
    if start == -1:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + section + ("\n" + text[end + 1 :] if end != -1 else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# ----------------------------------------------------------------------------------------------------- arguments
def _resolution_and_batch(value: str) -> tuple[int, int]:
    try:
        res, batch = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected RESOLUTIONxBATCH such as 1036x8, got {value!r}") from None
    return res, batch


def _multiple_of_14(value: str) -> int:
    try:
        size = int(value)
    except ValueError:
        size = 0
    if size < 14 or size % 14:
        raise argparse.ArgumentTypeError(f"resolutions must be positive multiples of the patch size 14, got {value}")
    return size


def parse_args(argv: list[str] | None = None, prog: str = "lookwhere-hf benchmark") -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="LookWhere vs full-resolution DINOv2-with-registers (ViT-B/14): latency, FLOPs, peak memory.",
    )
    add = parser.add_argument
    add("--quick", action="store_true", help="a subset: k_ratio 0.1, batch 1 (about 2 minutes on 2 cores)")
    add("--output", type=Path, default=None, help="markdown file whose '## Inference speed' section is (re)written")
    add("--plot", type=Path, default=None, help=f"PNG plot path (default: {DEFAULT_PLOT_NAME} next to --output)")
    add("--resolutions", type=_multiple_of_14, nargs="+", default=None, help="default 518 1036")
    add("--k-ratios", type=k_ratio_argument, nargs="+", default=None, help="default 0.05 0.1 0.25 (--quick: 0.1)")
    add("--batch-sizes", type=positive_int_argument, nargs="+", default=None, help="default 1 8 (--quick: 1)")
    add("--modes", nargs="+", choices=["cls", "dense"], default=["cls", "dense"])
    add("--threads", type=positive_int_argument, default=2, help="torch threads for both models (default 2)")
    add(
        "--omp-wait-policy",
        choices=["passive", "active", "default"],
        default="passive",
        help="OpenMP idle threads sleep (passive, default) or spin (active). Passive keeps a shared, oversubscribed "
        "CPU from stalling every parallel region; 'default' leaves the environment alone",
    )
    add(
        "--skip",
        type=_resolution_and_batch,
        nargs="+",
        default=[],
        metavar="RESxBATCH",
        help="(resolution, batch) pairs to leave out, e.g. 1036x8",
    )
    add("--no-memory", action="store_true", help="skip the peak-memory processes (latency and FLOPs only)")
    # Deployment rows (lookwhere_hf.deployment_benchmark): any of the three runs that benchmark instead of the grid.
    add("--compile", action="store_true", help="time torch.compile (inductor) of LookWhere and the full model")
    add("--onnx", action="store_true", help="time LookWhere exported to ONNX in an ONNX Runtime CPU session")
    add("--bf16", action="store_true", help="time bf16 autocast and report its effect on the selected patches")
    add(
        "--profile",
        action="store_true",
        help="profile LookWhere's forwards instead of timing them (torch.profiler: time per part, top operators; 518 "
        "px, batch 1, k_ratio 0.1 unless given; --max-repeats forwards each). Writes the '## Where the time goes (CPU, "
        "batch 1)' section with --output",
    )
    add(
        "--budget-latency",
        action="store_true",
        help="time budgeted classification (forced exit proportions) against fixed k at equal mean FLOPs and equal "
        "mean k (518 px, batch 16 unless given; --max-repeats rounds). Writes its section with --output",
    )
    add("--profile-threads", type=positive_int_argument, nargs="+", default=[1, 2], help="thread counts to profile")
    add(
        "--vs-official",
        type=Path,
        default=None,
        metavar="PATH",
        help="compare with the official LookWhere code in PATH (a checkout of github.com/antofuller/lookwhere: its "
        "modeling.py and utils.py; needs timm and einops) given the same weights, and the full model; batch 1 and "
        "k_ratio 0.1 unless given. Writes the '## Against the official code' section with --output",
    )
    add(
        "--packed",
        action="store_true",
        help="with --vs-official (or --compile / --onnx / --bf16): also time the models with their linear layers on "
        "oneDNN-packed weights (lookwhere_hf.pack_linear_weights), interleaved with the plain ones",
    )
    add("--target-seconds", type=float, default=None, help="timed seconds per measurement (adapts repeats)")
    add("--min-repeats", type=positive_int_argument, default=None)
    add("--max-repeats", type=positive_int_argument, default=None)
    add(
        "--long-forward-seconds",
        type=float,
        default=20.0,
        help="forwards longer than this count their first (warm-up) run as a sample",
    )
    args = parser.parse_args(argv)
    if args.packed and args.vs_official is None and not (args.compile or args.onnx or args.bf16):
        parser.error("--packed adds rows to --vs-official PATH or to --compile / --onnx / --bf16: pass one of them too")
    if args.compile or args.onnx or args.bf16:  # lookwhere_hf.deployment_benchmark: batch 1, one k_ratio
        if args.onnx and not all(importlib.util.find_spec(name) for name in ("onnx", "onnxscript", "onnxruntime")):
            parser.error("--onnx needs onnx, onnxscript and onnxruntime: pip install 'lookwhere_hf[export]'")
        deployment = dict(resolutions=[518], k_ratios=[0.1], target_seconds=6.0, min_repeats=3, max_repeats=10)
        for key, value in deployment.items():
            if getattr(args, key) is None:
                setattr(args, key, value)
    if args.budget_latency:
        defaults = dict(
            resolutions=[518], k_ratios=[0.1], batch_sizes=[16], target_seconds=0.0, min_repeats=1, max_repeats=3
        )
    elif args.profile:
        defaults = dict(
            resolutions=[518], k_ratios=[0.1], batch_sizes=[1], target_seconds=0.0, min_repeats=1, max_repeats=10
        )
    elif args.vs_official is not None:
        from .official_benchmark import check_official_checkout

        try:
            check_official_checkout(args.vs_official)
        except ValueError as err:
            parser.error(str(err))
        defaults = dict(
            resolutions=[518, 1036], k_ratios=[0.1], batch_sizes=[1], target_seconds=6.0, min_repeats=3, max_repeats=15
        )
    elif args.quick:
        defaults = dict(
            resolutions=[518, 1036], k_ratios=[0.1], batch_sizes=[1], target_seconds=4.0, min_repeats=3, max_repeats=10
        )
    else:
        defaults = dict(
            resolutions=[518, 1036],
            k_ratios=[0.05, 0.1, 0.25],
            batch_sizes=[1, 8],
            target_seconds=8.0,
            min_repeats=2,
            max_repeats=15,
        )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.min_repeats > args.max_repeats:
        parser.error(f"--min-repeats ({args.min_repeats}) must not exceed --max-repeats ({args.max_repeats})")
    if args.plot is not None and importlib.util.find_spec("matplotlib") is None:
        parser.error("--plot needs matplotlib: pip install matplotlib (or the package's [plots] extra)")
    if "cls" not in args.modes:
        args.modes = ["cls", *args.modes]  # the dense slowdown is measured against the CLS path
    return args


def main(argv: list[str] | None = None, prog: str = "lookwhere-hf benchmark") -> int:
    """Run the inference benchmark (see the module docstring); returns the exit status."""
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(raw, prog)
    policy = args.omp_wait_policy.upper()
    if args.omp_wait_policy != "default" and os.environ.get("OMP_WAIT_POLICY", "").upper() != policy:
        # OpenMP reads OMP_WAIT_POLICY when torch loads (already done here): measure in a fresh interpreter.
        env = {**os.environ, "OMP_WAIT_POLICY": policy, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
        return subprocess.call([sys.executable, "-m", "lookwhere_hf.benchmarking", *raw], env=env)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    command = " ".join([prog, *(shlex.quote(a) for a in raw)])
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_start = _load_average()
    t0 = time.time()
    print(
        f"Benchmarking LookWhere vs full-resolution DINOv2 ({'quick' if args.quick else 'full'} grid, {args.threads} "
        f"threads); load average {load_start}",
        file=sys.stderr,
    )
    if args.budget_latency:
        from .budget_benchmark import BUDGET_SECTION, render_budget_markdown, run_budget_latency

        rows = run_budget_latency(args)
        loads = (load_start, _load_average())
        section = render_budget_markdown(rows, machine_description(args.threads), command, started, loads)
        print(section)
        if args.output is not None:
            write_section(args.output, section, BUDGET_SECTION)
        return 0
    if args.profile or args.vs_official is not None:
        from . import official_benchmark as ob

        rows = ob.run_profile(args) if args.profile else ob.run_official_comparison(args)
        loads = (load_start, _load_average())
        render = ob.render_profile_markdown if args.profile else ob.render_official_markdown
        section = render(rows, machine_description(args.threads), command, started, loads)
        heading = ob.PROFILE_SECTION if args.profile else ob.OFFICIAL_SECTION
        print(section)
        if args.output is not None:
            write_section(args.output, section, heading)
            print(f"Wrote the '{heading[3:]}' section of {args.output}", file=sys.stderr)
        print(f"Done in {time.time() - t0:.0f} s.", file=sys.stderr)
        return 0
    if args.compile or args.onnx or args.bf16:
        from .deployment_benchmark import DEPLOYMENT_SECTION, render_deployment_markdown, run_deployment_benchmark

        rows = run_deployment_benchmark(args)
        loads = (load_start, _load_average())
        section = render_deployment_markdown(rows, machine_description(args.threads), command, started, loads)
        print(section)
        if args.output is not None:
            write_section(args.output, section, DEPLOYMENT_SECTION)
            print(f"Wrote the '{DEPLOYMENT_SECTION[3:]}' section of {args.output}", file=sys.stderr)
        print(f"Done in {time.time() - t0:.0f} s.", file=sys.stderr)
        return 0
    rows = run_benchmark(args)
    if args.output is not None:  # the raw numbers, for re-plotting or other tables
        args.output.parent.mkdir(parents=True, exist_ok=True)
        record = args.output.parent / "inference_speed.json"
        record.write_text(json.dumps({"command": command, "started": started, "rows": rows}, indent=1))
    plot_path = args.plot
    if plot_path is None and args.output is not None:
        if importlib.util.find_spec("matplotlib") is not None:
            plot_path = args.output.parent / DEFAULT_PLOT_NAME
        else:
            print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
    relative_plot = None
    if plot_path is not None:
        save_plot(rows, plot_path)
        relative_plot = os.path.relpath(plot_path, args.output.parent if args.output is not None else Path.cwd())
    loads = (load_start, _load_average())
    section = render_markdown(rows, machine_description(args.threads), command, started, loads, relative_plot)
    print(section)
    if args.output is not None:
        write_section(args.output, section)
        print(f"Wrote the '{SECTION[3:]}' section of {args.output}", file=sys.stderr)
    if plot_path is not None:
        print(f"Saved the plot to {plot_path}", file=sys.stderr)
    print(f"Done in {time.time() - t0:.0f} s.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
