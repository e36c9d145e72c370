"""Mean intersection-over-union (IoU) for semantic segmentation, with per-category IoU and accuracy.

An `evaluate` metric module shipped with lookwhere_hf so that fine-tuning works offline (loading the Hub's
`mean_iou` needs the network). Load it with `lookwhere_hf.metrics.load_metric("mean_iou")`. Its inputs and outputs
follow the Hub's `mean_iou` so that code written for one works with the other.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
For every class c, summed over all images: intersection(c) = pixels predicted c whose label is c, union(c) = pixels
predicted c or labelled c. IoU(c) = intersection(c) / union(c); accuracy(c) = intersection(c) / pixels labelled c.
Pixels whose label is `ignore_index` are left out everywhere. A class with an empty union (absent from both the
predictions and the labels) has IoU NaN and does not count in the means (`nan_to_num` replaces the NaNs in the
per-category arrays). mean_iou / mean_accuracy are the NaN-ignoring means over classes; overall_accuracy is the
fraction of all non-ignored pixels predicted correctly. Predicted or label values outside [0, num_labels) are left
out of the per-class counts.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of 2D arrays of `int`): predicted class map per image, `(height, width)`.
    references (`list` of 2D arrays of `int`): label map per image, same shapes as the predictions.
    num_labels (`int`): number of classes.
    ignore_index (`int`): label value to leave out (255 for most datasets).
    nan_to_num (`float`, *optional*): value that replaces NaN in the per-category results.
    label_map (`dict[int, int]`, *optional*): relabels the references (old id -> new id) before anything else.
    reduce_labels (`bool`, defaults to `False`): label 0 (background) becomes 255 and every other label is decreased
        by one (for datasets whose 0 means "unlabelled"), applied to the references only.

Returns:
    `dict` with `mean_iou`, `mean_accuracy`, `overall_accuracy` (floats) and `per_category_iou`,
    `per_category_accuracy` (`np.ndarray` of shape `(num_labels,)`).

Example:
    >>> import numpy as np
    >>> from lookwhere_hf.metrics import load_metric
    >>> pred = np.array([[0, 1], [1, 1]]); label = np.array([[0, 1], [0, 1]])
    >>> metric = load_metric("mean_iou")
    >>> metric.compute(predictions=[pred], references=[label], num_labels=2, ignore_index=255)["mean_iou"]
    0.5833333333333333
"""

_CITATION = ""


def intersect_and_union(
    prediction: np.ndarray,
    label: np.ndarray,
    num_labels: int,
    ignore_index: int,
    label_map: dict | None = None,
    reduce_labels: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-class pixel counts of one image: `(intersection, union, predicted, labelled)`, each `(num_labels,)`."""
    prediction = np.asarray(prediction).astype(np.int64, copy=False)
    label = np.asarray(label).astype(np.int64, copy=True)
    if prediction.shape != label.shape:
        raise ValueError(f"A prediction of shape {prediction.shape} was paired with a label of shape {label.shape}.")
    if label_map:
        original = label.copy()
        for old_id, new_id in label_map.items():
            label[original == int(old_id)] = int(new_id)
    if reduce_labels:
        label[label == 0] = 255
        label = label - 1
        label[label == 254] = 255
    keep = label != ignore_index
    prediction, label = prediction[keep], label[keep]

    def count(values: np.ndarray) -> np.ndarray:
        values = values[(values >= 0) & (values < num_labels)]
        return np.bincount(values, minlength=num_labels).astype(np.float64)

    area_intersect = count(prediction[prediction == label])
    area_prediction = count(prediction)
    area_label = count(label)
    return area_intersect, area_prediction + area_label - area_intersect, area_prediction, area_label


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MeanIoU(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("uint16"))),
                    "references": datasets.Sequence(datasets.Sequence(datasets.Value("uint16"))),
                }
            ),
        )

    def _compute(
        self,
        predictions,
        references,
        num_labels: int,
        ignore_index: int,
        nan_to_num: float | None = None,
        label_map: dict | None = None,
        reduce_labels: bool = False,
    ) -> dict:
        if not isinstance(num_labels, (int, np.integer)) or num_labels < 1:
            raise ValueError(f"`num_labels` must be a positive int, got {num_labels!r}.")
        if len(predictions) != len(references):
            raise ValueError(
                f"Got {len(predictions)} predictions and {len(references)} references; pass one of each per image."
            )
        totals = np.zeros((4, num_labels), dtype=np.float64)
        for prediction, label in zip(predictions, references):
            totals += np.stack(
                intersect_and_union(prediction, label, num_labels, ignore_index, label_map, reduce_labels)
            )
        intersect, union, _, labelled = totals
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = intersect / union
            accuracy = intersect / labelled
            overall = intersect.sum() / labelled.sum()
        mean_iou = float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
        mean_accuracy = float(np.nanmean(accuracy)) if np.isfinite(accuracy).any() else float("nan")
        if nan_to_num is not None:
            iou = np.nan_to_num(iou, nan=nan_to_num)
            accuracy = np.nan_to_num(accuracy, nan=nan_to_num)
        return {
            "mean_iou": mean_iou,
            "mean_accuracy": mean_accuracy,
            "overall_accuracy": float(overall),
            "per_category_iou": iou,
            "per_category_accuracy": accuracy,
        }
