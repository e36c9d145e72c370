"""`lookwhere_hf.benchmarking.official`: the official-format weights it writes (converted back, bit for bit), the
comparison table's ratios and goals, and the profile's parts (slow: a forked ViT-B forward). The checkout check is in
test_fast_path.py."""

import pytest
import torch
from conftest import make_tiny_config

from lookwhere_hf import LookWhereModel
from lookwhere_hf.benchmarking import run_in_fresh_process
from lookwhere_hf.benchmarking.official import (
    OFFICIAL_SECTION,
    PROFILE_PARTS,
    render_official_markdown,
    render_profile_markdown,
    write_official_checkpoint,
)
from lookwhere_hf.models.lookwhere.convert_lookwhere_original_to_hf import convert_checkpoint


def test_official_checkpoint_converts_back_to_the_same_weights(tmp_path):
    """write_official_checkpoint is the inverse of the converter: converting its file gives every tensor of the model
    unchanged (the official code and this package are timed on the same weights)."""
    model = LookWhereModel(make_tiny_config()).eval()
    path = write_official_checkpoint(model, tmp_path / "lookwhere_dinov2.pt")
    convert_checkpoint(path, tmp_path / "converted", num_attention_heads=2, run_self_check=False, log=lambda *a: None)
    converted = LookWhereModel.from_pretrained(tmp_path / "converted").eval()
    expected, got = model.state_dict(), converted.state_dict()
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name
    pixel_values = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        assert torch.equal(converted(pixel_values, k=6).pooler_output, model(pixel_values, k=6).pooler_output)


def _timing(median, cpu):
    return {"median_s": median, "min_s": median * 0.9, "max_s": median * 1.1, "n": 5, "cpu_s": cpu}


def test_official_markdown_ratios_and_goals():
    """Speedups are full / ours, ours / official is ours over theirs; the issue's goals (>= 9x vs full at <= 518 px,
    >= 19x above; <= 0.85x the official latency) are met or missed from those ratios."""
    row = {
        "resolution": 518,
        "batch_size": 1,
        "k_ratio": 0.1,
        "k": 136,
        "flops_limit": {"cls": 10.4, "dense": 9.8},  # the CLS path's CLS-only last layer does fewer FLOPs
        "full": _timing(5.0, 10.0),
        "ours_cls": _timing(0.5, 1.0),  # 10x vs full, 0.80 of official: both goals met
        "official_cls": _timing(0.625, 1.25),
        "ours_dense": _timing(1.0, 2.0),  # 5x vs full, 0.90 of official: both missed
        "official_dense": _timing(1.0 / 0.9, 2.0 / 0.9),
        "max_abs_diff_cls": 1e-6,
        "max_abs_diff_dense": 0.1,
        "median_abs_diff_dense": 1e-6,
    }
    text = render_official_markdown([row], "machine", "command", "now", ("0", "0"))
    assert text.startswith(OFFICIAL_SECTION)
    assert "| cls: speedup vs full | **10.0x** | 8.0x | 1 | 10.4x |" in text
    assert "| cls: ours / official (wall; CPU time) | **0.80**; 0.80 | 1 | | |" in text
    assert "| dense: speedup vs full | **5.0x** | 4.5x | 1 | 9.8x |" in text
    goals = [line for line in text.splitlines() if line.startswith("- 518 px b1 k=10%")]
    assert goals == [
        "- 518 px b1 k=10% cls: 10.0x vs full (goal >= 9x: met), 0.80x the official code's latency (goal <= 0.85: met)",
        "- 518 px b1 k=10% dense: 5.0x vs full (goal >= 9x: missed), 0.90x the official code's latency (goal <= 0.85: "
        "missed)",
    ]
    row_1036 = {**row, "resolution": 1036}
    assert "1036 px b1 k=10% cls: 10.0x vs full (goal >= 19x: missed)" in render_official_markdown(
        [row_1036], "m", "c", "n", ("0", "0")
    )


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["dense", "cls"])
def test_profile_parts_are_disjoint_and_all_run(mode):
    """The profiled forward (a forked child, ViT-B/14 random weights at 112 px) times every part of the path (each
    wrapped callable is really called: a renamed method, or a path that bypasses it as the CLS-only last layer bypasses
    the encoder's forward, would show 0) and the parts do not overlap (their sum stays within the forward; a nested
    pair would be counted twice). The CLS path has no dense spreading."""
    job = dict(task="profile", resolution=112, batch_size=1, k_ratio=0.1, k=6, mode=mode, threads=1, repeats=2)
    row = {**job, **run_in_fresh_process(job)}
    assert set(row["parts"]) == {label for label, _, _ in PROFILE_PARTS}
    expected_zero = {"dense spreading"} if mode == "cls" else set()
    assert {label for label, seconds in row["parts"].items() if seconds == 0} == expected_zero, row["parts"]
    assert sum(row["parts"].values()) <= row["forward_s"]
    assert row["ops"] and all(name.startswith("aten::") for name, _ in row["ops"])
    text = render_profile_markdown([row], "machine", "command", "now", ("0", "0"))
    assert "| rest |" in text and ("| dense spreading |" in text) == (mode == "dense")
