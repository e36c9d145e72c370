"""The families report: mean ± std over seeds, the markdown tables, the accuracy-vs-GFLOPs plot and the section of
`benchmarks/RESULTS.md`, the same code for every dataset description (per size bin where the description has bins)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess

from evaluation import glance_focus_json
from stages import GF_STAGES, REPO, seed_paths

RESULTS_MD = os.path.join(REPO, "benchmarks", "RESULTS.md")


# ----------------------------------------------------------------------------------------------------- seeds
def merge_seeds(values: list, key: str = "") -> object:
    """Mean and sample standard deviation (ddof 1) over seeds of every number, recursively: a float becomes
    `{"mean", "std", "values"}`, a list one such entry per position; `seed` becomes the list of seeds, strings and
    integers equal in every seed (image counts, threads) stay plain.
    Raises `ValueError` when the seeds' results have different entries (evaluated with other settings)."""
    first = values[0]
    if isinstance(first, dict):
        if any(set(v) != set(first) for v in values):
            raise ValueError(
                f"The seeds' results differ in the entries under {key!r} ({[sorted(v) for v in values]}); evaluate "
                "every seed with the same settings (--budget_speedups, --compressed_grids, --k_ratios)."
            )
        return {name: merge_seeds([v[name] for v in values], name) for name in first}
    if isinstance(first, list):
        if any(len(v) != len(first) for v in values):
            raise ValueError(f"The seeds' results have lists of different lengths under {key!r}.")
        return [merge_seeds([v[i] for v in values], key) for i in range(len(first))]
    if key == "seed":
        return list(values)
    if isinstance(first, (str, bool, int)) or first is None:  # settings (counts, thread numbers): equal in every seed
        if any(v != first for v in values) and not all(isinstance(v, (int, float)) for v in values):
            raise ValueError(f"The seeds' results differ in the setting {key!r}: {values}.")
        if all(v == first for v in values):
            return first
    mean = math.fsum(values) / len(values)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "values": [float(v) for v in values]}


def _fmt(value, scale: float = 1.0, digits: int = 1) -> str:
    """`12.3 ± 0.4` (scaled) for an aggregated number, `—` for a missing one (None or NaN: a bin without images)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, dict):
        if math.isnan(value["mean"]):
            return "—"
        return f"{value['mean'] * scale:.{digits}f} ± {value['std'] * scale:.{digits}f}"
    return f"{value * scale:.{digits}f}"


def _mean(value) -> float:
    return value["mean"] if isinstance(value, dict) else float(value)


# ----------------------------------------------------------------------------------------------------- tables
def operating_points(agg: dict) -> list[dict]:
    """The rows of the main table and the plot: family, setting, line, accuracy (and per bin), GFLOPs, latency key."""
    teacher_gflops = _mean(agg["teacher_gflops"])
    grid = agg.get("teacher_patches")
    rows = [{"family": "teacher (full resolution)", "setting": f"all {grid} patches" if grid else "all patches",
             "line": "teacher", **agg["teacher"], "latency": "teacher"}]  # fmt: skip
    for ratio, point in agg["fixed_k"].items():
        rows.append({"family": "LookWhere, fixed k", "setting": f"k_ratio {ratio}", "line": "fixed", **point,
                     "latency": f"fixed/{ratio}"})  # fmt: skip
    for ratio, point in agg.get("multirung_rungs", {}).items():
        setting = "glance only" if ratio == "glance" else f"rung k_ratio {ratio}"
        rows.append({"family": "LookWhere multi-rung, one rung", "setting": setting, "line": "rungs", **point})
    for name, point in agg.get("budgeted", {}).items():
        rows.append({"family": "LookWhere, budgeted", "setting": f"budget teacher / {name[:-1]}", "line": "budgeted",
                     **point, "latency": f"budgeted/{name}"})  # fmt: skip
    for name, point in agg.get("budgeted_no_glance", {}).items():
        rows.append({"family": "LookWhere, budgeted, glance exit off", "setting": f"budget teacher / {name[:-1]}",
                     "line": "budgeted_no_glance", **point, "latency": f"budgeted/{name}_no_glance"})  # fmt: skip
    for grid_side, point in agg.get("lookupvit", {}).items():
        rows.append({"family": "LookupViT", "setting": f"compressed grid {grid_side}x{grid_side}", "line": "lookupvit",
                     **point, "latency": f"lookupvit/{grid_side}"})  # fmt: skip
    gf = agg.get("glance_focus")
    if gf:
        label = "Glance-and-Focus" + (f" (seeds {gf['seeds']})" if gf["seeds"] != agg["seed"] else "")
        for step, point in gf["steps"].items():
            rows.append({"family": f"{label}, fixed steps", "setting": f"{step} step(s)", "line": "gf_steps", **point})
        for name, point in gf["budgeted"].items():
            rows.append({"family": f"{label}, budgeted", "setting": f"budget teacher / {name[:-1]}",
                         "line": "gf_budgeted", **point, "latency": f"gf_budgeted/{name}"})  # fmt: skip
    for row in rows:
        row["reduction"] = teacher_gflops / _mean(row["gflops"])
    return rows


def _count(value) -> str:
    """An image count (equal in every seed: plain; else its mean)."""
    return f"{_mean(value):.0f}" if value is not None else "?"


def _bin_header(bins: tuple[str, ...], counts: dict | None) -> str:
    return "".join(f" {name} ({_count((counts or {}).get(name))} img.) |" for name in bins)


def _shares(shares: list) -> str:
    return " / ".join("—" if math.isnan(_mean(s)) else f"{_mean(s) * 100:.0f}%" for s in shares)


def shared_teacher_note(args) -> str:
    """The report's sentence for a run whose seeds share one teacher (`--teacher_model`); empty otherwise."""
    if not getattr(args, "teacher_model", None):
        return ""
    return (
        f" Every seed distils and starts from one teacher, trained once (`--teacher_model {args.teacher_model}`, as "
        "LookWhere distils one pretrained DINOv2): the teacher row's ± 0 is by construction, the other rows' spread is "
        "over the seeds of everything trained after it."
    )


def format_markdown(agg: dict, args, recipe_cpu: dict) -> str:
    """The tables of the aggregate (see the RESULTS.md section); with size bins, each quantity also per bin."""
    d = args.description
    bins = d.size_bins
    counts = agg.get("test_images_per_bin")
    seeds = agg["seed"]
    latency = agg.get("latency_ms_per_image", {})
    batch = next((key.split("/")[0] for key in latency if not key.startswith("b1/")), "b16")
    bin_columns = "".join(f" {name} (%) |" for name in bins)
    lines = [
        f"Test split ({_mean(agg['splits']['test']):.0f} images"
        + (", " + ", ".join(f"{_count(counts[n])} {n}" for n in bins) if counts else "")
        + f"), mean ± std over training seeds {', '.join(str(s) for s in seeds)}; budgets fitted on the validation "
        f"split ({_mean(agg['splits']['validation']):.0f} images). GFLOPs per image: analytic (`lookwhere_hf.flops`; "
        "the budgeted rows: the mean of the FLOPs of each image's exit rung, as the model reports them), equal to "
        "`FlopCounterMode`'s count for every model (largest relative difference "
        f"{agg.get('_flops_check', 0.0):.1e}). Latency: milliseconds per image, median of interleaved rounds in one "
        f"process, {agg.get('torch_threads', 1)} torch thread, on the first {args.latency_images} test images as one "
        f"batch ({batch}) and one at a time (b1)."
        + (f" Accuracy per item-size bin ({', '.join(bins)}) next to the overall one." if bins else "")
        + shared_teacher_note(args),
        "",
        f"| family | operating point | accuracy (%) |{bin_columns} GFLOPs / image | FLOPs vs teacher | b1 ms / image | "
        f"{batch} ms / image |",
        "|---|---|---|" + "---|" * len(bins) + "---|---|---|---|",
    ]
    for row in operating_points(agg):
        key = row.get("latency")
        b1 = latency.get(f"b1/{key}") if key else None
        bn = latency.get(f"{batch}/{key}") if key else None
        per = row.get("accuracy_per_bin", {})
        lines.append(
            f"| {row['family']} | {row['setting']} | {_fmt(row['accuracy'], 100)} |"
            + "".join(f" {_fmt(per.get(name), 100)} |" for name in bins)
            + f" {_fmt(row['gflops'], 1, 4)} | {row['reduction']:.1f}x | {_fmt(b1, 1, 2)} | {_fmt(bn, 1, 2)} |"
        )
    lines.append("")
    if agg.get("budgeted"):
        lines += [
            "Budgeted LookWhere, per budget: the thresholds' calibration on validation and the exits on test.",
            "",
            "| budget | target GFLOPs | validation accuracy (%) | validation GFLOPs | test accuracy (%) | "
            "test GFLOPs | test exit shares (glance, then each k_ratio rung) |",
            "|---|---|---|---|---|---|---|",
        ]
        budgets = [(name, point, "") for name, point in agg["budgeted"].items()]
        budgets += [(name, point, ", glance exit off") for name, point in agg.get("budgeted_no_glance", {}).items()]
        for name, point, variant in budgets:
            lines.append(
                f"| teacher / {name[:-1]}{variant} | {_fmt(point['target_gflops'], 1, 4)} | "
                f"{_fmt(point['validation_accuracy'], 100)} | {_fmt(point['validation_gflops'], 1, 4)} | "
                f"{_fmt(point['accuracy'], 100)} | {_fmt(point['gflops'], 1, 4)} | {_shares(point['exit_shares'])} |"
            )
        lines.append("")
        if bins:
            lines += _exit_shares_per_bin_table(agg, bins, counts)
    training = agg.get("rung_training", {})
    if len(training) == 2:
        names = {"multirung": "every rung, mean of the rung losses", "random_rung": "one random rung per step"}
        # the trained models' rungs (their `anytime_k_ratios`), not this command line's --k_ratios
        rungs = list(agg["multirung_rungs"])
        budgets = list(training["multirung"]["validation_budgeted"])
        lines += [
            "Multi-rung training, **validation** split: every rung each step (`config.train_all_rungs`, the scripts' "
            "mode) against one random rung per step (`compare_families.py train-random-rung`), same epochs, data and "
            "seeds.",
            "",
            "| training | " + " | ".join(f"rung {r} (%)" for r in rungs) + " | "
            + " | ".join(f"budget / {b[:-1]} (%)" for b in budgets) + " | CPU min |",
            "|---|" + "---|" * (len(rungs) + len(budgets) + 1),
        ]  # fmt: skip
        for name, label in names.items():
            accs = training[name]["validation_rung_accuracy"]
            budgeted = [training[name]["validation_budgeted"][b]["accuracy"] for b in budgets]
            cpu = agg.get("training_cpu_s", {}).get(name)
            lines.append(
                f"| {label} | " + " | ".join(_fmt(a, 100) for a in accs) + " | "
                + " | ".join(_fmt(a, 100) for a in budgeted) + f" | {_fmt(cpu, 1 / 60)} |"
            )  # fmt: skip
        lines.append("")
    cpu = agg.get("training_cpu_s", {})
    num_train = d.data_flags.get("num_train")
    lines += [
        f"Training budget after the teacher (epochs over the {num_train} training images; CPU minutes per seed, 1 "
        "thread, mean ± std over the seeds):",
        "",
        "| model | stages (epochs) | CPU min |",
        "|---|---|---|",
        f"| LookWhere, fixed k | pretraining without labels ({d.pretrain_epochs:g}) + fine-tuning at "
        f"k_ratio {d.k_ratio} ({d.finetune_epochs:g}) | "
        f"{_fmt(recipe_cpu.get('pretrain'), 1 / 60)} + {_fmt(recipe_cpu.get('finetune'), 1 / 60)} |",
        f"| LookWhere, multi-rung / budgeted | the same pretraining ({d.pretrain_epochs:g}) + multi-rung "
        f"fine-tuning ({args.multirung_epochs:g}) | {_fmt(recipe_cpu.get('pretrain'), 1 / 60)} + "
        f"{_fmt(cpu.get('multirung'), 1 / 60)} |",
        f"| LookupViT | supervised fine-tuning from the teacher ({args.lookupvit_epochs:g}) | "
        f"{_fmt(cpu.get('lookupvit'), 1 / 60)} |",
    ]
    gf = agg.get("glance_focus")
    if gf:
        gf_cpu = gf.get("training_cpu_s", {})
        epochs = " + ".join(f"{e:g}" for e in args.glance_focus_epochs)
        lines.append(
            f"| Glance-and-Focus (seeds {gf['seeds']}) | stages 1 + 2 + 3 from {gf_encoder(args)} ({epochs}) | "
            + " + ".join(_fmt(gf_cpu.get(name), 1 / 60) for name in GF_STAGES)
            + " |"
        )
        selector = ", ".join(
            f"{_fmt(point['hit_rate'], 100)}% at k_ratio {ratio}" for ratio, point in agg["fixed_k"].items()
        )
        lines += [
            "",
            f"Where they look (test): the LookWhere selector's top-k patches overlap the {d.item_name} box in "
            f"{selector}; a Glance-and-Focus focus crop ({args.glance_focus_steps - 1} crops of "
            f"{args.glance_focus_patch_size} px, policy mean) overlaps it in {_fmt(gf['crop_hit_rate'], 100)}% of the "
            f"images and contains it whole in {_fmt(gf['crop_contains_rate'], 100)}%.",
        ]
    lines.append("")
    lines += _where_they_look_table(agg, args, counts)
    return "\n".join(lines)


def _exit_shares_per_bin_table(agg: dict, bins: tuple[str, ...], counts) -> list[str]:
    """Budgeted LookWhere (and Glance-and-Focus) per size bin: test accuracy, mean GFLOPs and exit shares."""
    lines = [
        "Budgeted exits per item-size bin (test): accuracy, mean GFLOPs and the share of images leaving at each rung "
        "(LookWhere: glance, then each k_ratio rung; Glance-and-Focus: each step).",
        "",
        "| family | budget | size bin | accuracy (%) | GFLOPs / image | exit shares |",
        "|---|---|---|---|---|---|",
    ]
    families = [("LookWhere, budgeted", agg.get("budgeted", {}))]
    families += [("LookWhere, budgeted, glance exit off", agg.get("budgeted_no_glance", {}))]
    if agg.get("glance_focus"):
        families.append(("Glance-and-Focus, budgeted", agg["glance_focus"]["budgeted"]))
    for family, points in families:
        for name, point in points.items():
            for size in bins:
                accuracy = point.get("accuracy_per_bin", {}).get(size)
                gflops = point.get("gflops_per_bin", {}).get(size)
                shares = point.get("exit_shares_per_bin", {}).get(size, [])
                lines.append(
                    f"| {family} | teacher / {name[:-1]} | {size} | {_fmt(accuracy, 100)} | {_fmt(gflops, 1, 4)} | "
                    f"{_shares(shares)} |"
                )
    return [*lines, ""]


def _where_they_look_table(agg: dict, args, counts) -> list[str]:
    """Hit rates on test, overall and per size bin: LookWhere's selector, the teacher's own attention map and k
    random patches (exact chance) at each k_ratio; Glance-and-Focus's crops and as many random crops."""
    d = args.description
    columns = ("all", *d.size_bins)
    total = _count(agg["splits"]["test"])
    header = f"| | all ({total} img.) |" + _bin_header(d.size_bins, counts)
    lines = [
        f"Where they look (test): share of images in which a chosen patch / crop overlaps the {d.item_name}'s box. "
        "LookWhere's selector (its top-k), the teacher's own attention map (the map the selector was distilled from, "
        "its top-k) and k random patches (the exact chance level, per image); Glance-and-Focus's focus crops "
        f"(policy mean) and as many crops placed uniformly at random (exact chance).",
        "",
        "| k_ratio / model" + header[1:],
        "|---|" + "---|" * len(columns),
    ]

    def cells(point: dict, key: str) -> str:
        per = point.get(f"{key}_per_bin", {})
        values = [point.get(key)] + [per.get(name) for name in d.size_bins]
        return " | ".join(_fmt(v, 100) for v in values)

    for ratio, point in agg["fixed_k"].items():
        if "teacher_map_hit_rate" not in point:  # evaluated before the harness measured the maps
            continue
        lines.append(f"| k_ratio {ratio}: LookWhere selector | {cells(point, 'hit_rate')} |")
        lines.append(f"| k_ratio {ratio}: teacher's map | {cells(point, 'teacher_map_hit_rate')} |")
        lines.append(f"| k_ratio {ratio}: random patches | {cells(point, 'random_hit_rate')} |")
    gf = agg.get("glance_focus")
    if gf and "random_crop_hit_rate" in gf:
        crops = f"{args.glance_focus_steps - 1} crops of {args.glance_focus_patch_size} px"
        lines.append(f"| Glance-and-Focus: {crops} (policy) | {cells(gf, 'crop_hit_rate')} |")
        lines.append(f"| Glance-and-Focus: {crops} containing the box whole | {cells(gf, 'crop_contains_rate')} |")
        lines.append(f"| {crops}, placed at random | {cells(gf, 'random_crop_hit_rate')} |")
    if len(lines) == 4:  # evaluated before the harness measured the maps and the chance levels: no table
        return []
    return [*lines, ""]


def gf_encoder(args) -> str:
    """What the Glance-and-Focus encoders start from, in words, for the report."""
    if args.glance_focus_backbone == "teacher":
        return "the teacher as encoder"
    sizes = "/".join(str(v) for v in args.glance_focus_resnet_sizes)
    depths = "/".join(str(v) for v in args.glance_focus_resnet_depths)
    return f"a random-init ResNet (widths {sizes}, depths {depths}) as encoder, learning rate {args.glance_focus_lr:g}"


# ----------------------------------------------------------------------------------------------------- plot
PLOT_STYLES = {
    "fixed": ("LookWhere, fixed k (k_ratio fine-tune)", "o-", "C0"),
    "rungs": ("LookWhere multi-rung, one rung (glance, k)", "s:", "C9"),
    "budgeted": ("LookWhere, budgeted (validation thresholds)", "D-", "C3"),
    "budgeted_no_glance": ("LookWhere, budgeted, glance exit off", "d--", "C6"),
    "lookupvit": ("LookupViT (compressed grids)", "^-", "C2"),
    "gf_steps": ("Glance-and-Focus, fixed steps", "v:", "C4"),
    "gf_budgeted": ("Glance-and-Focus, budgeted", "P-", "C1"),
    "teacher": ("teacher, full resolution", "*", "k"),
}


def _plot_panel(ax, rows: list[dict], size_bin: str | None) -> None:
    """One accuracy-vs-mean-GFLOPs panel, overall (`size_bin` None) or for one size bin."""

    def accuracy(row):
        return row["accuracy"] if size_bin is None else row.get("accuracy_per_bin", {}).get(size_bin)

    def gflops(row):
        return row["gflops"] if size_bin is None else row.get("gflops_per_bin", {}).get(size_bin, row["gflops"])

    for line, (label, fmt, color) in PLOT_STYLES.items():
        points = sorted(
            (r for r in rows if r["line"] == line and accuracy(r) is not None), key=lambda r: _mean(gflops(r))
        )
        if not points:
            continue
        x = [_mean(gflops(r)) for r in points]
        y = [100 * _mean(accuracy(r)) for r in points]
        xerr = [gflops(r)["std"] if isinstance(gflops(r), dict) else 0.0 for r in points]
        yerr = [100 * accuracy(r)["std"] if isinstance(accuracy(r), dict) else 0.0 for r in points]
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt=fmt, color=color, label=label, capsize=3,
                    markersize=12 if line == "teacher" else 6)  # fmt: skip
    teacher = next(r for r in rows if r["line"] == "teacher")
    goal = _mean(teacher["gflops"]) / 4
    ax.axvline(goal, color="grey", linestyle="--", linewidth=0.8)
    if accuracy(teacher) is not None:
        ax.axhline(100 * _mean(accuracy(teacher)) - 1, color="grey", linestyle=":", linewidth=0.8)
    ax.text(goal, ax.get_ylim()[0], " teacher / 4", color="grey", va="bottom", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("mean GFLOPs per image (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(True, alpha=0.3)


def plot_families(agg: dict, path: str, title: str, size_bins: tuple[str, ...] = ()) -> None:
    """Accuracy vs mean GFLOPs per image: one line per family (± 1 std both ways), the teacher as a point; with size
    bins, one more panel per bin (the budgeted rows at that bin's own mean GFLOPs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = operating_points(agg)
    panels = [None, *size_bins]
    fig, axes = plt.subplots(1, len(panels), figsize=(7.5 + 5.0 * len(size_bins), 4.8), squeeze=False)
    seeds = len(agg["seed"])
    for ax, size_bin in zip(axes[0], panels):
        _plot_panel(ax, rows, size_bin)
        if size_bin is not None:
            ax.set_title(f"{size_bin} items", fontsize=10)
    axes[0][0].legend(fontsize=8, loc="lower right")
    heading = f"{title}: the families side by side (mean ± std, {seeds} seed{'s' * (seeds > 1)})"
    if size_bins:
        fig.suptitle(heading)
        axes[0][0].set_title("all test images", fontsize=10)
    else:
        axes[0][0].set_title(heading)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------- aggregate
def _flops_check(runs: list[dict]) -> float:
    """Largest relative difference between counted and analytic GFLOPs over the seeds' models."""
    worst = 0.0
    for run in runs:
        counted = run["counted_gflops"]
        analytic = {"teacher": run["teacher"]["gflops"]}
        analytic.update({f"fixed/{r}": p["gflops"] for r, p in run["fixed_k"].items()})
        analytic.update({f"lookupvit/{g}": p["gflops"] for g, p in run.get("lookupvit", {}).items()})
        analytic.update(
            {key: counted[f"{key.split('/')[0]}_reported"] for key in counted if key.startswith("budgeted/")}
        )
        for key, value in analytic.items():
            worst = max(worst, abs(counted[key] - value) / value)
    return worst


def recipe_cpu(args) -> dict:
    """CPU seconds per seed of the recipe stages (teacher, pretrain, finetune), from the recipe run's `summary.json`,
    aggregated over `--seeds`; empty when a seed has no record."""
    path = os.path.join(args.recipe_dir or args.output_dir, "summary.json")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        seeds = json.load(f).get("timings", {}).get("seeds", {})
    per_seed = [seeds[str(s)] for s in args.seeds if str(s) in seeds]
    if len(per_seed) != len(args.seeds):
        return {}
    stages = set.intersection(*(set(t) for t in per_seed))
    return {stage: merge_seeds([t[stage]["cpu_s"] for t in per_seed]) for stage in stages}


def aggregate(args) -> dict | None:
    """Mean ± std over the seeds into `--output_dir`: `results.json`, `results.md`, `families.png`; None when a seed
    has no evaluation yet."""
    runs = []
    for seed in args.seeds:
        path = os.path.join(seed_paths(args.output_dir, seed)["eval"], "results.json")
        if not os.path.isfile(path):
            print(f"seed {seed} has no evaluation yet ({path}): no aggregate")
            return None
        with open(path, encoding="utf-8") as f:
            runs.append(json.load(f))
    agg = merge_seeds(runs)
    agg["_flops_check"] = _flops_check(runs)
    gf_runs, gf_seeds = [], []
    for seed in args.seeds:
        path = os.path.join(seed_paths(args.output_dir, seed)["eval"], glance_focus_json(args))
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                gf_runs.append(json.load(f))
            gf_seeds.append(seed)
    if gf_runs:
        agg["glance_focus"] = merge_seeds(gf_runs)
        agg["glance_focus"]["seeds"] = gf_seeds
        agg["latency_ms_per_image"].update(agg["glance_focus"]["latency_ms_per_image"])
    cpu = recipe_cpu(args)
    agg["teacher_patches"] = (args.description.canvas_size // args.description.patch_size) ** 2
    text = format_markdown(agg, args, cpu)
    agg["_recipe_cpu_s"] = cpu
    with open(os.path.join(args.output_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(agg, f, indent=1)
    with open(os.path.join(args.output_dir, "results.md"), "w", encoding="utf-8") as f:
        f.write(text)
    try:
        plot_families(
            agg, os.path.join(args.output_dir, "families.png"), args.description.title, args.description.size_bins
        )
    except ImportError:
        print("matplotlib is not installed: no figure (pip install matplotlib)")
    print(text)
    return agg


# ----------------------------------------------------------------------------------------------------- goals
def goal_issue_12(agg: dict) -> str:
    """Issue 12's goal, checked on the aggregate: a budget within 1 point of the teacher at >= 4x fewer FLOPs?"""
    teacher_acc, teacher_gflops = _mean(agg["teacher"]["accuracy"]), _mean(agg["teacher"]["gflops"])
    candidates = [(name, point) for name, point in agg.get("budgeted", {}).items()]
    candidates += [(f"{name} glance off", point) for name, point in agg.get("budgeted_no_glance", {}).items()]
    met = [
        name
        for name, point in candidates
        if _mean(point["accuracy"]) >= teacher_acc - 0.01 and _mean(point["gflops"]) * 4 <= teacher_gflops
    ]
    if met:
        return f"Issue 12's goal (within 1 point of the teacher at >= 4x fewer mean FLOPs) is met at budget(s) {met}."
    best = max(
        ((name, p) for name, p in candidates if _mean(p["gflops"]) * 4 <= teacher_gflops),
        key=lambda item: _mean(item[1]["accuracy"]),
        default=None,
    )
    if best is None:
        return "Issue 12's goal is not met: no budget reached 4x fewer mean FLOPs than the teacher on test."
    gap = 100 * (teacher_acc - _mean(best[1]["accuracy"]))
    return (
        f"Issue 12's goal (within 1 point of the teacher at >= 4x fewer mean FLOPs) is **not** met: the best budget at "
        f">= 4x fewer FLOPs ({best[0]}) is {gap:.1f} points below the teacher."
    )


def goal_issue_24(agg: dict) -> str:
    """Issue 24's goals, checked on the aggregate (means over seeds): every family within 5 points of the teacher;
    a budget reaching the best fixed k (within 0.5 point) at >= 1.5x fewer mean FLOPs; large items exiting earlier
    (fewer mean GFLOPs) than small ones; the selector hitting small items in >= 90% of the images at k_ratio 0.1;
    Glance-and-Focus's crops beating random crops."""
    teacher = _mean(agg["teacher"]["accuracy"])
    families = {
        "LookWhere fixed k": agg["fixed_k"],
        "LookWhere budgeted": {**agg.get("budgeted", {}), **agg.get("budgeted_no_glance", {})},
        "LookupViT": agg.get("lookupvit", {}),
    }
    if agg.get("glance_focus"):
        families["Glance-and-Focus"] = {**agg["glance_focus"]["steps"], **agg["glance_focus"]["budgeted"]}
    lines = []
    for family, points in families.items():
        if points:
            best = max(_mean(p["accuracy"]) for p in points.values())
            verdict = "met" if best >= teacher - 0.05 else "**not** met"
            lines.append(
                f"{family}: best {100 * best:.1f}% vs teacher {100 * teacher:.1f}% (within 5 points: {verdict})"
            )
    fixed = max(agg["fixed_k"].items(), key=lambda item: _mean(item[1]["accuracy"]))
    budgets = {
        **agg.get("budgeted", {}),
        **{f"{k} glance off": v for k, v in agg.get("budgeted_no_glance", {}).items()},
    }
    paying = [
        name
        for name, p in budgets.items()
        if _mean(p["accuracy"]) >= _mean(fixed[1]["accuracy"]) - 0.005
        and _mean(p["gflops"]) * 1.5 <= _mean(fixed[1]["gflops"])
    ]
    lines.append(
        f"budgets reaching the best fixed k (k_ratio {fixed[0]}, within 0.5 point) at >= 1.5x fewer mean FLOPs: "
        + (", ".join(paying) if paying else "**none**")
    )
    for name, point in agg.get("budgeted", {}).items():
        per = point.get("gflops_per_bin")
        if per and "small" in per and "large" in per:
            earlier = _mean(per["large"]) < _mean(per["small"])
            lines.append(
                f"budget teacher / {name[:-1]}: large items {'exit earlier' if earlier else 'do **not** exit earlier'} "
                f"({_mean(per['large']):.4f} vs {_mean(per['small']):.4f} GFLOPs for small ones)"
            )
    point = agg["fixed_k"].get("0.1")
    if point and "hit_rate_per_bin" in point and "small" in point["hit_rate_per_bin"]:
        small = _mean(point["hit_rate_per_bin"]["small"])
        lines.append(f"selector hit rate on small items at k_ratio 0.1: {100 * small:.1f}% (goal >= 90%)")
    gf = agg.get("glance_focus")
    if gf and "random_crop_hit_rate" in gf:
        policy, chance = _mean(gf["crop_hit_rate"]), _mean(gf["random_crop_hit_rate"])
        lines.append(
            f"Glance-and-Focus crops hit the item in {100 * policy:.1f}% of the images, random crops in "
            f"{100 * chance:.1f}% ({'better' if policy > chance else '**not** better'})"
        )
    return "Issue 24's goals, measured: " + "; ".join(lines) + "."


GOALS = {"issue_12": goal_issue_12, "issue_24": goal_issue_24}


# ----------------------------------------------------------------------------------------------------- RESULTS.md
def update_results_md(args, agg: dict, command: str) -> None:
    """Replace (or append) the description's section of `--results_md`; copy the figure next to the dataset's files
    (only when writing the repository's own RESULTS.md)."""
    d = args.description
    figure = os.path.join(args.output_dir, "families.png")
    if os.path.isfile(figure) and os.path.abspath(args.results_md) == os.path.abspath(RESULTS_MD):
        shutil.copy2(figure, os.path.join(REPO, d.figure_dir, "families.png"))
    link = os.path.relpath(os.path.join(REPO, d.figure_dir, "families.png"), os.path.dirname(RESULTS_MD))
    intro = (d.reused_recipe_note if args.recipe_dir else one_command_note(args)) + PARALLEL_SEEDS_NOTE
    body = [
        d.results_section,
        "",
        f"`{command}` (git commit {_git_commit() or 'unknown'}). {intro} Same data for every family; validation for "
        "calibration only, test for the numbers.",
        "",
        *(GOALS[goal](agg) + "\n" for goal in d.goals),
        format_markdown(agg, args, agg.get("_recipe_cpu_s", {})).strip(),
        "",
        f"![{d.title}: accuracy vs mean GFLOPs per image, one line per family]({link})",
        "",
    ]
    text = "# Results\n"
    if os.path.isfile(args.results_md):
        with open(args.results_md, encoding="utf-8") as f:
            text = f.read()
    section = "\n".join(body)
    if d.results_section in text:
        start = text.index(d.results_section)
        nxt = text.find("\n## ", start + len(d.results_section))
        text = text[:start] + section + ("\n" + text[nxt + 1 :] if nxt != -1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with open(args.results_md, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"Updated '{d.results_section}' in {args.results_md}")


PARALLEL_SEEDS_NOTE = (
    " The seeds may run as parallel processes (the same command with `--seeds S` each), then one pass with all "
    "seeds and `--stages aggregate` writes this report."
)


def one_command_note(args) -> str:
    """The report's sentence on what its one command ran (the teacher trained per seed, or copied)."""
    copied = getattr(args, "teacher_model", None)
    teacher = "a copy of the one trained teacher (`--teacher_model`)" if copied else "the teacher"
    return (
        f"One command: the data, then per seed {teacher}, LookWhere's pretraining (no labels) and fixed-k fine-tuning, "
        "and every other family."
    )


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    except OSError:
        return None
    return out.stdout.strip() or None
