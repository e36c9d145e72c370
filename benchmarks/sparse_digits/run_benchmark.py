#!/usr/bin/env python
"""Sparse Digits, end to end, with one command: data -> teacher -> LookWhere pretraining -> fine-tuning -> evaluation.

Stages (each one a script of this repository, run as a subprocess with this Python):

1. `benchmarks/sparse_digits/make_dataset.py`: the Sparse Digits imagefolder + digit boxes;
2. `benchmarks/sparse_digits/train_teacher.py`: a small full-resolution DINOv2-with-registers ViT teacher, trained
   **supervised** from scratch (there is no self-supervised DINOv2 of this size to download here);
3. `examples/pytorch/pretraining/run_pretraining.py --teacher_name_or_path <teacher>`: LookWhere distilled from the
   teacher (no labels: selector <- teacher attention map, extractor <- teacher CLS / patch tokens);
4. `examples/pytorch/image-classification/run_image_classification.py --model_name_or_path <pretrained> --no_augment`:
   fine-tuned with labels, selector frozen, without the script's photo augmentation (random crops cut the small digit
   out of view and mirrored digits change meaning);

(stages 1-4 are the families harness's recipe stages, `benchmarks/families/stages.py`, with the recipe of
`benchmarks/families/descriptions.py`'s `SPARSE_DIGITS`, whose values are this script's defaults), and
5. `benchmarks/sparse_digits/evaluate_sparse_digits.py`: hit rate, accuracy vs k_ratio, FLOPs and latency against the
   teacher.

The data are generated once (`--data_seed`); stages 2-5 run once per training seed (`--seeds`: the teacher, the
pretraining and the fine-tuning are all re-trained; the seed also draws the evaluation's random-patch baseline), into
`OUTPUT_DIR/seed_<s>/`. The per-seed test results are then aggregated: `OUTPUT_DIR/results.json` / `results.md` /
`sparse_digits.png` give mean ± standard deviation over the seeds of every number.

Optional: `--export_demo` copies the fine-tuned model of `--demo_seed` and a few correctly classified test images to
`src/lookwhere_hf/assets/` (the checkpoint `lookwhere-hf demo` ships), with its run record
(`demo_model/run_record.json`: seed, command, its own test numbers); `--update_results` writes the section
"## Where to look: sparse digits" of `benchmarks/RESULTS.md` from the aggregate.

Example (the configuration reported in RESULTS.md):

    python benchmarks/sparse_digits/run_benchmark.py --output_dir runs/sparse_digits --seeds 0,1,2 --num_threads 1

Every stage prints its wall-clock and CPU time; `summary.json` in `--output_dir` keeps them with all results.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
FAMILIES = os.path.join(REPO, "benchmarks", "families")  # the recipe stages are the families harness's
if FAMILIES not in sys.path:
    sys.path.insert(0, FAMILIES)
from descriptions import SPARSE_DIGITS, DatasetDescription  # noqa: E402
from stages import FINETUNE_SCRIPT, PRETRAIN_SCRIPT, flags, recipe_commands, run_stage, stage_environment  # noqa: E402

ASSETS = os.path.join(REPO, "src", "lookwhere_hf", "assets")
RESULTS_MD = os.path.join(REPO, "benchmarks", "RESULTS.md")
SECTION = "## Where to look: sparse digits"
DEMO_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")
FIGURES = ("sparse_digits.png", "selection_examples.png")
STAGES = ("data", "teacher", "pretrain", "finetune", "evaluate")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--output_dir", default="runs/sparse_digits", help="Everything goes here (data, models, results).")
    p.add_argument(
        "--seeds",
        default="0,1,2",
        help="Comma-separated training seeds (teacher, pretraining, fine-tuning, random-patch baseline); one full "
        "training run each, into OUTPUT_DIR/seed_<s>/.",
    )
    p.add_argument("--data_seed", type=int, default=0, help="Seed of the generated data (the same for every run).")
    sd, data, teacher = SPARSE_DIGITS, SPARSE_DIGITS.data_flags, SPARSE_DIGITS.teacher_flags  # the defaults
    g = p.add_argument_group("data")
    g.add_argument("--canvas_size", type=int, default=sd.canvas_size)
    g.add_argument("--min_digit_size", type=int, default=data["min_digit_size"])
    g.add_argument("--max_digit_size", type=int, default=data["max_digit_size"])
    g.add_argument(
        "--align_to_grid",
        type=int,
        default=data["align_to_grid"],
        help="Draw each digit inside one cell of this grid (the patch size); 0 = anywhere.",
    )
    g.add_argument("--num_train", type=int, default=data["num_train"])
    g.add_argument("--num_validation", type=int, default=data["num_validation"])
    g.add_argument("--num_test", type=int, default=data["num_test"])
    g.add_argument("--reuse_data", action="store_true", help="Keep OUTPUT_DIR/data if it exists (else regenerate).")
    g = p.add_argument_group("models")
    g.add_argument("--patch_size", type=int, default=sd.patch_size)
    g.add_argument("--hidden_size", type=int, default=teacher["hidden_size"])
    g.add_argument("--num_hidden_layers", type=int, default=teacher["num_hidden_layers"])
    g.add_argument("--num_attention_heads", type=int, default=teacher["num_attention_heads"])
    g.add_argument("--selector_depth", type=int, default=sd.selector_depth)
    g.add_argument("--low_res_size", type=int, default=sd.low_res_size)
    g.add_argument("--k_ratio", type=float, default=sd.k_ratio, help="The fine-tuned model's (and the demo's) k_ratio.")
    g = p.add_argument_group("training")
    g.add_argument(
        "--teacher_epochs",
        type=float,
        default=sd.teacher_epochs,
        help="Teacher epochs. 10: with 5, the teacher left its chance-level plateau too late on 2 of 5 seeds (README).",
    )
    g.add_argument("--teacher_batch_size", type=int, default=sd.teacher_batch_size)
    g.add_argument("--teacher_lr", type=float, default=sd.teacher_lr)
    g.add_argument(
        "--teacher_token_loss_weight",
        type=float,
        default=teacher["token_loss_weight"],
        help="Auxiliary per-patch 'which digit / no digit' loss of the teacher (train_teacher.py; 0 = off).",
    )
    g.add_argument(
        "--teacher_attention_loss_weight",
        type=float,
        default=teacher["attention_loss_weight"],
        help="Auxiliary loss that points the teacher's attention map (the selector's target) at the digit's box "
        "(train_teacher.py --attention_loss_weight; 0 = off).",
    )
    g.add_argument(
        "--teacher_zoom_curriculum",
        type=float,
        default=teacher["zoom_curriculum"],
        help="Share of teacher training on zoomed crops around the digit (train_teacher.py; 0 = off).",
    )
    g.add_argument("--pretrain_epochs", type=float, default=sd.pretrain_epochs)
    g.add_argument("--pretrain_lr", type=float, default=sd.pretrain_lr)
    g.add_argument("--k_min", type=int, default=sd.k_min)
    g.add_argument("--k_max", type=int, default=sd.k_max)
    g.add_argument("--finetune_epochs", type=float, default=sd.finetune_epochs)
    g.add_argument("--finetune_lr", type=float, default=sd.finetune_lr)
    g.add_argument("--batch_size", type=int, default=sd.batch_size)
    g.add_argument("--num_threads", type=int, default=None, help="OMP/torch threads for every stage.")
    g = p.add_argument_group("evaluation and outputs")
    g.add_argument("--k_ratios", default="0.02,0.05,0.1,0.15,0.25,0.5,1.0")
    g.add_argument(
        "--eval_split",
        default="test",
        choices=("test", "validation"),
        help="Split the evaluate stage reports (tune recipes on validation, report test).",
    )
    g.add_argument("--latency_runs", type=int, default=20)
    g.add_argument("--export_demo", action="store_true", help="Copy the fine-tuned model + demo images to the package.")
    g.add_argument("--demo_seed", type=int, default=None, help="Whose model --export_demo ships (default: first seed).")
    g.add_argument("--num_demo_images", type=int, default=6)
    g.add_argument("--update_results", action="store_true", help=f"Rewrite '{SECTION}' in benchmarks/RESULTS.md.")
    g.add_argument(
        "--stages",
        default=",".join(STAGES),
        help="Comma-separated subset of stages to run (later stages reuse earlier outputs).",
    )
    args = p.parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = set(stages) - set(STAGES)
    if unknown:
        p.error(f"--stages has unknown stages {sorted(unknown)}; use data, teacher, pretrain, finetune, evaluate.")
    args.stages = stages
    try:
        args.seeds = [int(seed) for seed in args.seeds.split(",") if seed.strip()]
    except ValueError:
        p.error(f"--seeds must be comma-separated integers, e.g. 0,1,2; got {args.seeds!r}.")
    if not args.seeds or len(set(args.seeds)) != len(args.seeds):
        p.error(f"--seeds must list at least one seed, each once; got {args.seeds}.")
    if args.demo_seed is None:
        args.demo_seed = args.seeds[0]
    elif args.demo_seed not in args.seeds:
        p.error(f"--demo_seed {args.demo_seed} is not one of --seeds {args.seeds}; add it or pick one of them.")
    if args.canvas_size % args.patch_size or args.low_res_size % args.patch_size:
        p.error(
            f"--canvas_size ({args.canvas_size}) and --low_res_size ({args.low_res_size}) must be multiples of "
            f"--patch_size ({args.patch_size})."
        )
    if not 0 < args.k_ratio <= 1:
        p.error(f"--k_ratio must be in (0, 1], got {args.k_ratio}.")
    return args


def description(args) -> DatasetDescription:
    """The Sparse Digits description with this run's arguments (the recipe the harness's stages run)."""
    return SPARSE_DIGITS.replace(
        canvas_size=args.canvas_size, patch_size=args.patch_size, low_res_size=args.low_res_size,
        selector_depth=args.selector_depth, k_min=args.k_min, k_max=args.k_max, k_ratio=args.k_ratio,
        teacher_epochs=args.teacher_epochs, teacher_lr=args.teacher_lr, teacher_batch_size=args.teacher_batch_size,
        pretrain_epochs=args.pretrain_epochs, pretrain_lr=args.pretrain_lr, finetune_epochs=args.finetune_epochs,
        finetune_lr=args.finetune_lr, batch_size=args.batch_size,
        data_flags={"min_digit_size": args.min_digit_size, "max_digit_size": args.max_digit_size,
                    "align_to_grid": args.align_to_grid, "num_train": args.num_train,
                    "num_validation": args.num_validation, "num_test": args.num_test},
        teacher_flags={"hidden_size": args.hidden_size, "num_hidden_layers": args.num_hidden_layers,
                       "num_attention_heads": args.num_attention_heads,
                       "zoom_curriculum": args.teacher_zoom_curriculum,
                       "token_loss_weight": args.teacher_token_loss_weight,
                       "attention_loss_weight": args.teacher_attention_loss_weight},
    )  # fmt: skip


def stage_commands(args, paths: dict[str, str], seed: int) -> dict[str, list[str]]:
    """The command line of every stage (this Python, the stage's script, its arguments) for training seed `seed`;
    `paths` holds the shared `data` folder and this seed's `teacher`, `pretrained`, `finetuned` and `eval` folders.
    Data, teacher, pretraining and fine-tuning are the families harness's recipe stages."""
    return {
        **recipe_commands(description(args), paths, seed, args.data_seed),
        "evaluate": [
            sys.executable, os.path.join(HERE, "evaluate_sparse_digits.py"),
            *flags(data_dir=paths["data"], lookwhere_model=paths["finetuned"], teacher_model=paths["teacher"],
                   output_dir=paths["eval"], k_ratios=args.k_ratios, latency_runs=args.latency_runs, seed=seed,
                   split=args.eval_split),
        ],
    }  # fmt: skip


def export_demo(args, finetuned: str, data_dir: str, record: dict) -> list[str]:
    """Copy the fine-tuned checkpoint and `--num_demo_images` test images it classifies correctly (distinct labels,
    label in the file name) into the package assets, with `record` (seed, command, numbers) as
    `demo_model/run_record.json`."""
    import torch
    from make_dataset import read_annotations  # this script's sibling (its folder is first on sys.path)
    from PIL import Image

    import lookwhere_hf  # noqa: F401
    from lookwhere_hf import LookWhereForImageClassification, LookWhereImageProcessor

    model_dir, image_dir = os.path.join(ASSETS, "demo_model"), os.path.join(ASSETS, "demo_images")
    for folder in (model_dir, image_dir):
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
    for name in DEMO_FILES:
        shutil.copy2(os.path.join(finetuned, name), os.path.join(model_dir, name))
    model = LookWhereForImageClassification.from_pretrained(model_dir).eval()
    processor = LookWhereImageProcessor.from_pretrained(model_dir)
    rows = sorted(read_annotations(data_dir, "test").values(), key=lambda r: r["file_name"])
    rows.sort(key=lambda r: int(r["file_name"].rsplit("_", 1)[1].split(".")[0]))  # test order, not label order
    chosen, labels_used = [], set()
    for row in rows:
        if row["label"] in labels_used:
            continue
        image = Image.open(os.path.join(data_dir, row["file_name"])).convert("RGB")
        with torch.no_grad():
            pred = model.config.id2label[int(model(**processor(image, return_tensors="pt")).logits.argmax())]
        if pred == str(row["label"]):
            index = row["file_name"].rsplit("_", 1)[1].split(".")[0]
            target = os.path.join(image_dir, f"digit_{row['label']}_test_{index}.png")
            image.save(target, format="PNG", optimize=True)
            chosen.append(target)
            labels_used.add(row["label"])
        if len(chosen) == args.num_demo_images:
            break
    record = {**record, "demo_images": [os.path.relpath(p, REPO) for p in chosen]}
    with open(os.path.join(model_dir, "run_record.json"), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
    size = sum(os.path.getsize(os.path.join(model_dir, f)) for f in DEMO_FILES)
    print(f"Exported the demo model ({size / 1e6:.2f} MB) to {model_dir} and {len(chosen)} images to {image_dir}")
    return chosen


def headline(results: dict, k_ratio: float) -> dict[str, float]:
    """One run's numbers at the model's `k_ratio`: selector hit rate, LookWhere and teacher accuracy, and the gap."""
    rows = [row for row in results["per_k_ratio"] if abs(row["k_ratio"] - k_ratio) < 1e-9]
    if not rows:
        raise ValueError(f"The evaluation has no row for k_ratio {k_ratio}; add it to --k_ratios.")
    teacher = results["accuracy_teacher_full_resolution"]
    return {
        "k_ratio": k_ratio,
        "selector_hit_rate": rows[0]["selector_hit_rate"],
        "accuracy_lookwhere": rows[0]["accuracy_lookwhere"],
        "accuracy_teacher_full_resolution": teacher,
        "accuracy_gap_points": 100.0 * (teacher - rows[0]["accuracy_lookwhere"]),
    }


def format_per_seed(per_seed: dict[str, dict]) -> str:
    """A table with one row per seed of `headline` numbers."""
    k_ratio = next(iter(per_seed.values()))["k_ratio"]
    lines = [
        f"| seed | selector hit rate (k_ratio {k_ratio:g}) | LookWhere acc. | teacher acc. | gap (points) |",
        "|---|---|---|---|---|",
    ]
    for seed, h in per_seed.items():
        lines.append(
            f"| {seed} | {100 * h['selector_hit_rate']:.1f}% | {100 * h['accuracy_lookwhere']:.1f}% "
            f"| {100 * h['accuracy_teacher_full_resolution']:.1f}% | {h['accuracy_gap_points']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def update_results_md(args, summary: dict, eval_md: str) -> None:
    """Replace (or append) this benchmark's section of benchmarks/RESULTS.md, leaving the rest of the file alone.
    Copies the run's figures next to this script so that the section can show them."""
    for name in FIGURES:
        source = os.path.join(args.output_dir, name)
        if os.path.isfile(source):
            shutil.copy2(source, os.path.join(HERE, name))
    _write_section(args, summary, eval_md)


def _write_section(args, summary: dict, eval_md: str) -> None:
    t = summary["timings"]
    stage_times = {
        stage: [seed_t[stage]["wall_s"] for seed_t in t["seeds"].values() if stage in seed_t] for stage in STAGES[1:]
    }
    total_wall = summary["total_wall_s"]
    total_cpu = sum(v["cpu_s"] for v in _all_timings(t))
    per_stage = ", ".join([f"data {t['data']['wall_s'] / 60:.1f} min"] if "data" in t else []) + "".join(
        f", {stage} {sum(v) / len(v) / 60:.1f} min" for stage, v in stage_times.items() if v
    )
    seeds = ", ".join(map(str, args.seeds))
    body = [
        SECTION,
        "",
        (
            "The paper's Traffic Signs experiment in miniature: one real handwritten digit (scikit-learn's 8x8 "
            f"scans, scaled to {args.min_digit_size}-{args.max_digit_size} px, white ink) somewhere on a "
            f"{args.canvas_size}x{args.canvas_size} canvas full of clutter (lines, blobs, digit-like stroke "
            "fragments); the label is the digit. Train / validation / test use disjoint source digits. Teacher: "
            f"DINOv2-with-registers ViT, {args.num_hidden_layers} layers, width {args.hidden_size}, patch "
            f"{args.patch_size} ({args.canvas_size // args.patch_size}x{args.canvas_size // args.patch_size} "
            "patches), **trained supervised from scratch** (no self-supervised teacher is available offline). "
            f"LookWhere: distilled from it without labels (selector depth {args.selector_depth} at "
            f"{args.low_res_size} px), then fine-tuned with labels at k_ratio {args.k_ratio}, selector frozen. Hit "
            "rate = share of test images where at least one chosen patch overlaps the digit's box."
        ),
        "",
        (
            "What it took for a from-scratch ViT teacher to learn this within CPU minutes (measured: with digits "
            "anywhere, of 40-112 px, it stayed at chance for 300-600 steps in every variant we tried): each digit "
            "lies inside one random cell of the 28 px patch grid (`make_dataset.py --align_to_grid 28`), and the "
            "teacher gets an auxiliary per-patch loss (`train_teacher.py --token_loss_weight 1`: each patch token "
            "predicts the digit class if it overlaps the digit box, else 'no digit'). What made the teacher's "
            "attention map, the selector's target, point at the digit on every seed: an attention-map loss "
            "(`train_teacher.py --attention_loss_weight 1`). Both use the training boxes, for the teacher only. "
            "LookWhere itself never sees boxes, and its pretraining no labels. The fine-tuning runs "
            "`run_image_classification.py --no_augment` (random crops cut the digit out of view; mirrored digits "
            "change meaning). How the recipe was made robust across seeds, and what did not work: "
            "`benchmarks/sparse_digits/README.md`."
        ),
        "",
        f"Command (one command, all stages, training seeds {seeds} on the same data; the numbers below are from it):",
        "",
        "```bash",
        summary["command"],
        "```",
        "",
        (
            f"Run time: {total_wall / 60:.1f} min wall for all {len(args.seeds)} seeds ({per_stage} per seed), "
            f"{total_cpu / 60:.1f} min of CPU time. The 2 CPU cores were shared with other jobs during this run, so "
            "the wall time is pessimistic. For the same reason the 1-thread latencies are the reliable ones: with 2 "
            "threads on a busy machine the threads wait for each other and the figures swing by several times "
            "between runs. The column 'makes its low-res view' includes LookWhere's bilinear 448->224 resize of the "
            "input batch, which on this CPU costs about as much as the whole model (PyTorch's NCHW bilinear kernel; "
            "the processor makes the view once in preprocessing, as `pipeline` does)."
        ),
        "",
        "Per seed, at the fine-tuned k_ratio:",
        "",
        format_per_seed(summary["per_seed"]).strip(),
        "",
        eval_md.strip(),
        "",
    ]
    if summary.get("rerun_command"):
        body.insert(-2, f"The evaluation tables were regenerated afterwards with `{summary['rerun_command']}`.\n")
    if all(os.path.isfile(os.path.join(HERE, name)) for name in FIGURES):
        body += [
            "![Sparse Digits: accuracy and hit rate vs k_ratio, mean ± std](sparse_digits/sparse_digits.png)",
            "",
            f"![Where LookWhere (seed {args.seeds[0]}) looked on test images](sparse_digits/selection_examples.png)",
            "",
        ]
    text = "# Results\n"
    if os.path.isfile(RESULTS_MD):
        with open(RESULTS_MD, encoding="utf-8") as f:
            text = f.read()
    section = "\n".join(body)
    if SECTION in text:
        start = text.index(SECTION)
        nxt = text.find("\n## ", start + len(SECTION))
        text = text[:start] + section + ("\n" + text[nxt + 1 :] if nxt != -1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with open(RESULTS_MD, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"Updated '{SECTION}' in {RESULTS_MD}")


def _all_timings(timings: dict) -> list[dict]:
    return ([timings["data"]] if "data" in timings else []) + [
        v for seed_timings in timings["seeds"].values() for v in seed_timings.values()
    ]


def seed_paths(out: str, seed: int) -> dict[str, str]:
    """The folders of one training seed's run (the data are shared)."""
    root = os.path.join(out, f"seed_{seed}")
    paths = {name: os.path.join(root, name) for name in ("teacher", "pretrained", "finetuned", "eval", "logs")}
    paths["data"] = os.path.join(out, "data")
    return paths


def aggregate(args, out: str) -> tuple[dict, dict] | tuple[None, None]:
    """Aggregate the seeds' evaluations (mean ± std) into OUTPUT_DIR/results.{json,md} and sparse_digits.png; copy
    the first seed's selection_examples.png. Returns (aggregate, per-seed headline numbers), or (None, None) when
    a seed has no evaluation yet."""
    from evaluate_sparse_digits import aggregate_results, format_markdown, plot_results

    runs = []
    for seed in args.seeds:
        path = os.path.join(seed_paths(out, seed)["eval"], "results.json")
        if not os.path.isfile(path):
            return None, None
        with open(path, encoding="utf-8") as f:
            runs.append(json.load(f))
    results = aggregate_results(runs, args.seeds)
    per_seed = {str(seed): headline(run, args.k_ratio) for seed, run in zip(args.seeds, runs, strict=True)}
    results["per_seed_headline"] = per_seed
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(out, "results.md"), "w", encoding="utf-8") as f:
        f.write(format_per_seed(per_seed) + "\n" + format_markdown(results))
    try:
        plot_results(results, os.path.join(out, "sparse_digits.png"))
    except ImportError:
        print("matplotlib is not installed: no figures (pip install matplotlib)")
    examples = os.path.join(seed_paths(out, args.seeds[0])["eval"], "selection_examples.png")
    if os.path.isfile(examples):
        shutil.copy2(examples, os.path.join(out, "selection_examples.png"))
    return results, per_seed


def main(argv=None) -> dict:
    args = parse_args(argv)
    for script in (PRETRAIN_SCRIPT, FINETUNE_SCRIPT):
        if not os.path.isfile(script):
            raise SystemExit(f"Missing {script}: this benchmark runs the repository's example scripts.")
    out = os.path.abspath(args.output_dir)
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    env = stage_environment(args.num_threads)
    timings: dict = {"seeds": {}}
    command = "python benchmarks/sparse_digits/run_benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:])
    start = time.time()
    data_dir = os.path.join(out, "data")
    if "data" in args.stages:
        if args.reuse_data and os.path.isfile(os.path.join(data_dir, "dataset_info.json")):
            print(f"Reusing the data in {data_dir}")
        else:
            stage_timings: dict = {}
            command_line = stage_commands(args, seed_paths(out, args.seeds[0]), args.seeds[0])["data"]
            run_stage("data", command_line, os.path.join(out, "logs", "data.log"), env, stage_timings)
            timings["data"] = stage_timings["data"]
    for seed in args.seeds:
        paths = seed_paths(out, seed)
        os.makedirs(paths["logs"], exist_ok=True)
        commands = stage_commands(args, paths, seed)
        timings["seeds"][str(seed)] = {}
        for stage in STAGES[1:]:
            if stage in args.stages:
                log = os.path.join(paths["logs"], f"{stage}.log")
                run_stage(f"seed {seed}: {stage}", commands[stage], log, env, timings["seeds"][str(seed)])
        timings["seeds"][str(seed)] = {k.split(": ")[1]: v for k, v in timings["seeds"][str(seed)].items()}

    summary = {
        "command": command,
        "timings": timings,
        "total_wall_s": round(time.time() - start, 1),
        "arguments": vars(args),
    }
    previous_path = os.path.join(out, "summary.json")
    if os.path.isfile(previous_path) and set(args.stages) != set(STAGES):
        # a partial rerun (e.g. only evaluate, or only --export_demo): keep the earlier full run's command and times
        with open(previous_path, encoding="utf-8") as f:
            previous = json.load(f)
        if "seeds" in previous.get("timings", {}):
            summary["command"], summary["timings"] = previous["command"], previous["timings"]
            summary["total_wall_s"] = previous["total_wall_s"]
            if "data" in timings or any(timings["seeds"].values()):
                summary["rerun_command"], summary["rerun_timings"] = command, timings
            elif previous.get("rerun_command"):  # nothing re-ran (e.g. only --update_results)
                summary["rerun_command"] = previous["rerun_command"]
                summary["rerun_timings"] = previous.get("rerun_timings", {})
    results, per_seed = aggregate(args, out)
    if results is not None:
        summary["per_seed"] = per_seed
        print("\n" + format_per_seed(per_seed))
    if args.export_demo:
        if per_seed is None:
            raise SystemExit("--export_demo needs every seed's evaluation (run the evaluate stage).")
        record = {
            "seed": args.demo_seed,
            "data_seed": args.data_seed,
            "command": summary["command"],
            "test_results": per_seed[str(args.demo_seed)],
            "all_seeds": per_seed,
            "git_commit": _git_commit(),
        }
        paths = seed_paths(out, args.demo_seed)
        summary["demo_images"] = [
            os.path.relpath(p, REPO) for p in export_demo(args, paths["finetuned"], paths["data"], record)
        ]
    with open(previous_path, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    if args.update_results:
        if results is None:
            raise SystemExit("--update_results needs every seed's evaluation (run the evaluate stage).")
        from evaluate_sparse_digits import format_markdown

        update_results_md(args, summary, format_markdown(results))
    print(
        f"\nSparse Digits benchmark finished in {(time.time() - start) / 60:.1f} min; summary: {previous_path}, "
        f"results (mean ± std over seeds {args.seeds}): {os.path.join(out, 'results.md')}"
    )
    return summary


def _git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


if __name__ == "__main__":
    main()
