"""`lookwhere_hf.benchmarking.budget_latency`: the forced exit proportions of the budgeted wall-time benchmark (exact
counts per rung under the model's exit rule), and its markdown table's ratios."""

import pytest
import torch

from lookwhere_hf.benchmarking.budget_latency import (
    BUDGET_SECTION,
    DEFAULT_EXIT_EIGHTHS,
    exit_counts,
    forced_exit_thresholds,
    render_budget_markdown,
)
from lookwhere_hf.budget import simulate_exits


@pytest.mark.parametrize("batch_size", [1, 2, 5, 6, 7, 8, 16, 33])
def test_exit_counts_are_whole_images_summing_to_the_batch(batch_size):
    counts = exit_counts(DEFAULT_EXIT_EIGHTHS, batch_size)
    assert len(counts) == 5 and min(counts) >= 0 and sum(counts) == batch_size
    # Each cumulative count is the nearest whole number of images to the cumulative share.
    shares = [sum(DEFAULT_EXIT_EIGHTHS[: i + 1]) * batch_size / 8 for i in range(5)]
    assert all(abs(sum(counts[: i + 1]) - share) <= 0.5 for i, share in enumerate(shares))
    if batch_size == 16:
        assert counts == [4, 4, 4, 2, 2]
    with pytest.raises(ValueError, match="summing to 8"):
        exit_counts((2, 2, 2, 1), batch_size)


@pytest.mark.parametrize("counts", [[4, 4, 4, 2, 2], [0, 5, 0, 10, 1], [16, 0, 0, 0, 0], [0, 0, 0, 0, 16]])
def test_forced_thresholds_give_exactly_the_counts(counts):
    """Under the model's exit rule (the first rung whose confidence >= its threshold), exactly `counts[r]` images leave
    at rung r, and no confidence lies on a threshold."""
    generator = torch.Generator().manual_seed(0)
    confidences = torch.rand(5, 16, generator=generator, dtype=torch.float64)  # distinct with probability 1
    thresholds = forced_exit_thresholds(confidences, counts)
    exits = simulate_exits(confidences.T, thresholds)
    assert torch.bincount(exits, minlength=5).tolist() == counts
    assert all((confidences[r] != t).all() for r, t in enumerate(thresholds))


def test_forced_thresholds_refuse_bad_counts_and_ties():
    confidences = torch.tensor([[0.9, 0.5, 0.5, 0.1], [0.8, 0.7, 0.6, 0.2]])
    with pytest.raises(ValueError, match="summing to 4"):
        forced_exit_thresholds(confidences, [1, 2])
    with pytest.raises(ValueError, match="must give one count per rung"):
        forced_exit_thresholds(confidences, [1, 1, 2])
    with pytest.raises(ValueError, match="tie at the cut of rung 0"):
        forced_exit_thresholds(confidences, [2, 2])  # 0.5 and 0.5 at the cut
    assert forced_exit_thresholds(confidences, [1, 3]) == [pytest.approx(0.7)]


def test_budget_markdown_ratios():
    """The table's ratios are wall time over the budgeted forward's, and the spread is (max - min) / median."""
    timing = {"median_s": 2.0, "min_s": 1.9, "max_s": 2.1, "cpu_s": 3.0}
    row = {
        "resolution": 518,
        "batch_size": 16,
        "exits": [4, 4, 4, 2, 2],
        "rung_k": [0, 34, 68, 136, 342],
        "mean_gflops": 20.0,
        "mean_k": 81.0,
        "k_equal_flops": 90,
        "gflops_equal_flops": 19.9,
        "k_equal_k": 81,
        "gflops_equal_k": 18.7,
        "budgeted": timing,
        "fixed_equal_flops": {**timing, "median_s": 3.0},
        "fixed_equal_k": {**timing, "median_s": 1.0},
    }
    text = render_budget_markdown([row], "machine", "command", "now", ("0", "0"))
    assert text.startswith(BUDGET_SECTION)
    lines = [line for line in text.splitlines() if line.startswith("| 518 ")]
    assert len(lines) == 3 and "4 (k=0), 4 (k=34)" in lines[0]
    assert lines[0].endswith("| 2.00 (10%) | 3.00 | 1.00 |")
    assert "fixed k = 90 (equal FLOPs)" in lines[1] and lines[1].endswith("| 1.50 |")
    assert "fixed k = 81 (equal mean k)" in lines[2] and lines[2].endswith("| 0.50 |")
