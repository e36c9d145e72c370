"""The training stages of the families harness: their command lines, the subprocess runner, and the one stage that
is a function of this folder (`train-random-rung`).

Per training seed, in order:

- the recipe (`RECIPE_STAGES`): `data` (the description's generator, once, from `--data_seed`), `teacher`
  (`benchmarks/sparse_digits/train_teacher.py`: a from-scratch DINOv2-with-registers ViT at full resolution),
  `pretrain` (`run_pretraining.py`: LookWhere distilled from the teacher, no labels) and `finetune`
  (`run_image_classification.py --no_augment`: fixed k, selector frozen);
- the families (`FAMILY_STAGES`): `multirung` (every rung each step, glance head), `random_rung` (one random rung per
  step), `lookupvit` (from the teacher, multi-grid) and `gf_stage1..3` (Glance-and-Focus, `run_glance_focus.py`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
from descriptions import DatasetDescription
from imagefolder import ImageFolderSplit

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
ENTRY_POINT = os.path.join(HERE, "compare_families.py")
TRAIN_TEACHER_SCRIPT = os.path.join(REPO, "benchmarks", "sparse_digits", "train_teacher.py")
PRETRAIN_SCRIPT = os.path.join(REPO, "examples", "pytorch", "pretraining", "run_pretraining.py")
FINETUNE_SCRIPT = os.path.join(REPO, "examples", "pytorch", "image-classification", "run_image_classification.py")
GLANCE_FOCUS_SCRIPT = os.path.join(REPO, "examples", "pytorch", "glance-focus", "run_glance_focus.py")
RECIPE_STAGES = ("data", "teacher", "pretrain", "finetune")
TRAIN_STAGES = ("multirung", "random_rung", "lookupvit")
GF_STAGES = ("gf_stage1", "gf_stage2", "gf_stage3")
FAMILY_STAGES = (*TRAIN_STAGES, *GF_STAGES)
GF_BACKBONES = ("teacher", "resnet")
# Glance-and-Focus epochs of stages 2 (policy) and 3 (classifier with the policy); stage 1 gets the rest of
# LookWhere's budget.
GF_POLICY_AND_LAST_EPOCHS = (2.0, 2.0)


def flags(**values) -> list[str]:
    """`--key value` pairs for a command line (True: the flag alone)."""
    return [
        item for key, value in values.items() for item in ([f"--{key}"] if value is True else [f"--{key}", str(value)])
    ]


def comma_list(text: str, flag: str, convert: type, what: str) -> list:
    """The items of a comma-separated flag value through `convert`; a ValueError names the flag."""
    try:
        values = [convert(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated {what}, got {text!r}.") from None
    if not values:
        raise ValueError(f"{flag} must list at least one value ({what}), got {text!r}.")
    return values


def run_stage(name: str, command: list[str], log_path: str, env: dict, timings: dict) -> None:
    """Run one stage as a subprocess, teeing its output to `log_path`; record wall-clock and CPU seconds in
    `timings[name]`. Raises `SystemExit` naming the log when the stage fails."""
    print(f"\n=== [{name}] {' '.join(command)}\n    log: {log_path}", flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True, bufsize=1, cwd=REPO
        )
        for line in process.stdout:
            log.write(line)
            sys.stdout.write(line)
        process.wait()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    timings[name] = {
        "wall_s": round(time.time() - start, 1),
        "cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1),
    }
    print(
        f"=== [{name}] done in {timings[name]['wall_s']:.0f} s wall, {timings[name]['cpu_s']:.0f} s CPU "
        f"(exit code {process.returncode})",
        flush=True,
    )
    if process.returncode != 0:
        raise SystemExit(f"Stage {name!r} failed (exit code {process.returncode}); see {log_path}.")


def stage_environment(num_threads: int | None, extra_path: str | None = None) -> dict:
    """The environment of every stage: offline, unbuffered, `num_threads` OMP/MKL threads."""
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join([extra_path, os.environ.get("PYTHONPATH", "")])
    if num_threads:
        env.update(OMP_NUM_THREADS=str(num_threads), MKL_NUM_THREADS=str(num_threads))
    return env


def common_training_flags(batch_size: int, output_dir: str, epochs: float, lr: float, seed: int) -> list[str]:
    """The Trainer flags every training stage shares (AdamW with weight decay 0.05, cosine schedule, 10% warm-up)."""
    return flags(
        output_dir=output_dir, num_train_epochs=epochs, learning_rate=lr, per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=64, weight_decay=0.05, warmup_steps=0.1, lr_scheduler_type="cosine",
        logging_steps=20, save_strategy="no", report_to="none", seed=seed, dataloader_num_workers=0,
        disable_tqdm="false",
    )  # fmt: skip


def seed_paths(output_dir: str, seed: int, recipe_dir: str | None = None, gf_backbone: str = "teacher") -> dict:
    """The folders of one training seed: the recipe's (`data`, shared by the seeds, and `teacher`, `pretrained`,
    `finetuned`) under `recipe_dir` (default: `output_dir`), the families' and the evaluation's under `output_dir`.
    The ResNet Glance-and-Focus variant has its own folders, so that both variants can coexist."""
    recipe_dir = recipe_dir or output_dir
    source, target = os.path.join(recipe_dir, f"seed_{seed}"), os.path.join(output_dir, f"seed_{seed}")
    paths = {name: os.path.join(source, name) for name in ("teacher", "pretrained", "finetuned")}
    paths.update({name: os.path.join(target, name) for name in (*FAMILY_STAGES, "eval", "logs")})
    if gf_backbone == "resnet":
        paths.update({name: os.path.join(target, name.replace("gf_", "gf_resnet_")) for name in GF_STAGES})
        paths["gf_resnet_backbone"] = os.path.join(target, "gf_resnet_backbone")
        paths["gf_resnet_init"] = os.path.join(target, "gf_resnet_init")
    paths["data"] = os.path.join(recipe_dir, "data")
    return paths


def stage_done(name: str, paths: dict) -> bool:
    """Whether a stage's output exists (the data's `dataset_info.json`, a model's `model.safetensors`)."""
    if name == "data":
        return os.path.isfile(os.path.join(paths["data"], "dataset_info.json"))
    return os.path.isfile(os.path.join(paths[stage_folder(name)], "model.safetensors"))


def stage_folder(name: str) -> str:
    """The `seed_paths` key of a training stage's output folder."""
    return {"pretrain": "pretrained", "finetune": "finetuned"}.get(name, name)


def recipe_commands(description: DatasetDescription, paths: dict, seed: int, data_seed: int) -> dict[str, list[str]]:
    """The command lines of the recipe stages (data, teacher, pretrain, finetune) of training seed `seed`."""
    d, py = description, sys.executable
    return {
        "data": [
            py, os.path.join(REPO, d.generator),
            *flags(output_dir=paths["data"], seed=data_seed, canvas_size=d.canvas_size, **d.data_flags,
                   overwrite=True),
        ],
        "teacher": [
            py, TRAIN_TEACHER_SCRIPT,
            *flags(data_dir=paths["data"], image_size=d.canvas_size, patch_size=d.patch_size, **d.teacher_flags,
                   do_train=True, do_eval=True, eval_strategy="no"),
            *common_training_flags(d.batch_size, paths["teacher"], d.teacher_epochs, d.teacher_lr, seed),
            *flags(per_device_train_batch_size=d.teacher_batch_size),
        ],
        "pretrain": [
            py, PRETRAIN_SCRIPT,
            *flags(teacher_name_or_path=paths["teacher"], train_dir=paths["data"], image_size=d.canvas_size,
                   low_res_size=d.low_res_size, selector_depth=d.selector_depth, k_min=d.k_min, k_max=d.k_max,
                   **d.pretrain_flags, no_augment=True, do_train=True),
            *common_training_flags(d.batch_size, paths["pretrained"], d.pretrain_epochs, d.pretrain_lr, seed),
        ],
        # The example's photo augmentation (random resized crops, flips) is off: small crops cut a small item out of
        # view and mirrored digits change meaning.
        "finetune": [
            py, FINETUNE_SCRIPT,
            *flags(model_name_or_path=paths["pretrained"], dataset_name=paths["data"], image_size=d.canvas_size,
                   low_res_size=d.low_res_size, k_ratio=d.k_ratio, no_augment=True, do_train=True, do_eval=True,
                   eval_strategy="no"),
            *common_training_flags(d.batch_size, paths["finetuned"], d.finetune_epochs, d.finetune_lr, seed),
        ],
    }  # fmt: skip


def training_commands(args, paths: dict, seed: int) -> dict[str, list[str]]:
    """The command lines of the LookWhere-family and LookupViT stages of seed `seed` (`args`: the harness's)."""
    d, py = args.description, sys.executable
    ratios = ",".join(str(r) for r in args.k_ratios)
    grids = ",".join(str(g) for g in args.compressed_grids)
    worker_flags = flags(
        data_dir=paths["data"], seed=seed, epochs=args.multirung_epochs, learning_rate=d.finetune_lr,
        batch_size=d.batch_size,
    )  # fmt: skip
    return {
        "multirung": [
            py, FINETUNE_SCRIPT,
            *flags(model_name_or_path=paths["pretrained"], dataset_name=paths["data"], image_size=d.canvas_size,
                   low_res_size=d.low_res_size, k_ratio=d.k_ratio, k_ratios=ratios, glance_head=True,
                   freeze_selector=True, no_augment=True, do_train=True, do_eval=True, eval_strategy="no"),
            *common_training_flags(d.batch_size, paths["multirung"], args.multirung_epochs, d.finetune_lr, seed),
        ],
        "random_rung": [
            py, ENTRY_POINT, "train-random-rung", *worker_flags,
            *flags(model=paths["pretrained"], output_dir=paths["random_rung"], k_ratio=d.k_ratio, k_ratios=ratios),
        ],
        "lookupvit": [
            py, FINETUNE_SCRIPT,
            *flags(model_family="lookupvit", init_from_dinov2=paths["teacher"], dataset_name=paths["data"],
                   image_size=d.canvas_size, compressed_grids=grids, compressed_grid=grids.split(",")[0],
                   no_augment=True, do_train=True, do_eval=True, eval_strategy="no"),
            *common_training_flags(d.batch_size, paths["lookupvit"], args.lookupvit_epochs, args.lookupvit_lr, seed),
        ],
    }  # fmt: skip


def glance_focus_commands(args, paths: dict, seed: int) -> dict[str, list[str]]:
    """The three Glance-and-Focus stages of seed `seed` (`run_glance_focus.py`, accelerate loop): encoders from the
    seed's teacher (a DINOv2-with-registers ViT: the glance sees the whole image at the crop size, each focus step
    one full-resolution crop) or, with `--glance_focus_backbone resnet`, from the model `build_resnet_glance_focus`
    saves; the recipe's batch size and fine-tuning learning rate (stage 2: the official PPO settings). The teacher
    variant sees `--glance_focus_crop_pct` of the canvas, centred (1.0: all of it, as every other family)."""
    d = args.description
    # The teacher variant: `--image_size` and `--crop_pct` make run_glance_focus.py build the processor from the
    # config in every stage (`--glance_focus_crop_pct` of the canvas, centred). The ResNet variant's saved model
    # already has the canvas size and a whole-canvas processor, which it keeps.
    resnet = args.glance_focus_backbone == "resnet"
    start = {"model_name_or_path": paths["gf_resnet_init"]} if resnet else {"backbone_name_or_path": paths["teacher"]}
    view = {} if resnet else {"image_size": d.canvas_size, "crop_pct": args.glance_focus_crop_pct}
    common = flags(
        dataset_name=paths["data"], **view,
        per_device_train_batch_size=d.batch_size, per_device_eval_batch_size=64, weight_decay=0.05,
        lr_scheduler_type="cosine", seed=seed, no_augment=True, logging_steps=20,
    )  # fmt: skip
    first, second, third = args.glance_focus_epochs
    # the official single PPO update per rollout unless --glance_focus_ppo_epochs asks for more
    ppo = {} if args.glance_focus_ppo_epochs == 1 else {"ppo_epochs": args.glance_focus_ppo_epochs}
    return {
        "gf_stage1": [
            sys.executable, GLANCE_FOCUS_SCRIPT, *common,
            *flags(stage=1, **start, num_steps=args.glance_focus_steps,
                   patch_size=args.glance_focus_patch_size, output_dir=paths["gf_stage1"], num_train_epochs=first,
                   learning_rate=args.glance_focus_lr),
        ],
        "gf_stage2": [
            sys.executable, GLANCE_FOCUS_SCRIPT, *common,
            *flags(stage=2, model_name_or_path=paths["gf_stage1"], output_dir=paths["gf_stage2"],
                   num_train_epochs=second, **ppo),
        ],
        "gf_stage3": [
            sys.executable, GLANCE_FOCUS_SCRIPT, *common,
            *flags(stage=3, model_name_or_path=paths["gf_stage2"], output_dir=paths["gf_stage3"],
                   num_train_epochs=third, learning_rate=args.glance_focus_lr),
        ],
    }  # fmt: skip


def resnet_backbone_config(args):
    """The `ResNetConfig` of `--glance_focus_backbone resnet`: basic blocks, the stem as wide as the first stage."""
    from transformers import ResNetConfig

    sizes = args.glance_focus_resnet_sizes
    return ResNetConfig(
        embedding_size=sizes[0], hidden_sizes=list(sizes), depths=list(args.glance_focus_resnet_depths),
        layer_type="basic", hidden_act="relu", downsample_in_first_stage=False,
    )  # fmt: skip


def label_settings(names: list[str]) -> dict:
    """`num_labels`, `id2label` and `label2id` for the class names in label order."""
    id2label = dict(enumerate(names))
    return {"num_labels": len(names), "id2label": id2label, "label2id": {n: i for i, n in id2label.items()}}


def build_resnet_glance_focus(args, paths: dict, seed: int, names: list[str]) -> None:
    """`--glance_focus_backbone resnet`, before stage 1: a ResNet with random weights drawn from `seed`, saved with
    `save_pretrained` in `gf_resnet_backbone`; then the Glance-and-Focus model whose two encoders both hold exactly
    those weights (`GlanceFocusForImageClassification.from_backbone`, the stage-1 settings: the class `names`, steps,
    crop size, canvas size) with an image processor that keeps the whole canvas, saved in `gf_resnet_init`, which
    stage 1 starts from (`--model_name_or_path`).

    The processor is why stage 1 does not get `--backbone_name_or_path`: `run_glance_focus.py` then builds the
    official ImageNet evaluation transform (shorter side to `image_size / 0.875`, centre crop `image_size`), which on
    the 448 px canvas drops a 28 px border (on Sparse Digits the outer ring of digit cells, 60 of 256)."""
    from transformers import ResNetModel

    from lookwhere_hf.models.glance_focus import GlanceFocusForImageClassification, GlanceFocusImageProcessor

    torch.manual_seed(seed)
    backbone = ResNetModel(resnet_backbone_config(args))
    backbone.save_pretrained(paths["gf_resnet_backbone"])
    canvas = args.description.canvas_size
    model = GlanceFocusForImageClassification.from_backbone(
        paths["gf_resnet_backbone"], **label_settings(names), num_steps=args.glance_focus_steps,
        patch_size=args.glance_focus_patch_size, image_size=canvas, glance_size=args.glance_focus_glance_size,
    )  # fmt: skip
    model.save_pretrained(paths["gf_resnet_init"])
    processor = GlanceFocusImageProcessor.from_model_config(
        model.config, size={"height": canvas, "width": canvas}, do_center_crop=False
    )
    processor.save_pretrained(paths["gf_resnet_init"])


# ----------------------------------------------------------------------------------------------------- worker
def _worker_parser(name: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"compare_families.py {name}")
    for flag in ("data_dir", "model", "output_dir"):
        p.add_argument(f"--{flag}", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--epochs", type=float, required=True)
    p.add_argument("--learning_rate", type=float, required=True)
    p.add_argument("--batch_size", type=int, required=True)
    p.add_argument("--max_train_samples", type=int, default=None)
    return p


def _training_arguments(args, output_dir: str):
    """The Trainer settings of the fine-tuning stage (`common_training_flags`), as an object."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=output_dir, num_train_epochs=args.epochs, learning_rate=args.learning_rate,
        per_device_train_batch_size=args.batch_size, weight_decay=0.05, warmup_steps=0.1, lr_scheduler_type="cosine",
        logging_steps=20, save_strategy="no", report_to="none", seed=args.seed, dataloader_num_workers=0,
        remove_unused_columns=False,
    )  # fmt: skip


def train_random_rung(argv: list[str]) -> None:
    """Multi-rung fine-tuning with one random rung per step (uniform over glance + focus rungs).

    A focus rung `k` is the model's own fixed-`k` forward and loss; the glance rung is the glance head on the
    selector's output, built as `LookWhereForImageClassification._forward_rungs` builds it. Everything else (frozen
    selector, data, schedule, seed) is the `multirung` stage's."""
    from imagefolder import class_names
    from transformers import Trainer, set_seed

    from lookwhere_hf import LookWhereForImageClassification, LookWhereImageProcessor

    p = _worker_parser("train-random-rung")
    p.add_argument("--k_ratio", type=float, required=True)
    p.add_argument("--k_ratios", required=True)
    args = p.parse_args(argv)
    set_seed(args.seed)
    ratios = comma_list(args.k_ratios, "--k_ratios", float, "fractions")
    model = LookWhereForImageClassification.from_pretrained(
        args.model, k_ratio=args.k_ratio, anytime_k_ratios=ratios, glance_head=True, train_all_rungs=False,
        freeze_selector=True, **label_settings(class_names(args.data_dir)),
    )  # fmt: skip
    processor = LookWhereImageProcessor.from_pretrained(args.model)
    train = ImageFolderSplit(args.data_dir, "train", processor, args.max_train_samples)
    grid = model.config.extractor_config.image_size // model.config.patch_size
    rung_k = [0] + model.config.rung_ks(grid * grid)
    generator = torch.Generator().manual_seed(args.seed)

    class RandomRungTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            k = rung_k[int(torch.randint(len(rung_k), (1,), generator=generator))]
            pixel_values, low_res = inputs["pixel_values"], inputs["low_res_pixel_values"]
            if k == 0:
                _, prefix, patches, _ = model.lookwhere.select(pixel_values, low_res)
                logits = model.glance_classifier(model.dropout(torch.cat((prefix[:, 0], patches.mean(dim=1)), -1)))
            else:
                logits = model(pixel_values=pixel_values, low_res_pixel_values=low_res, k=k).logits
            loss = torch.nn.functional.cross_entropy(logits, inputs["labels"])
            return (loss, {"logits": logits}) if return_outputs else loss

    trainer = RandomRungTrainer(model=model, args=_training_arguments(args, args.output_dir), train_dataset=train)
    metrics = trainer.train().metrics
    trainer.save_model(args.output_dir)
    processor.save_pretrained(args.output_dir)
    with open(os.path.join(args.output_dir, "train_results.json"), "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=1)
    print(f"saved {args.output_dir}: {metrics}")
