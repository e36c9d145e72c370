#!/usr/bin/env python
"""Train a small full-resolution ViT teacher on an imagefolder (Sparse Digits) with `Trainer`.

The teacher is a transformers `Dinov2WithRegistersForImageClassification` trained from scratch, **supervised**
(cross-entropy on the labels): this machine has no model hub, so there is no self-supervised DINOv2 to start from.
It is saved with `save_pretrained` together with an image processor, so that

- `run_pretraining.py --teacher_name_or_path OUTPUT_DIR` can distil a LookWhere from it (its backbone is a regular
  DINOv2-with-registers checkpoint), and
- `pipeline("image-classification", model=OUTPUT_DIR)` classifies images with it at full resolution.

Example (the sizes the Sparse Digits benchmark uses):

    python benchmarks/sparse_digits/train_teacher.py \\
        --data_dir data/sparse_digits --output_dir runs/teacher \\
        --image_size 448 --patch_size 28 --hidden_size 96 --num_hidden_layers 4 --num_attention_heads 3 \\
        --num_train_epochs 8 --learning_rate 1e-3 --per_device_train_batch_size 32
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
from datasets import Image as DatasetImage
from datasets import load_dataset
from PIL import Image
from transformers import (
    BitImageProcessor,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersForImageClassification,
    HfArgumentParser,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from lookwhere_hf.models.lookwhere.distillation_losses import mean_query_attention_logits

logger = logging.getLogger(__name__)


@dataclass
class TeacherArguments:
    """Data and architecture of the teacher."""

    data_dir: str = field(metadata={"help": "An imagefolder with train/ and validation/ (and optionally test/)."})
    image_size: int = field(default=448, metadata={"help": "Input resolution (square); a multiple of patch_size."})
    patch_size: int = field(default=28, metadata={"help": "ViT patch size in pixels."})
    hidden_size: int = field(default=96, metadata={"help": "Transformer width."})
    num_hidden_layers: int = field(default=4, metadata={"help": "Transformer depth."})
    num_attention_heads: int = field(default=3, metadata={"help": "Attention heads (must divide hidden_size)."})
    num_register_tokens: int = field(default=4, metadata={"help": "DINOv2 register tokens."})
    mlp_ratio: int = field(default=4, metadata={"help": "MLP hidden size / hidden_size."})
    train_image_size: int | None = field(
        default=None,
        metadata={
            "help": "Resolution the training images are resized to (default: image_size). A smaller one is "
            "progressive resizing: cheaper steps (fewer tokens), the position-embedding table of image_size "
            "interpolated to the smaller grid; evaluation and the saved processor stay at image_size, so continue "
            "at full resolution with benchmarks/varied_items/continue_teacher.py."
        },
    )
    zoom_curriculum: float = field(
        default=0.0,
        metadata={
            "help": "Fraction of training (0 = off) during which training images are zoomed crops around the digit: "
            "a window that contains the digit's box (annotations.jsonl) grows linearly from --zoom_start_size px to "
            "the full canvas, then full images only. Breaks the long chance-level plateau a from-scratch ViT has on "
            "sparse images. Uses the digit boxes of the training set (say so when you report the teacher)."
        },
    )
    zoom_start_size: int = field(default=160, metadata={"help": "Window side (canvas px) at the curriculum's start."})
    zoom_full_image_prob: float = field(
        default=0.25, metadata={"help": "Probability of a full, unzoomed image during the curriculum."}
    )
    token_loss_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of an auxiliary per-patch loss (0 = off): a linear head on the final patch tokens "
            "predicts, for every patch, the digit's class if the patch overlaps the digit's box by at least 20%% of "
            "its area, else 'no digit'. Uses the training boxes (annotations.jsonl); the head is dropped before saving."
        },
    )
    attention_loss_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of an auxiliary attention-map loss (0 = off): the teacher's attention map as LookWhere "
            "distils it (last layer's q.k logits averaged over heads and patch queries, softmax over the patch keys) "
            "is trained towards the patches the digit's box covers (cross-entropy with a target of "
            "1 - --attention_loss_smoothing spread over those patches, the rest over all patches). Uses the training "
            "boxes (annotations.jsonl). Without it, a from-scratch teacher's map points at the digit on some seeds "
            "only (benchmarks/sparse_digits/README.md)."
        },
    )
    attention_loss_smoothing: float = field(
        default=0.1, metadata={"help": "Share of the attention-map target spread uniformly over all patches."}
    )
    mil_loss_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of an auxiliary multiple-instance loss (0 = off) that uses the image labels only, no "
            "boxes: a linear head scores every final patch token for every class, the image's class scores are "
            "the log-sum-exp over the patches (a smooth max: 'some patch shows the item'), and their cross-entropy "
            "with the label is added. The gradient goes to the patches that look most like the label, which finds "
            "a small item in clutter much sooner than the CLS head alone. The head is dropped before saving."
        },
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training images."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N evaluation images."})

    @property
    def uses_boxes(self) -> bool:
        return self.zoom_curriculum > 0 or self.token_loss_weight > 0 or self.attention_loss_weight > 0

    def __post_init__(self):
        if not os.path.isdir(os.path.join(self.data_dir, "train")):
            raise ValueError(
                f"--data_dir {self.data_dir!r} has no train/ folder; generate the data first, e.g. "
                "python benchmarks/sparse_digits/make_dataset.py --output_dir data/sparse_digits"
            )
        if self.patch_size < 1 or self.image_size % self.patch_size:
            raise ValueError(
                f"--image_size ({self.image_size}) must be a multiple of --patch_size ({self.patch_size})."
            )
        if not 0.0 <= self.zoom_curriculum <= 1.0 or not 0.0 <= self.zoom_full_image_prob <= 1.0:
            raise ValueError("--zoom_curriculum and --zoom_full_image_prob must be in [0, 1].")
        if self.attention_loss_weight < 0 or self.token_loss_weight < 0 or not 0 <= self.attention_loss_smoothing < 1:
            raise ValueError(
                "--attention_loss_weight and --token_loss_weight must be >= 0 and --attention_loss_smoothing in "
                f"[0, 1); got {self.attention_loss_weight}, {self.token_loss_weight}, {self.attention_loss_smoothing}."
            )
        if self.uses_boxes and not os.path.isfile(os.path.join(self.data_dir, "annotations.jsonl")):
            raise ValueError(
                "--zoom_curriculum / --token_loss_weight / --attention_loss_weight need the digit boxes in "
                f"{self.data_dir}/annotations.jsonl (written by make_dataset.py); set them to 0 for other imagefolders."
            )
        if not self.mil_loss_weight >= 0:  # `not >=` also rejects NaN
            raise ValueError(f"--mil_loss_weight must be >= 0 (0 = off), got {self.mil_loss_weight}.")
        if self.train_image_size is not None and (
            self.train_image_size < self.patch_size or self.train_image_size % self.patch_size
        ):
            raise ValueError(
                f"--train_image_size {self.train_image_size} must be a positive multiple of --patch_size "
                f"{self.patch_size} (or leave it out: training at --image_size)."
            )
        if self.train_image_size not in (None, self.image_size) and self.uses_boxes:
            raise ValueError(
                "--train_image_size trains at another resolution than --image_size, which the box losses and the zoom "
                "curriculum do not support; set --zoom_curriculum 0 --token_loss_weight 0 --attention_loss_weight 0."
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"--num_attention_heads ({self.num_attention_heads}) must divide --hidden_size ({self.hidden_size})."
            )


def open_image(item: dict) -> Image.Image:
    """An undecoded `datasets.Image` value (`{"path", "bytes"}`) as an RGB PIL image."""
    source = io.BytesIO(item["bytes"]) if item.get("bytes") else item["path"]
    return Image.open(source).convert("RGB")


class ZoomCurriculum:
    """Zoomed training crops around the digit that widen to the full canvas over the first part of training.

    At training progress `t` (0..1, set by a `TrainerCallback`), a window of side
    `w = start + (canvas - start) * t / zoom_curriculum` (the full canvas once `t >= zoom_curriculum`) is placed at a
    random position that contains the digit's `placed_box`, cropped and resized to the model input. With probability
    `zoom_full_image_prob` the full image is used instead.
    """

    def __init__(self, args: TeacherArguments, seed: int) -> None:
        self.boxes = {}
        with open(os.path.join(args.data_dir, "annotations.jsonl"), encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                self.boxes[os.path.normpath(os.path.join(args.data_dir, row["file_name"]))] = row["placed_box"]
        self.args, self.progress = args, 0.0
        self.rng = np.random.default_rng(seed)

    def callback(self) -> TrainerCallback:
        curriculum = self

        class _Progress(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                curriculum.progress = state.global_step / max(1, state.max_steps)

        return _Progress()

    def window(self, canvas: int) -> int:
        if self.progress >= self.args.zoom_curriculum:
            return canvas
        start = min(self.args.zoom_start_size, canvas)
        return round(start + (canvas - start) * self.progress / self.args.zoom_curriculum)

    def __call__(self, image: Image.Image, path: str | None) -> tuple[Image.Image, tuple[int, int, int]]:
        """Returns the (possibly cropped) image and the window `(x, y, side)` it was cut from."""
        canvas = image.size[0]
        size = self.window(canvas) if self.args.zoom_curriculum > 0 else canvas
        box = self.boxes.get(os.path.normpath(path)) if path else None
        if box is None or size >= canvas or self.rng.random() < self.args.zoom_full_image_prob:
            return image, (0, 0, canvas)
        size = max(size, box[2] - box[0], box[3] - box[1])
        x = int(self.rng.integers(max(0, box[2] - size), min(box[0], canvas - size) + 1))
        y = int(self.rng.integers(max(0, box[3] - size), min(box[1], canvas - size) + 1))
        return image.crop((x, y, x + size, y + size)), (x, y, size)


def patch_token_labels(box, window, image_size: int, patch: int, label: int, background: int) -> torch.Tensor:
    """Per-patch targets `(grid * grid,)`: `label` where the digit box (canvas pixels) covers >= 20% of the patch in
    the model input made from `window = (x, y, side)`, else `background`."""
    x, y, side = window
    scale = image_size / side
    x0, y0, x1, y1 = ((box[0] - x) * scale, (box[1] - y) * scale, (box[2] - x) * scale, (box[3] - y) * scale)
    grid = image_size // patch
    edges = np.arange(grid + 1) * patch
    ox = np.clip(np.minimum(edges[1:], x1) - np.maximum(edges[:-1], x0), 0, None)
    oy = np.clip(np.minimum(edges[1:], y1) - np.maximum(edges[:-1], y0), 0, None)
    cover = (oy[:, None] * ox[None, :]).reshape(-1) / (patch * patch)
    targets = np.full(grid * grid, background, dtype=np.int64)
    targets[cover >= 0.2] = label
    return torch.from_numpy(targets)


def attention_map_loss(attention_map: torch.Tensor, on_digit: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Cross-entropy of `softmax(attention_map)` `(B, N)` against a target that puts `1 - smoothing` uniformly on
    the patches where `on_digit` `(B, N)` is True and `smoothing` uniformly on all N patches; images without a digit
    patch (possible in zoom windows) are left out."""
    on_digit = on_digit.float()
    count = on_digit.sum(dim=-1, keepdim=True)
    keep = count.squeeze(-1) > 0
    if not keep.any():
        return attention_map.sum() * 0.0
    target = (1.0 - smoothing) * on_digit / count.clamp(min=1.0) + smoothing / on_digit.shape[-1]
    log_probs = torch.nn.functional.log_softmax(attention_map.float(), dim=-1)
    return -(target * log_probs).sum(dim=-1)[keep].mean()


def multiple_instance_loss(model, outputs, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the image label against `logsumexp` over the patches of `model.mil_head(patch tokens)`:
    `(B, N, classes)` -> `(B, classes)`. Labels only; no box is read."""
    backbone = model.dinov2_with_registers
    num_prefix = 1 + model.config.num_register_tokens
    tokens = backbone.layernorm(outputs.hidden_states[-1])[:, num_prefix:]
    image_logits = torch.logsumexp(model.mil_head(tokens).float(), dim=1)
    return torch.nn.functional.cross_entropy(image_logits, labels)


class TokenLossTrainer(Trainer):
    """Adds the auxiliary per-patch loss and the attention-map loss (both from `token_labels` in the batch) to the
    classification loss."""

    def __init__(
        self,
        *args,
        token_loss_weight: float = 0.0,
        attention_loss_weight: float = 0.0,
        smoothing: float = 0.1,
        mil_loss_weight: float = 0.0,
        **kw,
    ):
        super().__init__(*args, **kw)
        self.mil_loss_weight = mil_loss_weight
        self.token_loss_weight = token_loss_weight
        self.attention_loss_weight = attention_loss_weight
        self.smoothing = smoothing

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        token_labels = inputs.pop("token_labels", None)
        if self.mil_loss_weight and model.training:
            outputs = model(**inputs, output_hidden_states=True)
            loss = outputs.loss + self.mil_loss_weight * multiple_instance_loss(model, outputs, inputs["labels"])
            return (loss, outputs) if return_outputs else loss
        if token_labels is None or not (self.token_loss_weight or self.attention_loss_weight):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        outputs = model(**inputs, output_hidden_states=True)
        backbone = model.dinov2_with_registers
        num_prefix = 1 + model.config.num_register_tokens
        background = model.config.num_labels  # the "no digit" class of the token labels
        loss = outputs.loss
        if self.token_loss_weight:
            tokens = backbone.layernorm(outputs.hidden_states[-1])[:, num_prefix:]
            logits = model.token_head(tokens)
            num_classes = logits.shape[-1]
            weight = torch.ones(num_classes, device=logits.device)
            weight[-1] = 0.1  # "no digit" patches outnumber digit patches ~50:1
            token_loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, num_classes), token_labels.reshape(-1), weight=weight
            )
            loss = loss + self.token_loss_weight * token_loss
        if self.attention_loss_weight:
            # hidden_states = (embeddings, layer 1, ..., layer L): the last layer's input is hidden_states[-2]
            attention_map = mean_query_attention_logits(
                backbone.encoder.layer[-1], outputs.hidden_states[-2], num_prefix
            )
            loss = loss + self.attention_loss_weight * attention_map_loss(
                attention_map, token_labels != background, self.smoothing
            )
        return (loss, outputs) if return_outputs else loss


def build_processor(image_size: int) -> BitImageProcessor:
    """Resize to `image_size` x `image_size`, rescale, ImageNet-normalize (the same numbers LookWhereImageProcessor
    gives at that size), no crop."""
    return BitImageProcessor(
        do_resize=True,
        size={"height": image_size, "width": image_size},
        do_center_crop=False,
        do_rescale=True,
        do_normalize=True,
        image_mean=IMAGENET_DEFAULT_MEAN,
        image_std=IMAGENET_DEFAULT_STD,
        do_convert_rgb=True,
    )


def main(argv=None) -> dict:
    parser = HfArgumentParser((TeacherArguments, TrainingArguments))
    if argv is None and len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        args, training_args = parser.parse_json_file(os.path.abspath(sys.argv[1]))
    else:
        args, training_args = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    set_seed(training_args.seed)

    splits = {
        name: os.path.join(args.data_dir, name, "**")
        for name in ("train", "validation", "test")
        if os.path.isdir(os.path.join(args.data_dir, name))
    }
    dataset = load_dataset("imagefolder", data_files=splits).cast_column("image", DatasetImage(decode=False))
    if "validation" not in dataset:
        raise ValueError(f"--data_dir {args.data_dir!r} needs a validation/ folder for evaluation.")
    labels = dataset["train"].features["label"].names
    id2label = dict(enumerate(labels))
    label2id = {name: i for i, name in id2label.items()}
    if args.max_train_samples:
        dataset["train"] = dataset["train"].shuffle(seed=training_args.seed).select(range(args.max_train_samples))
    for name in ("validation", "test"):
        if args.max_eval_samples and name in dataset:
            dataset[name] = dataset[name].select(range(min(args.max_eval_samples, len(dataset[name]))))

    config = Dinov2WithRegistersConfig(
        image_size=args.image_size,
        patch_size=args.patch_size,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_hidden_layers,
        num_attention_heads=args.num_attention_heads,
        num_register_tokens=args.num_register_tokens,
        mlp_ratio=args.mlp_ratio,
        layerscale_value=1.0,
        num_labels=len(labels),
        id2label=id2label,
        label2id=label2id,
    )
    model = Dinov2WithRegistersForImageClassification(config)
    processor = build_processor(args.image_size)
    num_params = sum(p.numel() for p in model.parameters())
    logger.info(
        "Teacher: Dinov2WithRegistersForImageClassification, %d layers, width %d, patch %d at %dpx (%dx%d patches), "
        "%.2fM parameters, trained from scratch with labels (supervised).",
        args.num_hidden_layers,
        args.hidden_size,
        args.patch_size,
        args.image_size,
        args.image_size // args.patch_size,
        args.image_size // args.patch_size,
        num_params / 1e6,
    )

    # Fast path with the processor's exact numbers: decode to uint8 (resize only if needed, bicubic like the
    # processor), then rescale + normalize the whole batch at once in the collator.
    mean = torch.tensor(processor.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(processor.image_std, dtype=torch.float32).view(1, 3, 1, 1)

    curriculum = ZoomCurriculum(args, training_args.seed) if args.uses_boxes else None
    if args.token_loss_weight > 0:
        model.token_head = torch.nn.Linear(args.hidden_size, len(labels) + 1)  # + "no digit"; dropped before saving
    if args.mil_loss_weight > 0:
        if args.uses_boxes:
            raise ValueError("--mil_loss_weight is the label-only alternative to the box losses; use one or the other.")
        model.mil_head = torch.nn.Linear(args.hidden_size, len(labels))  # dropped before saving

    train_size = args.train_image_size or args.image_size

    def to_tensor(image, size: int = args.image_size):
        if image.size != (size, size):
            image = image.resize((size, size), Image.BICUBIC)
        return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)

    def transform(batch):
        images = [open_image(item) for item in batch["image"]]
        return {"pixel_values": [to_tensor(image) for image in images], "labels": batch["label"]}

    def train_transform(batch):
        images, windows = [], []
        for item in batch["image"]:
            image = open_image(item)
            image, window = curriculum(image, item["path"]) if curriculum is not None else (image, None)
            images.append(image)
            windows.append(window)
        out = {"pixel_values": [to_tensor(image, train_size) for image in images], "labels": batch["label"]}
        if args.token_loss_weight > 0 or args.attention_loss_weight > 0:
            out["token_labels"] = [
                patch_token_labels(
                    curriculum.boxes[os.path.normpath(item["path"])],
                    window,
                    args.image_size,
                    args.patch_size,
                    label,
                    len(labels),
                )
                for item, window, label in zip(batch["image"], windows, batch["label"], strict=True)
            ]
        return out

    for name, split in dataset.items():
        split.set_transform(train_transform if name == "train" else transform)

    def collate(examples):
        pixels = torch.stack([e["pixel_values"] for e in examples]).float().div_(255.0)
        batch = {
            "pixel_values": (pixels - mean) / std,
            "labels": torch.tensor([e["labels"] for e in examples], dtype=torch.long),
        }
        if "token_labels" in examples[0]:
            batch["token_labels"] = torch.stack([e["token_labels"] for e in examples])
        return batch

    def compute_metrics(eval_pred):
        predictions = np.argmax(eval_pred.predictions, axis=-1)
        return {"accuracy": float(np.mean(predictions == eval_pred.label_ids))}

    training_args.remove_unused_columns = False
    trainer = TokenLossTrainer(
        token_loss_weight=args.token_loss_weight,
        attention_loss_weight=args.attention_loss_weight,
        smoothing=args.attention_loss_smoothing,
        mil_loss_weight=args.mil_loss_weight,
        callbacks=[curriculum.callback()] if curriculum is not None else None,
        model=model,
        args=training_args,
        train_dataset=dataset["train"] if training_args.do_train else None,
        eval_dataset=dataset["validation"],
        data_collator=collate,
        compute_metrics=compute_metrics,
        processing_class=processor,
    )
    results = {}
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        if hasattr(model, "token_head"):
            del model.token_head  # the saved teacher is a plain Dinov2WithRegistersForImageClassification
        if hasattr(model, "mil_head"):
            del model.mil_head
        trainer.save_model()
        processor.save_pretrained(training_args.output_dir)
        trainer.log_metrics("train", train_result.metrics)
        trainer.save_metrics("train", train_result.metrics)
        trainer.save_state()
        results.update(train_result.metrics)
    if training_args.do_eval:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        results.update(metrics)
    if training_args.do_predict and "test" in dataset:
        metrics = trainer.evaluate(dataset["test"], metric_key_prefix="test")
        trainer.log_metrics("test", metrics)
        trainer.save_metrics("test", metrics)
        results.update(metrics)
    print(f"Teacher saved to {training_args.output_dir} (config.json, model.safetensors, preprocessor_config.json)")
    return results


if __name__ == "__main__":
    main()
