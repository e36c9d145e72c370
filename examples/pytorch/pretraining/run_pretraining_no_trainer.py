#!/usr/bin/env python
"""Pretrain a LookWhere model by distillation from a frozen DINOv2(-with-registers) teacher, with a plain
`accelerate` training loop (no Trainer).

Same data, model and loss as `run_pretraining.py` (whose data/model helpers this script reuses); the loop, the
progress bar, checkpointing (`--checkpointing_steps`, `accelerator.save_state`) and resuming
(`--resume_from_checkpoint`) are written out here. Run with `python`, `accelerate launch` or `torchrun`.

    accelerate launch run_pretraining_no_trainer.py \
        --teacher_name_or_path facebook/dinov2-with-registers-base \
        --train_dir path/to/images --output_dir lookwhere-pretrained \
        --per_device_train_batch_size 32 --learning_rate 1e-4 --max_train_steps 100000 --checkpointing_steps 5000

Checkpoint folders `step_N` (and the final output folder) hold the *student only*; the final folder loads with
`LookWhereModel.from_pretrained` / `LookWhereForImageClassification.from_pretrained`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import SchedulerType, get_scheduler

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_pretraining import (
    COMPONENTS,
    DataTrainingArguments,
    ModelArguments,
    build_image_processor,
    build_model,
    collate_fn,
    prepare_dataset,
)

logger = get_logger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="LookWhere pretraining by distillation, plain accelerate loop.")
    # teacher / student
    parser.add_argument("--teacher_name_or_path", type=str, required=True, help="DINOv2(-with-registers) teacher.")
    parser.add_argument("--model_name_or_path", type=str, default=None, help="Continue from a LookWhere student.")
    parser.add_argument("--selector_depth", type=int, default=3, help="Teacher layers the selector keeps.")
    parser.add_argument("--no_init_from_teacher", action="store_true", help="Random student instead of a teacher copy.")
    parser.add_argument("--teacher_dtype", type=str, default=None, help="e.g. bfloat16 (default float32).")
    parser.add_argument("--attn_implementation", type=str, default=None, help="'sdpa' (default), 'eager', ...")
    parser.add_argument("--k_min", type=int, default=16, help="Fewest patches the extractor sees per step.")
    parser.add_argument("--k_max", type=int, default=128, help="Most patches the extractor sees per step.")
    parser.add_argument("--cls_loss_weight", type=float, default=1.0)
    parser.add_argument("--dense_loss_weight", type=float, default=1.0)
    parser.add_argument("--map_loss_weight", type=float, default=0.1)
    parser.add_argument("--low_res_antialias", action="store_true", help="Antialiased low-res view (JAX recipe).")
    # data
    parser.add_argument("--dataset_name", type=str, default=None, help="Hub name or local `datasets` / image folder.")
    parser.add_argument("--dataset_config_name", type=str, default=None)
    parser.add_argument("--train_dir", type=str, default=None, help="A folder of images (imagefolder).")
    parser.add_argument("--train_split", type=str, default="train")
    parser.add_argument("--image_column_name", type=str, default="image")
    parser.add_argument("--streaming", action="store_true", help="Stream the dataset; needs --max_train_steps.")
    parser.add_argument("--shuffle_buffer_size", type=int, default=10_000)
    parser.add_argument("--max_train_samples", type=int, default=None)
    parser.add_argument("--image_size", type=int, default=518)
    parser.add_argument("--low_res_size", type=int, default=154)
    parser.add_argument("--no_augment", action="store_true", help="Resize + center crop instead of augmenting.")
    parser.add_argument("--crop_scale_min", type=float, default=0.08)
    parser.add_argument("--rand_augment_magnitude", type=int, default=9)
    parser.add_argument("--rand_augment_num_ops", type=int, default=2)
    parser.add_argument("--random_erasing", type=float, default=0.25)
    parser.add_argument("--dataloader_num_workers", type=int, default=0)
    # optimization
    parser.add_argument("--per_device_train_batch_size", type=int, default=8)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--weight_decay", type=float, default=0.05)
    parser.add_argument("--adam_beta1", type=float, default=0.9)
    parser.add_argument("--adam_beta2", type=float, default=0.999)
    parser.add_argument("--max_grad_norm", type=float, default=1.0)
    parser.add_argument("--num_train_epochs", type=int, default=3)
    parser.add_argument("--max_train_steps", type=int, default=None, help="Overrides --num_train_epochs.")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--lr_scheduler_type", type=SchedulerType, default="cosine")
    parser.add_argument("--num_warmup_steps", type=int, default=0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--mixed_precision", type=str, default=None, choices=("no", "fp16", "bf16"))
    parser.add_argument("--cpu", action="store_true", help="Train on CPU even if an accelerator is available.")
    # output
    parser.add_argument("--output_dir", type=str, required=True)
    parser.add_argument("--checkpointing_steps", type=str, default=None, help="Save state every N steps, or 'epoch'.")
    parser.add_argument("--resume_from_checkpoint", type=str, default=None, help="A step_N/epoch_N folder, or 'last'.")
    parser.add_argument("--logging_steps", type=int, default=10)
    parser.add_argument("--with_tracking", action="store_true", help="Log to the trackers of --report_to.")
    parser.add_argument("--report_to", type=str, default="all")
    args = parser.parse_args(argv)

    if args.dataset_name is None and args.train_dir is None:
        parser.error("Pass --dataset_name (a `datasets` dataset) or --train_dir (a folder of images).")
    if args.streaming and not args.max_train_steps:
        parser.error("--streaming needs --max_train_steps (a streamed dataset has no length).")
    if not 1 <= args.k_min <= args.k_max:
        parser.error(f"Need 1 <= --k_min <= --k_max, got k_min={args.k_min}, k_max={args.k_max}.")
    cs = args.checkpointing_steps
    if cs is not None and cs != "epoch" and not (cs.isdigit() and int(cs) > 0):
        parser.error(f"--checkpointing_steps must be a positive integer or 'epoch', got {cs!r}.")
    return args


def to_dataclasses(args: argparse.Namespace) -> tuple[ModelArguments, DataTrainingArguments]:
    model_args = ModelArguments(
        teacher_name_or_path=args.teacher_name_or_path,
        model_name_or_path=args.model_name_or_path,
        selector_depth=args.selector_depth,
        init_from_teacher=not args.no_init_from_teacher,
        teacher_dtype=args.teacher_dtype,
        attn_implementation=args.attn_implementation,
        k_min=args.k_min,
        k_max=args.k_max,
        cls_loss_weight=args.cls_loss_weight,
        dense_loss_weight=args.dense_loss_weight,
        map_loss_weight=args.map_loss_weight,
        low_res_antialias=args.low_res_antialias,
    )
    data_args = DataTrainingArguments(
        dataset_name=args.dataset_name,
        dataset_config_name=args.dataset_config_name,
        train_dir=args.train_dir,
        train_split=args.train_split,
        image_column_name=args.image_column_name,
        streaming=args.streaming,
        shuffle_buffer_size=args.shuffle_buffer_size,
        max_train_samples=args.max_train_samples,
        image_size=args.image_size,
        low_res_size=args.low_res_size,
        augment=not args.no_augment,
        crop_scale_min=args.crop_scale_min,
        rand_augment_magnitude=args.rand_augment_magnitude,
        rand_augment_num_ops=args.rand_augment_num_ops,
        random_erasing=args.random_erasing,
    )
    return model_args, data_args


def find_resume_folder(args: argparse.Namespace) -> str | None:
    """`--resume_from_checkpoint last` -> the newest `step_N` / `epoch_N` in --output_dir."""
    path = args.resume_from_checkpoint
    if path is None:
        return None
    if path.lower() in ("last", "true"):
        candidates = [] if not os.path.isdir(args.output_dir) else [
            d for d in os.listdir(args.output_dir) if re.fullmatch(r"(step|epoch)_\d+", d)
        ]
        if not candidates:
            raise ValueError(f"--resume_from_checkpoint last: no step_N / epoch_N folder in {args.output_dir!r}.")
        path = os.path.join(args.output_dir, max(candidates, key=lambda d: os.path.getmtime(os.path.join(args.output_dir, d))))
    if not os.path.isdir(path):
        raise ValueError(f"--resume_from_checkpoint {path!r} is not a folder saved by this script (step_N / epoch_N).")
    return path


def main(argv: list[str] | None = None):
    args = parse_args(argv)
    model_args, data_args = to_dataclasses(args)
    accelerator_kwargs = {"gradient_accumulation_steps": args.gradient_accumulation_steps, "cpu": args.cpu}
    if args.mixed_precision:
        accelerator_kwargs["mixed_precision"] = args.mixed_precision
    if args.with_tracking:
        accelerator_kwargs.update(log_with=args.report_to, project_dir=args.output_dir)
    accelerator = Accelerator(**accelerator_kwargs)

    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S", level=logging.INFO
    )
    logger.info(accelerator.state, main_process_only=False)
    resume_folder = find_resume_folder(args)
    set_seed(args.seed)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
    accelerator.wait_for_everyone()

    # Everything that can fail on bad input fails here, before any training.
    model = build_model(model_args, data_args)
    train_dataset = prepare_dataset(data_args, seed=args.seed)
    image_processor = build_image_processor(model, data_args)

    generator = torch.Generator().manual_seed(args.seed)
    shuffle = not args.streaming
    train_dataloader = DataLoader(
        train_dataset,
        shuffle=shuffle,
        generator=generator if shuffle else None,
        collate_fn=collate_fn,
        batch_size=args.per_device_train_batch_size,
        num_workers=args.dataloader_num_workers,
        drop_last=False,
    )

    no_decay = ("bias", "layernorm", "norm1", "norm2", "cls_token", "register_tokens", "position_embeddings")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if not any(key in n for key in no_decay)], "weight_decay": args.weight_decay},
        {"params": [p for n, p in named if any(key in n for key in no_decay)], "weight_decay": 0.0},
    ]
    try:  # fused AdamW (CPU / CUDA) is several times faster than the per-parameter loop on a ViT-B student
        optimizer = torch.optim.AdamW(groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), fused=True)
    except (RuntimeError, ValueError):
        optimizer = torch.optim.AdamW(groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2))

    if args.streaming:
        num_update_steps_per_epoch = args.max_train_steps
    else:
        num_update_steps_per_epoch = math.ceil(
            math.ceil(len(train_dataloader) / accelerator.num_processes) / args.gradient_accumulation_steps
        )
    if args.max_train_steps is None:
        args.max_train_steps = args.num_train_epochs * num_update_steps_per_epoch
    num_epochs = math.ceil(args.max_train_steps / num_update_steps_per_epoch)
    lr_scheduler = get_scheduler(
        name=args.lr_scheduler_type,
        optimizer=optimizer,
        num_warmup_steps=args.num_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )
    model, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
        model, optimizer, train_dataloader, lr_scheduler
    )
    if args.with_tracking:
        accelerator.init_trackers("lookwhere_pretraining", {k: str(v) for k, v in vars(args).items()})

    total_batch_size = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info("***** Running LookWhere pretraining *****")
    logger.info(f"  Teacher = {args.teacher_name_or_path}, k in [{args.k_min}, {args.k_max}]")
    logger.info(f"  Total train batch size (w. parallel, distributed & accumulation) = {total_batch_size}")
    logger.info(f"  Total optimization steps = {args.max_train_steps}")

    completed_steps, starting_epoch, resume_step = 0, 0, 0
    if resume_folder is not None:
        accelerator.print(f"Resumed from checkpoint: {resume_folder}")
        accelerator.load_state(resume_folder)
        name = os.path.basename(os.path.normpath(resume_folder))
        kind, number = name.split("_")
        if kind == "epoch":
            starting_epoch = int(number) + 1
            completed_steps = starting_epoch * num_update_steps_per_epoch
        else:
            completed_steps = int(number)
            starting_epoch = completed_steps // num_update_steps_per_epoch
            # batches (micro-steps) of the interrupted epoch that were already used
            resume_step = (completed_steps - starting_epoch * num_update_steps_per_epoch) * args.gradient_accumulation_steps

    progress_bar = tqdm(
        range(args.max_train_steps), initial=completed_steps, disable=not accelerator.is_local_main_process,
        desc="pretraining",
    )
    sums, count = None, 0
    for epoch in range(starting_epoch, num_epochs):
        model.train()
        if hasattr(train_dataloader, "set_epoch"):
            train_dataloader.set_epoch(epoch)
        if hasattr(train_dataset, "set_epoch"):
            train_dataset.set_epoch(epoch)  # per-image augmentation seeds (and the streamed shuffle) depend on it
        if epoch == starting_epoch and resume_step:
            active_dataloader = accelerator.skip_first_batches(train_dataloader, resume_step)
        else:
            active_dataloader = train_dataloader
        for batch in active_dataloader:
            with accelerator.accumulate(model):
                outputs = model(**batch, step=completed_steps)
                accelerator.backward(outputs.loss)
                if accelerator.sync_gradients and args.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            values = torch.stack([outputs.loss.detach().float()] + [outputs[name].detach().float() for name in COMPONENTS])
            sums = values if sums is None else sums + values
            count += 1
            if not accelerator.sync_gradients:
                continue
            completed_steps += 1
            progress_bar.update(1)
            if completed_steps % args.logging_steps == 0 or completed_steps == args.max_train_steps:
                means = accelerator.gather((sums / count).unsqueeze(0)).mean(dim=0).tolist()
                logs = dict(zip(("loss",) + COMPONENTS, means))
                logs["lr"] = lr_scheduler.get_last_lr()[0]
                progress_bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items()})
                accelerator.print(json.dumps({"step": completed_steps, **{k: round(v, 6) for k, v in logs.items()}}))
                if args.with_tracking:
                    accelerator.log(logs, step=completed_steps)
                sums, count = None, 0
            if args.checkpointing_steps not in (None, "epoch") and completed_steps % int(args.checkpointing_steps) == 0:
                folder = os.path.join(args.output_dir, f"step_{completed_steps}")
                accelerator.save_state(folder)
                accelerator.print(f"Saved checkpoint {folder}")
            if completed_steps >= args.max_train_steps:
                break
        if args.checkpointing_steps == "epoch":
            accelerator.save_state(os.path.join(args.output_dir, f"epoch_{epoch}"))
        if completed_steps >= args.max_train_steps:
            break
    progress_bar.close()

    if args.with_tracking:
        accelerator.end_training()
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.save_pretrained(
        args.output_dir, is_main_process=accelerator.is_main_process, save_function=accelerator.save
    )
    if accelerator.is_main_process:
        image_processor.save_pretrained(args.output_dir)
        accelerator.print(
            f"Trained {completed_steps} steps. Saved the pretrained student (no teacher weights) to "
            f"{os.path.abspath(args.output_dir)}; load it with LookWhereModel / "
            "LookWhereForImageClassification.from_pretrained."
        )
    return unwrapped


if __name__ == "__main__":
    main()
