"""The `accelerate` training loop of every `*_no_trainer.py` script (fine-tuning and pretraining), and the one
checkpoint / resume routine.

Resuming is exact, also in the middle of an epoch: `accelerator.save_state` keeps model, optimizer, scheduler and RNG
states; the data order is a function of `(seed, epoch)` (accelerate's seedable sampler); the batches of the epoch
already trained are skipped; and every example's augmentation is seeded from `(seed, epoch, index)`
([`~lookwhere_hf.training.data.SeededDataset`]), so it does not depend on what the loader fetched ahead.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .arguments import ArgumentError, NoTrainerArguments
from .metrics import RunningMeans, TaskMetric

NO_TRAINER_CHECKPOINT = re.compile(r"^(step|epoch)_(\d+)$")
TRAINER_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
LATEST = ("latest", "last", "true")
NO_DECAY_SUFFIXES = ("cls_token", "register_tokens", "position_embeddings")
PIPELINE_TASKS = {"ForImageClassification": "image-classification", "ForSemanticSegmentation": "image-segmentation"}


# ----------------------------------------------------------------------------------------------- checkpoints
def parse_checkpointing_steps(value: str | None) -> int | str | None:
    """`--checkpointing_steps`: None, `"epoch"` or a positive int."""
    if value is None or value == "epoch":
        return value
    if not str(value).isdigit() or int(value) < 1:
        raise ArgumentError(f"--checkpointing_steps must be a positive number of steps or 'epoch', got {value!r}.")
    return int(value)


def resolve_checkpoint(value: str | None, output_dir: str, pattern: re.Pattern = NO_TRAINER_CHECKPOINT) -> Path | None:
    """The checkpoint folder `--resume_from_checkpoint` names: the given folder, or with `latest` (`last`) the newest
    one in `output_dir` whose name matches `pattern` (`step_N` / `epoch_N`, or the Trainer's `checkpoint-N`); None if
    there is none (training starts from scratch)."""
    if value is None:
        return None
    if str(value).lower() in LATEST:
        folders = [p for p in Path(output_dir).glob("*") if p.is_dir() and pattern.match(p.name)]
        if not folders:
            print(f"--resume_from_checkpoint {value}: no checkpoint in {output_dir}, starting from scratch.")
            return None
        return max(folders, key=lambda p: p.stat().st_mtime)
    path = Path(value)
    if not path.is_dir() or not pattern.match(path.name):
        names = (
            "step_<N> or epoch_<N> written by --checkpointing_steps"
            if pattern is NO_TRAINER_CHECKPOINT
            else "checkpoint-<N>"
        )
        raise ArgumentError(
            f"--resume_from_checkpoint {value!r}: expected a checkpoint folder named {names} (or 'latest')."
        )
    return path


def checkpoint_position(checkpoint: Path, steps_per_epoch: int) -> tuple[int, int]:
    """`(completed_steps, epoch)` a `step_N` / `epoch_N` checkpoint resumes at."""
    kind, number = NO_TRAINER_CHECKPOINT.match(checkpoint.name).groups()
    if kind == "epoch":
        return (int(number) + 1) * steps_per_epoch, int(number) + 1
    return int(number), int(number) // steps_per_epoch


# ----------------------------------------------------------------------------------------------- setup
def make_accelerator(args: NoTrainerArguments):
    """Check the loop arguments, then an `Accelerator` with gradient accumulation, optional trackers and a seedable
    sampler (the shuffling order depends only on seed and epoch, so resuming reproduces it).

    Without GPUs, a multi-process launch (`accelerate launch --multi_gpu --num_processes N`, `torchrun`) trains on CPU
    processes with the gloo backend. DDP does not search for unused parameters: the LookWhere models freeze the ones
    that get no gradient (the selector head, which top-k does not differentiate through, and the extractor's own
    CLS / register tokens).
    """
    from accelerate import Accelerator, DataLoaderConfiguration

    parse_checkpointing_steps(args.checkpointing_steps)
    if args.resume_from_checkpoint is not None and args.resume_from_checkpoint.lower() not in LATEST:
        resolve_checkpoint(args.resume_from_checkpoint, args.output_dir)  # a wrong path fails before loading anything
    for flag in ("gradient_accumulation_steps", "max_train_steps", "logging_steps", "per_device_train_batch_size"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ArgumentError(f"--{flag} must be >= 1, got {value}.")
    if args.mixed_precision not in (None, "no", "fp16", "bf16"):
        raise ArgumentError(f"--mixed_precision must be 'no', 'fp16' or 'bf16', got {args.mixed_precision!r}.")
    kwargs = {"log_with": args.report_to, "project_dir": args.output_dir} if args.with_tracking else {}
    if args.mixed_precision:
        kwargs["mixed_precision"] = args.mixed_precision
    multi_process = int(os.environ.get("WORLD_SIZE", "1")) > 1
    no_accelerator = not torch.cuda.is_available() and not (hasattr(torch, "xpu") and torch.xpu.is_available())
    # accelerate only sets up CPU (gloo) distributed training when asked for CPU
    kwargs["cpu"] = args.cpu or (multi_process and no_accelerator)
    return Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
        **kwargs,
    )


def create_optimizer(model: nn.Module, args: NoTrainerArguments) -> torch.optim.Optimizer:
    """AdamW (fused where the device supports it) with weight decay on the weight matrices only: not on biases,
    norms, LayerScale, CLS / register tokens and position embeddings."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 or name.endswith(NO_DECAY_SUFFIXES) else decay).append(param)
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [group for group in groups if group["params"]]
    kwargs = {"lr": args.learning_rate, "betas": (args.adam_beta1, args.adam_beta2)}
    try:  # fused AdamW (CPU / CUDA) is several times faster than the per-parameter loop on a ViT-B
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(groups, **kwargs)


# ----------------------------------------------------------------------------------------------- the loop
def train_loop(
    accelerator,
    args: NoTrainerArguments,
    model: nn.Module,
    train_dataset,
    *,
    collate_fn: Callable,
    eval_dataset=None,
    metric: TaskMetric | None = None,
    log_names: tuple[str, ...] = ("loss",),
    pass_step: bool = False,
    updates_per_batch: int = 1,
    project_name: str = "lookwhere",
) -> tuple[nn.Module, dict[str, Any]]:
    """Train `model` on `train_dataset`: AdamW + scheduler, gradient accumulation and clipping, a progress bar, the
    running means of `log_names` every `--logging_steps` (a JSON line, the progress bar, the trackers), evaluation
    after every epoch (with `eval_dataset` and `metric`), `--checkpointing_steps` and `--resume_from_checkpoint`.

    Args:
        train_dataset: a map-style dataset (a [`SeededDataset`] for exact resumes) or an `IterableDataset` (streamed;
            needs `--max_train_steps`).
        log_names: scalar model outputs to log (e.g. the pretraining loss components).
        pass_step: call the model with `step=<optimizer step>` ([`LookWhereForPreTraining`] seeds its per-step k
            with it).
        updates_per_batch: optimizer updates per batch (Glance-and-Focus stage 2: PPO epochs over one rollout); the
            model is called with `ppo_epoch=<update>` when > 1. Needs `--gradient_accumulation_steps 1`.

    Returns:
        `(model, results)`: the unwrapped model, and `train_loss` (mean over the last epoch), `train_steps`, `epoch`
        and the last evaluation's `eval_*` metrics.
    """
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    checkpointing = parse_checkpointing_steps(args.checkpointing_steps)
    if updates_per_batch > 1 and args.gradient_accumulation_steps != 1:
        raise ArgumentError(
            f"{updates_per_batch} updates per batch (PPO epochs) need --gradient_accumulation_steps 1, got "
            f"{args.gradient_accumulation_steps}."
        )
    streaming = isinstance(train_dataset, torch.utils.data.IterableDataset)
    if streaming and not args.max_train_steps:
        raise ArgumentError("A streamed dataset has no length: pass --max_train_steps.")
    loader_kwargs = {"collate_fn": collate_fn, "num_workers": args.dataloader_num_workers}
    # Own generators: iterating a DataLoader otherwise draws a seed from the global RNG.
    train_loader = DataLoader(
        train_dataset, shuffle=not streaming, batch_size=args.per_device_train_batch_size,
        generator=None if streaming else torch.Generator().manual_seed(args.seed), **loader_kwargs,
    )  # fmt: skip
    optimizer = create_optimizer(model, args)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    eval_loader = None
    if eval_dataset is not None:
        eval_loader = DataLoader(
            eval_dataset, batch_size=args.per_device_eval_batch_size,
            generator=torch.Generator().manual_seed(args.seed), **loader_kwargs,
        )  # fmt: skip
        eval_loader = accelerator.prepare(eval_loader)
    steps_per_epoch = (
        args.max_train_steps if streaming else math.ceil(len(train_loader) / args.gradient_accumulation_steps)
    )
    max_steps = args.max_train_steps or math.ceil(args.num_train_epochs * steps_per_epoch)
    num_epochs = math.ceil(max_steps / steps_per_epoch)
    lr_scheduler = get_scheduler(
        args.lr_scheduler_type,
        optimizer=optimizer,
        num_warmup_steps=args.num_warmup_steps * accelerator.num_processes,
        num_training_steps=max_steps * accelerator.num_processes,
    )
    lr_scheduler = accelerator.prepare(lr_scheduler)
    if args.with_tracking:
        accelerator.init_trackers(project_name, {k: str(v) for k, v in vars(args).items()})

    batch = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    examples = "streamed" if streaming else f"{len(train_dataset)}"
    accelerator.print(
        f"Training: {examples} examples, {num_epochs} epochs, {max_steps} optimizer steps of {batch} examples "
        f"({accelerator.num_processes} processes x {args.per_device_train_batch_size} x "
        f"{args.gradient_accumulation_steps} accumulation)."
    )
    completed_steps, first_epoch, skip_batches = 0, 0, 0
    checkpoint = resolve_checkpoint(args.resume_from_checkpoint, args.output_dir)
    if checkpoint is not None:
        accelerator.print(f"Resuming from {checkpoint}")
        accelerator.load_state(str(checkpoint))
        completed_steps, first_epoch = checkpoint_position(checkpoint, steps_per_epoch)
        skip_batches = (completed_steps - first_epoch * steps_per_epoch) * args.gradient_accumulation_steps
        if completed_steps >= max_steps:
            accelerator.print(f"The checkpoint is at step {completed_steps} >= {max_steps} steps: nothing to train.")

    def save_checkpoint(name: str) -> None:
        path = os.path.join(args.output_dir, name)
        accelerator.save_state(path)
        accelerator.print(f"Saved the training state to {path}")

    progress = tqdm(
        total=max_steps, initial=min(completed_steps, max_steps), disable=not accelerator.is_local_main_process,
        desc="Training",
    )  # fmt: skip
    window, epoch_loss = RunningMeans(log_names), RunningMeans(("loss",))
    eval_metrics: dict[str, float] = {}
    train_loss = float("nan")
    for epoch in range(first_epoch, num_epochs):
        if completed_steps >= max_steps:
            break
        model.train()
        train_loader.set_epoch(epoch)  # the sampler's order
        if hasattr(train_dataset, "set_epoch"):
            train_dataset.set_epoch(epoch)  # the augmentation seeds (the streamed shuffle)
        loader = train_loader
        if epoch == first_epoch and skip_batches:
            loader = accelerator.skip_first_batches(train_loader, skip_batches)
        for batch in loader:
            with accelerator.accumulate(model):
                for update in range(updates_per_batch):
                    kwargs = {"step": completed_steps} if pass_step else {}
                    outputs = model(**batch, **kwargs, **({"ppo_epoch": update} if updates_per_batch > 1 else {}))
                    accelerator.backward(outputs.loss)
                    if accelerator.sync_gradients and args.max_grad_norm:
                        accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad()
                lr_scheduler.step()
            window.add(outputs)
            epoch_loss.add(outputs)
            if not accelerator.sync_gradients:
                continue
            completed_steps += 1
            progress.update(1)
            if completed_steps % args.logging_steps == 0 or completed_steps == max_steps:
                logs = {**window.pop(accelerator.gather), "lr": lr_scheduler.get_last_lr()[0]}
                progress.set_postfix({key: f"{value:.4g}" for key, value in logs.items()})
                accelerator.print(json.dumps({"step": completed_steps, **{k: round(v, 6) for k, v in logs.items()}}))
                if args.with_tracking:
                    accelerator.log(logs, step=completed_steps)
            if isinstance(checkpointing, int) and completed_steps % checkpointing == 0:
                save_checkpoint(f"step_{completed_steps}")
            if completed_steps >= max_steps:
                break
        train_loss = epoch_loss.pop(accelerator.gather)["loss"]
        summary = f"epoch {epoch}: train_loss {train_loss:.4f}"
        if eval_loader is not None:
            eval_metrics = evaluate(accelerator, model, eval_loader, metric)
            summary += "".join(f", {k} {v:.4f}" for k, v in eval_metrics.items() if not k.startswith("eval_iou_"))
        accelerator.print(summary)
        if args.with_tracking:
            accelerator.log({"train_loss": train_loss, "epoch": epoch, **eval_metrics}, step=completed_steps)
        if checkpointing == "epoch":
            save_checkpoint(f"epoch_{epoch}")
    progress.close()
    if eval_loader is not None and not eval_metrics:  # nothing trained (resumed at the end): still evaluate
        eval_metrics = evaluate(accelerator, model, eval_loader, metric)
    if args.with_tracking:
        accelerator.end_training()
    accelerator.wait_for_everyone()
    results = {
        **eval_metrics,
        "train_loss": train_loss,
        "train_steps": completed_steps,
        "epoch": completed_steps / steps_per_epoch,
    }
    return accelerator.unwrap_model(model), results


def evaluate(accelerator, model: nn.Module, eval_loader, metric: TaskMetric) -> dict[str, float]:
    """Run the evaluation set through the model (all processes), gather the predictions and compute the metric.
    Returns the metrics with an `eval_` prefix."""
    from tqdm.auto import tqdm

    model.eval()
    for batch in tqdm(eval_loader, desc="Evaluating", leave=False, disable=not accelerator.is_local_main_process):
        with torch.no_grad():  # every input but the labels (the model would compute a loss)
            logits = model(**{key: value for key, value in batch.items() if key != "labels"}).logits
        predictions, references = accelerator.gather_for_metrics(
            (metric.predict(logits, batch["labels"]), batch["labels"])
        )
        metric.add_batch(predictions, references)
    model.train()
    return {f"eval_{key}": value for key, value in metric.compute().items()}


def save_outputs(accelerator, args: NoTrainerArguments, model: nn.Module, processor, results: dict[str, Any]) -> None:
    """Write the model, the image processor, `all_results.json` (and `eval_results.json`) to `args.output_dir`,
    upload the folder with `--push_to_hub`, and print the results and how to load the folder."""
    model.save_pretrained(args.output_dir, is_main_process=accelerator.is_main_process, save_function=accelerator.save)
    if accelerator.is_main_process:
        processor.save_pretrained(args.output_dir)
        write_results(args.output_dir, "all_results.json", results)
        eval_metrics = {key: value for key, value in results.items() if key.startswith("eval_")}
        if eval_metrics:
            write_results(args.output_dir, "eval_results.json", eval_metrics)
        if args.push_to_hub:
            from huggingface_hub import HfApi

            api = HfApi(token=args.hub_token)
            repo_id = api.create_repo(args.hub_model_id or Path(args.output_dir).name, exist_ok=True).repo_id
            api.upload_folder(
                repo_id=repo_id, folder_path=args.output_dir, ignore_patterns=["step_*", "epoch_*"],
                commit_message="End of training",
            )  # fmt: skip
            accelerator.print(f"Pushed to https://huggingface.co/{repo_id}")
        report_results(results, args.output_dir, model, accelerator.print)
    accelerator.wait_for_everyone()


def write_results(output_dir: str, name: str, results: dict[str, Any]) -> str:
    """Write `results` as JSON (`all_results.json`, as `Trainer` does) and return the path."""
    path = os.path.join(output_dir, name)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=2, sort_keys=True)
    return path


def report_results(results: dict[str, Any], output_dir: str, model: nn.Module, print_fn: Callable = print) -> None:
    """Print the evaluation numbers, what was saved where, and how to load it (from the model class's task)."""
    timing = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second")
    evals = {
        k: v for k, v in results.items() if k.startswith("eval_") and k not in timing and isinstance(v, (int, float))
    }
    if evals:
        print_fn("Evaluation: " + ", ".join(f"{k[5:]} = {v:.4f}" for k, v in sorted(evals.items())))
    name = type(model).__name__
    task = next((task for suffix, task in PIPELINE_TASKS.items() if name.endswith(suffix)), None)
    what = "the model" if task else "the pretrained student (no teacher weights)"
    how = f'pipeline("{task}", model=<that folder>)' if task else "LookWhereModel / <task model>.from_pretrained"
    print_fn(f"Saved {what}, its image processor and the results to {os.path.abspath(output_dir)}; load it with {how}.")
