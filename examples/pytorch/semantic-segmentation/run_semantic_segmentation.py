#!/usr/bin/env python
"""Fine-tune LookWhere (or LookupViT) for semantic segmentation with the transformers `Trainer`.

Data: a Hub dataset with an image column and a mask column (`label` / `annotation`), a folder saved with
`datasets.save_to_disk`, or a local folder of image / mask pairs:

    my_data/
        train/images/0001.jpg   train/masks/0001.png
        validation/images/...   validation/masks/...
        id2label.json           (optional: {"0": "background", "1": "cat", ...})

Masks are single-channel images of class ids with the image's size; 255 is ignored (`--reduce_labels` turns 0 into
255 and shifts the other ids down, for datasets where 0 means "unlabelled"). Image and mask get the same
RandomResizedCrop + flip (torchvision v2, nearest-neighbour for the mask, seeded per image and epoch), then
`LookWhereImageProcessor` makes both views. Mean IoU / per-class IoU come from the offline `evaluate` module shipped
in `lookwhere_hf.metrics`.

Example (runs offline on a local folder):

    python run_semantic_segmentation.py \\
        --model_name_or_path path/to/lookwhere-checkpoint \\
        --dataset_name path/to/my_data \\
        --output_dir outputs/lookwhere-seg \\
        --do_train --do_eval \\
        --k_ratio 0.5 --image_size 518 \\
        --per_device_train_batch_size 8 --learning_rate 1e-4 --num_train_epochs 10

LookupViT: a LookupViT folder as --model_name_or_path, or `--init_from_dinov2 <DINOv2> --model_family lookupvit`,
or `--init_from_vit <ViT>`, with `--compressed_grids` / `--compressed_grid` (see run_image_classification.py).

The output folder loads with `pipeline("image-segmentation", model="outputs/lookwhere-seg")`.
"""

import logging
import os

from transformers import Trainer, TrainingArguments, set_seed

from lookwhere_hf.training import (
    SEMANTIC_SEGMENTATION,
    TRAINER_CHECKPOINT,
    ModelArguments,
    SeededDataset,
    SegmentationDataArguments,
    SegmentationTransform,
    SetEpochCallback,
    TaskMetric,
    build_model_and_processor,
    collate_fn,
    describe_setup,
    load_datasets,
    parse_script_arguments,
    prepare_segmentation_labels,
    resolve_checkpoint,
    run_cli,
    run_trainer,
    validate_arguments,
)

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, training_args = parse_script_arguments(
        (ModelArguments, SegmentationDataArguments, TrainingArguments), argv
    )

    # Everything that can be wrong with the arguments is checked before data or weights are loaded.
    validate_arguments(model_args, data_args, push_to_hub=training_args.push_to_hub)
    checkpoint = resolve_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir, TRAINER_CHECKPOINT)
    set_seed(training_args.seed)

    with training_args.main_process_first(desc="loading the dataset"):
        dataset = load_datasets(
            data_args, model_args, task=SEMANTIC_SEGMENTATION, do_train=training_args.do_train,
            do_eval=training_args.do_eval, seed=training_args.seed,
        )  # fmt: skip
        id2label = prepare_segmentation_labels(dataset, data_args)
    model, image_processor = build_model_and_processor(SEMANTIC_SEGMENTATION, model_args, id2label)
    if training_args.should_log:
        describe_setup(model, image_processor, dataset, logger.info)

    columns = (image_processor, data_args.image_column_name, data_args.label_column_name)
    train_dataset = eval_dataset = None
    if "train" in dataset:
        transform = SegmentationTransform(
            *columns, train=not data_args.no_augment, reduce_labels=data_args.reduce_labels
        )
        dataset["train"].set_transform(transform)
        train_dataset = SeededDataset(dataset["train"], training_args.seed)
    if "validation" in dataset:
        dataset["validation"].set_transform(
            SegmentationTransform(*columns, train=False, reduce_labels=data_args.reduce_labels)
        )
        eval_dataset = dataset["validation"]

    metric = TaskMetric(SEMANTIC_SEGMENTATION, id2label)
    training_args.remove_unused_columns = False  # the transforms need the raw image and mask columns
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
    return run_trainer(
        trainer, do_train=training_args.do_train, do_eval=training_args.do_eval, resume_from_checkpoint=checkpoint,
        finetuned_from=model_args.model_source, task=SEMANTIC_SEGMENTATION,
        dataset_name=data_args.dataset_name,
    )  # fmt: skip


if __name__ == "__main__":
    run_cli(main, os.path.basename(__file__))
