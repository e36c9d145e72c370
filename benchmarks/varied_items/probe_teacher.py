#!/usr/bin/env python
"""Does a teacher's attention map find the item? Accuracy and top-k hit rates per item-size bin on Varied Items.

For a full-resolution teacher (`Dinov2WithRegistersForImageClassification`, e.g. from
`benchmarks/sparse_digits/train_teacher.py`) on one split of a Varied Items folder (`make_dataset.py`; the item boxes
of `annotations.jsonl` are used here, for evaluation only), it measures, overall and per size bin (small / medium /
large):

- the teacher's **accuracy** at full resolution;
- the **hit rate** of its attention map *as LookWhere distils it* (`distillation_losses.compute_teacher_targets`:
  the last layer's q.k logits averaged over heads and patch queries, over the patch keys) at each `--k_ratios`:
  the share of images where at least one of the map's top-k patches overlaps the item's box; also the share of the
  box area those patches cover. Next to it the exact chance level of k random patches (per image, averaged), and the
  same hit rate for the mean-query map of every other layer (`layer_<i>`, diagnostic: which layer, if any, looks at
  the item).

With `--lookwhere_model` (a fine-tuned `LookWhereForImageClassification` distilled from that teacher) it adds, per
bin: LookWhere's accuracy at each k_ratio (its selector's top-k) and its **selector hit rate**.

Writes `results.json` and `results.md` to `--output_dir` and prints the tables. Use the validation split for
choices; the test split only for the final report.

Example:

    python benchmarks/varied_items/probe_teacher.py --data_dir data/varied_items --teacher_model runs/teacher \\
        --output_dir runs/teacher_probe --split validation --num_threads 1
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import AutoImageProcessor, AutoModelForImageClassification, HfArgumentParser

from lookwhere_hf.models.lookwhere.distillation_losses import compute_teacher_targets, mean_query_attention_logits
from lookwhere_hf.models.lookwhere.selection import select_top_k

HERE = os.path.dirname(os.path.abspath(__file__))
SIZE_BINS = ("small", "medium", "large")


def _load_sibling(name: str, path: str):
    """A benchmark script loaded by path under its own module name (the benchmarks are scripts, not packages)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


varied_items = _load_sibling("varied_items_make_dataset", os.path.join(HERE, "make_dataset.py"))
if "make_dataset" not in sys.modules:  # evaluate_sparse_digits imports `make_dataset` by name for read_annotations
    sys.modules["make_dataset"] = varied_items
sparse_eval = _load_sibling(
    "evaluate_sparse_digits", os.path.join(HERE, os.pardir, "sparse_digits", "evaluate_sparse_digits.py")
)
patch_overlaps = sparse_eval.patch_overlaps  # box-patch intersection areas
selection_hits = sparse_eval.selection_hits  # hit / coverage / full per image
random_hit_probability = sparse_eval.random_hit_probability  # exact chance of k random patches


@dataclass
class ProbeArguments:
    data_dir: str = field(metadata={"help": "Varied Items folder (with annotations.jsonl)."})
    teacher_model: str = field(metadata={"help": "The full-resolution Dinov2WithRegistersForImageClassification."})
    output_dir: str = field(metadata={"help": "Where results.json / results.md go."})
    lookwhere_model: str | None = field(
        default=None, metadata={"help": "Optional fine-tuned LookWhereForImageClassification: its accuracy and hits."}
    )
    split: str = field(default="validation", metadata={"help": "Split to probe (validation for choices; test last)."})
    k_ratios: str = field(default="0.02,0.05,0.1,0.25", metadata={"help": "Comma-separated k_ratio values in (0, 1]."})
    batch_size: int = field(default=50, metadata={"help": "Batch size."})
    max_samples: int | None = field(default=None, metadata={"help": "Probe only the first N images (file order)."})
    num_threads: int | None = field(default=None, metadata={"help": "torch threads (default: torch's choice)."})

    def parsed_k_ratios(self) -> list[float]:
        ratios = sorted({float(r) for r in self.k_ratios.split(",") if r.strip()})
        if not ratios or any(not 0.0 < r <= 1.0 for r in ratios):
            raise ValueError(f"--k_ratios must be comma-separated numbers in (0, 1], got {self.k_ratios!r}.")
        return ratios

    def __post_init__(self):
        for path, what in ((self.teacher_model, "--teacher_model"), (self.lookwhere_model, "--lookwhere_model")):
            if path is not None and not os.path.isfile(os.path.join(path, "config.json")):
                raise ValueError(f"{what} {path!r} is not a saved model folder (no config.json).")
        self.parsed_k_ratios()
        if self.batch_size < 1:
            raise ValueError(f"--batch_size must be >= 1, got {self.batch_size}.")


class Tally:
    """Per-image values collected per size bin; `summary()` gives the means overall and per bin."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {name: [] for name in SIZE_BINS}

    def add(self, bins: list[str], values) -> None:
        for name, value in zip(bins, values, strict=True):
            self.values[name].append(float(value))

    def summary(self) -> dict[str, float | None]:
        every = [v for name in SIZE_BINS for v in self.values[name]]
        out = {"all": float(np.mean(every)) if every else None}
        out.update({name: float(np.mean(v)) if v else None for name, v in self.values.items()})
        return out


@torch.no_grad()
def probe(args: ProbeArguments) -> dict:
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    start = time.time()
    teacher = AutoModelForImageClassification.from_pretrained(args.teacher_model).eval()
    processor = AutoImageProcessor.from_pretrained(args.teacher_model)
    backbone = teacher.dinov2_with_registers
    num_prefix = 1 + teacher.config.num_register_tokens
    label_of = {str(name): int(i) for name, i in teacher.config.label2id.items()}
    lookwhere = lw_processor = None
    if args.lookwhere_model:
        import lookwhere_hf  # noqa: F401  (registers the LookWhere Auto classes)
        from lookwhere_hf import LookWhereForImageClassification, LookWhereImageProcessor

        lookwhere = LookWhereForImageClassification.from_pretrained(args.lookwhere_model).eval()
        lw_processor = LookWhereImageProcessor.from_pretrained(args.lookwhere_model)

    rows = sorted(varied_items.read_annotations(args.data_dir, args.split).values(), key=lambda r: r["file_name"])
    if not rows:
        raise ValueError(f"No {args.split!r} images in {args.data_dir}/annotations.jsonl.")
    rows = rows[: args.max_samples] if args.max_samples else rows
    image_size = processor.size["height"]
    patch = teacher.config.patch_size
    grid = image_size // patch
    num_patches = grid * grid
    canvas = Image.open(os.path.join(args.data_dir, rows[0]["file_name"])).size[0]
    scale = image_size / canvas
    ratios = args.parsed_k_ratios()
    ks = {r: max(1, int(r * num_patches)) for r in ratios}  # floor, as LookWhereConfig.num_selected
    num_layers = teacher.config.num_hidden_layers

    accuracy = Tally()
    maps = ["teacher_map", *(f"layer_{i}" for i in range(num_layers))]
    if lookwhere is not None:
        maps.append("selector")
    hits = {m: {r: Tally() for r in ratios} for m in maps}
    coverage = {m: {r: Tally() for r in ratios} for m in maps}
    chance = {r: Tally() for r in ratios}
    lw_accuracy = {r: Tally() for r in ratios}
    checked = False
    for first in tqdm(range(0, len(rows), args.batch_size), desc=f"Probing on {args.split}", unit="batch"):
        batch = rows[first : first + args.batch_size]
        bins = [r["size_bin"] for r in batch]
        images = [Image.open(os.path.join(args.data_dir, r["file_name"])).convert("RGB") for r in batch]
        labels = torch.tensor([label_of[r["class_name"]] for r in batch])
        pixel_values = processor(images, return_tensors="pt")["pixel_values"]
        outputs = teacher(pixel_values=pixel_values, output_hidden_states=True)
        accuracy.add(bins, (outputs.logits.argmax(-1) == labels).tolist())
        score_maps = {"teacher_map": compute_teacher_targets(backbone, pixel_values).attention_map}
        for i in range(num_layers):  # hidden_states[i] is layer i's input
            score_maps[f"layer_{i}"] = mean_query_attention_logits(
                backbone.encoder.layer[i], outputs.hidden_states[i], num_prefix
            )
        if not checked:  # the distillation target is the last layer's mean-query map
            torch.testing.assert_close(score_maps["teacher_map"], score_maps[f"layer_{num_layers - 1}"])
            checked = True
        if lookwhere is not None:
            inputs = lw_processor(images, return_tensors="pt")
            selector_map, *_ = lookwhere.lookwhere.select(inputs["pixel_values"], inputs["low_res_pixel_values"])
            score_maps["selector"] = selector_map
            for r in ratios:
                logits = lookwhere(**inputs, k=ks[r]).logits
                lw_accuracy[r].add(bins, (logits.argmax(-1) == labels).tolist())
        overlaps = np.stack([patch_overlaps(np.asarray(r["box"]) * scale, grid, patch) for r in batch])
        for r in ratios:
            k = ks[r]
            for name, score_map in score_maps.items():
                found = selection_hits(select_top_k(score_map, k).numpy(), overlaps)
                hits[name][r].add(bins, found["hit"])
                coverage[name][r].add(bins, found["coverage"])
            chance[r].add(bins, [random_hit_probability(num_patches, int((o > 0).sum()), k) for o in overlaps])

    counts = {name: len(accuracy.values[name]) for name in SIZE_BINS}
    results = {
        "split": args.split,
        "num_images": len(rows),
        "images_per_bin": counts,
        "image_size": image_size,
        "patch_size": patch,
        "grid": grid,
        "accuracy_teacher": accuracy.summary(),
        "per_k_ratio": [
            {
                "k_ratio": r,
                "k": ks[r],
                "random_hit_rate": chance[r].summary(),
                **{f"{m}_hit_rate": hits[m][r].summary() for m in maps},
                **{f"{m}_box_coverage": coverage[m][r].summary() for m in maps},
                **({"accuracy_lookwhere": lw_accuracy[r].summary()} if lookwhere is not None else {}),
            }
            for r in ratios
        ],
        "maps": maps,
        "seconds": round(time.time() - start, 1),
        "arguments": asdict(args),
    }
    if lookwhere is not None:
        results["lookwhere_model_k_ratio"] = lookwhere.config.k_ratio
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    markdown = format_markdown(results)
    with open(os.path.join(args.output_dir, "results.md"), "w", encoding="utf-8") as f:
        f.write(markdown)
    print(markdown)
    print(f"Wrote {args.output_dir}/results.json and results.md ({results['seconds']:.0f} s)")
    return results


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def format_markdown(results: dict) -> str:
    columns = ("all", *SIZE_BINS)
    n = results["images_per_bin"]
    head = "| | all ({}) | small ({}) | medium ({}) | large ({}) |\n|---|---|---|---|---|\n".format(
        results["num_images"], n["small"], n["medium"], n["large"]
    )
    lines = [
        f"Split {results['split']}, {results['num_images']} images, {results['grid']}x{results['grid']} patches of "
        f"{results['patch_size']} px at {results['image_size']} px.\n",
        head + "| teacher accuracy | " + " | ".join(_pct(results["accuracy_teacher"][c]) for c in columns) + " |\n",
    ]
    for row in results["per_k_ratio"]:
        table = [f"Hit rate at k_ratio {row['k_ratio']:g} (k = {row['k']}): a top-k patch overlaps the item's box\n"]
        table.append(head)
        names = ["teacher_map", *(m for m in results["maps"] if m != "teacher_map")]
        for name in names:
            label = "teacher map (distilled target)" if name == "teacher_map" else name
            table.append(f"| {label} | " + " | ".join(_pct(row[f"{name}_hit_rate"][c]) for c in columns) + " |\n")
        table.append("| random patches | " + " | ".join(_pct(row["random_hit_rate"][c]) for c in columns) + " |\n")
        if "accuracy_lookwhere" in row:
            table.append(
                "| LookWhere accuracy | " + " | ".join(_pct(row["accuracy_lookwhere"][c]) for c in columns) + " |\n"
            )
        lines.append("".join(table))
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = HfArgumentParser(ProbeArguments)
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    return probe(args)


if __name__ == "__main__":
    main()
