#!/usr/bin/env python
"""Pretrain a LookWhere model by distillation from a frozen DINOv2(-with-registers) teacher, with the Trainer.

No labels are used: the selector learns where the teacher looks (its last-layer attention map), the extractor learns
what the teacher sees (its CLS and patch tokens) from the top-k patches the selector picks. See
`examples/pytorch/pretraining/README.md` for the recipe and example commands, and `run_pretraining_no_trainer.py` for
the same with a plain `accelerate` loop.

Example (one process; `accelerate launch` / `torchrun` for several):

    python run_pretraining.py \
        --teacher_name_or_path facebook/dinov2-with-registers-base \
        --train_dir path/to/images \
        --output_dir lookwhere-pretrained \
        --per_device_train_batch_size 32 --learning_rate 1e-4 --weight_decay 0.05 --max_steps 100000

The output folder (and every `checkpoint-*` in it) holds the *student only* and loads with
`LookWhereModel.from_pretrained` / `LookWhereForImageClassification.from_pretrained`.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import dataclass, field

import torch
import transformers
from transformers import (
    HfArgumentParser,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

from lookwhere_hf import LookWhereForPreTraining, LookWhereImageProcessor

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------------------------------- arguments
@dataclass
class ModelArguments:
    """Which teacher to distil, and the student built from it."""

    teacher_name_or_path: str = field(
        metadata={"help": "The frozen DINOv2-with-registers (or DINOv2) teacher: a local folder or a Hub id."}
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Continue from an existing LookWhere checkpoint (the student) instead of building the student "
            "from the teacher."
        },
    )
    selector_depth: int = field(default=3, metadata={"help": "Number of teacher layers the selector keeps (3)."})
    init_from_teacher: bool = field(
        default=True, metadata={"help": "Initialize the student from the teacher's weights (else random)."}
    )
    teacher_dtype: str | None = field(
        default=None, metadata={"help": "Run the teacher in this dtype, e.g. 'bfloat16' (default: float32)."}
    )
    attn_implementation: str | None = field(
        default=None, metadata={"help": "Attention kernel of teacher and student: 'sdpa' (default), 'eager', ..."}
    )
    k_min: int = field(default=16, metadata={"help": "Smallest number of patches the extractor sees per step."})
    k_max: int = field(default=128, metadata={"help": "Largest number of patches the extractor sees per step."})
    cls_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the CLS MSE."})
    dense_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the dense patch-token MSE."})
    map_loss_weight: float = field(default=0.1, metadata={"help": "Weight of the selector map KL."})
    low_res_antialias: bool = field(
        default=False,
        metadata={"help": "Make the selector's view with an antialiased resize (as the JAX pretraining did)."},
    )


@dataclass
class DataTrainingArguments:
    """Which images to train on and how to augment them."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "A `datasets` dataset: a Hub name, a folder written by `save_to_disk`, or a folder of images "
            "(loaded as an imagefolder)."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset configuration name."})
    train_dir: str | None = field(default=None, metadata={"help": "A folder of images (an imagefolder)."})
    train_split: str = field(default="train", metadata={"help": "The split to train on."})
    image_column_name: str = field(default="image", metadata={"help": "The column holding the images."})
    streaming: bool = field(
        default=False,
        metadata={"help": "Stream the dataset (a `datasets.IterableDataset`) instead of downloading it; needs --max_steps."},
    )
    shuffle_buffer_size: int = field(default=10_000, metadata={"help": "Shuffle buffer of the streamed dataset."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set (debugging)."})
    image_size: int = field(default=518, metadata={"help": "High-resolution size (teacher and extractor input)."})
    low_res_size: int = field(default=154, metadata={"help": "Low-resolution size (selector input)."})
    augment: bool = field(
        default=True,
        metadata={
            "help": "RandomResizedCrop + horizontal flip + RandAugment + random erasing; --no_augment resizes and "
            "center-crops instead."
        },
    )
    crop_scale_min: float = field(default=0.08, metadata={"help": "Smallest RandomResizedCrop area fraction."})
    rand_augment_magnitude: int = field(default=9, metadata={"help": "RandAugment magnitude (m9)."})
    rand_augment_num_ops: int = field(default=2, metadata={"help": "RandAugment operations per image."})
    random_erasing: float = field(default=0.25, metadata={"help": "Random erasing probability."})


# ----------------------------------------------------------------------------------------------------- data
def load_train_dataset(data_args: DataTrainingArguments, cache_dir: str | None = None):
    """Load the training split (a `Dataset`, or an `IterableDataset` with `--streaming`); clear errors otherwise."""
    import datasets

    if (data_args.dataset_name is None) == (data_args.train_dir is None):
        raise ValueError(
            "Pass exactly one of --dataset_name (a `datasets` dataset: Hub name or local folder) and --train_dir (a "
            f"folder of images); got dataset_name={data_args.dataset_name!r}, train_dir={data_args.train_dir!r}."
        )
    if data_args.train_dir is not None:
        if not os.path.isdir(data_args.train_dir):
            raise ValueError(f"--train_dir {data_args.train_dir!r} is not a folder. Pass a folder of images.")
        source, load = data_args.train_dir, ("imagefolder", {"data_dir": data_args.train_dir})
    else:
        source = data_args.dataset_name
        if os.path.isdir(source):
            saved = any(os.path.exists(os.path.join(source, f)) for f in ("dataset_dict.json", "state.json"))
            if saved:
                dataset = datasets.load_from_disk(source)
                if isinstance(dataset, datasets.DatasetDict):
                    if data_args.train_split not in dataset:
                        raise ValueError(
                            f"The dataset at {source!r} has no split {data_args.train_split!r}; its splits are "
                            f"{list(dataset)}. Pass one with --train_split."
                        )
                    dataset = dataset[data_args.train_split]
                if data_args.streaming:
                    dataset = dataset.to_iterable_dataset()
                return dataset
            load = ("imagefolder", {"data_dir": source})
        elif os.path.exists(source) or source.startswith((".", "/", "~")):
            raise ValueError(f"--dataset_name {source!r} is not a folder of images or a dataset saved with save_to_disk.")
        else:
            load = (source, {"name": data_args.dataset_config_name})
    name, kwargs = load
    try:
        dataset = datasets.load_dataset(
            name, split=data_args.train_split, streaming=data_args.streaming, cache_dir=cache_dir, **kwargs
        )
    except Exception as error:  # datasets raises many types (FileNotFoundError, DatasetNotFoundError, ValueError...)
        raise ValueError(
            f"Could not load the training data from {source!r} (split {data_args.train_split!r}): "
            f"{type(error).__name__}: {error}. Check the path / dataset name (and network access for Hub datasets)."
        ) from error
    return dataset


def build_transform(data_args: DataTrainingArguments, training: bool = True):
    """PIL image -> normalized `(3, image_size, image_size)` float tensor (torchvision v2)."""
    from torchvision.transforms import v2

    size = data_args.image_size
    if training and data_args.augment:
        steps = [
            v2.RandomResizedCrop(size, scale=(data_args.crop_scale_min, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandAugment(num_ops=data_args.rand_augment_num_ops, magnitude=data_args.rand_augment_magnitude),
        ]
    else:
        steps = [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if training and data_args.augment and data_args.random_erasing > 0:
        steps.append(v2.RandomErasing(p=data_args.random_erasing, value=0))
    return v2.Compose(steps)


def make_preprocess(data_args: DataTrainingArguments, transform):
    column = data_args.image_column_name

    def preprocess(batch):
        return {"pixel_values": [transform(image.convert("RGB")) for image in batch[column]]}

    return preprocess


def validate_dataset(dataset, data_args: DataTrainingArguments, transform) -> None:
    """Fail before training on an empty dataset, a missing image column or images that do not decode."""
    import datasets

    columns = dataset.column_names
    if columns is None and isinstance(dataset, datasets.IterableDataset):
        first = next(iter(dataset), None)
        columns = list(first) if first is not None else []
    if data_args.image_column_name not in (columns or []):
        raise ValueError(
            f"The dataset has no column {data_args.image_column_name!r}; its columns are {columns}. Pass the column "
            "that holds the images with --image_column_name."
        )
    if isinstance(dataset, datasets.IterableDataset):
        first = next(iter(dataset), None)
    else:
        first = dataset[0] if len(dataset) else None
    if first is None:
        raise ValueError("The training dataset is empty. Check the path / split.")
    image = first[data_args.image_column_name]
    if not hasattr(image, "convert"):
        raise ValueError(
            f"Column {data_args.image_column_name!r} does not hold images (first value is a "
            f"{type(image).__name__}). Use a column of type `datasets.Image`."
        )
    try:
        transform(image.convert("RGB"))
    except Exception as error:
        raise ValueError(f"The first image of the dataset could not be processed: {type(error).__name__}: {error}.") from error


class SeededTransformDataset(torch.utils.data.Dataset):
    """Map-style dataset that augments image `idx` with the torch RNG seeded from `(seed, epoch, idx)`.

    The augmentation of an image then does not depend on the process, the worker, the batch size or what was drawn
    before it, so a resumed run sees exactly the augmentations the uninterrupted run saw (accelerate's data loader
    prefetches one batch, which would otherwise shift the global RNG across a checkpoint), and a run on N processes
    sees those of a run on one. Call `set_epoch` at the start of each epoch.
    """

    def __init__(self, dataset, image_column: str, transform, seed: int) -> None:
        self.dataset, self.image_column, self.transform, self.seed = dataset, image_column, transform, int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        try:
            image = self.dataset[int(idx)][self.image_column].convert("RGB")
        except Exception as error:  # a corrupt file deep in a large dataset: say which one
            raise ValueError(f"Training image {idx} could not be decoded: {type(error).__name__}: {error}") from error
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(((self.seed * 1_000_003 + self.epoch) * 1_000_003 + int(idx)) % (2**63 - 1))
            return {"pixel_values": self.transform(image)}


def collate_fn(examples):
    # torchvision returns `tv_tensors.Image`; hand the model plain tensors
    pixels = [torch.as_tensor(example["pixel_values"]).as_subclass(torch.Tensor) for example in examples]
    return {"pixel_values": torch.stack(pixels)}


def prepare_dataset(data_args: DataTrainingArguments, seed: int, cache_dir: str | None = None):
    """Load, check and set up on-the-fly preprocessing; returns the dataset ready for a DataLoader."""
    dataset = load_train_dataset(data_args, cache_dir=cache_dir)
    transform = build_transform(data_args, training=True)
    validate_dataset(dataset, data_args, build_transform(data_args, training=False))
    preprocess = make_preprocess(data_args, transform)
    import datasets

    if isinstance(dataset, datasets.IterableDataset):
        if data_args.max_train_samples is not None:
            dataset = dataset.take(data_args.max_train_samples)
        dataset = dataset.shuffle(seed=seed, buffer_size=data_args.shuffle_buffer_size)
        dataset = dataset.map(preprocess, batched=True, remove_columns=list(dataset.column_names or []) or None)
        return dataset
    if data_args.max_train_samples is not None:
        dataset = dataset.select(range(min(data_args.max_train_samples, len(dataset))))
    return SeededTransformDataset(dataset, data_args.image_column_name, transform, seed)


# ----------------------------------------------------------------------------------------------------- model
def check_sizes_and_k(model_args: ModelArguments, data_args: DataTrainingArguments, patch_size: int) -> None:
    for name in ("image_size", "low_res_size"):
        value = getattr(data_args, name)
        if value < patch_size or value % patch_size:
            raise ValueError(
                f"--{name} {value} must be a positive multiple of the teacher's patch size {patch_size} "
                f"(e.g. {max(1, round(value / patch_size)) * patch_size})."
            )
    if data_args.low_res_size > data_args.image_size:
        raise ValueError(f"--low_res_size {data_args.low_res_size} must not exceed --image_size {data_args.image_size}.")
    num_patches = (data_args.image_size // patch_size) ** 2
    if not 1 <= model_args.k_min <= model_args.k_max:
        raise ValueError(
            f"Need 1 <= --k_min <= --k_max (patches the extractor sees per step), got k_min={model_args.k_min}, "
            f"k_max={model_args.k_max}."
        )
    if model_args.k_min > num_patches:
        raise ValueError(
            f"--k_min {model_args.k_min} exceeds the {num_patches} patches of a {data_args.image_size}px image "
            f"(patch {patch_size}); lower it."
        )
    if model_args.k_max > num_patches:
        logger.warning(f"--k_max {model_args.k_max} is clipped to the {num_patches} high-resolution patches.")


def build_model(model_args: ModelArguments, data_args: DataTrainingArguments, cache_dir: str | None = None):
    """Load the teacher, check it fits, and build (or load) the student around it."""
    from transformers import AutoModel

    load_kwargs = {"cache_dir": cache_dir}
    if model_args.attn_implementation:
        load_kwargs["attn_implementation"] = model_args.attn_implementation
    try:
        teacher = AutoModel.from_pretrained(model_args.teacher_name_or_path, **load_kwargs)
    except Exception as error:
        raise ValueError(
            f"Could not load the teacher {model_args.teacher_name_or_path!r}: {type(error).__name__}: {error}. Pass a "
            "DINOv2-with-registers / DINOv2 checkpoint (folder or Hub id) with --teacher_name_or_path."
        ) from error
    if getattr(teacher.config, "model_type", None) not in ("dinov2_with_registers", "dinov2"):
        raise ValueError(
            f"--teacher_name_or_path {model_args.teacher_name_or_path!r} is a {teacher.config.model_type!r} model; "
            "the teacher must be a DINOv2-with-registers or DINOv2 model."
        )
    patch = teacher.config.patch_size
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    check_sizes_and_k(model_args, data_args, patch)
    settings = {
        "k_min": model_args.k_min,
        "k_max": model_args.k_max,
        "cls_loss_weight": model_args.cls_loss_weight,
        "dense_loss_weight": model_args.dense_loss_weight,
        "map_loss_weight": model_args.map_loss_weight,
    }
    if model_args.model_name_or_path:
        student_kwargs = {"cache_dir": cache_dir}
        if model_args.attn_implementation:
            student_kwargs["attn_implementation"] = model_args.attn_implementation
        # set_teacher (called in __init__) checks the teacher's patch and hidden size against the student.
        model = LookWhereForPreTraining.from_pretrained(
            model_args.model_name_or_path,
            teacher=teacher,
            teacher_dtype=model_args.teacher_dtype,
            **settings,
            **student_kwargs,
        )
        if model.config.low_res_size != data_args.low_res_size:
            raise ValueError(
                f"The student at {model_args.model_name_or_path!r} was built for --low_res_size "
                f"{model.config.low_res_size}, got {data_args.low_res_size}. Pass --low_res_size "
                f"{model.config.low_res_size}."
            )
    else:
        if not 1 <= model_args.selector_depth <= teacher.config.num_hidden_layers:
            raise ValueError(
                f"--selector_depth must be between 1 and the teacher's depth {teacher.config.num_hidden_layers}, got "
                f"{model_args.selector_depth}."
            )
        model = LookWhereForPreTraining.from_teacher(
            teacher,
            selector_depth=model_args.selector_depth,
            low_res_size=data_args.low_res_size,
            high_res_size=data_args.image_size,
            teacher_dtype=model_args.teacher_dtype,
            init_from_teacher=model_args.init_from_teacher,
            low_res_antialias=model_args.low_res_antialias,
            **settings,
        )
    return model


def build_image_processor(model, data_args: DataTrainingArguments) -> LookWhereImageProcessor:
    """The inference-time processor saved next to the checkpoints (so `pipeline(...)` works on them)."""
    return LookWhereImageProcessor(
        size={"height": data_args.image_size, "width": data_args.image_size},
        low_res_size={"height": model.config.low_res_size, "width": model.config.low_res_size},
        low_res_antialias=model.config.low_res_antialias,
    )


# ----------------------------------------------------------------------------------------------------- trainer
COMPONENTS = ("loss_cls", "loss_dense", "loss_map", "top_k_agreement")


class SetEpochCallback(TrainerCallback):
    """Tells a `SeededTransformDataset` which epoch starts (the Trainer's epoch loop index)."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        if hasattr(self.dataset, "set_epoch"):
            epoch = state.epoch or 0.0
            # `state.epoch` is `epoch_index + steps_done / steps_per_epoch`; exact at epoch boundaries.
            nearest = round(epoch)
            self.dataset.set_epoch(nearest if abs(epoch - nearest) < 1e-6 else math.floor(epoch))


class LookWherePreTrainer(Trainer):
    """Trainer that seeds the per-step `k` with the global step and logs every loss component.

    The component values are averaged over the steps since the last log and over all processes.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._component_sums = None
        self._component_count = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            inputs = {**inputs, "step": self.state.global_step}
        outputs = model(**inputs)
        if model.training:
            values = torch.stack([outputs[name].detach().float() for name in COMPONENTS])
            self._component_sums = values if self._component_sums is None else self._component_sums + values
            self._component_count += 1
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._component_count:
            means = self._component_sums / self._component_count
            means = self.accelerator.gather(means.unsqueeze(0)).mean(dim=0)
            for name, value in zip(COMPONENTS, means.tolist()):
                logs[name] = round(value, 6)
            self._component_sums, self._component_count = None, 0
        super().log(logs, start_time)


def main(argv: list[str] | None = None):
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments))
    if argv is None and len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        model_args, data_args, training_args = parser.parse_json_file(json_file=os.path.abspath(sys.argv[1]))
    else:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)

    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    logger.info(f"Training parameters {training_args}")

    # Checks that need no data or model first.
    if data_args.streaming and training_args.max_steps <= 0:
        raise ValueError("--streaming needs --max_steps (a streamed dataset has no length to derive epochs from).")
    if not 1 <= model_args.k_min <= model_args.k_max:
        raise ValueError(
            f"Need 1 <= --k_min <= --k_max (patches the extractor sees per step), got k_min={model_args.k_min}, "
            f"k_max={model_args.k_max}."
        )
    resume = training_args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "last"):
        resume = get_last_checkpoint(training_args.output_dir) if os.path.isdir(training_args.output_dir) else None
        if resume is None:
            raise ValueError(f"--resume_from_checkpoint {training_args.resume_from_checkpoint}: no checkpoint-* in "
                             f"{training_args.output_dir!r}.")
    elif resume is not None and not os.path.isdir(resume):
        raise ValueError(f"--resume_from_checkpoint {resume!r} is not a folder (expected .../checkpoint-N).")

    set_seed(training_args.seed)
    # The loaders pass our pre-processed `pixel_values` through; keep the raw image column for the transform.
    training_args.remove_unused_columns = False
    if training_args.ddp_find_unused_parameters is None:
        training_args.ddp_find_unused_parameters = False  # every trainable student parameter gets a gradient
    cache_dir = None

    model = build_model(model_args, data_args, cache_dir=cache_dir)
    train_dataset = prepare_dataset(data_args, seed=training_args.seed, cache_dir=cache_dir)
    image_processor = build_image_processor(model, data_args)

    num_student = sum(p.numel() for p in model.parameters())
    num_teacher = sum(p.numel() for p in model.teacher.parameters())
    logger.info(
        f"Teacher {model_args.teacher_name_or_path} ({num_teacher / 1e6:.2f}M params, frozen); student "
        f"{num_student / 1e6:.2f}M params (selector depth {model.config.selector_config.num_hidden_layers}, "
        f"{data_args.low_res_size}px -> {data_args.image_size}px, k in [{model_args.k_min}, {model_args.k_max}])."
    )

    trainer = LookWherePreTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        data_collator=collate_fn,
        processing_class=image_processor,
        callbacks=[SetEpochCallback(train_dataset)],
    )
    train_result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_state()
    if trainer.is_world_process_zero():
        last = [entry for entry in trainer.state.log_history if "loss_cls" in entry]
        if last:
            summary = ", ".join(f"{name} {last[-1][name]:.4f}" for name in ("loss",) + COMPONENTS if name in last[-1])
            print(f"Last logged step {last[-1]['step']}: {summary}")
        print(
            f"Saved the pretrained student (no teacher weights) to {os.path.abspath(training_args.output_dir)}; load "
            "it with LookWhereModel / LookWhereForImageClassification.from_pretrained."
        )
    return trainer


if __name__ == "__main__":
    main()
