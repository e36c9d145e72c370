#!/usr/bin/env python
"""Fine-tune LookWhere for image classification with the transformers `Trainer`.

Data: a Hub dataset, or a local imagefolder (one sub-folder per class, optionally under train/ and validation/), or a
folder saved with `datasets.save_to_disk`. Training augmentation: RandomResizedCrop + horizontal flip (torchvision);
`LookWhereImageProcessor` makes both the high-resolution and the selector's low-resolution view. Accuracy comes from
the offline `evaluate` module shipped in `lookwhere_hf.metrics`.

Example (runs offline on a local folder):

    python run_image_classification.py \\
        --model_name_or_path path/to/lookwhere-checkpoint \\
        --dataset_name path/to/imagefolder \\
        --output_dir outputs/lookwhere-cls \\
        --do_train --do_eval \\
        --k_ratio 0.1 --image_size 518 \\
        --per_device_train_batch_size 32 --learning_rate 1e-4 --num_train_epochs 5

The output folder loads with `pipeline("image-classification", model="outputs/lookwhere-cls")`.
"""

import logging
import os

from transformers import Trainer, TrainingArguments, set_seed

from lookwhere_hf import LookWhereForImageClassification
from lookwhere_hf.training_utils import (
    ClassificationTransform,
    DataTrainingArguments,
    ModelArguments,
    build_model_and_processor,
    classification_predictions,
    collate_fn,
    describe_setup,
    load_datasets,
    make_compute_metrics,
    prepare_classification_labels,
    parse_script_arguments,
    run_cli,
    run_trainer,
    validate_arguments,
)

TASK = "image-classification"
logger = logging.getLogger(__name__)


def main() -> dict:
    model_args, data_args, training_args = parse_script_arguments((ModelArguments, DataTrainingArguments, TrainingArguments))

    # Everything that can be wrong with the arguments is checked before data or weights are loaded.
    validate_arguments(model_args, data_args, push_to_hub=training_args.push_to_hub)
    set_seed(training_args.seed)

    with training_args.main_process_first(desc="loading the dataset"):
        dataset = load_datasets(
            data_args, model_args, task=TASK, do_train=training_args.do_train, do_eval=training_args.do_eval,
            seed=training_args.seed,
        )
        dataset, id2label = prepare_classification_labels(dataset, data_args.label_column_name)
    model, image_processor = build_model_and_processor(LookWhereForImageClassification, model_args, id2label)
    if training_args.should_log:
        describe_setup(model, image_processor, dataset)

    for split, train in (("train", True), ("validation", False)):
        if split in dataset:
            dataset[split].set_transform(
                ClassificationTransform(
                    image_processor,
                    data_args.image_column_name,
                    data_args.label_column_name,
                    train=train and not data_args.no_augment,
                )
            )

    training_args.remove_unused_columns = False  # the transforms need the raw image column
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=dataset.get("train"),
        eval_dataset=dataset.get("validation"),
        data_collator=collate_fn,
        processing_class=image_processor,
        compute_metrics=make_compute_metrics(TASK, id2label),
        preprocess_logits_for_metrics=classification_predictions,
    )
    return run_trainer(trainer, training_args, task=TASK, model_args=model_args, data_args=data_args)


if __name__ == "__main__":
    run_cli(main, os.path.basename(__file__))
