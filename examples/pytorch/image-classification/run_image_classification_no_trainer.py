#!/usr/bin/env python
"""Fine-tune LookWhere (or LookupViT) for image classification with a plain `accelerate` loop (no `Trainer`).

Same data, model, LookWhere and LookupViT flags as `run_image_classification.py`; training flags follow transformers'
no_trainer examples (`--max_train_steps`, `--checkpointing_steps`, `--resume_from_checkpoint`, `--with_tracking`).
The loop itself (`lookwhere_hf.training.train_loop`) is the one the pretraining script uses. Runs on one CPU / GPU
with `python`, or on several processes / GPUs with `accelerate launch`:

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

from lookwhere_hf.training import (
    IMAGE_CLASSIFICATION,
    ClassificationModelArguments,
    ClassificationTransform,
    DataTrainingArguments,
    NoTrainerArguments,
    SeededDataset,
    TaskMetric,
    build_model_and_processor,
    calibrate_after_training,
    collate_fn,
    describe_setup,
    load_datasets,
    make_accelerator,
    parse_script_arguments,
    prepare_classification_labels,
    run_cli,
    save_outputs,
    train_loop,
    validate_arguments,
)


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, args = parse_script_arguments(
        (ClassificationModelArguments, DataTrainingArguments, NoTrainerArguments), argv
    )

    # Everything that can be wrong with the arguments is checked before data or weights are loaded.
    validate_arguments(model_args, data_args, push_to_hub=args.push_to_hub)
    accelerator = make_accelerator(args)
    set_seed(args.seed)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)

    with accelerator.main_process_first():
        dataset = load_datasets(data_args, model_args, task=IMAGE_CLASSIFICATION, seed=args.seed)
        dataset, id2label = prepare_classification_labels(dataset, data_args.label_column_name)
    model, image_processor = build_model_and_processor(IMAGE_CLASSIFICATION, model_args, id2label)
    describe_setup(model, image_processor, dataset, accelerator.print)

    columns = (image_processor, data_args.image_column_name, data_args.label_column_name)
    dataset["train"].set_transform(ClassificationTransform(*columns, train=not data_args.no_augment))
    dataset["validation"].set_transform(ClassificationTransform(*columns, train=False))

    model, results = train_loop(
        accelerator, args, model, SeededDataset(dataset["train"], args.seed), collate_fn=collate_fn,
        eval_dataset=dataset["validation"], metric=TaskMetric(IMAGE_CLASSIFICATION, id2label),
        project_name="image_classification_no_trainer",
    )  # fmt: skip
    if model_args.calibrate_budget is not None:
        results.update(
            calibrate_after_training(
                model, dataset["validation"], model_args.calibrate_budget, args.per_device_eval_batch_size,
                accelerator.print,
            )
        )  # fmt: skip
    save_outputs(accelerator, args, model, image_processor, results)
    return results


if __name__ == "__main__":
    run_cli(main, os.path.basename(__file__))
