#!/usr/bin/env python
"""Can a Glance-and-Focus encoder read the digit at all? A cheap check for issue 13, outside Glance-and-Focus.

Trains one encoder as a plain classifier (`ResNetForImageClassification` with the ResNet of
`compare_families.py --glance_focus_backbone resnet`, random weights from `--seed`) on one fixed view of every
Sparse Digits image, with labels, and prints the **validation** accuracy after every epoch:

- `oracle_crop`: the `--crop_size` crop centred on the digit box (clamped inside the canvas): what a focus step
  sees when the policy is perfect;
- `glance`: the whole canvas resized to `--glance_size` (bicubic, as the model's glance view): what the first step
  sees.

Views come from the same whole-canvas `GlanceFocusImageProcessor` the ResNet variant trains with.

`--gf_model <folder>` instead evaluates a trained Glance-and-Focus model (a `compare_families.py` stage folder) on
validation with every focus crop centred on the digit box (`crop_centers=`, oracle policy) next to its own policy:
is the classifier the problem or the policy? (No training.)

    python benchmarks/sparse_digits/probe_glance_focus_encoder.py --data_dir outputs/sparse_digits/data \
        --gf_model outputs/families_gf_resnet/seed_0/gf_resnet_stage3

    python benchmarks/sparse_digits/probe_glance_focus_encoder.py --data_dir outputs/sparse_digits/data \\
        --view oracle_crop --epochs 5 --output outputs/families_gf_resnet/probe_oracle_crop.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

# the families harness's data reader and box geometry (benchmarks/families/)
FAMILIES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "families")
if FAMILIES not in sys.path:
    sys.path.insert(0, FAMILIES)
from geometry import processed_boxes  # noqa: E402
from imagefolder import ImageFolderSplit  # noqa: E402

VIEWS = ("oracle_crop", "glance")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", default="outputs/sparse_digits/data", help="The Sparse Digits imagefolder.")
    p.add_argument("--view", choices=VIEWS, default=None, help="What the encoder sees (see the module docstring).")
    p.add_argument("--gf_model", default=None, help="A trained Glance-and-Focus folder: evaluate it with oracle crops.")
    p.add_argument("--crop_size", type=int, default=112, help="oracle_crop: side of the crop, in canvas pixels.")
    p.add_argument("--glance_size", type=int, default=112, help="glance: side of the resized canvas.")
    p.add_argument("--resnet_sizes", default="16,32,64,128", help="Channels of the ResNet stages (stem: the first).")
    p.add_argument("--resnet_depths", default="1,1,1,1", help="Blocks per ResNet stage.")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_threads", type=int, default=1)
    p.add_argument("--output", default=None, help="Write the per-epoch accuracies here (JSON).")
    args = p.parse_args(argv)
    if (args.view is None) == (args.gf_model is None):
        p.error("Give either --view (train an encoder on one view) or --gf_model (evaluate with oracle crops).")
    try:
        args.resnet_sizes = [int(v) for v in args.resnet_sizes.split(",")]
        args.resnet_depths = [int(v) for v in args.resnet_depths.split(",")]
    except ValueError:
        p.error("--resnet_sizes and --resnet_depths must be comma-separated integers.")
    if len(args.resnet_sizes) != len(args.resnet_depths) or min(args.resnet_sizes + args.resnet_depths) < 1:
        p.error("--resnet_sizes and --resnet_depths need one positive integer per stage each.")
    if min(args.crop_size, args.glance_size, args.epochs, args.batch_size) < 1 or args.learning_rate <= 0:
        p.error("--crop_size, --glance_size, --epochs, --batch_size and --learning_rate must be positive.")
    return args


def oracle_crop(pixel_values: torch.Tensor, box: list[int], size: int) -> torch.Tensor:
    """The `size` x `size` window of `pixel_values (C, H, W)` centred on `box = [x0, y0, x1, y1]`, shifted inside."""
    height, width = pixel_values.shape[-2:]
    if size > min(height, width):
        raise ValueError(f"--crop_size {size} is larger than the {height}x{width} canvas.")
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    x0 = min(max(round(cx - size / 2), 0), width - size)
    y0 = min(max(round(cy - size / 2), 0), height - size)
    return pixel_values[:, y0 : y0 + size, x0 : x0 + size]


def views(args, split: ImageFolderSplit) -> tuple[torch.Tensor, torch.Tensor]:
    """`(inputs (N, 3, s, s), labels (N,))` of one split in the chosen view."""
    out = []
    for index in range(len(split)):
        encoded = split.processor(split.image(index), return_tensors="pt")
        if args.view == "glance":
            out.append(encoded["glance_pixel_values"][0])
        else:
            out.append(oracle_crop(encoded["pixel_values"][0], split.rows[index]["box"], args.crop_size))
    return torch.stack(out), torch.tensor([int(r["label"]) for r in split.rows])


def evaluate_with_oracle_crops(args) -> dict:
    """Validation accuracy per step of a trained Glance-and-Focus model: its own policy (mean) and every focus crop
    centred on the digit box (clamped where the crop would leave the image)."""
    from transformers import AutoImageProcessor

    from lookwhere_hf.models.glance_focus import GlanceFocusForImageClassification

    model = GlanceFocusForImageClassification.from_pretrained(args.gf_model).eval()
    processor = AutoImageProcessor.from_pretrained(args.gf_model)
    split = ImageFolderSplit(args.data_dir, "validation", processor)
    correct = {"policy": 0, "oracle": 0}
    steps = model.config.num_steps
    per_step = {name: torch.zeros(steps) for name in correct}
    for start in range(0, len(split), 50):
        indices = range(start, min(start + 50, len(split)))
        images = [split.image(i) for i in indices]
        inputs = processor(images, return_tensors="pt")
        labels = torch.tensor([int(split.rows[i]["label"]) for i in indices])
        boxes = processed_boxes(processor, torch.tensor([split.rows[i]["box"] for i in indices]).double(), 448)
        side, patch = inputs["pixel_values"].shape[-1], model.config.patch_size
        centre = torch.stack(((boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2), dim=-1)
        oracle = ((centre - patch / 2) / (side - patch)).clamp(0, 1).float()
        oracle = oracle[:, None, :].expand(-1, steps - 1, -1).contiguous()
        with torch.no_grad():
            for name, extra in (("policy", {}), ("oracle", {"crop_centers": oracle})):
                rungs = model(**inputs, anytime=True, **extra).rung_logits  # (B, steps, C)
                per_step[name] += (rungs.argmax(-1) == labels[:, None]).sum(0).float()
    result = {name: (values / len(split)).tolist() for name, values in per_step.items()}
    print(f"{args.gf_model}: validation accuracy per step, own policy {result['policy']}, oracle crops "
          f"{result['oracle']}")  # fmt: skip
    return {"gf_model": args.gf_model, "validation_step_accuracy": result}


def main(argv=None) -> dict:
    from transformers import ResNetConfig, ResNetForImageClassification

    from lookwhere_hf.models.glance_focus import GlanceFocusImageProcessor

    args = parse_args(argv)
    torch.set_num_threads(args.num_threads)
    if args.gf_model is not None:
        result = evaluate_with_oracle_crops(args)
        if args.output:
            with open(args.output, "w", encoding="utf-8") as f:
                json.dump(result, f, indent=1)
        return result
    torch.manual_seed(args.seed)
    canvas = 448
    processor = GlanceFocusImageProcessor(
        size={"height": canvas, "width": canvas}, do_center_crop=False, crop_size={"height": canvas, "width": canvas},
        glance_size=args.glance_size,
    )  # fmt: skip
    start = time.time()
    train_x, train_y = views(args, ImageFolderSplit(args.data_dir, "train", processor))
    val_x, val_y = views(args, ImageFolderSplit(args.data_dir, "validation", processor))
    print(f"views {tuple(train_x.shape[1:])} of {len(train_x)} + {len(val_x)} images in {time.time() - start:.0f} s")
    sizes = args.resnet_sizes
    config = ResNetConfig(
        embedding_size=sizes[0], hidden_sizes=sizes, depths=args.resnet_depths, layer_type="basic", num_labels=10,
        downsample_in_first_stage=False,
    )  # fmt: skip
    model = ResNetForImageClassification(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.05)
    steps = args.epochs * math.ceil(len(train_x) / args.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    generator = torch.Generator().manual_seed(args.seed)
    history = []
    for epoch in range(args.epochs):
        model.train()
        order, losses = torch.randperm(len(train_x), generator=generator), []
        for first in range(0, len(order), args.batch_size):
            batch = order[first : first + args.batch_size]
            loss = model(pixel_values=train_x[batch], labels=train_y[batch]).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        model.eval()
        with torch.no_grad():
            predictions = torch.cat([model(pixel_values=val_x[i : i + 100]).logits.argmax(-1)
                                     for i in range(0, len(val_x), 100)])  # fmt: skip
        accuracy = float((predictions == val_y).double().mean())
        history.append({"epoch": epoch + 1, "train_loss": sum(losses) / len(losses), "validation_accuracy": accuracy})
        print(f"epoch {epoch + 1}: train loss {history[-1]['train_loss']:.3f}, validation accuracy {accuracy:.3f}")
    result = {"arguments": dict(vars(args)), "history": history, "wall_s": time.time() - start}
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)
