"""`lookwhere-hf benchmark` (also `python benchmarks/bench_inference.py` and `python -m lookwhere_hf.benchmarking`):
the arguments of every benchmark of [`lookwhere_hf.benchmarking`] and the driver that runs the one they ask for (the
inference grid by default; `--compile` / `--onnx` / `--bf16`, `--profile`, `--vs-official PATH`, `--budget-latency`)
and writes its markdown section.

OpenMP threads wait passively by default here (`--omp-wait-policy passive`; the benchmark re-runs itself in a fresh
interpreter with `OMP_WAIT_POLICY` set, since OpenMP reads it when torch loads): on a CPU shared with other processes,
spin-waiting threads stall every parallel region until their partner thread is scheduled, which slows LookWhere's many
small matmuls far more than the full model's large ones (measured: LookWhere 518 px 2.5 s with spinning vs 0.41 s
passive under the same load). Pass `--omp-wait-policy default` to keep your setting.

"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from ..utils import k_ratio_argument, positive_int_argument
from .budget_latency import BUDGET_SECTION, render_budget_markdown, run_budget_latency
from .deployment import DEPLOYMENT_SECTION, render_deployment_markdown, run_deployment_benchmark
from .inference import DEFAULT_PLOT_NAME, INFERENCE_SECTION, render_markdown, run_benchmark, save_plot
from .official import (
    OFFICIAL_SECTION,
    PROFILE_SECTION,
    check_official_checkout,
    render_official_markdown,
    render_profile_markdown,
    run_official_comparison,
    run_profile,
)
from .timing import load_average, machine_description, write_section

__all__ = ["main", "parse_args"]


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
    # Deployment rows (lookwhere_hf.benchmarking.deployment): any of the three runs that benchmark instead of the grid.
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
    if args.compile or args.onnx or args.bf16:  # lookwhere_hf.benchmarking.deployment: batch 1, one k_ratio
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
    """Run the benchmark `argv` asks for (see [`parse_args`]); returns the exit status."""
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
    load_start = load_average()
    t0 = time.time()
    print(
        f"Benchmarking LookWhere vs full-resolution DINOv2 ({'quick' if args.quick else 'full'} grid, {args.threads} "
        f"threads); load average {load_start}",
        file=sys.stderr,
    )
    # The other benchmarks, each asked for by its flags: (run, render, section heading).
    if args.budget_latency:
        other = (run_budget_latency, render_budget_markdown, BUDGET_SECTION)
    elif args.profile:
        other = (run_profile, render_profile_markdown, PROFILE_SECTION)
    elif args.vs_official is not None:
        other = (run_official_comparison, render_official_markdown, OFFICIAL_SECTION)
    elif args.compile or args.onnx or args.bf16:
        other = (run_deployment_benchmark, render_deployment_markdown, DEPLOYMENT_SECTION)
    else:
        other = None
    if other is not None:
        run, render, heading = other
        rows = run(args)
        section = render(rows, machine_description(args.threads), command, started, (load_start, load_average()))
        print(section)
        if args.output is not None:
            write_section(args.output, section, heading)
            print(f"Wrote the '{heading[3:]}' section of {args.output}", file=sys.stderr)
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
    loads = (load_start, load_average())
    section = render_markdown(rows, machine_description(args.threads), command, started, loads, relative_plot)
    print(section)
    if args.output is not None:
        write_section(args.output, section, INFERENCE_SECTION)
        print(f"Wrote the '{INFERENCE_SECTION[3:]}' section of {args.output}", file=sys.stderr)
    if plot_path is not None:
        print(f"Saved the plot to {plot_path}", file=sys.stderr)
    print(f"Done in {time.time() - t0:.0f} s.", file=sys.stderr)
    return 0
