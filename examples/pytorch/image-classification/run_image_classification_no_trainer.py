#!/usr/bin/env python
"""Fine-tune LookWhere for image classification with a plain `accelerate` loop (no `Trainer`).

Same data, model and LookWhere flags as `run_image_classification.py`; training flags follow transformers'
no_trainer examples (`--max_train_steps`, `--checkpointing_steps`, `--resume_from_checkpoint`, `--with_tracking`).
Runs on one CPU / GPU with `python`, or on several processes / GPUs with `accelerate launch`:

    accelerate launch --num_processes 2 run_image_classification_no_trainer.py \\
        --model_name_or_path path/to/lookwhere-checkpoint \\
        --dataset_name path/to/imagefolder \\
        --output_dir outputs/lookwhere-cls \\
        --per_device_train_batch_size 32 --learning_rate 1e-4 --num_train_epochs 5 \\
        --checkpointing_steps epoch

Resume an interrupted run with `--resume_from_checkpoint outputs/lookwhere-cls/step_<N>` (or `latest`). At the end
the folder holds the model, the image processor, `all_results.json` and `eval_results.json`.
"""

import os

from accelerate.utils import set_seed

from lookwhere_hf import LookWhereForImageClassification
from lookwhere_hf.training_utils import (
    ClassificationTransform,
    DataTrainingArguments,
    ModelArguments,
    NoTrainerArguments,
    accelerate_train,
    build_model_and_processor,
    classification_predictions,
    describe_setup,
    load_datasets,
    make_accelerator,
    prepare_classification_labels,
    parse_script_arguments,
    run_cli,
    task_metric,
    validate_arguments,
)

TASK = "image-classification"


def main() -> dict:
    model_args, data_args, args = parse_script_arguments((ModelArguments, DataTrainingArguments, NoTrainerArguments))

    # Everything that can be wrong with the arguments is checked before data or weights are loaded.
    validate_arguments(model_args, data_args, push_to_hub=args.push_to_hub)
    accelerator = make_accelerator(args)
    set_seed(args.seed)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)

    with accelerator.main_process_first():
        dataset = load_datasets(data_args, model_args, task=TASK, do_train=True, do_eval=True, seed=args.seed)
        dataset, id2label = prepare_classification_labels(dataset, data_args.label_column_name)
    model, image_processor = build_model_and_processor(LookWhereForImageClassification, model_args, id2label)
    describe_setup(model, image_processor, dataset, accelerator.print)

    for split, train in (("train", True), ("validation", False)):
        dataset[split].set_transform(
            ClassificationTransform(
                image_processor,
                data_args.image_column_name,
                data_args.label_column_name,
                train=train and not data_args.no_augment,
            )
        )
    metric, compute_metrics = task_metric(TASK, id2label)
    return accelerate_train(
        accelerator, args, model, image_processor, dataset["train"], dataset["validation"],
        predict=classification_predictions, metric=metric, compute_metrics=compute_metrics, task=TASK,
        model_args=model_args,
    )


if __name__ == "__main__":
    run_cli(main, os.path.basename(__file__))
