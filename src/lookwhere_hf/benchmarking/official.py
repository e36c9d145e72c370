"""Where LookWhere's CPU time goes, and how it compares with the official LookWhere code.

Two measurements of `lookwhere-hf benchmark` / `benchmarks/bench_inference.py` (each in forked processes, like the
rest of [`lookwhere_hf.benchmarking`]):

- `--vs-official PATH`: this package against the official inference code (`modeling.py` / `utils.py` of
  https://github.com/antofuller/lookwhere, which a user checks out themselves; it needs timm and einops) given the same
  weights, and against the full-resolution model: random ViT-B/14 weights are written in the official checkpoint
  format ([`write_official_checkpoint`]), converted with `convert_lookwhere_original_to_hf` for this package and read
  by the official code from the same file. All five forwards (full; ours and theirs, CLS and dense) are timed in
  interleaved rounds in one process. With `--packed`, the same five again with every model's plain `nn.Linear` layers
  on oneDNN-packed weights ([`lookwhere_hf.packed_linear`]) join the rounds: the kernel's gain shows on all three
  models alike, apart from what the method itself saves.
- `--profile`: torch.profiler over LookWhere's CLS and dense forwards, with the time of each part (selector,
  selection, patch embedding, extractor, dense spreading, the rest) and the heaviest operators.

```bash
python benchmarks/bench_inference.py --vs-official ~/lookwhere --output benchmarks/RESULTS.md
python benchmarks/bench_inference.py --profile --output benchmarks/RESULTS.md
```
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import importlib.util
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..flops import full_resolution_flops, lookwhere_flops
from ..models.lookwhere.configuration_lookwhere import LookWhereConfig
from ..models.lookwhere.modeling_lookwhere import LookWhereModel
from ..packed_linear import pack_linear_weights
from .inference import build_benchmark_model, call_benchmark_model
from .timing import (
    build_full_resolution_model,
    format_spread,
    measurement,
    random_weight_model,
    run_in_fresh_process,
    time_interleaved,
)

__all__ = [
    "OFFICIAL_SECTION",
    "PROFILE_SECTION",
    "check_official_checkout",
    "render_official_markdown",
    "render_profile_markdown",
    "run_official_comparison",
    "run_profile",
    "write_official_checkpoint",
]

OFFICIAL_FILES = ("modeling.py", "utils.py")
OFFICIAL_SECTION = "## Against the official code"


def check_official_checkout(path: str | os.PathLike) -> Path:
    """The folder of a checkout of the official LookWhere inference code (its `modeling.py` and `utils.py`).

    Raises `ValueError` if a file is missing or the official code's dependencies (timm, einops) are not installed.
    """
    from ..model_cards import ORIGINAL_REPO

    folder = Path(path).expanduser().resolve()
    missing = [name for name in OFFICIAL_FILES if not (folder / name).is_file()]
    if missing:
        raise ValueError(
            "--vs-official expects a folder holding the official LookWhere inference code "
            f"({', '.join(OFFICIAL_FILES)} of {ORIGINAL_REPO}); {str(folder)!r} lacks {missing}. Clone the repository "
            f"(`git clone {ORIGINAL_REPO}`) and pass its folder."
        )
    absent = [module for module in ("timm", "einops") if importlib.util.find_spec(module) is None]
    if absent:
        raise ValueError(f"The official LookWhere code imports {absent}; install them: pip install {' '.join(absent)}")
    return folder


def write_official_checkpoint(model: LookWhereModel, path: str | os.PathLike) -> Path:
    """Save `model`'s weights in the official checkpoint layout (the inverse of the converter's rename table), so that
    the official code and this package can be given the same weights. The official loader wants the file to be named
    `lookwhere_dinov2.pt` (or `lookwhere_franca.pt`)."""
    from ..models.lookwhere.convert_lookwhere_original_to_hf import HEAD_KEYS, rename_table

    state, config = model.state_dict(), model.config

    def backbone(prefix: str, sub_config) -> dict:
        return {
            src: torch.cat([state[prefix + dst] for dst in dsts], dim=0).contiguous()
            for src, dsts in rename_table(sub_config)
        }

    head = {key: state["selector.head." + key.replace("w1", "fc1").replace("w2", "fc2")] for key in HEAD_KEYS}
    checkpoint = {
        "selector": {"backbone": backbone("selector.", config.selector_config), "head": head},
        "extractor": backbone("extractor.", config.extractor_config),
    }
    path = Path(path)
    torch.save(checkpoint, path)
    return path


def _import_official(folder: str):
    """The official `modeling` module from `folder` (imported in a benchmark child process only)."""
    sys.path.insert(0, folder)
    module = importlib.import_module("modeling")
    if Path(module.__file__).resolve().parent != Path(folder).resolve():
        raise ValueError(f"Imported `modeling` from {module.__file__}, not from {folder}: rename the other module.")
    return module, contextlib.redirect_stdout


@measurement("official")
def _measure_official(job: dict) -> dict:
    """Forked child: this package, the official code (same weights) and the full model at one (resolution, batch, k),
    CLS and dense paths, timed with [`time_interleaved`]; also the largest differences between the two codes'
    outputs."""
    torch.set_num_threads(job["threads"])
    official, quiet = _import_official(job["official_path"])
    with open(os.devnull, "w") as devnull, quiet(devnull):  # the official constructor prints its variant
        theirs = official.LookWhereDownstream(
            job["checkpoint"], high_res_size=job["resolution"], num_classes=0, k=job["k"], is_cls=True, device="cpu"
        ).eval()
    ours = LookWhereModel.from_pretrained(job["model_dir"], attn_implementation="sdpa").eval()
    full = build_full_resolution_model(ours.config, job["resolution"], attn_implementation="sdpa")
    torch.manual_seed(0)
    pixel_values = torch.randn(job["batch_size"], 3, job["resolution"], job["resolution"])
    k = job["k"]

    def official_call(is_cls: bool, model=theirs):
        model.is_cls = is_cls
        return model(pixel_values, k=k)

    def calls_for(ours, official, full, suffix=""):
        return {
            f"full{suffix}": lambda: full(pixel_values=pixel_values),
            f"ours_cls{suffix}": lambda: ours(pixel_values, k=k, cls_only=True),
            f"official_cls{suffix}": lambda: official_call(True, official),
            f"ours_dense{suffix}": lambda: ours(pixel_values, k=k, output_dense_features=True),
            f"official_dense{suffix}": lambda: official_call(False, official),
        }

    calls = calls_for(ours, theirs, full)
    packed = {}
    if job.get("packed"):  # copies of the three models on oneDNN-packed linear weights
        packed = {name: copy.deepcopy(model) for name, model in (("ours", ours), ("official", theirs), ("full", full))}
        packed_layers = {name: pack_linear_weights(model) for name, model in packed.items()}
        if not all(packed_layers.values()):
            raise RuntimeError(f"--packed: no linear layer was packed ({packed_layers}); this torch has no oneDNN.")
        calls.update(calls_for(packed["ours"], packed["official"], packed["full"], suffix="_packed"))
    with torch.inference_mode():
        mine = ours(pixel_values, k=k, output_dense_features=True)
        cls_diff = float((mine.pooler_output - official_call(True)).abs().max())
        dense_diff = (mine.dense_features - official_call(False)).abs()
        if packed:
            packed_cls = packed["ours"](pixel_values, k=k, cls_only=True).pooler_output
            packed_diff = float((packed_cls - mine.pooler_output).abs().max())
        first = {}
        for name, fn in calls.items():  # warm-up, and the duration that sets the number of repeats
            start = time.perf_counter()
            fn()
            first[name] = time.perf_counter() - start

        def repeats(seconds: float) -> int:
            wanted = math.ceil(job["target_seconds"] / max(seconds, 1e-6))
            return max(job["min_repeats"], min(job["max_repeats"], wanted))

        longest_sparse = max(seconds for name, seconds in first.items() if not name.startswith("full"))
        counts = {name: repeats(first[name] if name.startswith("full") else longest_sparse) for name in calls}
        timings = time_interleaved(calls, counts)
    result = {
        name: {
            "median_s": t.median,
            "min_s": min(t.wall),
            "max_s": max(t.wall),
            "n": len(t.wall),
            "cpu_s": t.cpu_median,
        }
        for name, t in timings.items()
    }
    # Selected positions agree; dense values can differ where the official unstable argsort breaks a distance tie
    # at the K-th neighbour another way (see dense_spreading.py), so the typical difference is reported too.
    result["max_abs_diff_cls"] = cls_diff
    result["max_abs_diff_dense"] = float(dense_diff.max())
    result["median_abs_diff_dense"] = float(dense_diff.median())
    if packed:
        result["max_abs_diff_cls_packed"] = packed_diff
    return result


@measurement("official_weights")
def _prepare_official_weights(job: dict) -> dict:
    """Forked child: random ViT-B/14 weights in the official format, and their conversion to a model folder."""
    from ..models.lookwhere.convert_lookwhere_original_to_hf import convert_checkpoint

    write_official_checkpoint(random_weight_model(LookWhereModel, LookWhereConfig()), job["checkpoint"])
    convert_checkpoint(job["checkpoint"], job["model_dir"], run_self_check=False, log=lambda *_: None)
    return {}


def run_official_comparison(args: argparse.Namespace) -> list[dict]:
    """This package vs the official code (`args.vs_official`) vs the full model, for every (resolution, batch size,
    k_ratio) of `args`. Random ViT-B/14 weights are written in the official checkpoint format, converted with
    `convert_lookwhere_original_to_hf` (this package's model is loaded from the converted folder) and read by the
    official code from the same file."""
    folder = check_official_checkout(args.vs_official)
    config = LookWhereConfig()
    rows = []
    with tempfile.TemporaryDirectory(prefix="lookwhere_vs_official_") as tmp:
        checkpoint, model_dir = Path(tmp) / "lookwhere_dinov2.pt", Path(tmp) / "converted"
        # In a child too: the parent runs no torch computation, so its thread pools are not forked half-used.
        run_in_fresh_process(dict(task="official_weights", checkpoint=str(checkpoint), model_dir=str(model_dir)))
        jobs = [
            dict(
                task="official",
                official_path=str(folder),
                checkpoint=str(checkpoint),
                model_dir=str(model_dir),
                threads=args.threads,
                target_seconds=args.target_seconds,
                min_repeats=args.min_repeats,
                max_repeats=args.max_repeats,
                resolution=res,
                batch_size=batch,
                k_ratio=k_ratio,
                k=lookwhere_flops(config, res, k_ratio=k_ratio).k,
                packed=getattr(args, "packed", False),
            )
            for res in args.resolutions
            for batch in args.batch_sizes
            if (res, batch) not in args.skip
            for k_ratio in args.k_ratios
        ]
        for job in tqdm(jobs, desc="vs official", file=sys.stderr):
            measured = run_in_fresh_process(job)
            full_flops = full_resolution_flops(config, job["resolution"], job["batch_size"])
            ours_flops = {
                mode: lookwhere_flops(
                    config, job["resolution"], k=job["k"], batch_size=job["batch_size"], cls_only=mode == "cls"
                ).total
                for mode in ("cls", "dense")
            }
            rows.append(
                {
                    **{key: job[key] for key in ("resolution", "batch_size", "k_ratio", "k")},
                    # the CLS path runs the CLS-only last extractor layer (`cls_only=True`), the dense path the full one
                    "flops_limit": {mode: full_flops / flops for mode, flops in ours_flops.items()},
                    **measured,
                }
            )
    return rows


def render_official_markdown(rows: list[dict], machine: str, command: str, started: str, loads: tuple) -> str:
    """The "## Against the official code" section: one table per (resolution, batch, k_ratio) and the goals check."""

    def seconds(entry: dict) -> str:
        spread = format_spread(entry["median_s"], entry["min_s"], entry["max_s"])
        return f"{entry['median_s']:.3f} s ({entry['n']}, {spread})"

    lines = [
        OFFICIAL_SECTION,
        "",
        "This package against the official LookWhere inference code (`modeling.py` / `utils.py` of",
        "https://github.com/antofuller/lookwhere) given the same random ViT-B/14 weights (written in the official",
        "checkpoint format, converted with `convert_lookwhere_original_to_hf`), and against transformers'",
        "`Dinov2WithRegistersModel` (SDPA) on the full high-resolution input. One process per row block, all five",
        "forwards interleaved round by round; float32.",
        "",
        f"- Command: `{command}`",
        f"- Machine: {machine}",
        f"- Run: {started}; load average (1/5/15 min) at start {loads[0]}, at end {loads[1]}",
        "- Cells: median wall time (repeats, spread = (max - min) / median). CPU-time ratios use the median process",
        "  CPU time of each forward (all threads), which other processes on a shared CPU disturb less.",
        "- FLOPs limit: full-model FLOPs / LookWhere FLOPs (`lookwhere_hf.flops`), the speedup if both ran at the same",
        "  FLOP rate.",
        "",
    ]
    goals = []
    for r in rows:
        full = r["full"]
        lines += [
            f"**{r['resolution']} px, batch {r['batch_size']}, k = {r['k_ratio']:.0%} ({r['k']} patches)**",
            "",
            "| | this package | official code | full DINOv2-reg (transformers, SDPA) | FLOPs limit |",
            "|---|---|---|---|---|",
        ]
        for mode in ("cls", "dense"):
            ours, theirs = r[f"ours_{mode}"], r[f"official_{mode}"]
            lines += [
                f"| {mode} | {seconds(ours)} | {seconds(theirs)} | {seconds(full)} | |",
                f"| {mode}: speedup vs full | **{full['median_s'] / ours['median_s']:.1f}x** "
                f"| {full['median_s'] / theirs['median_s']:.1f}x | 1 | {r['flops_limit'][mode]:.1f}x |",
                f"| {mode}: speedup vs full, CPU time | {full['cpu_s'] / ours['cpu_s']:.1f}x "
                f"| {full['cpu_s'] / theirs['cpu_s']:.1f}x | 1 | |",
                f"| {mode}: ours / official (wall; CPU time) | **{ours['median_s'] / theirs['median_s']:.2f}**; "
                f"{ours['cpu_s'] / theirs['cpu_s']:.2f} | 1 | | |",
            ]
        lines += [
            "",
            f"Same weights, same input: max abs difference of the CLS outputs {r['max_abs_diff_cls']:.1e}; dense "
            f"features max {r['max_abs_diff_dense']:.1e}, median {r['median_abs_diff_dense']:.1e} (distance ties at "
            "the 5th neighbour, broken by the official unstable argsort).",
            "",
        ]
        if "full_packed" in r:
            lines += _packed_table(r)
        target = 9.0 if r["resolution"] <= 518 else 19.0
        for mode in ("cls", "dense"):
            for suffix, label in (("", ""), ("_packed", ", packed weights")):
                if f"ours_{mode}{suffix}" not in r:
                    continue
                speedup = full["median_s"] / r[f"ours_{mode}{suffix}"]["median_s"]
                versus = r[f"ours_{mode}{suffix}"]["median_s"] / r[f"official_{mode}"]["median_s"]
                goals.append(
                    f"- {r['resolution']} px b{r['batch_size']} k={r['k_ratio']:.0%} {mode}{label}: {speedup:.1f}x "
                    f"vs full (goal >= {target:.0f}x: {'met' if speedup >= target else 'missed'}), {versus:.2f}x the "
                    f"official code's latency (goal <= 0.85: {'met' if versus <= 0.85 else 'missed'})"
                )
                if suffix:
                    same_speedup = r[f"full{suffix}"]["median_s"] / r[f"ours_{mode}{suffix}"]["median_s"]
                    same_versus = r[f"ours_{mode}{suffix}"]["median_s"] / r[f"official_{mode}{suffix}"]["median_s"]
                    goals[-1] += (
                        f"; against the full model and the official code on the same packed weights: "
                        f"{same_speedup:.1f}x and {same_versus:.2f}x"
                    )
    lines += ["Goals of issue 14 (ratios from this run):", "", *goals]
    return "\n".join(lines) + "\n"


def _packed_table(r: dict) -> list[str]:
    """The `--packed` rows of one (resolution, batch, k) block: the three models on oneDNN-packed linear weights,
    timed in the same rounds as the plain ones, against the plain (as shipped / released) and the packed versions."""

    def cell(a: dict, b: dict) -> str:  # a / b, wall; CPU time
        return f"{a['median_s'] / b['median_s']:.2f}; {a['cpu_s'] / b['cpu_s']:.2f}"

    def speedup(a: dict, b: dict) -> str:
        return f"{b['median_s'] / a['median_s']:.1f}x; {b['cpu_s'] / a['cpu_s']:.1f}x"

    full, full_packed = r["full"], r["full_packed"]
    lines = [
        f"With every model's linear layers on oneDNN-packed weights (`--packed`, `lookwhere_hf.pack_linear_weights`; "
        f"in the same rounds; CLS of ours packed vs plain: max abs difference {r['max_abs_diff_cls_packed']:.1e}):",
        "",
        "| packed weights | this package | official code | full DINOv2-reg |",
        "|---|---|---|---|",
    ]
    for mode in ("cls", "dense"):
        ours, theirs = r[f"ours_{mode}_packed"], r[f"official_{mode}_packed"]
        lines += [
            f"| {mode} | {ours['median_s']:.3f} s | {theirs['median_s']:.3f} s | {full_packed['median_s']:.3f} s |",
            f"| {mode}: packed / plain, same code (wall; CPU time) | {cell(ours, r[f'ours_{mode}'])} "
            f"| {cell(theirs, r[f'official_{mode}'])} | {cell(full_packed, full)} |",
            f"| {mode}: speedup vs the plain full model (wall; CPU time) | **{speedup(ours, full)}** "
            f"| {speedup(theirs, full)} | {speedup(full_packed, full)} |",
            f"| {mode}: speedup vs the packed full model (wall; CPU time) | {speedup(ours, full_packed)} "
            f"| {speedup(theirs, full_packed)} | 1 |",
            f"| {mode}: ours packed / official plain; / official packed (wall) | "
            f"**{ours['median_s'] / r[f'official_{mode}']['median_s']:.2f}**; "
            f"{ours['median_s'] / theirs['median_s']:.2f} | | |",
        ]
    return [*lines, ""]


# ----------------------------------------------------------------------------------------------------- profile
PROFILE_SECTION = "## Where the time goes (CPU, batch 1)"
# (label, the object that holds the callable on a LookWhereModel (None: the modeling module), its attribute name):
# each is wrapped in a profiler range for the profiled forwards.
PROFILE_PARTS = (
    ("selector: low-res view", lambda m: m, "low_res_view"),
    ("selector: patch embedding", lambda m: m.selector.embeddings, "embed_all"),
    ("selector: encoder", lambda m: m.selector.encoder, "forward"),
    ("selector: map head", lambda m: m.selector.head, "forward"),
    ("selection: top-k", None, "select_top_k"),
    ("extractor: patch embedding (selected)", lambda m: m.extractor.embeddings, "embed_selected"),
    # `encode` rather than `encoder.forward`: the CLS path (`cls_only=True`) runs the layers itself, with a CLS-only
    # last layer, and never calls the encoder's forward.
    ("extractor: encoder + final norm", lambda m: m.extractor, "encode"),
    ("dense spreading", lambda m: m, "spread"),
)


@measurement("profile")
def _profile_forward(job: dict) -> dict:
    """Forked child: torch.profiler over repeated forwards of one LookWhere path; the time of each part (its callable
    wrapped in a `record_function` range for the run) and the heaviest operators."""
    from torch.profiler import ProfilerActivity, profile, record_function

    from ..models.lookwhere import modeling_lookwhere

    torch.set_num_threads(job["threads"])
    torch.manual_seed(0)
    model = build_benchmark_model("lookwhere", job["resolution"])
    pixel_values = torch.randn(job["batch_size"], 3, job["resolution"], job["resolution"])

    def ranged(label, fn):
        def wrapper(*args, **kwargs):
            with record_function(label):
                return fn(*args, **kwargs)

        return wrapper

    for label, owner_of, name in PROFILE_PARTS:  # a forked child: the wrappers die with it
        owner = modeling_lookwhere if owner_of is None else owner_of(model)
        setattr(owner, name, ranged(label, getattr(owner, name)))
    with torch.inference_mode():
        for _ in range(2):
            call_benchmark_model(model, "lookwhere", pixel_values, job["k"], job["mode"])
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(job["repeats"]):
                with record_function("forward"):
                    call_benchmark_model(model, "lookwhere", pixel_values, job["k"], job["mode"])
    events = prof.key_averages()
    per_call = {e.key: e.cpu_time_total / 1e6 / job["repeats"] for e in events}
    ops = sorted(
        ((e.key, e.self_cpu_time_total / 1e6 / job["repeats"]) for e in events if e.key.startswith("aten::")),
        key=lambda item: -item[1],
    )
    return {
        "forward_s": per_call["forward"],
        "parts": {label: per_call.get(label, 0.0) for label, _, _ in PROFILE_PARTS},
        "ops": ops[:8],
        "ops_total_s": sum(t for _, t in ops),
    }


def run_profile(args: argparse.Namespace) -> list[dict]:
    """Profile LookWhere's forwards (`args.modes`) for every resolution / batch / k_ratio and thread count
    (`args.profile_threads`) of `args`, `args.max_repeats` forwards each; one forked process per column."""
    config = LookWhereConfig()
    jobs = [
        dict(
            task="profile",
            resolution=res,
            batch_size=batch,
            k_ratio=k_ratio,
            k=lookwhere_flops(config, res, k_ratio=k_ratio).k,
            mode=mode,
            threads=threads,
            repeats=args.max_repeats,
        )
        for res in args.resolutions
        for batch in args.batch_sizes
        for k_ratio in args.k_ratios
        for mode in args.modes
        for threads in args.profile_threads
    ]
    return [{**job, **run_in_fresh_process(job)} for job in tqdm(jobs, desc="profile", file=sys.stderr)]


def render_profile_markdown(rows: list[dict], machine: str, command: str, started: str, loads: tuple) -> str:
    """The profile section: time per part and the heaviest operators, one column per profiled forward."""
    columns = [f"{r['resolution']} px b{r['batch_size']} {r['mode']}, {r['threads']} thr" for r in rows]
    lines = [
        PROFILE_SECTION,
        "",
        "torch.profiler over repeated forwards of LookWhere (ViT-B/14, random weights, float32, SDPA) at k as in each",
        "column. Each part is a `record_function` range around the callable that computes it; `rest` is the forward's",
        "time outside the parts (Python of the forwards, argument checks, the map layout, output assembly). Cells: ms",
        "per forward (share of the forward). The profiler adds overhead, so totals sit above the benchmark latencies;",
        "read the shares. Operators: self CPU time per forward (share of all operators' self time).",
        "",
        f"- Command: `{command}`",
        f"- Machine: {machine}",
        f"- Run: {started}; load average (1/5/15 min) at start {loads[0]}, at end {loads[1]}",
        "",
        "| part | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]

    def cell(seconds: float, total: float) -> str:
        return f"{seconds * 1e3:.1f} ({100 * seconds / total:.0f}%)"

    for label, _, _ in PROFILE_PARTS:
        if all(r["parts"][label] == 0.0 for r in rows):
            continue
        lines.append(f"| {label} | " + " | ".join(cell(r["parts"][label], r["forward_s"]) for r in rows) + " |")
    rest = [r["forward_s"] - sum(r["parts"].values()) for r in rows]
    lines.append("| rest | " + " | ".join(cell(x, r["forward_s"]) for x, r in zip(rest, rows)) + " |")
    lines.append("| **forward** | " + " | ".join(f"**{r['forward_s'] * 1e3:.1f}**" for r in rows) + " |")
    names = []
    for r in rows:
        names += [name for name, _ in r["ops"] if name not in names]
    lines += ["", "| operator (self CPU) | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name in names:
        cells = []
        for r in rows:
            seconds = dict(r["ops"]).get(name)
            cells.append("-" if seconds is None else cell(seconds, r["ops_total_s"]))
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# Forked-child measurements of this module, by job task (dispatched by `benchmarking.run_in_fresh_process`).
