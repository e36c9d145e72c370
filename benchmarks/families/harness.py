"""The families harness: one where-to-look dataset description in, the families side by side out.

One command runs, for a `DatasetDescription` (`descriptions.py`) and each training seed: the data (once), the
full-resolution teacher, LookWhere's pretraining (no labels) and fixed-k fine-tuning, the other families
(multi-rung / budgeted LookWhere, LookupViT, Glance-and-Focus), the evaluation (budgets fitted on validation, numbers
on test, per size bin where the items have sizes), and then the report: `results.json`, `results.md`,
`families.png` in `--output_dir` and, with `--update_results`, the description's section of `benchmarks/RESULTS.md`.

Every stage skips its work when its output exists (`--force` redoes it), so an interrupted run continues where it
stopped. `--recipe_dir` reuses the data, teacher and LookWhere models of another run (e.g. `run_benchmark.py`'s).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time

import torch
from descriptions import DESCRIPTIONS, FLAG_SETS, RECIPE_FIELDS, DatasetDescription
from evaluation import evaluate_seed
from imagefolder import class_names
from report import RESULTS_MD, aggregate, update_results_md
from stages import (
    FAMILY_STAGES,
    GF_BACKBONES,
    GF_POLICY_AND_LAST_EPOCHS,
    RECIPE_STAGES,
    build_resnet_glance_focus,
    comma_list,
    glance_focus_commands,
    recipe_commands,
    run_stage,
    seed_paths,
    stage_done,
    stage_environment,
    stage_folder,
    train_random_rung,
    training_commands,
)

STAGES = (*RECIPE_STAGES, *FAMILY_STAGES, "evaluate", "aggregate")
WORKERS = {"train-random-rung": train_random_rung}
PROGRAM = "python benchmarks/families/compare_families.py"
TEACHER_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")


def key_values(text: str, flag: str) -> dict:
    """`key=value,key=value` as a dict; values become int or float where they parse as one."""
    out = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier() or not value.strip():
            raise ValueError(f"{flag} takes comma-separated key=value pairs (e.g. num_train=48), got {item!r}.")
        value = value.strip()
        for convert in (int, float):
            try:
                value = convert(value)
                break
            except ValueError:
                continue
        out[key.strip()] = value
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", required=True, choices=sorted(DESCRIPTIONS), help="The dataset description to run.")
    p.add_argument("--output_dir", default=None, help="Everything goes here (default: outputs/<dataset>).")
    p.add_argument(
        "--recipe_dir",
        default=None,
        help="Reuse the data and the per-seed teacher, pretrained and fine-tuned LookWhere of another run (data/, "
        "seed_<s>/{teacher,pretrained,finetuned}; its summary.json's recipe applies). Default: --output_dir, where "
        "the recipe stages make them.",
    )
    p.add_argument("--seeds", default="0,1,2", help="Comma-separated training seeds; one full training run each.")
    p.add_argument("--data_seed", type=int, default=0, help="Seed of the generated data (the same for every seed).")
    g = p.add_argument_group("recipe overrides (default: the dataset description's values)")
    kinds = {f.name: {"int": int, "float": float}[f.type] for f in dataclasses.fields(DatasetDescription)
             if f.name in RECIPE_FIELDS}  # fmt: skip
    for name in RECIPE_FIELDS:
        g.add_argument(f"--{name}", type=kinds[name], default=None)
    g.add_argument("--data_flags", default="", help="Generator flags, key=value,... (e.g. items=digits,num_train=300).")
    g.add_argument("--teacher_flags", default="", help="train_teacher.py flags, key=value,... (e.g. hidden_size=32).")
    g.add_argument("--pretrain_flags", default="", help="run_pretraining.py flags, key=value,... (e.g. map_layer=-1).")
    g.add_argument(
        "--teacher_model",
        default=None,
        help="A trained teacher folder (train_teacher.py's output) that every seed uses: the teacher stage copies it "
        "instead of training one per seed (the way LookWhere distils one pretrained DINOv2). Its image and patch "
        "sizes must be the description's.",
    )
    g = p.add_argument_group("families")
    g.add_argument(
        "--k_ratios",
        default="0.025,0.05,0.1,0.25",
        help="Fixed-k evaluation points and the focus rungs of the multi-rung LookWhere (fractions of the patches).",
    )
    g.add_argument(
        "--budget_speedups",
        default="6,5,4,3",
        help="Budgets as FLOPs reductions against the teacher: target mean GFLOPs per image = teacher GFLOPs / s. "
        "Budgets outside a model's glance-to-last-rung cost range are skipped.",
    )
    g.add_argument(
        "--compressed_grids", default="2,4,8", help="LookupViT: compressed grids (s for s x s), trained and evaluated."
    )
    g.add_argument(
        "--lookupvit_epochs", type=float, default=None, help="Default: LookWhere's pretraining + fine-tuning epochs."
    )
    g.add_argument("--lookupvit_lr", type=float, default=None, help="Default: the recipe's fine-tuning rate.")
    g.add_argument("--multirung_epochs", type=float, default=None, help="Default: the recipe's fine-tuning epochs.")
    g.add_argument(
        "--glance_focus_seeds", default=None, help="Seeds that also train Glance-and-Focus (default: all --seeds)."
    )
    g.add_argument(
        "--glance_focus_epochs",
        default=None,
        help="Glance-and-Focus epochs of stage 1 (encoders + classifier, random crops), 2 (policy, PPO) and 3 "
        "(classifier with the policy); default: 2 each for stages 2 and 3 and the rest of LookWhere's pretraining "
        "+ fine-tuning epochs for stage 1.",
    )
    g.add_argument(
        "--glance_focus_backbone",
        choices=GF_BACKBONES,
        default="teacher",
        help="Encoders of Glance-and-Focus: `teacher` (both start from the seed's ViT teacher) or `resnet` (both from "
        "one small transformers ResNet with random weights drawn from the seed, --glance_focus_resnet_*; folders "
        "gf_resnet_stage1..3, results in eval/glance_focus_resnet.json).",
    )
    g.add_argument("--glance_focus_resnet_sizes", default="16,32,64,128", help="`resnet`: channels of the 4 stages.")
    g.add_argument("--glance_focus_resnet_depths", default="1,1,1,1", help="`resnet`: blocks per stage.")
    g.add_argument(
        "--glance_focus_glance_size", type=int, default=None, help="`resnet`: side of the glance view (default: crop)."
    )
    g.add_argument(
        "--glance_focus_lr", type=float, default=None, help="Stages 1 and 3 (default: the recipe's fine-tuning rate)."
    )
    g.add_argument("--glance_focus_patch_size", type=int, default=112, help="Glance / crop size in pixels.")
    g.add_argument("--glance_focus_steps", type=int, default=4, help="Glance + focus steps T.")
    g.add_argument(
        "--glance_focus_ppo_epochs",
        type=int,
        default=1,
        help="Stage 2: PPO updates per rollout (`run_glance_focus.py --ppo_epochs`; official and default: 1).",
    )
    g.add_argument(
        "--glance_focus_crop_pct",
        type=float,
        default=None,
        help="Share of the canvas Glance-and-Focus's processor keeps, centred (teacher encoders; the ResNet variant "
        "keeps the whole canvas): 1.0 the whole canvas, what the other families see; 0.875 GFNet's evaluation "
        "transform. Default: the description's.",
    )
    g = p.add_argument_group("running and reporting")
    g.add_argument("--num_threads", type=int, default=None, help="OMP/torch threads for every stage.")
    g.add_argument("--latency_runs", type=int, default=10, help="Timed rounds per latency measurement.")
    g.add_argument("--latency_images", type=int, default=16, help="Test images per latency batch (batch 16).")
    g.add_argument(
        "--max_eval_samples",
        type=int,
        default=None,
        help="Evaluate on N images of each split (a seeded sample, the same in every run).",
    )
    g.add_argument("--stages", default=None, help="Comma-separated subset of " + ", ".join(STAGES) + ".")
    g.add_argument("--force", action="store_true", help="Re-run stages whose outputs exist (default: skip them).")
    g.add_argument("--update_results", action="store_true", help="Rewrite the dataset's section of --results_md.")
    g.add_argument("--results_md", default=RESULTS_MD, help="The results file --update_results writes to.")
    args = p.parse_args(argv)
    try:
        args.seeds = comma_list(args.seeds, "--seeds", int, "integers")
        args.k_ratios = comma_list(args.k_ratios, "--k_ratios", float, "fractions in (0, 1]")
        args.budget_speedups = comma_list(args.budget_speedups, "--budget_speedups", float, "numbers > 1")
        args.compressed_grids = comma_list(args.compressed_grids, "--compressed_grids", int, "integers >= 1")
        default_stages = STAGES if args.recipe_dir is None else STAGES[len(RECIPE_STAGES) :]
        args.stages = comma_list(args.stages or ",".join(default_stages), "--stages", str, "stage names")
        if args.glance_focus_epochs is not None:
            args.glance_focus_epochs = comma_list(args.glance_focus_epochs, "--glance_focus_epochs", float, "epochs")
        args.glance_focus_resnet_sizes = comma_list(
            args.glance_focus_resnet_sizes, "--glance_focus_resnet_sizes", int, "positive integers"
        )
        args.glance_focus_resnet_depths = comma_list(
            args.glance_focus_resnet_depths, "--glance_focus_resnet_depths", int, "positive integers"
        )
        args.glance_focus_seeds = (
            args.seeds
            if args.glance_focus_seeds is None
            else comma_list(args.glance_focus_seeds, "--glance_focus_seeds", int, "integers")
        )
        args.description = resolve_description(args)
    except ValueError as error:
        p.error(str(error))
    check_arguments(p, args)
    return args


def resolve_description(args) -> DatasetDescription:
    """The dataset description with, in this order, the reused run's recipe (`--recipe_dir`'s `summary.json`) and
    the command line's overrides applied; validated."""
    description = DESCRIPTIONS[args.dataset]
    changes: dict = {}
    if args.recipe_dir is not None:
        path = os.path.join(args.recipe_dir, "summary.json")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                saved = json.load(f).get("arguments", {})
            changes.update({name: saved[name] for name in RECIPE_FIELDS if name in saved})
            for name in FLAG_SETS:
                if isinstance(saved.get(name), dict):
                    changes[name] = saved[name]
    changes.update({name: getattr(args, name) for name in RECIPE_FIELDS if getattr(args, name) is not None})
    for name in FLAG_SETS:
        given = key_values(getattr(args, name), f"--{name}")
        if given:
            changes[name] = {**changes.get(name, getattr(description, name)), **given}
    return description.replace(**changes)


def check_arguments(p: argparse.ArgumentParser, args) -> None:
    """Validate the harness's arguments (each error names the flag and what to do)."""
    d = args.description
    args.output_dir = args.output_dir or os.path.join("outputs", d.name)
    if len(set(args.seeds)) != len(args.seeds):
        p.error(f"--seeds lists a seed twice: {args.seeds}.")
    unknown = set(args.stages) - set(STAGES)
    if unknown:
        p.error(f"--stages has unknown stages {sorted(unknown)}; use {', '.join(STAGES)}.")
    if args.recipe_dir is not None and set(args.stages) & set(RECIPE_STAGES):
        p.error(
            f"--stages {sorted(set(args.stages) & set(RECIPE_STAGES))} would rewrite the reused run in --recipe_dir; "
            "run them there (or drop --recipe_dir)."
        )
    if any(not 0 < r <= 1 for r in args.k_ratios):
        p.error(f"--k_ratios must be fractions in (0, 1], got {args.k_ratios}.")
    if any(s <= 1 for s in args.budget_speedups):
        p.error(f"--budget_speedups must be > 1 (a budget below the teacher's cost), got {args.budget_speedups}.")
    if any(g < 1 for g in args.compressed_grids):
        p.error(f"--compressed_grids must be integers >= 1, got {args.compressed_grids}.")
    if args.latency_runs < 1 or args.latency_images < 1:
        p.error("--latency_runs and --latency_images must be >= 1.")
    for flag in ("num_threads", "max_eval_samples"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            p.error(f"--{flag} must be >= 1 (or left out), got {getattr(args, flag)}.")
    if args.data_seed < 0:
        p.error(f"--data_seed must be >= 0, got {args.data_seed}.")
    if args.glance_focus_epochs is not None and len(args.glance_focus_epochs) != 3:
        p.error(f"--glance_focus_epochs needs the epochs of the three stages, got {args.glance_focus_epochs}.")
    sizes, depths = args.glance_focus_resnet_sizes, args.glance_focus_resnet_depths
    if len(sizes) != len(depths) or min(sizes + depths) < 1:
        p.error(
            f"--glance_focus_resnet_sizes {sizes} and --glance_focus_resnet_depths {depths} need one positive integer "
            "per ResNet stage each, as many sizes as depths."
        )
    if args.glance_focus_glance_size is not None and args.glance_focus_backbone != "resnet":
        p.error(
            "--glance_focus_glance_size is for --glance_focus_backbone resnet (the teacher's glance has the crop size)."
        )
    if not set(args.glance_focus_seeds) <= set(args.seeds):
        p.error(f"--glance_focus_seeds {args.glance_focus_seeds} must be among --seeds {args.seeds}.")
    if not 0 < args.glance_focus_patch_size <= d.canvas_size:
        p.error(
            f"--glance_focus_patch_size must be in (0, {d.canvas_size}] (the canvas side), got "
            f"{args.glance_focus_patch_size}."
        )
    if args.teacher_model is not None:
        problem = teacher_model_problem(args.teacher_model, d)
        if problem:
            p.error(f"--teacher_model {args.teacher_model}: {problem}")
        if args.recipe_dir is not None:
            p.error("--teacher_model and --recipe_dir both give the teacher; pass one of them.")
    if args.glance_focus_steps < 2:
        p.error(
            f"--glance_focus_steps must be >= 2 (a glance and at least one focus step), got {args.glance_focus_steps}."
        )
    if args.glance_focus_ppo_epochs < 1:
        p.error(f"--glance_focus_ppo_epochs must be >= 1, got {args.glance_focus_ppo_epochs}.")
    for flag in ("multirung_epochs", "lookupvit_epochs", "lookupvit_lr", "glance_focus_lr"):
        value = getattr(args, flag)
        if value is not None and not value > 0:
            p.error(f"--{flag} must be positive (or left out for the recipe's value), got {value}.")
    if args.glance_focus_epochs is not None and not min(args.glance_focus_epochs) > 0:
        p.error(f"--glance_focus_epochs must be positive for each of the three stages, got {args.glance_focus_epochs}.")
    grid = d.canvas_size // d.patch_size
    if any(g > grid for g in args.compressed_grids):
        p.error(
            f"--compressed_grids {args.compressed_grids}: LookupViT's compressed grid cannot be finer than the "
            f"{grid}x{grid} patch grid of the {d.canvas_size} px canvas."
        )
    if args.glance_focus_backbone == "teacher" and args.glance_focus_patch_size % d.patch_size:
        p.error(
            f"--glance_focus_patch_size {args.glance_focus_patch_size} must be a multiple of the teacher's patch size "
            f"{d.patch_size} (the crops are encoded by a ViT with that patch)."
        )
    args.multirung_epochs = d.finetune_epochs if args.multirung_epochs is None else args.multirung_epochs
    if args.lookupvit_epochs is None:
        args.lookupvit_epochs = d.pretrain_epochs + d.finetune_epochs
    args.lookupvit_lr = d.finetune_lr if args.lookupvit_lr is None else args.lookupvit_lr
    args.glance_focus_lr = d.finetune_lr if args.glance_focus_lr is None else args.glance_focus_lr
    given_crop_pct = args.glance_focus_crop_pct
    if given_crop_pct is not None and not 0 < given_crop_pct <= 1:
        p.error(f"--glance_focus_crop_pct must be in (0, 1] (1.0 keeps the whole canvas), got {given_crop_pct}.")
    if args.glance_focus_backbone == "resnet":
        if given_crop_pct not in (None, 1.0):
            p.error("--glance_focus_crop_pct is for the teacher encoders; the ResNet variant keeps the whole canvas.")
        args.glance_focus_crop_pct = 1.0
    elif given_crop_pct is None:
        args.glance_focus_crop_pct = d.glance_focus_crop_pct
    if args.glance_focus_epochs is None:
        stage1_epochs = d.pretrain_epochs + d.finetune_epochs - sum(GF_POLICY_AND_LAST_EPOCHS)
        if stage1_epochs <= 0:
            p.error(
                f"LookWhere's recipe has {d.pretrain_epochs + d.finetune_epochs:g} epochs, too few for the default "
                "Glance-and-Focus split (2 + 2 for stages 2 and 3, the rest for stage 1); pass --glance_focus_epochs."
            )
        args.glance_focus_epochs = [float(stage1_epochs), *GF_POLICY_AND_LAST_EPOCHS]


def teacher_model_problem(folder: str, d: DatasetDescription) -> str | None:
    """What makes `folder` unusable as every seed's teacher for description `d` (None when it is usable)."""
    missing = [name for name in TEACHER_FILES if not os.path.isfile(os.path.join(folder, name))]
    if missing:
        return f"not a saved teacher (missing {missing}); pass the output_dir of train_teacher.py."
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    if (config.get("image_size"), config.get("patch_size")) != (d.canvas_size, d.patch_size):
        return (
            f"its image / patch size {config.get('image_size')} / {config.get('patch_size')} px differ from the "
            f"description's {d.canvas_size} / {d.patch_size} px."
        )
    return None


def copy_teacher(folder: str, target: str) -> None:
    """The teacher stage with `--teacher_model`: copy the saved teacher into the seed's teacher folder and record
    where it came from (`teacher_source.json`)."""
    os.makedirs(target, exist_ok=True)
    for name in TEACHER_FILES:
        shutil.copy2(os.path.join(folder, name), os.path.join(target, name))
    with open(os.path.join(target, "teacher_source.json"), "w", encoding="utf-8") as f:
        json.dump({"teacher_model": os.path.abspath(folder)}, f, indent=1)
    print(f"=== teacher copied from {folder} to {target}")


def full_command(argv: list[str], program: str = PROGRAM) -> str:
    """The command line that reproduces a run made in passes: `argv` without `--stages` (finished stages are
    skipped, so the full command redoes only what is missing)."""
    kept, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == "--stages":
            skip = True
        elif not item.startswith("--stages="):
            kept.append(item)
    return f"{program} " + " ".join(kept)


def run_seed_training(args, seed: int, env: dict, timings: dict) -> None:
    """The recipe stages (teacher, pretrain, finetune) and the family stages of one seed, as `--stages` asks.
    Recipe timings go into `timings` (the run's `summary.json`), family timings into each stage's
    `stage_timing.json`."""
    d = args.description
    paths = seed_paths(args.output_dir, seed, args.recipe_dir, args.glance_focus_backbone)
    os.makedirs(paths["logs"], exist_ok=True)
    recipe = recipe_commands(d, paths, seed, args.data_seed)
    for name in RECIPE_STAGES[1:]:
        if name not in args.stages:
            continue
        if stage_done(name, paths) and not args.force:
            print(f"=== [seed {seed} {name}] exists, skipped: {paths[stage_folder(name)]} (--force re-runs it)")
        elif name == "teacher" and args.teacher_model is not None:
            copy_teacher(args.teacher_model, paths["teacher"])
        else:
            stage_timings: dict = {}
            log = os.path.join(paths["logs"], f"{name}.log")
            run_stage(f"seed {seed} {name}", recipe[name], log, env, stage_timings)
            timings.setdefault(str(seed), {})[name] = stage_timings[f"seed {seed} {name}"]
    if not set(args.stages) & {*FAMILY_STAGES, "evaluate"}:
        return
    missing = [name for name in ("teacher", "pretrained", "finetuned") if not os.path.isdir(paths[name])]
    if missing:
        source = args.recipe_dir or args.output_dir
        raise SystemExit(
            f"{source}/seed_{seed} lacks {missing}: run the recipe stages first ({PROGRAM} --dataset {d.name} "
            f"--output_dir {source} --seeds {seed} --stages data,teacher,pretrain,finetune)."
        )
    commands = training_commands(args, paths, seed)
    if seed in args.glance_focus_seeds:
        commands.update(glance_focus_commands(args, paths, seed))
    for name, command in commands.items():
        if name not in args.stages:
            continue
        if stage_done(name, paths) and not args.force:
            print(f"=== [seed {seed} {name}] exists, skipped: {paths[name]} (--force re-runs it)")
            continue
        if name == "gf_stage1" and args.glance_focus_backbone == "resnet":
            build_resnet_glance_focus(args, paths, seed, class_names(paths["data"]))
        stage_timings: dict = {}
        run_stage(f"seed {seed} {name}", command, os.path.join(paths["logs"], f"{name}.log"), env, stage_timings)
        with open(os.path.join(paths[name], "stage_timing.json"), "w", encoding="utf-8") as f:
            json.dump({**stage_timings[f"seed {seed} {name}"], "command": command}, f, indent=1)


def write_summary(args, command: str, timings: dict, start: float) -> str:
    """`--output_dir/summary.json`: the command, the recipe (the description after overrides) and the recipe stages'
    timings, merged with those of earlier passes of the same run."""
    path = os.path.join(args.output_dir, "summary.json")
    previous: dict = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            previous = json.load(f)
    merged = previous.get("timings", {"seeds": {}})
    merged.setdefault("seeds", {})
    if "data" in timings:
        merged["data"] = timings["data"]
    for seed, stages in timings["seeds"].items():
        merged["seeds"].setdefault(seed, {}).update(stages)
    summary = {
        "command": command,
        "dataset": args.description.name,
        "arguments": {
            **args.description.recipe(),
            "teacher_model": args.teacher_model,
            "glance_focus_crop_pct": args.glance_focus_crop_pct,
            "glance_focus_ppo_epochs": args.glance_focus_ppo_epochs,
        },
        "timings": merged,
        "wall_s_of_this_pass": round(time.time() - start, 1),
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    return path


def main(argv=None, program: str = PROGRAM, command_argv: list[str] | None = None) -> dict | None:
    """Run the harness (or, with a worker name first, that worker). Returns the aggregate when it was made.

    `program` and `command_argv` (default: `argv`) make the command line the report and `summary.json` quote (a
    wrapper passes its own)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in WORKERS:
        WORKERS[argv[0]](argv[1:])
        return None
    args = parse_args(argv)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    os.makedirs(os.path.join(args.output_dir, "logs"), exist_ok=True)
    env = stage_environment(args.num_threads)
    command = full_command(argv if command_argv is None else command_argv, program)
    timings: dict = {"seeds": {}}
    start = time.time()
    if "data" in args.stages:
        paths = seed_paths(args.output_dir, args.seeds[0])
        data_command = recipe_commands(args.description, paths, args.seeds[0], args.data_seed)["data"]
        if stage_done("data", paths) and not args.force:
            print(f"=== [data] exists, skipped: {paths['data']} (--force regenerates it)")
        else:
            run_stage("data", data_command, os.path.join(args.output_dir, "logs", "data.log"), env, timings)
    for seed in args.seeds:
        run_seed_training(args, seed, env, timings["seeds"])
        if args.recipe_dir is None:
            write_summary(args, command, timings, start)
        if "evaluate" in args.stages:
            evaluate_seed(args, seed)
    if args.recipe_dir is None:
        write_summary(args, command, timings, start)
    print(f"total wall {time.time() - start:.0f} s")
    if "aggregate" not in args.stages:
        return None
    agg = aggregate(args)
    if agg is not None and args.update_results:
        update_results_md(args, agg, command)
    return agg
