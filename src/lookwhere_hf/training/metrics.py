"""Evaluation metrics of the fine-tuning scripts (offline `evaluate` modules from [`lookwhere_hf.metrics`]) and the
running means of the logged training losses."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..metrics import load_metric
from .data import IGNORE_INDEX, IMAGE_CLASSIFICATION, SEMANTIC_SEGMENTATION

PRETRAINING_LOSS_COMPONENTS = ("loss_cls", "loss_dense", "loss_map", "top_k_agreement")


class TaskMetric:
    """The evaluation of a fine-tuning task: logits -> predicted ids ([`predict`]), accumulated over batches
    ([`add_batch`]), then [`compute`]d to scalars: `accuracy` for classification; `mean_iou`, `mean_accuracy`,
    `overall_accuracy` and `iou_<class>` for segmentation (255 = ignored).

    With the `Trainer`: `preprocess_logits_for_metrics=metric.predict, compute_metrics=metric.compute_metrics`.
    """

    def __init__(self, task: str, id2label: dict[int, str]) -> None:
        if task not in (IMAGE_CLASSIFICATION, SEMANTIC_SEGMENTATION):
            raise ValueError(f"task must be {IMAGE_CLASSIFICATION!r} or {SEMANTIC_SEGMENTATION!r}, got {task!r}.")
        self.task, self.id2label = task, id2label
        self.metric = load_metric("accuracy" if task == IMAGE_CLASSIFICATION else "mean_iou", keep_in_memory=True)

    def predict(self, logits, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (or a model output tuple) -> predicted ids: `(B, num_labels)` -> `(B,)`, or `(B, C, G_h, G_w)` ->
        `(B, H, W)` at the label size (bilinear upsampling, argmax, as `post_process_semantic_segmentation` does)."""
        logits = logits[0] if isinstance(logits, (tuple, list)) else logits
        if self.task == IMAGE_CLASSIFICATION:
            return logits.argmax(dim=-1)
        upsampled = torch.nn.functional.interpolate(
            logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False
        )
        # int32: half the memory of int64 in Trainer's accumulation, and gatherable by gloo and NCCL (int16 is not).
        return upsampled.argmax(dim=1).to(torch.int32)

    def add_batch(self, predictions: torch.Tensor, references: torch.Tensor) -> None:
        self.metric.add_batch(predictions=predictions.cpu().numpy(), references=references.cpu().numpy())

    def compute(self, **inputs) -> dict[str, float]:
        """The metric over what was added (or over `predictions=` / `references=`), as scalars."""
        if self.task == IMAGE_CLASSIFICATION:
            return {"accuracy": float(self.metric.compute(**inputs)["accuracy"])}
        results = self.metric.compute(**inputs, num_labels=len(self.id2label), ignore_index=IGNORE_INDEX)
        flat = {key: float(results[key]) for key in ("mean_iou", "mean_accuracy", "overall_accuracy")}
        for i, value in enumerate(np.asarray(results["per_category_iou"])):
            flat[f"iou_{self.id2label.get(i, i)}"] = float(value)
        return flat

    def compute_metrics(self, eval_pred) -> dict[str, float]:
        """`compute_metrics` for the `Trainer` (whose predictions went through [`predict`])."""
        predictions, references = np.asarray(eval_pred.predictions), np.asarray(eval_pred.label_ids)
        if self.task == IMAGE_CLASSIFICATION:
            return self.compute(predictions=predictions.reshape(-1), references=references.reshape(-1))
        return self.compute(predictions=list(predictions), references=list(references))


class RunningMeans:
    """Means of scalar model outputs (`loss`, `loss_cls`, ...) since the last [`pop`], averaged over processes."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = tuple(names)
        self.sums: torch.Tensor | None = None
        self.count = 0

    def add(self, outputs) -> None:
        values = torch.stack([outputs[name].detach().float() for name in self.names])
        self.sums = values if self.sums is None else self.sums + values
        self.count += 1

    def pop(self, gather: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
        """The means (NaN if nothing was added), with `gather` (e.g. `accelerator.gather`) collecting every process's
        means to average them; then start over. Every process must call it at the same point."""
        if not self.count:
            return dict.fromkeys(self.names, float("nan"))
        means = gather((self.sums / self.count).unsqueeze(0)).mean(dim=0)
        self.sums, self.count = None, 0
        return dict(zip(self.names, means.tolist(), strict=True))
