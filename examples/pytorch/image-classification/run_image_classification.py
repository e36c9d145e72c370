#!/usr/bin/env python
"""Fine-tune LookWhere (or LookupViT) for image classification with the transformers `Trainer`.

Data: a Hub dataset, or a local imagefolder (one sub-folder per class, optionally under train/ and validation/), or a
folder saved with `datasets.save_to_disk`. Training augmentation: RandomResizedCrop + horizontal flip (torchvision,
seeded per image and epoch); `LookWhereImageProcessor` makes both the high-resolution and the selector's
low-resolution view. Accuracy comes from the offline `evaluate` module shipped in `lookwhere_hf.metrics`.

Example (runs offline on a local folder):

    python run_image_classification.py \\
        --model_name_or_path path/to/lookwhere-checkpoint \\
        --dataset_name path/to/imagefolder \\
        --output_dir outputs/lookwhere-cls \\
        --do_train --do_eval \\
        --k_ratio 0.1 --image_size 518 \\
        --per_device_train_batch_size 32 --learning_rate 1e-4 --num_train_epochs 5

Anytime / budgeted classification: `--k_ratios 0.025,0.05,0.1,0.25 --glance_head` trains the glance exit and every
rung (the mean of the rung losses) and `--calibrate_budget 20` fits exit thresholds for 20 GFLOPs per image on the
validation split at the end, saved in the model's config (the pipeline then exits early).

LookupViT: a LookupViT folder as --model_name_or_path (its model_type decides the family), or
`--init_from_dinov2 <DINOv2> --model_family lookupvit`, or `--init_from_vit <ViT>`; `--compressed_grids 4,6,8` is
the training set (one grid drawn per step), `--compressed_grid 6` the evaluation grid saved in the config.

The output folder loads with `pipeline("image-classification", model="outputs/lookwhere-cls")`.
"""

import logging
import os

from transformers import Trainer, TrainingArguments, set_seed

from lookwhere_hf.training import (
    IMAGE_CLASSIFICATION,
    TRAINER_CHECKPOINT,
    ClassificationModelArguments,
    ClassificationTransform,
    DataTrainingArguments,
    SeededDataset,
    SetEpochCallback,
    TaskMetric,
    build_model_and_processor,
    calibrate_after_training,
    collate_fn,
    describe_setup,
    load_datasets,
    parse_script_arguments,
    prepare_classification_labels,
    resolve_checkpoint,
    run_cli,
    run_trainer,
    validate_arguments,
)

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, training_args = parse_script_arguments(
        (ClassificationModelArguments, DataTrainingArguments, TrainingArguments), argv
    )

    # Everything that can be wrong with the arguments is checked before data or weights are loaded.
    validate_arguments(model_args, data_args, push_to_hub=training_args.push_to_hub)
    checkpoint = resolve_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir, TRAINER_CHECKPOINT)
    set_seed(training_args.seed)

    with training_args.main_process_first(desc="loading the dataset"):
        dataset = load_datasets(
            data_args, model_args, task=IMAGE_CLASSIFICATION, do_train=training_args.do_train,
            do_eval=training_args.do_eval, seed=training_args.seed,
        )  # fmt: skip
        dataset, id2label = prepare_classification_labels(dataset, data_args.label_column_name)
    model, image_processor = build_model_and_processor(IMAGE_CLASSIFICATION, model_args, id2label)
    if training_args.should_log:
        describe_setup(model, image_processor, dataset, logger.info)

    columns = (image_processor, data_args.image_column_name, data_args.label_column_name)
    train_dataset = eval_dataset = None
    if "train" in dataset:
        dataset["train"].set_transform(ClassificationTransform(*columns, train=not data_args.no_augment))
        train_dataset = SeededDataset(dataset["train"], training_args.seed)
    if "validation" in dataset:
        dataset["validation"].set_transform(ClassificationTransform(*columns, train=False))
        eval_dataset = dataset["validation"]

    metric = TaskMetric(IMAGE_CLASSIFICATION, id2label)
    training_args.remove_unused_columns = False  # the transforms need the raw image column
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collate_fn,
        processing_class=image_processor,
        compute_metrics=metric.compute_metrics,
        preprocess_logits_for_metrics=metric.predict,
        callbacks=[SetEpochCallback(train_dataset)],
    )
    results = run_trainer(
        trainer, do_train=training_args.do_train, do_eval=training_args.do_eval, resume_from_checkpoint=checkpoint,
        finetuned_from=model_args.model_source, task=IMAGE_CLASSIFICATION,
        dataset_name=data_args.dataset_name,
    )  # fmt: skip
    if model_args.calibrate_budget is not None:
        budget = calibrate_after_training(
            trainer.model, eval_dataset, model_args.calibrate_budget, training_args.per_device_eval_batch_size,
            logger.info,
        )  # fmt: skip
        trainer.save_model()  # the config now carries the thresholds
        trainer.save_metrics("budget", budget)
        results.update(budget)
    return results


if __name__ == "__main__":
    run_cli(main, os.path.basename(__file__))
