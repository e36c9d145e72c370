#!/usr/bin/env python
"""Pretrain a LookWhere model by distillation from a frozen DINOv2(-with-registers) teacher, with a plain
`accelerate` loop (no `Trainer`).

Same data, model and losses as `run_pretraining.py`; the loop (`lookwhere_hf.training.train_loop`, also used by the
fine-tuning no_trainer scripts) logs every loss component as JSON lines and in the progress bar, checkpoints with
`--checkpointing_steps` and resumes exactly with `--resume_from_checkpoint`. Run with `python`, `accelerate launch` or
`torchrun`:

    accelerate launch run_pretraining_no_trainer.py \\
        --teacher_name_or_path facebook/dinov2-with-registers-base \\
        --train_dir path/to/images --output_dir lookwhere-pretrained \\
        --per_device_train_batch_size 32 --learning_rate 1e-4 --max_train_steps 100000 --checkpointing_steps 5000

Checkpoint folders `step_N` (and the final output folder) hold the *student only*; the final folder loads with
`LookWhereModel.from_pretrained` / `LookWhereForImageClassification.from_pretrained`.
"""

import os

from accelerate.utils import set_seed

from lookwhere_hf.training import (
    PRETRAINING_LOSS_COMPONENTS,
    PretrainingDataArguments,
    PretrainingModelArguments,
    PretrainingNoTrainerArguments,
    PretrainingTransform,
    build_pretraining_model,
    collate_fn,
    describe_setup,
    load_pretraining_dataset,
    make_accelerator,
    parse_script_arguments,
    run_cli,
    save_outputs,
    train_loop,
    validate_pretraining_arguments,
)


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, args = parse_script_arguments(
        (PretrainingModelArguments, PretrainingDataArguments, PretrainingNoTrainerArguments), argv
    )

    # Everything that can be wrong with the arguments is checked before data or weights are loaded.
    validate_pretraining_arguments(
        model_args, data_args, max_steps=args.max_train_steps, max_steps_flag="--max_train_steps"
    )
    accelerator = make_accelerator(args)
    set_seed(args.seed)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)

    model, image_processor = build_pretraining_model(model_args, data_args)
    with accelerator.main_process_first():
        transform = PretrainingTransform(image_processor, data_args)
        train_dataset = load_pretraining_dataset(data_args, model_args, transform, seed=args.seed)
    describe_setup(model, image_processor, {"train": train_dataset}, accelerator.print)

    model, results = train_loop(
        accelerator, args, model, train_dataset, collate_fn=collate_fn,
        log_names=("loss", *PRETRAINING_LOSS_COMPONENTS), pass_step=True, project_name="lookwhere_pretraining",
    )  # fmt: skip
    save_outputs(accelerator, args, model, image_processor, results)
    return results


if __name__ == "__main__":
    run_cli(main, os.path.basename(__file__))
