"""What the example scripts in `examples/pytorch/` share, for fine-tuning and pretraining alike.

- `arguments`: the argument dataclasses, their validation (an [`ArgumentError`] that says what to change) and parsing.
- `data`: datasets from the Hub, imagefolders, `save_to_disk` folders or image / mask pairs; labels; and
  [`SeededDataset`] (per-example seeded augmentation, for exact resumes and N-process = 1-process runs).
- `transforms`: torchvision augmentation + the LookWhere image processor, and the collate function.
- `model_setup`: the task model or pretraining student and its image processor.
- `metrics`: accuracy / mean IoU ([`TaskMetric`]) and running means of the logged losses.
- `loop`: the one `accelerate` training loop and checkpoint / resume routine of every `*_no_trainer.py` script.
- `trainer`: the `Trainer` pieces of the other scripts.
"""

from .arguments import (
    ArgumentError,
    ClassificationModelArguments,
    DataTrainingArguments,
    ModelArguments,
    NoTrainerArguments,
    PretrainingDataArguments,
    PretrainingModelArguments,
    PretrainingNoTrainerArguments,
    SegmentationDataArguments,
    parse_script_arguments,
    run_cli,
    validate_arguments,
    validate_pretraining_arguments,
)
from .data import (
    IMAGE_CLASSIFICATION,
    SEMANTIC_SEGMENTATION,
    SeededDataset,
    load_datasets,
    load_image_mask_pairs,
    load_pretraining_dataset,
    prepare_classification_labels,
    prepare_segmentation_labels,
)
from .loop import (
    TRAINER_CHECKPOINT,
    make_accelerator,
    resolve_checkpoint,
    save_outputs,
    train_loop,
)
from .metrics import PRETRAINING_LOSS_COMPONENTS, TaskMetric
from .model_setup import (
    build_model_and_processor,
    build_pretraining_model,
    calibrate_after_training,
    describe_setup,
    set_model_resolution,
)
from .trainer import PretrainingTrainer, SetEpochCallback, run_trainer
from .transforms import ClassificationTransform, PretrainingTransform, SegmentationTransform, collate_fn

__all__ = [
    "IMAGE_CLASSIFICATION",
    "PRETRAINING_LOSS_COMPONENTS",
    "SEMANTIC_SEGMENTATION",
    "TRAINER_CHECKPOINT",
    "ArgumentError",
    "ClassificationModelArguments",
    "ClassificationTransform",
    "DataTrainingArguments",
    "ModelArguments",
    "NoTrainerArguments",
    "PretrainingDataArguments",
    "PretrainingModelArguments",
    "PretrainingNoTrainerArguments",
    "PretrainingTrainer",
    "PretrainingTransform",
    "SeededDataset",
    "SegmentationDataArguments",
    "SegmentationTransform",
    "SetEpochCallback",
    "TaskMetric",
    "build_model_and_processor",
    "calibrate_after_training",
    "build_pretraining_model",
    "collate_fn",
    "describe_setup",
    "load_datasets",
    "load_image_mask_pairs",
    "load_pretraining_dataset",
    "make_accelerator",
    "parse_script_arguments",
    "prepare_classification_labels",
    "prepare_segmentation_labels",
    "resolve_checkpoint",
    "run_cli",
    "run_trainer",
    "save_outputs",
    "set_model_resolution",
    "train_loop",
    "validate_arguments",
    "validate_pretraining_arguments",
]
