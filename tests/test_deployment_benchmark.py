"""`lookwhere_hf.benchmarking.deployment` (`lookwhere-hf benchmark --compile --onnx --bf16`): the rows on a tiny
config, the parity and overlap figures it reports, its markdown, and that it leaves no exported files behind."""

import argparse
import tempfile

import pytest
import torch
from conftest import make_tiny_config

from lookwhere_hf.benchmarking import parse_args
from lookwhere_hf.benchmarking.deployment import (
    DEPLOYMENT_SECTION,
    _parity,
    render_deployment_markdown,
    run_deployment_benchmark,
    top_k_overlap,
)
from lookwhere_hf.models.lookwhere import modeling_lookwhere

PARITY = 1e-4  # ONNX Runtime vs eager, relative to max(1, max |eager|): see tests/test_export_onnx.py


def test_top_k_overlap_counts_shared_patches_in_any_order():
    reference = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert top_k_overlap(reference.flip(1), reference) == 1.0
    assert top_k_overlap(torch.tensor([[4, 3, 9, 10], [5, 6, 7, 0]]), reference) == (2 + 3) / 8


def test_parity_is_relative_to_the_eager_scale():
    """Max abs difference over max(1, max |eager|): absolute for small outputs, relative for large ones; outputs that
    are missing or None are left out."""
    eager = argparse.Namespace(
        selected_indices=torch.tensor([[0, 1, 2]]),
        pooler_output=torch.tensor([[0.5, -0.25]]),
        dense_features=torch.tensor([[[[40.0, -20.0]]]]),
    )
    got = {
        "selected_indices": torch.tensor([[2, 1, 5]]),
        "pooler_output": torch.tensor([[0.5, -0.26]]),
        "dense_features": torch.tensor([[[[40.0, -19.6]]]]),
    }
    result = _parity(got, eager)
    assert result["overlap"] == pytest.approx(2 / 3)
    assert result["pooler_output"] == pytest.approx(0.01, rel=1e-5)  # scale 1
    assert result["dense_features"] == pytest.approx(0.4 / 40, rel=1e-5)  # scale 40
    assert set(_parity({**got, "dense_features": None}, eager)) == {"overlap", "pooler_output"}


def test_deployment_benchmark_rows(tmp_path, monkeypatch):
    """`lookwhere-hf benchmark --onnx --bf16` on a tiny config: every variant timed, ONNX within 1e-4 of eager with
    the same patches, bf16 parity and overlaps on real images, the markdown rows; and the exported ONNX files are
    removed once their sessions are loaded (they were left in the temporary folder, ~0.5 GB each at ViT-B)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    argv = ["--onnx", "--bf16", "--packed", "--resolutions", "112", "--max-repeats", "1", "--min-repeats", "1"]
    args = parse_args(argv)
    assert args.k_ratios == [0.1] and args.onnx and args.bf16 and args.packed and not args.compile
    args = argparse.Namespace(**{**vars(args), "target_seconds": 0.0})
    # The CLS rows time the CLS-only last extractor layer, as the classification model runs it.
    cls_only_calls = []
    spied = modeling_lookwhere.cls_only_layer_forward
    monkeypatch.setattr(
        modeling_lookwhere, "cls_only_layer_forward", lambda *a, **kw: cls_only_calls.append(1) or spied(*a, **kw)
    )
    (row,) = run_deployment_benchmark(args, config=make_tiny_config())
    # eager, packed and bf16 CLS: a warm-up and one timed call each; the ONNX CLS graph: its trace
    assert len(cls_only_calls) >= 7
    assert list(tmp_path.iterdir()) == []
    assert row["k"] == 6 and row["repeats"] == 1  # floor(0.1 * 64)
    expected = {"eager cls", "eager dense", "full eager cls", "onnx cls", "onnx dense", "bf16 cls", "bf16 dense"}
    assert expected | {"full bf16 cls", "packed cls", "packed dense", "full packed cls"} == set(row["seconds"])
    assert all(seconds > 0 for seconds in row["seconds"].values())
    for mode in ("cls", "dense"):
        parity = row["parity"][f"onnx {mode}"]
        assert parity["overlap"] == 1.0 and parity["pooler_output"] <= PARITY
    assert row["parity"]["onnx dense"]["dense_features"] <= PARITY
    # packed linear weights: float32 rounding apart (tests/test_packed_linear.py bounds it), the same patches
    packed = row["parity"]["packed"]
    assert packed["overlap"] == 1.0 and packed["pooler_output"] <= PARITY and packed["dense_features"] <= PARITY
    # bf16 keeps 8 mantissa bits: its outputs differ from fp32 by far more than float32 noise (so autocast ran); with
    # the same selection (bf16 kernels differ between CPUs, so a near-tie may flip it) they stay within 64 x 2^-8 of
    # the scale over these 3 layers.
    bf16 = row["parity"]["bf16"]
    assert bf16["pooler_output"] > 1e-5 and 0.0 <= bf16["overlap"] <= 1.0
    if bf16["overlap"] == 1.0:
        assert bf16["pooler_output"] < 0.25
    assert row["bf16_overlap"] and all(0.0 <= value <= 1.0 for value in row["bf16_overlap"].values())
    section = render_deployment_markdown([row], "machine", "command", "now", ("0.0", "0.0"))
    assert section.startswith(DEPLOYMENT_SECTION)
    seconds = row["seconds"]
    onnx_line = next(line for line in section.splitlines() if line.startswith("| LookWhere ONNX Runtime (CPU) |"))
    ratio = seconds["eager cls"] / seconds["onnx cls"]
    assert onnx_line.startswith(f"| LookWhere ONNX Runtime (CPU) | {seconds['onnx cls']:.3f} | ")
    assert onnx_line.endswith(f"| {ratio:.2f}x | {seconds['full eager cls'] / seconds['onnx cls']:.1f}x |")
    packed_line = f"| LookWhere eager fp32, packed linear weights | {seconds['packed cls']:.3f} | "
    assert any(line.startswith(packed_line) for line in section.splitlines())
    assert "- packed: pooler_output" in section
    assert "| LookWhere bf16 autocast |" in section and "- onnx dense: pooler_output" in section
