"""The `evaluate` metric modules shipped in lookwhere_hf.metrics, against hand-computed values, loaded offline."""

import math

import numpy as np
import pytest
from conftest import EPS64

from lookwhere_hf.metrics import SHIPPED_METRICS, load_metric, metric_path

# Every expected value is a ratio of small integer counts, or a mean of <= 3 of them, computed in float64 on both
# sides: each ratio is correctly rounded (within EPS64 / 2), so the two sides agree to a few ulps.
RTOL = 4 * EPS64


def test_accuracy_matches_hand_count():
    metric = load_metric("accuracy", keep_in_memory=True)
    assert metric.__class__.__name__ == "Accuracy"
    # 3 of 4 right.
    assert metric.compute(predictions=[0, 1, 1, 2], references=[0, 1, 2, 2]) == {"accuracy": 0.75}
    assert metric.compute(predictions=[0, 1, 1, 2], references=[0, 1, 2, 2], normalize=False) == {"accuracy": 3.0}
    # weights 1, 2, 3, 4: the wrong example weighs 3 -> (1 + 2 + 4) / 10.
    weighted = metric.compute(predictions=[0, 1, 1, 2], references=[0, 1, 2, 2], sample_weight=[1, 2, 3, 4])
    assert weighted["accuracy"] == pytest.approx(0.7, rel=RTOL)
    # add_batch accumulates like one compute call.
    metric.add_batch(predictions=[1, 1], references=[1, 0])
    metric.add_batch(predictions=[2], references=[2])
    assert metric.compute()["accuracy"] == pytest.approx(2 / 3, rel=RTOL)


def test_accuracy_rejects_bad_weights():
    metric = load_metric("accuracy", keep_in_memory=True)
    with pytest.raises(ValueError, match="one weight per example"):
        metric.compute(predictions=[0, 1], references=[0, 1], sample_weight=[1.0])


def _hand_case():
    """Two 3x4 images, 4 classes, 255 = ignore. Class 3 appears in neither predictions nor labels."""
    pred1 = np.array([[0, 0, 1, 1], [0, 2, 1, 1], [0, 0, 0, 2]])
    lab1 = np.array([[0, 0, 1, 1], [0, 0, 1, 255], [0, 0, 1, 255]])
    pred2 = np.array([[2, 2, 2, 2], [0, 0, 0, 0], [1, 1, 1, 1]])
    lab2 = np.array([[1, 1, 255, 255], [0, 0, 0, 0], [1, 1, 1, 1]])
    # Non-ignored pixels. Image 1: 10 pixels; image 2: 10 pixels.
    # Class 0: labelled 6 + 4 = 10; predicted (where label not ignored) 6 (img1: (0,0),(0,1),(1,0),(2,0),(2,1),(2,2))
    #          + 4 (img2 row 1) = 10; intersection 5 (img1: (0,0),(0,1),(1,0),(2,0),(2,1)) + 4 = 9.
    #          union = 10 + 10 - 9 = 11 -> IoU 9/11, acc 9/10.
    # Class 1: labelled 4 (img1: (0,2),(0,3),(1,2),(2,2)) + 6 (img2: (0,0),(0,1), row 2) = 10;
    #          predicted 3 (img1: (0,2),(0,3),(1,2); (1,3) is ignored) + 4 (img2 row 2) = 7; intersection 3 + 4 = 7.
    #          union = 10 + 7 - 7 = 10 -> IoU 7/10, acc 7/10.
    # Class 2: labelled 0; predicted 1 (img1 (1,1); (2,3) is ignored) + 2 (img2 (0,0),(0,1)) = 3; intersection 0.
    #          union 3 -> IoU 0, acc NaN (no labelled pixel).
    # Class 3: union 0 -> IoU NaN, acc NaN: left out of the means.
    expected_iou = np.array([9 / 11, 7 / 10, 0.0, np.nan])
    expected_acc = np.array([9 / 10, 7 / 10, np.nan, np.nan])
    overall = (9 + 7) / 20
    return [pred1, pred2], [lab1, lab2], expected_iou, expected_acc, overall


def test_mean_iou_matches_hand_computation():
    predictions, references, expected_iou, expected_acc, overall = _hand_case()
    metric = load_metric("mean_iou", keep_in_memory=True)
    result = metric.compute(predictions=predictions, references=references, num_labels=4, ignore_index=255)
    np.testing.assert_allclose(result["per_category_iou"], expected_iou, rtol=RTOL, equal_nan=True)
    np.testing.assert_allclose(result["per_category_accuracy"], expected_acc, rtol=RTOL, equal_nan=True)
    assert result["mean_iou"] == pytest.approx((9 / 11 + 7 / 10 + 0.0) / 3, rel=RTOL)  # NaN class 3 not counted
    assert result["mean_accuracy"] == pytest.approx((9 / 10 + 7 / 10) / 2, rel=RTOL)
    assert result["overall_accuracy"] == pytest.approx(overall, rel=RTOL)

    # The same through add_batch (as the training loops feed it), one image at a time.
    for prediction, reference in zip(predictions, references):
        metric.add_batch(predictions=[prediction], references=[reference])
    streamed = metric.compute(num_labels=4, ignore_index=255)
    np.testing.assert_allclose(streamed["per_category_iou"], expected_iou, rtol=RTOL, equal_nan=True)


def test_mean_iou_nan_to_num_label_map_and_reduce_labels():
    predictions, references, _, _, _ = _hand_case()
    metric = load_metric("mean_iou", keep_in_memory=True)
    filled = metric.compute(
        predictions=predictions, references=references, num_labels=4, ignore_index=255, nan_to_num=-1
    )
    np.testing.assert_allclose(filled["per_category_iou"], [9 / 11, 7 / 10, 0.0, -1.0], rtol=RTOL)
    np.testing.assert_allclose(filled["per_category_accuracy"], [9 / 10, 7 / 10, -1.0, -1.0], rtol=RTOL)
    assert filled["mean_iou"] == pytest.approx((9 / 11 + 7 / 10) / 3, rel=RTOL)  # the means still skip the NaN class

    # label_map relabels the references: swapping 0 and 1 in the labels of a perfect prediction leaves no match.
    pred = np.array([[0, 1], [1, 0]])
    swapped = metric.compute(
        predictions=[pred], references=[pred], num_labels=2, ignore_index=255, label_map={0: 1, 1: 0}
    )
    assert swapped["mean_iou"] == 0.0  # exact: 0 / n

    # reduce_labels: reference 0 -> ignored, k -> k - 1.
    label = np.array([[0, 1], [2, 2]])  # -> [[255, 0], [1, 1]]
    pred = np.array([[1, 0], [1, 0]])
    reduced = metric.compute(predictions=[pred], references=[label], num_labels=2, ignore_index=255, reduce_labels=True)
    # class 0: label 1 px, pred 2 px among kept ((0,1) and (1,1)), intersection 1 -> 1/2; class 1: label 2, pred 1,
    # intersection 1 -> 1/2.
    np.testing.assert_allclose(reduced["per_category_iou"], [0.5, 0.5], rtol=RTOL)
    assert reduced["overall_accuracy"] == pytest.approx(2 / 3, rel=RTOL)


def test_mean_iou_all_ignored_and_shape_mismatch():
    metric = load_metric("mean_iou", keep_in_memory=True)
    result = metric.compute(
        predictions=[np.zeros((2, 2), int)], references=[np.full((2, 2), 255)], num_labels=2, ignore_index=255
    )
    assert math.isnan(result["mean_iou"]) and np.isnan(result["per_category_iou"]).all()
    with pytest.raises(ValueError, match="shape"):
        metric.compute(
            predictions=[np.zeros((2, 2), int)], references=[np.zeros((2, 3), int)], num_labels=2, ignore_index=255
        )


def test_load_metric_paths_and_unknown_names():
    for name in SHIPPED_METRICS:
        assert metric_path(name).endswith(f"metrics/{name}/{name}.py")
    with pytest.raises(ValueError, match="ships the metrics"):
        metric_path("bleu")
    with pytest.raises(ValueError, match="lookwhere_hf ships"):
        load_metric("a_metric_that_does_not_exist_anywhere")
