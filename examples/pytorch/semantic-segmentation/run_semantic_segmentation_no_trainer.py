#!/usr/bin/env python
"""Fine-tune LookWhere (or LookupViT) for semantic segmentation with a plain `accelerate` loop (no `Trainer`).

Same data layout, model, LookWhere and LookupViT flags as `run_semantic_segmentation.py` (image / mask pairs,
`--reduce_labels`, `id2label.json`); training flags follow transformers' no_trainer examples (`--max_train_steps`,
`--checkpointing_steps`, `--resume_from_checkpoint`, `--with_tracking`). The loop itself
(`lookwhere_hf.training.train_loop`) is the one the pretraining script uses. Runs with `python` or
`accelerate launch`:

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

from lookwhere_hf.training import (
    SEMANTIC_SEGMENTATION,
    ModelArguments,
    NoTrainerArguments,
    SeededDataset,
    SegmentationDataArguments,
    SegmentationTransform,
    TaskMetric,
    build_model_and_processor,
    collate_fn,
    describe_setup,
    load_datasets,
    make_accelerator,
    parse_script_arguments,
    prepare_segmentation_labels,
    run_cli,
    save_outputs,
    train_loop,
    validate_arguments,
)


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, args = parse_script_arguments(
        (ModelArguments, SegmentationDataArguments, NoTrainerArguments), argv
    )

    # Everything that can be wrong with the arguments is checked before data or weights are loaded.
    validate_arguments(model_args, data_args, push_to_hub=args.push_to_hub)
    accelerator = make_accelerator(args)
    set_seed(args.seed)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)

    with accelerator.main_process_first():
        dataset = load_datasets(data_args, model_args, task=SEMANTIC_SEGMENTATION, seed=args.seed)
        id2label = prepare_segmentation_labels(dataset, data_args)
    model, image_processor = build_model_and_processor(SEMANTIC_SEGMENTATION, model_args, id2label)
    describe_setup(model, image_processor, dataset, accelerator.print)

    columns = (image_processor, data_args.image_column_name, data_args.label_column_name)
    transform = SegmentationTransform(*columns, train=not data_args.no_augment, reduce_labels=data_args.reduce_labels)
    dataset["train"].set_transform(transform)
    dataset["validation"].set_transform(
        SegmentationTransform(*columns, train=False, reduce_labels=data_args.reduce_labels)
    )

    model, results = train_loop(
        accelerator, args, model, SeededDataset(dataset["train"], args.seed), collate_fn=collate_fn,
        eval_dataset=dataset["validation"], metric=TaskMetric(SEMANTIC_SEGMENTATION, id2label),
        project_name="semantic_segmentation_no_trainer",
    )  # fmt: skip
    save_outputs(accelerator, args, model, image_processor, results)
    return results


if __name__ == "__main__":
    run_cli(main, os.path.basename(__file__))
