#!/usr/bin/env python
"""Inference benchmark: LookWhere (this package) against a full-resolution DINOv2-with-registers.

Both models have the released ViT-B/14 size (LookWhere: selector depth 3 at 154 px + extractor depth 12; the
full model: transformers' `Dinov2WithRegistersModel`, depth 12, 4 registers) with random weights (the cost of a forward
does not depend on the values), SDPA attention, the same number of torch threads, float32 on CPU. The full model sees
every high-resolution patch; LookWhere's extractor sees `k = floor(k_ratio * patches)` of them.

For every (resolution, batch size, k_ratio) it measures:

- latency: median over repeated forwards after a warm-up forward (the number of repeats adapts to the forward's
  duration, within `--min-repeats` / `--max-repeats`). Both models run in one forked process per (resolution, batch),
  interleaved round by round (full model, then LookWhere's CLS path `model(x, k=k)` and dense path
  `model(x, k=k, output_dense_features=True)` for every k), so that changes of the machine's load hit all alike;
- peak memory: the increase of a process's peak resident set size (Linux `VmHWM`, reset through
  `/proc/self/clear_refs` right before the forward) over its resident size just before the first forward in a freshly
  forked process (one process per LookWhere k / mode; the full model's first forward in the latency process). It sees
  every allocation torch makes on the CPU (activations, attention, the dense grid), not the weights, which are already
  resident, nor kernel/thread-pool buffers (primed on a tiny input first);
- analytic FLOPs (`lookwhere_hf.flops`) of both.

Usage:

```bash
python benchmarks/bench_inference.py --output benchmarks/RESULTS.md            # full grid (~15-20 min on 2 cores)
python benchmarks/bench_inference.py --quick                                   # k = 10%, batch 1 (~2-3 min)
lookwhere-hf benchmark --quick                                                 # the same through the CLI
python benchmarks/bench_inference.py --skip 1036x8 --no-memory                 # leave out the slowest parts
```

OpenMP threads wait passively by default here (`--omp-wait-policy passive`, set before torch loads): on a CPU shared
with other processes, spin-waiting threads stall every parallel region until their partner thread is scheduled, which
slows LookWhere's many small matmuls far more than the full model's large ones (measured here: LookWhere 518 px
2.5 s with spinning vs 0.41 s passive under the same load). Pass `--omp-wait-policy default` to keep your setting.

The markdown table goes to stdout and, with `--output`, replaces the "## Inference speed" section of that file (other
sections are kept); the plot (speedup and FLOPs ratio vs k_ratio, peak memory) is saved next to it.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import shlex
import statistics
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

SECTION = "## Inference speed"
DEFAULT_PLOT_NAME = "inference_speed.png"


# ----------------------------------------------------------------------------------------------------- memory
def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
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
    import torch

    from lookwhere_hf import LookWhereConfig, LookWhereModel
    from lookwhere_hf.cli import _random_model, build_full_resolution_model

    config = LookWhereConfig()
    config._attn_implementation = "sdpa"
    if kind == "full":
        model = build_full_resolution_model(config, resolution, attn_implementation="sdpa")
        # Prime kernels and thread pools on a tiny input so that their one-time buffers are not counted as memory.
        with torch.inference_mode():
            model(pixel_values=torch.randn(1, 3, 56, 56))
        return model
    model = _random_model(LookWhereModel, config)
    with torch.inference_mode():
        model(torch.randn(1, 3, 56, 56), output_dense_features=True)
    return model


def _call(model, kind: str, pixel_values, k=None, mode="cls"):
    if kind == "full":
        return model(pixel_values=pixel_values)
    return model(pixel_values, k=k, output_dense_features=mode == "dense")


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
    import torch

    torch.set_num_threads(job["threads"])
    torch.manual_seed(0)
    pixel_values = torch.randn(job["batch_size"], 3, job["resolution"], job["resolution"])
    model = _build(job["model"], job["resolution"])
    with torch.inference_mode():
        peak, seconds, method = _first_forward_peak(model, job["model"], pixel_values, job.get("k"), job.get("mode", "cls"))
    return {"peak_mb": peak, "first_s": seconds, "memory_method": method}


def _measure_latency(job: dict) -> dict:
    """Forked child: both models at one (resolution, batch); the full model's first forward gives its peak memory.

    Forwards are interleaved round by round (full model, then LookWhere CLS and dense for every k), so that changes
    of the machine's load hit all of them alike; the number of rounds adapts to their durations.
    """
    import torch

    torch.set_num_threads(job["threads"])
    torch.manual_seed(0)
    pixel_values = torch.randn(job["batch_size"], 3, job["resolution"], job["resolution"])
    full = _build("full", job["resolution"])
    result = {}
    with torch.inference_mode():
        peak, first_full, method = _first_forward_peak(full, "full", pixel_values)
    result["full"] = {"peak_mb": peak, "memory_method": method}
    lookwhere = _build("lookwhere", job["resolution"])
    with torch.inference_mode():
        variants = [(k, mode) for k in job["ks"] for mode in job["modes"]]
        first = {}
        for k, mode in variants:  # warm-up
            start = time.perf_counter()
            _call(lookwhere, "lookwhere", pixel_values, k, mode)
            first[(k, mode)] = time.perf_counter() - start

        def repeats(seconds: float) -> int:
            wanted = math.ceil(job["target_seconds"] / max(seconds, 1e-6))
            return max(job["min_repeats"], min(job["max_repeats"], wanted))

        samples = {"full": [], **{v: [] for v in variants}}
        cpu = {"full": [], **{v: [] for v in variants}}

        def timed(key, fn):
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            samples[key].append(time.perf_counter() - start)
            cpu[key].append(time.process_time() - start_cpu)

        full_repeats = repeats(first_full)
        if first_full > job["long_forward_seconds"]:  # a very long forward counts its first run as a sample
            samples["full"].append(first_full)
            cpu["full"].append(float("nan"))
        else:
            _call(full, "full", pixel_values)  # the first forward above was cold; warm up once more
        lw_repeats = repeats(max(first.values()))
        for round_ in range(max(full_repeats, lw_repeats)):
            if len(samples["full"]) < full_repeats:
                timed("full", lambda: _call(full, "full", pixel_values))
            if round_ < lw_repeats:
                for k, mode in variants:
                    timed((k, mode), lambda: _call(lookwhere, "lookwhere", pixel_values, k, mode))
    for key, values in samples.items():
        cpu_values = [c for c in cpu[key] if c == c]
        result[key] = {
            **result.get(key, {}),
            "median_s": statistics.median(values), "min_s": min(values), "max_s": max(values), "n": len(values),
            "cpu_s": statistics.median(cpu_values) if cpu_values else float("nan"),
        }
    return result


def _measure(job: dict) -> dict:
    return _measure_memory(job) if job["task"] == "memory" else _measure_latency(job)


def _child(job: dict, queue) -> None:
    try:
        queue.put(("ok", _measure(job)))
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
    import torch
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
        f"{cpu}; {platform.system()} {platform.release()}; Python {platform.python_version()}; torch {torch.__version__}; "
        f"transformers {transformers.__version__}; torch threads {threads}; "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}; float32, SDPA attention"
    )


def _load() -> str:
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def run_benchmark(args) -> list[dict]:
    from tqdm.auto import tqdm

    from lookwhere_hf import LookWhereConfig
    from lookwhere_hf.flops import full_resolution_flops, lookwhere_flops

    config = LookWhereConfig()
    common = dict(
        threads=args.threads,
        target_seconds=args.target_seconds,
        min_repeats=args.min_repeats,
        max_repeats=args.max_repeats,
        long_forward_seconds=args.long_forward_seconds,
    )

    def k_of(res, k_ratio):  # as LookWhereConfig.num_selected: floor(k_ratio * patches), at least 1
        return max(1, int(k_ratio * (res // config.patch_size) ** 2))

    pairs = [(res, batch) for res in args.resolutions for batch in args.batch_sizes if (res, batch) not in args.skip]
    jobs = []
    for res, batch in pairs:
        ks = [k_of(res, r) for r in args.k_ratios]
        jobs.append(dict(common, task="latency", resolution=res, batch_size=batch, ks=ks, modes=args.modes))
        if not args.no_memory:
            for k in ks:
                for mode in args.modes:
                    jobs.append(dict(common, task="memory", model="lookwhere", resolution=res, batch_size=batch, k=k, mode=mode))
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
                flops = lookwhere_flops(config, res, k=k, mode=mode, batch_size=batch)
                grid_mb = batch * flops.grid[0] * flops.grid[1] * config.hidden_size * 4 / 2**20
                rows.append(
                    dict(
                        resolution=res, batch_size=batch, k_ratio=k_ratio, k=k, mode=mode,
                        lw_s=lw["median_s"], lw_min_s=lw["min_s"], lw_max_s=lw["max_s"], lw_n=lw["n"],
                        lw_cls_s=cls["median_s"], lw_cpu_s=lw["cpu_s"], full_cpu_s=full["cpu_s"],
                        lw_cls_cpu_s=cls["cpu_s"],
                        full_s=full["median_s"], full_min_s=full["min_s"], full_max_s=full["max_s"], full_n=full["n"],
                        lw_flops=flops.total, full_flops=full_flops,
                        lw_peak_mb=memory.get((res, batch, k, mode), {}).get("peak_mb"),
                        lw_cls_peak_mb=memory.get((res, batch, k, "cls"), {}).get("peak_mb"),
                        full_peak_mb=full.get("peak_mb"), grid_mb=grid_mb,
                        memory_method=full.get("memory_method"),
                    )
                )
    return rows


def _spread(median, low, high) -> str:
    return f"{100 * (high - low) / median:.0f}%" if median else "-"


def render_markdown(rows: list[dict], args, machine: str, command: str, started: str, loads: tuple, plot_path) -> str:
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
        '- Latency: median over the repeats (n) after a warm-up forward; spread = (max - min) / median of the samples. Both',
        '  models run in one process per (resolution, batch), interleaved round by round (full, then LookWhere CLS and dense',
        '  for each k). CLS = `model(x, k=k)`; dense = `model(x, k=k, output_dense_features=True)` (features on the full',
        "  patch grid). The full model's row is the same forward for both modes (it computes every patch anyway).",
        "- Peak memory: increase of the process's peak RSS (Linux VmHWM, reset via /proc/self/clear_refs) during the first",
        '  forward in a freshly forked process, over the RSS just before it (weights and kernel/thread-pool buffers, primed on',
        '  a tiny input, excluded). `grid` = size of the dense feature map itself (batch x patches x 768 x 4 bytes).',
        '- CPU-time speedup: the same ratio with the median process CPU time (all threads) of each forward instead of',
        '  wall time; less sensitive to other processes taking the cores, but it counts OpenMP spin-waiting.',
        '- FLOPs: analytic (`lookwhere_hf.flops`, multiply-add = 2 FLOPs, attention matmuls included).',
        "",
        "| px | batch | k_ratio | k | mode | LookWhere ms (n, spread) | full ms (n, spread) | speedup | CPU-time speedup | GFLOPs LW / full | FLOPs ratio | peak MB LW / full | grid MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['resolution']} | {r['batch_size']} | {r['k_ratio']:.2f} | {r['k']} | {r['mode']} "
            f"| {r['lw_s'] * 1e3:.0f} ({r['lw_n']}, {_spread(r['lw_s'], r['lw_min_s'], r['lw_max_s'])}) "
            f"| {r['full_s'] * 1e3:.0f} ({r['full_n']}, {_spread(r['full_s'], r['full_min_s'], r['full_max_s'])}) "
            f"| **{r['full_s'] / r['lw_s']:.1f}x** | {r['full_cpu_s'] / r['lw_cpu_s']:.1f}x "
            f"| {r['lw_flops'] / 1e9:.1f} / {r['full_flops'] / 1e9:.0f} "
            f"| {r['full_flops'] / r['lw_flops']:.1f}x "
            f"| {_mb(r['lw_peak_mb'])} / {_mb(r['full_peak_mb'])} | {r['grid_mb']:.0f} |"
        )
    lines += ["", *summary_lines(rows)]
    if plot_path:
        lines += ["", f"![LookWhere speedup and FLOPs ratio vs k_ratio]({plot_path})"]
    return "\n".join(lines) + "\n"


def _mb(value) -> str:
    return "-" if value is None else f"{value:.0f}"


def _find(rows, **match):
    return [r for r in rows if all(r[k] == v for k, v in match.items())]


def summary_lines(rows: list[dict]) -> list[str]:
    """The issue's targets, checked on this run's numbers."""
    out = ["Targets (ratios from this run):", ""]
    for res, target in ((518, 9.0), (1036, 18.0)):
        for r in _find(rows, resolution=res, k_ratio=0.1, mode="cls"):
            speedup = r["full_s"] / r["lw_s"]
            verdict = "met" if speedup >= target else f"missed by {100 * (1 - speedup / target):.0f}%"
            out.append(
                f"- {res} px, k = 10%, batch {r['batch_size']}: {speedup:.1f}x faster (target >= {target:.0f}x: {verdict}; "
                f"CPU-time ratio {r['full_cpu_s'] / r['lw_cpu_s']:.1f}x; FLOPs ratio {r['full_flops'] / r['lw_flops']:.1f}x)"
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
        speed_ax.plot(ks, [r["full_s"] / r["lw_s"] for r in cls], "o-", color=color, label=f"{res} px, batch {batch}: measured")
        dense = sorted(_find(rows, resolution=res, batch_size=batch, mode="dense"), key=lambda r: r["k_ratio"])
        if dense:
            speed_ax.plot(ks, [r["full_s"] / r["lw_s"] for r in dense], "x:", color=color, label=f"{res} px, batch {batch}: measured, dense")
        if batch == min(b for (rr, b) in colors if rr == res):
            speed_ax.plot(ks, [r["full_flops"] / r["lw_flops"] for r in cls], "s--", color="gray" if res == 518 else "black",
                          alpha=0.6, label=f"{res} px: FLOPs ratio")
        for mode, marker in (("cls", "o-"), ("dense", "x:")):
            rs = sorted(_find(rows, resolution=res, batch_size=batch, mode=mode), key=lambda r: r["k_ratio"])
            if rs and rs[0]["lw_peak_mb"] is not None:
                mem_ax.plot(ks, [r["lw_peak_mb"] for r in rs], marker, color=color, label=f"LookWhere {mode}, {res} px b{batch}")
        if cls[0]["full_peak_mb"] is not None:
            mem_ax.axhline(cls[0]["full_peak_mb"], color=color, linestyle="--", alpha=0.5, label=f"full DINOv2, {res} px b{batch}")
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


def write_section(path: Path, section: str) -> None:
    """Replace the `## Inference speed` section of `path` (up to the next `## ` heading) or append it."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    start = text.find(SECTION + "\n")
    if start == -1:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(SECTION))
        text = text[:start] + section + ("\n" + text[end + 1 :] if end != -1 else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _k_ratio(value: str) -> float:
    ratio = float(value)
    if not 0.0 < ratio <= 1.0:
        raise argparse.ArgumentTypeError(f"k_ratio must be in (0, 1], got {value}")
    return ratio


def _pair(value: str) -> tuple[int, int]:
    try:
        res, batch = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected RESOLUTIONxBATCH such as 1036x8, got {value!r}") from None
    return res, batch


def _multiple_of_14(value: str) -> int:
    size = int(value)
    if size < 14 or size % 14:
        raise argparse.ArgumentTypeError(f"resolutions must be positive multiples of the patch size 14, got {value}")
    return size


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="bench_inference.py",
        description="LookWhere vs full-resolution DINOv2-with-registers (ViT-B/14): latency, FLOPs, peak memory.",
    )
    parser.add_argument("--quick", action="store_true", help="a subset: k_ratio 0.1, batch 1 (about 2 minutes on 2 cores)")
    parser.add_argument("--output", type=Path, default=None, help="markdown file whose '## Inference speed' section is (re)written")
    parser.add_argument("--plot", type=Path, default=None, help=f"PNG plot path (default: {DEFAULT_PLOT_NAME} next to --output)")
    parser.add_argument("--resolutions", type=_multiple_of_14, nargs="+", default=None, help="default 518 1036")
    parser.add_argument("--k-ratios", type=_k_ratio, nargs="+", default=None, help="default 0.05 0.1 0.25")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default 1 8")
    parser.add_argument("--modes", nargs="+", choices=["cls", "dense"], default=["cls", "dense"])
    parser.add_argument("--threads", type=int, default=2, help="torch threads for both models (default 2)")
    parser.add_argument("--omp-wait-policy", choices=["passive", "active", "default"], default="passive",
                        help="OpenMP idle threads sleep (passive, default) or spin (active). Passive keeps a shared, "
                        "oversubscribed CPU from stalling every parallel region; 'default' leaves the environment alone")
    parser.add_argument("--skip", type=_pair, nargs="+", default=[], metavar="RESxBATCH",
                        help="(resolution, batch) pairs to leave out, e.g. 1036x8")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes (latency and FLOPs only)")
    parser.add_argument("--target-seconds", type=float, default=None, help="timed seconds per measurement (adapts repeats)")
    parser.add_argument("--min-repeats", type=int, default=None)
    parser.add_argument("--max-repeats", type=int, default=None)
    parser.add_argument("--long-forward-seconds", type=float, default=20.0,
                        help="forwards longer than this count their first (warm-up) run as a sample")
    args = parser.parse_args(argv)
    if args.quick:
        defaults = dict(resolutions=[518, 1036], k_ratios=[0.1], batch_sizes=[1], target_seconds=4.0, min_repeats=3, max_repeats=10)
    else:
        defaults = dict(resolutions=[518, 1036], k_ratios=[0.05, 0.1, 0.25], batch_sizes=[1, 8], target_seconds=8.0,
                        min_repeats=2, max_repeats=15)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if any(b < 1 for b in args.batch_sizes) or args.threads < 1:
        parser.error("batch sizes and --threads must be positive")
    if "cls" not in args.modes:
        args.modes = ["cls", *args.modes]  # the dense slowdown is measured against the CLS path
    return args


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(raw)
    if args.omp_wait_policy != "default":
        if "torch" in sys.modules and os.environ.get("OMP_WAIT_POLICY", "").lower() != args.omp_wait_policy:
            print("warning: torch is already imported, so --omp-wait-policy has no effect; run the script directly",
                  file=sys.stderr)
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()
    command = "python benchmarks/bench_inference.py " + " ".join(shlex.quote(a) for a in raw)
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_start = _load()
    t0 = time.time()
    print(f"Benchmarking LookWhere vs full-resolution DINOv2 ({'quick' if args.quick else 'full'} grid, "
          f"{args.threads} threads); load average {load_start}", file=sys.stderr)
    rows = run_benchmark(args)
    if args.output is not None:  # the raw numbers, for re-plotting or other tables
        args.output.parent.mkdir(parents=True, exist_ok=True)
        raw = args.output.parent / "inference_speed.json"
        raw.write_text(json.dumps({"command": command, "started": started, "rows": rows}, indent=1))
    loads = (load_start, _load())
    plot_path = args.plot
    if plot_path is None and args.output is not None:
        plot_path = args.output.parent / DEFAULT_PLOT_NAME
    if plot_path is not None:
        save_plot(rows, plot_path)
    relative_plot = None
    if plot_path is not None:
        base = args.output.parent if args.output is not None else Path.cwd()
        relative_plot = os.path.relpath(plot_path, base)
    section = render_markdown(rows, args, machine_description(args.threads), command, started, loads, relative_plot)
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
