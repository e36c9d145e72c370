#!/usr/bin/env python
"""Evaluate *where to look* on Sparse Digits: a fine-tuned LookWhere against its full-resolution teacher.

On the test split (digit boxes from `annotations.jsonl`) it measures, for every `k_ratio`:

- **hit rate** of the selector: share of test images where at least one of the top-k patches overlaps the digit's
  box; also the mean share of the box area the top-k patches cover, and the share of images where *every* patch
  touching the box is selected. The same for the teacher's own attention map (the target the selector was distilled
  from) and the chance level of k random patches (exact, per image);
- **accuracy** of LookWhere (selector top-k), of LookWhere fed k *random* patches (what the selector is worth), and
  of the teacher fed only the selector's top-k patch tokens (the teacher's own layers on the kept tokens), next to the
  teacher at full resolution (all patches);
- **FLOPs** (analytic, `lookwhere_hf.flops`, checked against `torch.utils.flop_counter.FlopCounterMode`) and
  **latency** (median of repeated forwards after warm-up, teacher and LookWhere interleaved in one process, same
  threads, same attention implementation) of LookWhere against the full-resolution teacher.

Writes `results.json`, `results.md` (tables) and, with matplotlib, `sparse_digits.png` (accuracy and hit rate vs
k_ratio) and `selection_examples.png` (where the model looked on a few test images) to `--output_dir`.

Example:

    python benchmarks/sparse_digits/evaluate_sparse_digits.py --data_dir data/sparse_digits \\
        --lookwhere_model runs/lookwhere-finetuned --teacher_model runs/teacher --output_dir runs/eval
"""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from make_dataset import read_annotations  # this script's sibling (its folder is first on sys.path)
from PIL import Image
from tqdm.auto import tqdm
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    HfArgumentParser,
)

import lookwhere_hf  # noqa: F401  (registers the LookWhere Auto classes)
from lookwhere_hf import LookWhereForImageClassification, LookWhereImageProcessor
from lookwhere_hf.benchmarking import time_interleaved
from lookwhere_hf.flops import dinov2_flops, lookwhere_flops
from lookwhere_hf.models.lookwhere.distillation_losses import compute_teacher_targets
from lookwhere_hf.models.lookwhere.selection import gather_tokens, select_top_k

# the hit-rate geometry is the families harness's (benchmarks/families/geometry.py), shared with its evaluation
FAMILIES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "families")
if FAMILIES not in sys.path:
    sys.path.insert(0, FAMILIES)
from geometry import patch_overlaps, random_hit_probability, selection_hits  # noqa: E402

DEFAULT_K_RATIOS = "0.02,0.05,0.1,0.15,0.25,0.5,1.0"


@dataclass
class EvaluationArguments:
    data_dir: str = field(metadata={"help": "Sparse Digits folder (with annotations.jsonl)."})
    lookwhere_model: str = field(metadata={"help": "Fine-tuned LookWhereForImageClassification folder."})
    teacher_model: str = field(metadata={"help": "The full-resolution Dinov2WithRegistersForImageClassification."})
    output_dir: str = field(metadata={"help": "Where results.json / results.md / figures go."})
    split: str = field(default="test", metadata={"help": "Split to evaluate (test, validation, train)."})
    k_ratios: str = field(default=DEFAULT_K_RATIOS, metadata={"help": "Comma-separated k_ratio values in (0, 1]."})
    batch_size: int = field(default=50, metadata={"help": "Evaluation batch size."})
    max_samples: int | None = field(default=None, metadata={"help": "Evaluate only the first N images."})
    latency_batch_sizes: str = field(default="1,16", metadata={"help": "Batch sizes of the latency measurement."})
    latency_threads: str = field(
        default="1,2",
        metadata={"help": "torch thread counts to time with (1 thread is the least disturbed on a shared machine)."},
    )
    latency_runs: int = field(default=20, metadata={"help": "Timed forwards per model and batch size."})
    latency_warmup: int = field(default=3, metadata={"help": "Untimed warm-up forwards."})
    num_threads: int | None = field(default=None, metadata={"help": "torch threads (default: torch's choice)."})
    seed: int = field(default=0, metadata={"help": "Seed of the random-patch baseline."})
    num_example_images: int = field(default=6, metadata={"help": "Test images drawn in selection_examples.png."})

    def __post_init__(self):
        for path, what in ((self.lookwhere_model, "--lookwhere_model"), (self.teacher_model, "--teacher_model")):
            if not os.path.isfile(os.path.join(path, "config.json")):
                raise ValueError(f"{what} {path!r} is not a saved model folder (no config.json).")
        ratios = self.parsed_k_ratios()
        if not ratios or any(not 0.0 < r <= 1.0 for r in ratios):
            raise ValueError(f"--k_ratios must be comma-separated numbers in (0, 1], got {self.k_ratios!r}.")
        if self.batch_size < 1 or self.latency_runs < 1 or self.latency_warmup < 0:
            raise ValueError("--batch_size and --latency_runs must be >= 1, --latency_warmup >= 0.")
        if any(t < 1 for t in self.parsed_latency_threads()):
            raise ValueError(f"--latency_threads must be positive ints, got {self.latency_threads!r}.")
        if any(b < 1 for b in self.parsed_latency_batch_sizes()):
            raise ValueError(f"--latency_batch_sizes must be positive ints, got {self.latency_batch_sizes!r}.")

    def parsed_k_ratios(self) -> list[float]:
        return sorted(set(comma_separated(self.k_ratios, "--k_ratios", float, "numbers")))

    def parsed_latency_threads(self) -> list[int]:
        return comma_separated(self.latency_threads, "--latency_threads", int, "ints")

    def parsed_latency_batch_sizes(self) -> list[int]:
        return comma_separated(self.latency_batch_sizes, "--latency_batch_sizes", int, "ints")


def comma_separated(text: str, flag: str, convert: type, what: str) -> list:
    """The items of a comma-separated flag value, each through `convert`; a ValueError names the flag."""
    try:
        return [convert(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated {what}, got {text!r}.") from None


# ----------------------------------------------------------------------------------------------------- models
@torch.no_grad()
def teacher_logits_on_tokens(teacher, pixel_values: torch.Tensor, indices: torch.LongTensor | None) -> torch.Tensor:
    """The teacher's logits when its encoder sees CLS + registers + only the patches at `indices (B, k)` (all
    patches when `indices` is None). Mirrors `Dinov2WithRegistersForImageClassification.forward`: the classifier
    reads `[CLS, mean of the patch tokens]`."""
    backbone = teacher.dinov2_with_registers
    num_prefix = 1 + teacher.config.num_register_tokens
    hidden = backbone.embeddings(pixel_values)
    if indices is not None:
        hidden = torch.cat((hidden[:, :num_prefix], gather_tokens(hidden[:, num_prefix:], indices)), dim=1)
    hidden = backbone.layernorm(backbone.encoder(hidden).last_hidden_state)
    return teacher.classifier(torch.cat((hidden[:, 0], hidden[:, num_prefix:].mean(dim=1)), dim=1))


@torch.no_grad()
def lookwhere_logits_on_indices(model, pixel_values, prefix, indices) -> torch.Tensor:
    """LookWhere's logits when the extractor computes the patches at `indices` (any selection rule)."""
    tokens, _ = model.lookwhere.extractor(pixel_values, indices, prefix)
    return model.classifier(tokens[:, 0])


def measure_flops(model, teacher, pixel_values: torch.Tensor, k: int) -> dict[str, int]:
    """FLOPs of one forward counted by `torch.utils.flop_counter.FlopCounterMode` (matmuls, convs, attention).

    Pass models loaded with `attn_implementation="eager"`: the counter does not see the CPU SDPA kernel's matmuls."""
    from torch.utils.flop_counter import FlopCounterMode

    counts = {}
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            teacher(pixel_values=pixel_values)
        counts["teacher"] = counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            model(pixel_values=pixel_values, k=k)
        counts["lookwhere"] = counter.get_total_flops()
    return counts


def analytic_flops(model, teacher, image_size: int, k_ratio: float) -> dict[str, int]:
    lw = lookwhere_flops(model.config, image_size=image_size, k_ratio=k_ratio, num_labels=model.config.num_labels)
    classifier = 2 * 2 * teacher.config.hidden_size * teacher.config.num_labels
    return {"teacher": dinov2_flops(teacher.config, image_size) + classifier, "lookwhere": lw.total, "k": lw.k}


@torch.inference_mode()
def measure_latency(model, teacher, pixel_values, low_res, k: int, runs: int, warmup: int) -> dict[str, float]:
    """Median seconds per forward of the teacher (all patches), of LookWhere making its low-res view itself from
    `pixel_values` (`lookwhere`), and of LookWhere given the processor's `low_res_pixel_values`, as the pipeline
    calls it (`lookwhere_given_low_res`); interleaved so all see the same machine load."""
    calls = {
        "teacher": lambda: teacher(pixel_values=pixel_values),
        "lookwhere": lambda: model(pixel_values=pixel_values, k=k),
        "lookwhere_given_low_res": lambda: model(pixel_values=pixel_values, low_res_pixel_values=low_res, k=k),
    }
    return {name: timing.median for name, timing in time_interleaved(calls, runs, warmup=warmup).items()}


# ----------------------------------------------------------------------------------------------------- main
def load_split(args: EvaluationArguments) -> list[dict]:
    rows = sorted(read_annotations(args.data_dir, args.split).values(), key=lambda r: r["file_name"])
    if not rows:
        raise ValueError(f"No {args.split!r} images in {args.data_dir}/annotations.jsonl.")
    return rows[: args.max_samples] if args.max_samples else rows


def evaluate(args: EvaluationArguments) -> dict:
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    torch.manual_seed(args.seed)
    rng = torch.Generator().manual_seed(args.seed)
    model = LookWhereForImageClassification.from_pretrained(args.lookwhere_model).eval()
    teacher = AutoModelForImageClassification.from_pretrained(args.teacher_model).eval()
    processor = LookWhereImageProcessor.from_pretrained(args.lookwhere_model)
    teacher_processor = AutoImageProcessor.from_pretrained(args.teacher_model)
    if model.config.label2id != {str(k): v for k, v in teacher.config.label2id.items()}:
        print(f"warning: label maps differ: LookWhere {model.config.label2id}, teacher {teacher.config.label2id}")

    rows = load_split(args)
    image_size = processor.size["height"]
    patch = model.config.patch_size
    grid = image_size // patch
    num_patches = grid * grid
    ratios = args.parsed_k_ratios()
    ks = {r: max(1, int(r * num_patches)) for r in ratios}  # floor, as LookWhereConfig.num_selected
    canvas = Image.open(os.path.join(args.data_dir, rows[0]["file_name"])).size[0]
    scale = image_size / canvas
    label_of = {name: int(i) for name, i in model.config.label2id.items()}

    preds = {name: {r: [] for r in ratios} for name in ("lookwhere", "lookwhere_random", "teacher_topk")}
    preds["teacher_full"] = []
    hits = {name: {r: {"hit": [], "coverage": [], "full": []} for r in ratios} for name in ("selector", "teacher_map")}
    random_hit = {r: [] for r in ratios}
    labels, consistency_checked = [], False
    for start in tqdm(range(0, len(rows), args.batch_size), desc=f"Evaluating on {args.split}", unit="batch"):
        batch = rows[start : start + args.batch_size]
        images = [Image.open(os.path.join(args.data_dir, r["file_name"])).convert("RGB") for r in batch]
        labels.extend(label_of[str(r["label"])] for r in batch)
        inputs = processor(images, return_tensors="pt")
        pixel_values, low_res = inputs["pixel_values"], inputs["low_res_pixel_values"]
        teacher_pixels = teacher_processor(images, return_tensors="pt")["pixel_values"]
        overlaps = np.stack([patch_overlaps(np.asarray(r["box"]) * scale, grid, patch) for r in batch])
        with torch.no_grad():
            preds["teacher_full"].append(teacher(pixel_values=teacher_pixels).logits.argmax(-1))
            teacher_map = compute_teacher_targets(teacher.dinov2_with_registers, teacher_pixels).attention_map
            selector_map, prefix, _, _ = model.lookwhere.select(pixel_values, low_res)
            for r in ratios:
                k = ks[r]
                indices = select_top_k(selector_map, k)
                logits = lookwhere_logits_on_indices(model, pixel_values, prefix, indices)
                if not consistency_checked:  # the decomposed forward is exactly the model's forward
                    reference = model(pixel_values=pixel_values, low_res_pixel_values=low_res, k=k).logits
                    torch.testing.assert_close(logits, reference, rtol=1e-4, atol=1e-4)
                preds["lookwhere"][r].append(logits.argmax(-1))
                random_idx = torch.stack([torch.randperm(num_patches, generator=rng)[:k] for _ in batch])
                preds["lookwhere_random"][r].append(
                    lookwhere_logits_on_indices(model, pixel_values, prefix, random_idx).argmax(-1)
                )
                preds["teacher_topk"][r].append(teacher_logits_on_tokens(teacher, teacher_pixels, indices).argmax(-1))
                for name, score_map in (("selector", selector_map), ("teacher_map", teacher_map)):
                    found = selection_hits(select_top_k(score_map, k).numpy(), overlaps)
                    for key, values in found.items():
                        hits[name][r][key].extend(values.tolist())
                random_hit[r].extend(random_hit_probability(num_patches, int((o > 0).sum()), k) for o in overlaps)
            consistency_checked = True

    labels = torch.tensor(labels)

    def accuracy(chunks):
        return float((torch.cat(chunks) == labels).float().mean())

    per_k = []
    for r in ratios:
        per_k.append(
            {
                "k_ratio": r,
                "k": ks[r],
                "selector_hit_rate": float(np.mean(hits["selector"][r]["hit"])),
                "selector_box_coverage": float(np.mean(hits["selector"][r]["coverage"])),
                "selector_full_cover_rate": float(np.mean(hits["selector"][r]["full"])),
                "teacher_map_hit_rate": float(np.mean(hits["teacher_map"][r]["hit"])),
                "teacher_map_box_coverage": float(np.mean(hits["teacher_map"][r]["coverage"])),
                "random_hit_rate": float(np.mean(random_hit[r])),
                "random_box_coverage": ks[r] / num_patches,
                "accuracy_lookwhere": accuracy(preds["lookwhere"][r]),
                "accuracy_lookwhere_random_patches": accuracy(preds["lookwhere_random"][r]),
                "accuracy_teacher_on_selected_patches": accuracy(preds["teacher_topk"][r]),
            }
        )

    # cost: FLOPs and latency at the model's own k_ratio (and the measured FLOPs at every k)
    k_default = model.config.num_selected(num_patches)
    sample = processor(
        [Image.open(os.path.join(args.data_dir, rows[0]["file_name"])).convert("RGB")], return_tensors="pt"
    )["pixel_values"]
    flop_rows = []
    eager_model = LookWhereForImageClassification.from_pretrained(
        args.lookwhere_model, attn_implementation="eager"
    ).eval()
    eager_teacher = AutoModelForImageClassification.from_pretrained(
        args.teacher_model, attn_implementation="eager"
    ).eval()
    for r in ratios:
        counted = measure_flops(eager_model, eager_teacher, sample, ks[r])
        row = {
            "k_ratio": r,
            "k": ks[r],
            "counted_teacher": counted["teacher"],
            "counted_lookwhere": counted["lookwhere"],
        }
        analytic = analytic_flops(model, teacher, image_size, r)
        row.update(analytic_teacher=analytic["teacher"], analytic_lookwhere=analytic["lookwhere"])
        flop_rows.append(row)
    latency = []
    pool = [
        Image.open(os.path.join(args.data_dir, r["file_name"])).convert("RGB")
        for r in rows[: max(args.parsed_latency_batch_sizes())]
    ]
    threads_before = torch.get_num_threads()
    settings = [(t, b) for t in args.parsed_latency_threads() for b in args.parsed_latency_batch_sizes()]
    for threads, batch_size in tqdm(settings, desc="Latency", unit="setting"):
        torch.set_num_threads(threads)
        inputs = processor((pool * batch_size)[:batch_size], return_tensors="pt")
        seconds = measure_latency(
            model,
            teacher,
            inputs["pixel_values"],
            inputs["low_res_pixel_values"],
            k_default,
            args.latency_runs,
            args.latency_warmup,
        )
        latency.append(
            {
                "threads": threads,
                "batch_size": batch_size,
                "k": k_default,
                "teacher_s": seconds["teacher"],
                "lookwhere_s": seconds["lookwhere"],
                "speedup": seconds["teacher"] / seconds["lookwhere"],
                "lookwhere_given_low_res_s": seconds["lookwhere_given_low_res"],
                "speedup_given_low_res": seconds["teacher"] / seconds["lookwhere_given_low_res"],
            }
        )
    torch.set_num_threads(threads_before)

    results = {
        "split": args.split,
        "num_images": len(rows),
        "image_size": image_size,
        "patch_size": patch,
        "grid": grid,
        "low_res_size": model.config.low_res_size,
        "model_k_ratio": model.config.k_ratio,
        "accuracy_teacher_full_resolution": accuracy(preds["teacher_full"]),
        "per_k_ratio": per_k,
        "flops": flop_rows,
        "latency": latency,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "attn_implementation": getattr(model.config, "_attn_implementation", None),
        },
        "models": {"lookwhere": os.path.abspath(args.lookwhere_model), "teacher": os.path.abspath(args.teacher_model)},
        "parameters": {
            "lookwhere": sum(p.numel() for p in model.parameters()),
            "teacher": sum(p.numel() for p in teacher.parameters()),
        },
        "arguments": asdict(args),
    }
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(args.output_dir, "results.md"), "w", encoding="utf-8") as f:
        f.write(format_markdown(results))
    try:
        plot_results(results, os.path.join(args.output_dir, "sparse_digits.png"))
        by_index = sorted(rows, key=lambda r: r["file_name"].rsplit("_", 1)[-1])  # test order: mixed digits
        plot_examples(
            model,
            processor,
            by_index[: args.num_example_images],
            args.data_dir,
            os.path.join(args.output_dir, "selection_examples.png"),
        )
    except ImportError:
        print("matplotlib is not installed: no figures (pip install matplotlib)")
    return results


# ----------------------------------------------------------------------------------------------------- reports
# Settings, not measurements: equal in every run, never averaged.
SETTING_KEYS = frozenset({"k_ratio", "k", "threads", "batch_size", "model_k_ratio", "num_images", "image_size"})


def aggregate_results(runs: list[dict], seeds: list[int]) -> dict:
    """Mean and sample standard deviation (ddof 1) over runs (one per training seed) of every measurement.

    `runs` are `evaluate()` results of the same evaluation (split, k_ratios, latency settings). In the returned
    dict, which has the same layout, each measured number of `accuracy_teacher_full_resolution`, `per_k_ratio`,
    `flops` and `latency` becomes `{"mean", "std", "values"}` (values in the order of `seeds`); settings
    (`SETTING_KEYS`) and numbers equal in every run (the FLOPs, identical architectures) stay plain. The other
    entries come from the first run; `seeds` and each run's `models` are added."""
    if not runs or len(runs) != len(seeds):
        raise ValueError(f"aggregate_results needs one result per seed, got {len(runs)} results for seeds {seeds}.")

    def merge(values: list, key: str | None = None):
        first = values[0]
        if isinstance(first, dict):
            if any(set(v) != set(first) for v in values):
                raise ValueError(f"The runs have different entries under {key!r}; evaluate them the same way.")
            return {name: merge([v[name] for v in values], name) for name in first}
        if isinstance(first, list):
            if any(len(v) != len(first) for v in values):
                raise ValueError(f"The runs have different numbers of rows under {key!r}; evaluate them the same way.")
            return [merge([v[i] for v in values], key) for i in range(len(first))]
        if key in SETTING_KEYS or isinstance(first, (bool, str)) or first is None:
            if any(v != first for v in values):
                raise ValueError(f"The runs differ in the setting {key!r} ({values}); evaluate them the same way.")
            return first
        if all(v == first for v in values):
            return first if isinstance(first, int) else {"mean": float(first), "std": 0.0, "values": list(values)}
        array = np.asarray(values, dtype=np.float64)
        std = float(array.std(ddof=1)) if len(array) > 1 else 0.0
        return {"mean": float(array.mean()), "std": std, "values": [float(v) for v in values]}

    measured = ("accuracy_teacher_full_resolution", "per_k_ratio", "flops", "latency")
    out = {key: value for key, value in runs[0].items() if key not in measured and key != "models"}
    out.update({key: merge([run[key] for run in runs], key) for key in measured})
    out["seeds"] = list(seeds)
    out["models"] = {str(seed): run["models"] for seed, run in zip(seeds, runs, strict=True)}
    return out


def mean_std(value) -> tuple[float, float]:
    """(mean, std) of an aggregated number, (value, 0) of a plain one."""
    return (value["mean"], value["std"]) if isinstance(value, dict) else (float(value), 0.0)


def format_value(value, scale: float = 1.0, digits: int = 1, unit: str = "") -> str:
    """`83.4%` for a plain number, `83.4 ± 1.2%` for an aggregated one (scaled by `scale`)."""
    if isinstance(value, dict):
        return f"{value['mean'] * scale:.{digits}f} ± {value['std'] * scale:.{digits}f}{unit}"
    return f"{value * scale:.{digits}f}{unit}"


def format_markdown(results: dict) -> str:
    """The benchmark's tables (accuracy and hit rate vs k_ratio, FLOPs, latency) for one run or an aggregate."""

    def pct(value) -> str:
        return format_value(value, 100.0, 1, "%")

    def ms(value) -> str:
        return format_value(value, 1000.0, 1, " ms")

    def times(value) -> str:
        return format_value(value, 1.0, 1, "x")

    seeds = results.get("seeds")
    same = all(
        row["selector_hit_rate"] == row["selector_box_coverage"] == row["selector_full_cover_rate"]
        for row in results["per_k_ratio"]
    )
    lines = []
    if seeds:
        lines += [
            (
                f"Every number: mean ± standard deviation (sample, ddof 1) over {len(seeds)} training seeds "
                f"({', '.join(map(str, seeds))}: teacher, pretraining and fine-tuning all re-run; same data)."
            ),
            "",
        ]
    lines += [
        (
            f"{results['split'].capitalize()} split: {results['num_images']} images, {results['image_size']} px, "
            f"patch {results['patch_size']} ({results['grid']}x{results['grid']} = {results['grid'] ** 2} patches); "
            f"selector at {results['low_res_size']} px. Teacher at full resolution (all patches): "
            f"**{pct(results['accuracy_teacher_full_resolution'])}** accuracy."
        ),
        "",
        "| k_ratio | k | selector hit rate |"
        + ("" if same else " box covered | all box patches |")
        + " teacher-map hit rate | random hit rate | LookWhere acc. | LookWhere, random patches "
        "| teacher on selected patches |",
        "|---|---|---|---|---|---|---|---|" + ("" if same else "---|---|"),
    ]
    for row in results["per_k_ratio"]:
        coverage = "" if same else f" {pct(row['selector_box_coverage'])} | {pct(row['selector_full_cover_rate'])} |"
        lines.append(
            f"| {row['k_ratio']:g} | {row['k']} | {pct(row['selector_hit_rate'])} |{coverage}"
            f" {pct(row['teacher_map_hit_rate'])} | {pct(row['random_hit_rate'])} "
            f"| **{pct(row['accuracy_lookwhere'])}** | {pct(row['accuracy_lookwhere_random_patches'])} "
            f"| {pct(row['accuracy_teacher_on_selected_patches'])} |"
        )
    if same:
        lines += [
            "",
            (
                "(Every digit lies inside one patch here, so the share of the digit box covered and the share of "
                "images with every box patch selected equal the hit rate.)"
            ),
        ]
    lines += [
        "",
        "| k_ratio | k | teacher FLOPs | LookWhere FLOPs | FLOPs ratio (counted) | FLOPs ratio (analytic) |",
        "|---|---|---|---|---|---|",
    ]
    for row in results["flops"]:
        flops = {key: mean_std(row[key])[0] for key in row if key.startswith(("counted_", "analytic_"))}
        lines.append(
            f"| {row['k_ratio']:g} | {row['k']} | {flops['counted_teacher'] / 1e9:.3f} G "
            f"| {flops['counted_lookwhere'] / 1e9:.3f} G "
            f"| {flops['counted_teacher'] / flops['counted_lookwhere']:.1f}x "
            f"| {flops['analytic_teacher'] / flops['analytic_lookwhere']:.1f}x |"
        )
    lines += [
        "",
        (
            "| threads | batch | k | teacher (full res) | LookWhere (makes its low-res view) | speedup "
            "| LookWhere (low-res view from the processor, as in `pipeline`) | speedup |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in results["latency"]:
        lines.append(
            f"| {row.get('threads', '')} | {row['batch_size']} | {row['k']} | {ms(row['teacher_s'])} "
            f"| {ms(row['lookwhere_s'])} | **{times(row['speedup'])}** "
            f"| {ms(row['lookwhere_given_low_res_s'])} | **{times(row['speedup_given_low_res'])}** |"
        )
    machine = results["machine"]
    lines += [
        "",
        (
            f"Machine: {machine['platform']}, {machine['cpu_count']} CPUs, "
            f"torch {machine['torch']}, attention {machine['attn_implementation']}. Latency: median of "
            f"{results['arguments']['latency_runs']} forwards after {results['arguments']['latency_warmup']} warm-up, "
            "teacher and LookWhere interleaved in one process"
            + (" (one such median per seed; mean ± std over the seeds)" if seeds else "")
            + ". FLOPs counted with eager attention (FlopCounterMode does not see the CPU SDPA kernel)."
        ),
        "",
    ]
    return "\n".join(lines)


def plot_results(results: dict, path: str) -> None:
    """Accuracy and hit rate vs k_ratio; error bars (± 1 std over seeds) when `results` is an aggregate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["per_k_ratio"]
    x = [r["k_ratio"] for r in rows]

    def curve(ax, key, fmt, label, **kwargs):
        means, stds = zip(*(mean_std(r[key]) for r in rows), strict=True)
        ax.errorbar(x, means, yerr=stds if any(stds) else None, fmt=fmt, capsize=3, label=label, **kwargs)

    seeds = results.get("seeds")
    suffix = f" (mean ± std, {len(seeds)} seeds)" if seeds else ""

    def finish(ax, xlabel, ylabel, title):
        ax.set(xscale="log", xlabel=xlabel, ylabel=ylabel, title=title + suffix, ylim=(0, 1.02))
        ax.legend(fontsize=8)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    curve(axes[0], "accuracy_lookwhere", "o-", "LookWhere (selector top-k)")
    curve(axes[0], "accuracy_lookwhere_random_patches", "s--", "LookWhere, random k patches")
    curve(axes[0], "accuracy_teacher_on_selected_patches", "^:", "teacher on selected patches")
    teacher, teacher_std = mean_std(results["accuracy_teacher_full_resolution"])
    axes[0].axhline(teacher, color="k", lw=1, label="teacher, full resolution")
    if teacher_std:
        axes[0].axhspan(teacher - teacher_std, teacher + teacher_std, color="k", alpha=0.1, lw=0)
    finish(
        axes[0], "k_ratio (share of high-res patches computed)", f"{results['split']} accuracy", "Accuracy vs k_ratio"
    )
    curve(axes[1], "selector_hit_rate", "o-", "selector: hits the digit")
    curve(axes[1], "selector_box_coverage", "o--", "selector: share of digit box covered")
    curve(axes[1], "teacher_map_hit_rate", "^:", "teacher attention map: hits")
    curve(axes[1], "random_hit_rate", "s:", "random patches: hits", color="gray")
    finish(axes[1], "k_ratio", f"share of {results['split']} images", "Where to look")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@torch.no_grad()
def plot_examples(model, processor, rows: list[dict], data_dir: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patches as mpatches
    import matplotlib.pyplot as plt

    if not rows:
        return
    images = [Image.open(os.path.join(data_dir, r["file_name"])).convert("RGB") for r in rows]
    inputs = processor(images, return_tensors="pt")
    out = model(**inputs)
    size, patch = processor.size["height"], model.config.patch_size
    grid = size // patch
    scale = size / images[0].size[0]
    fig, axes = plt.subplots(1, len(rows), figsize=(3 * len(rows), 3.3))
    axes = np.atleast_1d(axes)
    for ax, image, row, indices, logits in zip(axes, images, rows, out.selected_indices, out.logits, strict=True):
        ax.imshow(image.resize((size, size)))
        for idx in indices.tolist():
            r, c = divmod(idx, grid)
            ax.add_patch(mpatches.Rectangle((c * patch, r * patch), patch, patch, fill=False, ec="yellow", lw=0.8))
        x0, y0, x1, y1 = (v * scale for v in row["box"])
        ax.add_patch(mpatches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="red", lw=1.2))
        pred = model.config.id2label[int(logits.argmax())]
        ax.set_title(f"true {row['label']}, predicted {pred}", fontsize=9)
        ax.axis("off")
    fig.suptitle(f"yellow: the {out.selected_indices.shape[1]} patches LookWhere computed; red: the digit", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> dict:
    (args,) = HfArgumentParser(EvaluationArguments).parse_args_into_dataclasses(args=argv)
    results = evaluate(args)
    print(format_markdown(results))
    print(f"Wrote results.json, results.md and figures to {args.output_dir}")
    return results


if __name__ == "__main__":
    main()
