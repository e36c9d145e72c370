"""`evaluate` metric modules shipped with lookwhere_hf, so that fine-tuning and evaluation work offline.

`evaluate.load("accuracy")` fetches the module from the Hugging Face Hub, which fails without network access. The
modules here are written for this package and follow the same interface:

- `"accuracy"`: `compute(predictions, references, normalize=True, sample_weight=None) -> {"accuracy"}`.
- `"mean_iou"`: `compute(predictions, references, num_labels, ignore_index, nan_to_num=None, label_map=None,
  reduce_labels=False) -> {"mean_iou", "mean_accuracy", "overall_accuracy", "per_category_iou",
  "per_category_accuracy"}`.

Example:

```python
>>> from lookwhere_hf.metrics import load_metric
>>> load_metric("accuracy").compute(predictions=[1, 0], references=[1, 1])
{'accuracy': 0.5}
```
"""

from __future__ import annotations

from pathlib import Path

SHIPPED_METRICS = ("accuracy", "mean_iou")


def metric_path(name: str) -> str:
    """Path of the module file of a shipped metric (`"accuracy"` or `"mean_iou"`)."""
    if name not in SHIPPED_METRICS:
        raise ValueError(f"lookwhere_hf ships the metrics {SHIPPED_METRICS}, not {name!r}.")
    return str(Path(__file__).resolve().parent / name / f"{name}.py")


def load_metric(name: str, **kwargs):
    """`evaluate.load` a metric: the module shipped here for `"accuracy"` / `"mean_iou"` (works offline), anything
    else (a Hub name or a local module path) through `evaluate.load` itself.

    Args:
        name (`str`): `"accuracy"`, `"mean_iou"`, or any name / path `evaluate.load` accepts.
        kwargs: passed to `evaluate.load` (e.g. `keep_in_memory=True`, `experiment_id=...`).

    Returns:
        `evaluate.EvaluationModule`.
    """
    import evaluate

    if name in SHIPPED_METRICS:
        return evaluate.load(metric_path(name), **kwargs)
    try:
        return evaluate.load(name, **kwargs)
    except Exception as error:  # evaluate raises several types (connection, file not found, import errors)
        raise ValueError(
            f"Could not load the metric {name!r} with `evaluate.load` ({type(error).__name__}: {error}). Metrics on "
            f"the Hub need network access; lookwhere_hf ships {SHIPPED_METRICS} for offline use."
        ) from error


__all__ = ["SHIPPED_METRICS", "load_metric", "metric_path"]
