#!/usr/bin/env python
"""Fine-tune LookWhere for semantic segmentation with the transformers `Trainer`.

Data: a Hub dataset with an image column and a mask column (`label` / `annotation`), a folder saved with
`datasets.save_to_disk`, or a local folder of image / mask pairs:

    my_data/
        train/images/0001.jpg   train/masks/0001.png
        validation/images/...   validation/masks/...
        id2label.json           (optional: {"0": "background", "1": "cat", ...})

Masks are single-channel images of class ids with the image's size; 255 is ignored (`--reduce_labels` turns 0 into
255 and shifts the other ids down, for datasets where 0 means "unlabelled"). Image and mask get the same
RandomResizedCrop + flip (torchvision v2, nearest-neighbour for the mask), then `LookWhereImageProcessor` makes both
views. Mean IoU / per-class IoU come from the offline `evaluate` module shipped in `lookwhere_hf.metrics`.

Example (runs offline on a local folder):

    python run_semantic_segmentation.py \\
        --model_name_or_path path/to/lookwhere-checkpoint \\
        --dataset_name path/to/my_data \\
        --output_dir outputs/lookwhere-seg \\
        --do_train --do_eval \\
        --k_ratio 0.5 --image_size 518 \\
        --per_device_train_batch_size 8 --learning_rate 1e-4 --num_train_epochs 10

The output folder loads with `pipeline("image-segmentation", model="outputs/lookwhere-seg")`.
"""

import logging
import os

from transformers import Trainer, TrainingArguments, set_seed

from lookwhere_hf import LookWhereForSemanticSegmentation
from lookwhere_hf.training_utils import (
    ModelArguments,
    SegmentationDataArguments,
    SegmentationTransform,
    build_model_and_processor,
    collate_fn,
    describe_setup,
    load_datasets,
    make_compute_metrics,
    prepare_segmentation_labels,
    parse_script_arguments,
    run_cli,
    run_trainer,
    segmentation_predictions,
    validate_arguments,
)

TASK = "semantic-segmentation"
logger = logging.getLogger(__name__)


def main() -> dict:
    model_args, data_args, training_args = parse_script_arguments((ModelArguments, SegmentationDataArguments, TrainingArguments))

    # Everything that can be wrong with the arguments is checked before data or weights are loaded.
    validate_arguments(model_args, data_args, push_to_hub=training_args.push_to_hub)
    set_seed(training_args.seed)

    with training_args.main_process_first(desc="loading the dataset"):
        dataset = load_datasets(
            data_args, model_args, task=TASK, do_train=training_args.do_train, do_eval=training_args.do_eval,
            seed=training_args.seed,
        )
        id2label = prepare_segmentation_labels(dataset, data_args)
    model, image_processor = build_model_and_processor(LookWhereForSemanticSegmentation, model_args, id2label)
    if training_args.should_log:
        describe_setup(model, image_processor, dataset)

    for split, train in (("train", True), ("validation", False)):
        if split in dataset:
            dataset[split].set_transform(
                SegmentationTransform(
                    image_processor, data_args.image_column_name, data_args.label_column_name,
                    train=train and not data_args.no_augment,
                    reduce_labels=data_args.reduce_labels,
                )
            )

    training_args.remove_unused_columns = False  # the transforms need the raw image and mask columns
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=dataset.get("train"),
        eval_dataset=dataset.get("validation"),
        data_collator=collate_fn,
        processing_class=image_processor,
        compute_metrics=make_compute_metrics(TASK, id2label),
        preprocess_logits_for_metrics=segmentation_predictions,
    )
    return run_trainer(trainer, training_args, task=TASK, model_args=model_args, data_args=data_args)


if __name__ == "__main__":
    run_cli(main, os.path.basename(__file__))
