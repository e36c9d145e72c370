#!/usr/bin/env python
"""Fine-tune LookWhere for semantic segmentation with a plain `accelerate` loop (no `Trainer`).

Same data layout, model and LookWhere flags as `run_semantic_segmentation.py` (image / mask pairs, `--reduce_labels`,
`id2label.json`); training flags follow transformers' no_trainer examples (`--max_train_steps`,
`--checkpointing_steps`, `--resume_from_checkpoint`, `--with_tracking`). Runs with `python` or `accelerate launch`:

    accelerate launch --num_processes 2 run_semantic_segmentation_no_trainer.py \\
        --model_name_or_path path/to/lookwhere-checkpoint \\
        --dataset_name path/to/my_data \\
        --output_dir outputs/lookwhere-seg \\
        --k_ratio 0.5 --per_device_train_batch_size 8 --learning_rate 1e-4 --num_train_epochs 10 \\
        --checkpointing_steps 500

Resume an interrupted run with `--resume_from_checkpoint outputs/lookwhere-seg/step_<N>` (or `latest`). At the end
the folder holds the model, the image processor, `all_results.json` and `eval_results.json` (mean IoU, per-class IoU).
"""

import os

from accelerate.utils import set_seed

from lookwhere_hf import LookWhereForSemanticSegmentation
from lookwhere_hf.training_utils import (
    ModelArguments,
    NoTrainerArguments,
    SegmentationDataArguments,
    SegmentationTransform,
    accelerate_train,
    build_model_and_processor,
    describe_setup,
    load_datasets,
    make_accelerator,
    prepare_segmentation_labels,
    parse_script_arguments,
    run_cli,
    segmentation_predictions,
    task_metric,
    validate_arguments,
)

TASK = "semantic-segmentation"


def main() -> dict:
    model_args, data_args, args = parse_script_arguments((ModelArguments, SegmentationDataArguments, NoTrainerArguments))

    # Everything that can be wrong with the arguments is checked before data or weights are loaded.
    validate_arguments(model_args, data_args, push_to_hub=args.push_to_hub)
    accelerator = make_accelerator(args)
    set_seed(args.seed)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)

    with accelerator.main_process_first():
        dataset = load_datasets(data_args, model_args, task=TASK, do_train=True, do_eval=True, seed=args.seed)
        id2label = prepare_segmentation_labels(dataset, data_args)
    model, image_processor = build_model_and_processor(LookWhereForSemanticSegmentation, model_args, id2label)
    describe_setup(model, image_processor, dataset, accelerator.print)

    for split, train in (("train", True), ("validation", False)):
        dataset[split].set_transform(
            SegmentationTransform(
                image_processor, data_args.image_column_name, data_args.label_column_name,
                train=train and not data_args.no_augment,
                reduce_labels=data_args.reduce_labels,
            )
        )
    metric, compute_metrics = task_metric(TASK, id2label)
    return accelerate_train(
        accelerator, args, model, image_processor, dataset["train"], dataset["validation"],
        predict=segmentation_predictions, metric=metric, compute_metrics=compute_metrics, task=TASK,
        model_args=model_args,
    )


if __name__ == "__main__":
    run_cli(main, os.path.basename(__file__))
