"""Accuracy: the fraction of predictions equal to their reference label.

An `evaluate` metric module shipped with lookwhere_hf so that fine-tuning works offline (loading the Hub's
`accuracy` needs the network). Load it with `lookwhere_hf.metrics.load_metric("accuracy")`.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Accuracy = (number of predictions equal to the reference) / (number of predictions). With `sample_weight`, every
example counts with its weight; with `normalize=False` the (weighted) number of correct predictions is returned
instead of the fraction.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class ids.
    references (`list` of `int`): true class ids.
    normalize (`bool`, defaults to `True`): return the fraction of correct predictions (`False`: their count).
    sample_weight (`list` of `float`, *optional*): one weight per example.

Returns:
    `{"accuracy": float}`: in [0, 1] when `normalize`, else the (weighted) number of correct predictions.

Example:
    >>> from lookwhere_hf.metrics import load_metric
    >>> load_metric("accuracy").compute(predictions=[0, 1, 1, 2], references=[0, 1, 2, 2])
    {'accuracy': 0.75}
"""

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, normalize: bool = True, sample_weight=None) -> dict:
        predictions = np.asarray(predictions)
        references = np.asarray(references)
        if predictions.shape != references.shape:
            raise ValueError(
                f"`predictions` and `references` must have the same length, got {predictions.shape[0]} and "
                f"{references.shape[0]}."
            )
        weights = (
            np.ones(len(predictions), dtype=np.float64)
            if sample_weight is None
            else np.asarray(sample_weight, dtype=np.float64)
        )
        if weights.shape != predictions.shape:
            raise ValueError(
                f"`sample_weight` needs one weight per example ({len(predictions)}), got {weights.shape[0]}."
            )
        correct = float(np.sum(weights * (predictions == references)))
        if not normalize:
            return {"accuracy": correct}
        total = float(np.sum(weights))
        return {"accuracy": correct / total if total > 0 else float("nan")}
