"""The `Trainer` side of the example scripts: the pretraining `Trainer` (per-step k, loss components in the logs),
the callback that hands the epoch to a [`SeededDataset`], and the train / save / evaluate sequence."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from transformers import Trainer, TrainerCallback

from .loop import report_results
from .metrics import PRETRAINING_LOSS_COMPONENTS, RunningMeans

logger = logging.getLogger(__name__)


class SetEpochCallback(TrainerCallback):
    """Tells a [`SeededDataset`] (per-example seeded augmentation) which epoch starts."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        if hasattr(self.dataset, "set_epoch"):
            # `state.epoch` is `epoch_index + steps_done / steps_per_epoch` (mid-epoch after a resume)
            epoch = state.epoch or 0.0
            nearest = round(epoch)
            self.dataset.set_epoch(nearest if abs(epoch - nearest) < 1e-6 else math.floor(epoch))


class PretrainingTrainer(Trainer):
    """`Trainer` for [`LookWhereForPreTraining`]: the global step seeds the per-step `k`, and every loss component
    is logged (averaged over the steps since the last log and over all processes)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._components = RunningMeans(PRETRAINING_LOSS_COMPONENTS)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            inputs = {**inputs, "step": self.state.global_step}
        outputs = model(**inputs)
        if model.training:
            self._components.add(outputs)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._components.count:
            logs.update({k: round(v, 6) for k, v in self._components.pop(self.accelerator.gather).items()})
        super().log(logs, start_time)


def run_trainer(
    trainer: Trainer,
    *,
    do_train: bool,
    do_eval: bool,
    resume_from_checkpoint: Path | None,
    finetuned_from: str,
    task: str | None = None,
    dataset_name: str | None = None,
) -> dict[str, float]:
    """Train and / or evaluate with a prepared `Trainer`; save the model, the image processor (`processing_class`),
    the metrics (`all_results.json`, `train_results.json`, `eval_results.json`) and the trainer state; push to the Hub
    or write a model card; log the results and how to load the folder. Returns all metrics."""
    results: dict[str, float] = {}
    if do_train:
        checkpoint = None if resume_from_checkpoint is None else str(resume_from_checkpoint)
        metrics = trainer.train(resume_from_checkpoint=checkpoint).metrics
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
        results.update(metrics)
    trainer.save_model()
    if do_eval:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        results.update(metrics)
    card = {"finetuned_from": finetuned_from, "tasks": task, "dataset": dataset_name}
    card = {key: value for key, value in card.items() if value is not None}
    if trainer.args.push_to_hub:
        trainer.push_to_hub(**card)
    elif trainer.is_world_process_zero():
        trainer.create_model_card(**card)
    if trainer.is_world_process_zero():
        report_results(results, trainer.args.output_dir, trainer.model, logger.info)
    return results
