"""Budgeted batch classification: fit per-rung exit thresholds so that the mean FLOPs per image meet a budget.

The exit *rule* lives in the models (it must travel with `trust_remote_code` folders): an image leaves at the first
rung whose confidence (max softmax probability) is `>=` that rung's threshold, and the last rung always exits. This
module does the *fitting*, the way Glance-and-Focus (GFNet, Wang et al., NeurIPS 2020, "budgeted batch
classification") does it, as we read the paper and its `dynamic_evaluate`:

1. Run anytime inference on a held-out split: every image's softmax output at every rung, and the cumulative FLOPs of
   exiting at each rung.
2. For each `p` of a grid, an *exit profile*: the share of images that exits at rung `t` is proportional to `p ** t`
   (`t = 0 .. T-1`; small `p` puts most images on the early rungs, large `p` on the late ones, `p = 0` all on the
   first). Beyond GFNet, the profiles also run over every subset of the rungs that keeps the last one: a skipped rung
   gets no exits (threshold above any confidence). Without that, every profile sends some images out at the first
   rung, however bad its predictions (a glance exit near chance level, say); with it, the calibration finds on its
   own that a rung is not worth stopping at.
3. Thresholds for a profile, rung by rung: among the images still running, sort their confidence at this rung and
   put the threshold between the `n_t`-th and the `n_t + 1`-th largest (the midpoint, so that a confidence recomputed
   with other rounding does not cross it), where `n_t` is the profile's count for the rung.
4. Replay the exit rule with those thresholds on the same split: mean FLOPs = sum over rungs of (share exiting there)
   x (cumulative FLOPs of the rung); accuracy = share of images whose exit rung predicts the label.
5. Keep the most accurate profile whose mean FLOPs is `<=` the target (ties: the cheaper one).

Family-agnostic: [`fit_budget_thresholds`] takes arrays only. [`calibrate_budget`] takes any model whose forward
accepts `anytime=True` and returns `rung_logits` (`(batch_size, num_rungs, num_labels)`) and `rung_flops`
(`(batch_size, num_rungs)` cumulative FLOPs per image, the same in every row), and whose config has the `budget_*`
fields (LookWhere's; Glance-and-Focus uses the same ones). Example:

```python
>>> from lookwhere_hf.budget import calibrate_budget
>>> result = calibrate_budget(model, validation_dataset, target_gflops=20.0)  # writes model.config.budget_*
>>> model.save_pretrained("budgeted")  # the thresholds travel with the folder; the pipeline uses them
```
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import torch
from huggingface_hub.errors import StrictDataclassClassValidationError

__all__ = [
    "BUDGET_CONFIG_FIELDS",
    "BudgetCalibration",
    "calibrate_budget",
    "collect_anytime_outputs",
    "fit_budget_thresholds",
    "profile_thresholds",
    "simulate_exits",
]

BUDGET_CONFIG_FIELDS = (
    "budget_thresholds",
    "budget_rung_gflops",
    "budget_image_size",
    "budget_target_gflops",
    "budget_expected_gflops",
    "budget_calibration_accuracy",
)
"""The config fields [`calibrate_budget`] writes; they belong to the rungs they were fitted on."""

NEVER_EXIT = 2.0
"""Threshold of a rung no image should leave at: above any max softmax probability."""


@dataclass
class BudgetCalibration:
    """Result of a budget calibration (FLOPs in the unit of the `rung_flops` that were passed).

    Attributes:
        thresholds (`list[float]`): one per rung except the last.
        expected_flops (`float`): mean FLOPs per image of the exit rule on the calibration split.
        accuracy (`float`): top-1 accuracy of the exit rule on the calibration split.
        exit_shares (`list[float]`): share of the calibration images that exits at each rung.
        p (`float`): the exit profile chosen (share at the `j`-th rung used proportional to `p ** j`; rungs with
            share 0 in `exit_shares` and threshold `NEVER_EXIT` were skipped).
        target_flops (`float`): the budget.
        rung_flops (`list[float]`): cumulative FLOPs per image of each rung.
        num_images (`int`): size of the calibration split.
    """

    thresholds: list[float]
    expected_flops: float
    accuracy: float
    exit_shares: list[float]
    p: float
    target_flops: float
    rung_flops: list[float]
    num_images: int

    def to_dict(self) -> dict:
        return asdict(self)


def simulate_exits(confidences: torch.Tensor, thresholds: Sequence[float]) -> torch.LongTensor:
    """The exit rule: each image's exit rung, the first `t` with `confidences[:, t] >= thresholds[t]`, else the last.

    Args:
        confidences (`torch.Tensor` of shape `(num_images, num_rungs)`): max softmax probability at every rung.
        thresholds (`Sequence[float]`): `num_rungs - 1` thresholds.

    Returns:
        `torch.LongTensor` of shape `(num_images,)`.
    """
    num_images, num_rungs = confidences.shape
    if len(thresholds) != num_rungs - 1:
        raise ValueError(f"Expected {num_rungs - 1} thresholds for {num_rungs} rungs, got {len(thresholds)}.")
    passes = torch.ones(num_images, num_rungs, dtype=torch.bool, device=confidences.device)
    if num_rungs > 1:
        limits = torch.as_tensor(list(thresholds), dtype=confidences.dtype, device=confidences.device)
        passes[:, :-1] = confidences[:, :-1] >= limits
    return passes.to(torch.int8).argmax(dim=1)  # the first True (the last column is always True)


def profile_thresholds(confidences: torch.Tensor, shares: torch.Tensor) -> list[float]:
    """Thresholds that make `shares[t]` of the images exit at rung `t` (ties may make a few more leave early)."""
    num_images, num_rungs = confidences.shape
    cumulative = torch.round(torch.cumsum(shares, 0) * num_images).long().tolist()
    running = torch.ones(num_images, dtype=torch.bool)
    thresholds, exited = [], 0
    for t in range(num_rungs - 1):
        count = cumulative[t] - exited  # images the profile wants to leave here
        ranked = torch.sort(confidences[running, t], descending=True).values
        if count <= 0 or len(ranked) == 0:
            threshold = NEVER_EXIT
        elif count >= len(ranked):
            threshold = 0.0
        else:
            threshold = float((ranked[count - 1] + ranked[count]) / 2)
        thresholds.append(threshold)
        leaving = running & (confidences[:, t] >= threshold)
        exited += int(leaving.sum())
        running &= ~leaving
    return thresholds


def fit_budget_thresholds(
    probabilities: torch.Tensor,
    labels: torch.Tensor,
    rung_flops: Sequence[float] | torch.Tensor,
    target_flops: float,
    p_grid: Sequence[float] | None = None,
    skip_rungs: bool = True,
) -> BudgetCalibration:
    """Fit exit thresholds on held-out anytime outputs so that the mean FLOPs per image is `<= target_flops`.

    Args:
        probabilities (`torch.Tensor` of shape `(num_images, num_rungs, num_labels)`): softmax outputs per rung.
        labels (`torch.LongTensor` of shape `(num_images,)`): class indices.
        rung_flops (`(num_rungs,)`): cumulative FLOPs per image of exiting at each rung (increasing).
        target_flops (`float`): the budget, in the unit of `rung_flops`.
        p_grid (`Sequence[float]`, *optional*): exit profiles to try (default: 0 and 241 values from 1e-2 to 1e2,
            geometric).
        skip_rungs (`bool`, *optional*, defaults to `True`): also try the profiles on every subset of the rungs that
            keeps the last one (`2 ** (num_rungs - 1)` subsets; skipped rungs get the threshold `NEVER_EXIT`).
            `False`: GFNet's search, every rung takes its share.

    Returns:
        [`BudgetCalibration`].
    """
    probabilities = torch.as_tensor(probabilities)
    labels = torch.as_tensor(labels)
    rung_flops = torch.as_tensor(rung_flops, dtype=torch.float64).flatten()
    if probabilities.ndim != 3:
        raise ValueError(
            f"`probabilities` must have shape (num_images, num_rungs, num_labels), got {tuple(probabilities.shape)}."
        )
    num_images, num_rungs, _ = probabilities.shape
    if num_images == 0:
        raise ValueError("The calibration split is empty; pass a held-out split with labelled images.")
    if labels.shape != (num_images,):
        raise ValueError(f"`labels` must have shape ({num_images},), got {tuple(labels.shape)}.")
    if len(torch.unique(labels)) < 2:
        raise ValueError(
            "The calibration split has a single class: thresholds fitted on it would only measure that class's "
            "confidence. Use a held-out split with several classes."
        )
    if rung_flops.shape != (num_rungs,):
        raise ValueError(f"`rung_flops` must hold one value per rung ({num_rungs}), got {tuple(rung_flops.shape)}.")
    if bool((rung_flops[1:] <= rung_flops[:-1]).any()):
        raise ValueError(f"`rung_flops` must be increasing (cumulative per rung), got {rung_flops.tolist()}.")
    low, high = float(rung_flops[0]), float(rung_flops[-1])
    if not target_flops >= low:
        raise ValueError(
            f"The budget {target_flops:.6g} is below the cost of the first rung ({low:.6g}, the glance or the smallest "
            "k): no image can be classified for less. Raise the budget."
        )
    if not target_flops <= high:
        raise ValueError(
            f"The budget {target_flops:.6g} is above the cost of the last rung ({high:.6g}): every image can take "
            "every rung, so there is nothing to decide. Lower the budget, or run without exits (anytime / fixed k)."
        )
    if p_grid is None:
        p_grid = [0.0] + torch.logspace(-2, 2, 241, dtype=torch.float64).tolist()

    confidences, predictions = probabilities.double().max(dim=-1)
    correct = predictions == labels.unsqueeze(1)
    if skip_rungs:  # every subset of the first T-1 rungs, plus the last rung (bit t of the mask: rung t is used)
        rung_sets = [
            [t for t in range(num_rungs - 1) if mask >> t & 1] + [num_rungs - 1] for mask in range(2 ** (num_rungs - 1))
        ]
    else:
        rung_sets = [list(range(num_rungs))]
    profiles = ((float(p), rungs) for rungs in rung_sets for p in p_grid)
    best = None
    for p, rungs in profiles:
        shares = torch.zeros(num_rungs, dtype=torch.float64)
        shares[rungs] = torch.pow(torch.tensor(p, dtype=torch.float64), torch.arange(len(rungs)))
        thresholds = profile_thresholds(confidences, shares / shares.sum())
        exits = simulate_exits(confidences, thresholds)
        mean_flops = float(rung_flops[exits].mean())
        if mean_flops > target_flops:
            continue
        accuracy = float(correct[torch.arange(num_images), exits].double().mean())
        if best is None or (accuracy, -mean_flops) > (best.accuracy, -best.expected_flops):
            exit_shares = torch.bincount(exits, minlength=num_rungs).double() / num_images
            best = BudgetCalibration(
                thresholds=thresholds,
                expected_flops=mean_flops,
                accuracy=accuracy,
                exit_shares=exit_shares.tolist(),
                p=p,
                target_flops=float(target_flops),
                rung_flops=rung_flops.tolist(),
                num_images=num_images,
            )
    if best is None:  # only with a custom grid: p = 0 (everything at the first rung) always fits
        raise ValueError(
            f"No exit profile of `p_grid` {list(p_grid)} meets the budget {target_flops:.6g}; include p = 0 or "
            "smaller values."
        )
    return best


def _collate(examples: list[dict]) -> dict:
    batch = {"pixel_values": torch.stack([torch.as_tensor(e["pixel_values"]) for e in examples])}
    if "low_res_pixel_values" in examples[0]:
        batch["low_res_pixel_values"] = torch.stack([torch.as_tensor(e["low_res_pixel_values"]) for e in examples])
    key = "labels" if "labels" in examples[0] else "label"
    if any(key not in example for example in examples):
        raise ValueError("Calibration examples need `labels` (or `label`): the thresholds are fitted on them.")
    batch["labels"] = torch.as_tensor([int(e[key]) for e in examples])
    return batch


def _batches(eval_data, batch_size: int) -> Iterable[dict]:
    if isinstance(eval_data, torch.utils.data.DataLoader):
        return eval_data
    if hasattr(eval_data, "__len__") and hasattr(eval_data, "__getitem__"):
        # A `datasets.Dataset` (with a torch format or transform), a torch Dataset or a list of examples.
        return torch.utils.data.DataLoader(eval_data, batch_size=batch_size, shuffle=False, collate_fn=_collate)
    return eval_data  # any iterable of batches


@torch.no_grad()
def collect_anytime_outputs(model, eval_data, batch_size: int = 16, progress: bool = True):
    """Anytime inference over a held-out split.

    Args:
        model: a model whose forward takes `anytime=True` (see the module docstring).
        eval_data: a `DataLoader` or iterable of batches (dicts with `pixel_values`, optional `low_res_pixel_values`,
            and `labels` or `label`), or an indexable dataset of such examples (batched here with `batch_size`).
        batch_size (`int`): for indexable datasets.
        progress (`bool`): show a progress bar.

    Returns:
        `(probabilities (N, T, C), labels (N,), rung_flops (T,), image_size (height, width))`.
    """
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    probabilities, labels, rung_flops, image_size = [], [], None, None
    try:
        for batch in tqdm(_batches(eval_data, batch_size), desc="calibrating", disable=not progress):
            if "labels" not in batch and "label" not in batch:
                raise ValueError("Calibration examples need `labels` (or `label`): the thresholds are fitted on them.")
            pixel_values = batch["pixel_values"].to(device)
            inputs = {"pixel_values": pixel_values}
            if batch.get("low_res_pixel_values") is not None:
                inputs["low_res_pixel_values"] = batch["low_res_pixel_values"].to(device)
            outputs = model(**inputs, anytime=True)
            batch_flops = outputs.rung_flops[0].cpu().tolist()  # every row is the same ladder
            size = tuple(pixel_values.shape[-2:])
            if rung_flops is not None and (batch_flops != rung_flops or size != image_size):
                raise ValueError(
                    f"The calibration split mixes input sizes ({image_size} and {size}): the rung costs differ. "
                    "Resize every image to the size you will run at (the image processor does)."
                )
            rung_flops, image_size = batch_flops, size
            probabilities.append(outputs.rung_logits.float().softmax(-1).cpu())
            labels.append(torch.as_tensor(batch["labels"] if "labels" in batch else batch["label"]).cpu())
    finally:
        model.train(was_training)
    if not probabilities:
        raise ValueError("The calibration split is empty; pass a held-out split with labelled images.")
    return torch.cat(probabilities), torch.cat(labels).long(), rung_flops, image_size


def calibrate_budget(
    model,
    eval_data,
    target_gflops: float,
    batch_size: int = 16,
    p_grid: Sequence[float] | None = None,
    progress: bool = True,
) -> BudgetCalibration:
    """Fit exit thresholds for a mean of `target_gflops` GFLOPs per image on a held-out split, and write them into
    `model.config` (`budget_thresholds`, `budget_rung_gflops`, `budget_image_size`, `budget_target_gflops`,
    `budget_expected_gflops`, `budget_calibration_accuracy`), so that `save_pretrained` keeps them and the model's
    eval-mode forward (and so `pipeline("image-classification")`) uses them.

    Calibrate at the resolution you will run at: the rung costs, and so the thresholds, depend on it.

    Args:
        model: an anytime classifier, e.g. [`LookWhereForImageClassification`] (see the module docstring).
        eval_data: held-out data, as [`collect_anytime_outputs`] takes it. Not the test split.
        target_gflops (`float`): mean GFLOPs per image.
        batch_size, p_grid, progress: see [`collect_anytime_outputs`] and [`fit_budget_thresholds`].

    Returns:
        [`BudgetCalibration`] in GFLOPs.
    """
    if isinstance(target_gflops, bool) or not isinstance(target_gflops, (int, float)):
        raise ValueError(f"`target_gflops` must be a number of GFLOPs per image, got {target_gflops!r}.")
    probabilities, labels, rung_flops, image_size = collect_anytime_outputs(model, eval_data, batch_size, progress)
    rung_gflops = [flops / 1e9 for flops in rung_flops]
    result = fit_budget_thresholds(probabilities, labels, rung_gflops, float(target_gflops), p_grid)
    config = model.config
    config.budget_thresholds = result.thresholds
    config.budget_rung_gflops = result.rung_flops
    config.budget_image_size = list(image_size)
    config.budget_target_gflops = result.target_flops
    config.budget_expected_gflops = result.expected_flops
    config.budget_calibration_accuracy = result.accuracy
    try:  # every family's `@strict` class validators (`validate_lookwhere`, `validate_glance_focus`, ...)
        config.validate()
    except StrictDataclassClassValidationError as error:
        raise ValueError(f"The calibrated budget does not fit the model's config: {error.__cause__}") from error
    return result
