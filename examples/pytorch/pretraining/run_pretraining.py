#!/usr/bin/env python
"""Pretrain a LookWhere model by distillation from a frozen DINOv2(-with-registers) teacher, with the `Trainer`.

No labels are used: the selector learns where the teacher looks (its last-layer attention map), the extractor learns
what the teacher sees (its CLS and patch tokens) from the top-k patches the selector picks. See
`examples/pytorch/pretraining/README.md` for the recipe and example commands, and `run_pretraining_no_trainer.py` for
the same with a plain `accelerate` loop.

Example (one process; `accelerate launch` / `torchrun` for several):

    python run_pretraining.py \\
        --teacher_name_or_path facebook/dinov2-with-registers-base \\
        --train_dir path/to/images \\
        --output_dir lookwhere-pretrained \\
        --per_device_train_batch_size 32 --learning_rate 1e-4 --weight_decay 0.05 --max_steps 100000

The k range and loss weights default to `LookWhereConfig`'s `pretrain_*` values. The output folder (and every
`checkpoint-*` in it) holds the *student only* and loads with `LookWhereModel.from_pretrained` /
`LookWhereForImageClassification.from_pretrained`.
"""

import logging
import os

from transformers import TrainingArguments, set_seed

from lookwhere_hf.training import (
    TRAINER_CHECKPOINT,
    PretrainingDataArguments,
    PretrainingModelArguments,
    PretrainingTrainer,
    PretrainingTransform,
    SetEpochCallback,
    build_pretraining_model,
    collate_fn,
    describe_setup,
    load_pretraining_dataset,
    parse_script_arguments,
    resolve_checkpoint,
    run_cli,
    run_trainer,
    validate_pretraining_arguments,
)

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, training_args = parse_script_arguments(
        (PretrainingModelArguments, PretrainingDataArguments, TrainingArguments), argv
    )

    # Everything that can be wrong with the arguments is checked before data or weights are loaded.
    validate_pretraining_arguments(
        model_args, data_args, max_steps=training_args.max_steps, max_steps_flag="--max_steps"
    )
    checkpoint = resolve_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir, TRAINER_CHECKPOINT)
    set_seed(training_args.seed)
    training_args.remove_unused_columns = False  # the transform needs the raw image column
    if training_args.ddp_find_unused_parameters is None:
        training_args.ddp_find_unused_parameters = False  # every trainable student parameter gets a gradient

    model, image_processor = build_pretraining_model(model_args, data_args)
    with training_args.main_process_first(desc="loading the dataset"):
        transform = PretrainingTransform(image_processor, data_args)
        train_dataset = load_pretraining_dataset(data_args, model_args, transform, seed=training_args.seed)
    if training_args.should_log:
        describe_setup(model, image_processor, {"train": train_dataset}, logger.info)

    trainer = PretrainingTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        data_collator=collate_fn,
        processing_class=image_processor,
        callbacks=[SetEpochCallback(train_dataset)],
    )
    return run_trainer(
        trainer, do_train=True, do_eval=False, resume_from_checkpoint=checkpoint,
        finetuned_from=model_args.teacher_name_or_path, dataset_name=data_args.dataset_name,
    )  # fmt: skip


if __name__ == "__main__":
    run_cli(main, os.path.basename(__file__))
