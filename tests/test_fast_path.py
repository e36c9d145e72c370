"""The speed tooling of issue 14: the official-format weights of `--vs-official`, the checkout checks, the tables."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("timm")
from test_conversion import VARIANTS, build_official, official_checkpoint  # noqa: E402

from lookwhere_hf import LookWhereModel  # noqa: E402
from lookwhere_hf.benchmarking import parse_args  # noqa: E402
from lookwhere_hf.benchmarking.official import (  # noqa: E402
    check_official_checkout,
    render_official_markdown,
    write_official_checkpoint,
)
from lookwhere_hf.models.lookwhere.convert_lookwhere_original_to_hf import convert_checkpoint  # noqa: E402


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_official_checkpoint_is_the_inverse_of_the_converter(tmp_path, variant):
    """official format -> converter -> LookWhereModel -> write_official_checkpoint gives back every tensor bit for bit,
    under the same names (so the official code, which loads its timm modules strictly, reads it)."""
    selector, head, extractor = build_official(variant)
    source = official_checkpoint(selector, head, extractor)
    torch.save(source, tmp_path / f"lookwhere_{variant}.pt")
    heads = VARIANTS[variant]["heads"]
    convert_checkpoint(
        tmp_path / f"lookwhere_{variant}.pt",
        tmp_path / "converted",
        num_attention_heads=heads,
        run_self_check=False,
        log=lambda *_: None,
    )
    model = LookWhereModel.from_pretrained(tmp_path / "converted")
    written = torch.load(write_official_checkpoint(model, tmp_path / "back.pt"), weights_only=True)

    for part, (got, want) in {
        "selector.backbone": (written["selector"]["backbone"], source["selector"]["backbone"]),
        "selector.head": (written["selector"]["head"], source["selector"]["head"]),
        "extractor": (written["extractor"], source["extractor"]),
    }.items():
        assert set(got) == set(want), part
        for name in want:
            assert torch.equal(got[name], want[name]), f"{part}.{name}"
    extractor.load_state_dict(written["extractor"], strict=True)
    selector.load_state_dict(written["selector"]["backbone"], strict=True)


def test_official_checkout_errors(tmp_path, monkeypatch):
    import importlib.util

    with pytest.raises(ValueError, match=r"lacks \['modeling.py', 'utils.py'\].*git clone"):
        check_official_checkout(tmp_path)
    (tmp_path / "modeling.py").write_text("")
    with pytest.raises(ValueError, match=r"lacks \['utils.py'\]"):
        check_official_checkout(tmp_path)
    (tmp_path / "utils.py").write_text("")
    # The official code's own imports (timm, einops): whatever this machine has installed, both branches are checked.
    real_find_spec = importlib.util.find_spec

    def find_spec_with_einops(present: bool):
        return lambda name: (object() if present else None) if name == "einops" else real_find_spec(name)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec_with_einops(False))
    with pytest.raises(ValueError, match=r"imports \['einops'\]; install them: pip install einops"):
        check_official_checkout(tmp_path)
    monkeypatch.setattr(importlib.util, "find_spec", find_spec_with_einops(True))
    assert check_official_checkout(tmp_path) == tmp_path.resolve()


def _timing(seconds: float, cpu: float) -> dict:
    """One model's timing entry as `official_benchmark` records it (median = min = max wall seconds, CPU seconds)."""
    return {"median_s": seconds, "min_s": seconds, "max_s": seconds, "n": 3, "cpu_s": cpu}


def _official_row(**timings) -> dict:
    """A 518 px, batch 1, k = 136 row of the official comparison with the given timing entries."""
    return dict(
        resolution=518,
        batch_size=1,
        k_ratio=0.1,
        k=136,
        flops_limit={"cls": 10.4, "dense": 9.8},
        max_abs_diff_cls=1e-6,
        max_abs_diff_dense=0.5,
        median_abs_diff_dense=1e-7,
        **timings,
    )


def test_official_table_ratios():
    """The table's ratios are the ratios of the medians (and CPU times) it is given, and the goal verdicts follow."""
    row = _official_row(
        full=_timing(5.0, 10.0),
        ours_cls=_timing(0.5, 1.0),
        official_cls=_timing(0.625, 1.25),
        ours_dense=_timing(0.625, 1.3),
        official_dense=_timing(0.625, 1.3),
    )
    text = render_official_markdown([row], "machine", "command", "now", ("0", "0"))
    assert "| cls: speedup vs full | **10.0x** | 8.0x | 1 | 10.4x |" in text
    assert "| cls: speedup vs full, CPU time | 10.0x | 8.0x | 1 | |" in text
    assert "| cls: ours / official (wall; CPU time) | **0.80**; 0.80 | 1 | | |" in text
    assert "| dense: ours / official (wall; CPU time) | **1.00**; 1.00 | 1 | | |" in text
    assert "cls: 10.0x vs full (goal >= 9x: met), 0.80x the official code's latency (goal <= 0.85: met)" in text
    assert "dense: 8.0x vs full (goal >= 9x: missed), 1.00x the official code's latency (goal <= 0.85: missed)" in text


def test_official_table_with_packed_weights():
    """`--packed`: the packed rows' ratios against the plain models as shipped and against the packed ones, and goal
    lines for both; `--packed` without `--vs-official` is refused."""
    row = _official_row(
        full=_timing(5.0, 10.0),
        ours_cls=_timing(0.5, 1.0),
        official_cls=_timing(0.5, 1.0),
        ours_dense=_timing(0.5, 1.0),
        official_dense=_timing(0.5, 1.0),
        full_packed=_timing(4.0, 8.0),
        ours_cls_packed=_timing(0.4, 0.8),
        official_cls_packed=_timing(0.4, 0.8),
        ours_dense_packed=_timing(0.45, 0.9),
        official_dense_packed=_timing(0.5, 1.0),
        max_abs_diff_cls_packed=2e-6,
    )
    text = render_official_markdown([row], "machine", "command", "now", ("0", "0"))
    assert "max abs difference 2.0e-06" in text
    assert "| cls | 0.400 s | 0.400 s | 4.000 s |" in text
    assert "| cls: packed / plain, same code (wall; CPU time) | 0.80; 0.80 | 0.80; 0.80 | 0.80; 0.80 |" in text
    plain_full = "| cls: speedup vs the plain full model (wall; CPU time) | **12.5x; 12.5x** | 12.5x; 12.5x | 1.2x"
    assert plain_full in text
    assert "| cls: speedup vs the packed full model (wall; CPU time) | 10.0x; 10.0x | 10.0x; 10.0x | 1 |" in text
    assert "| dense: ours packed / official plain; / official packed (wall) | **0.90**; 0.90 | | |" in text
    assert (
        "cls, packed weights: 12.5x vs full (goal >= 9x: met), 0.80x the official code's latency (goal <= 0.85: met); "
        "against the full model and the official code on the same packed weights: 10.0x and 1.00x"
    ) in text
    assert "dense: 10.0x vs full (goal >= 9x: met), 1.00x the official code's latency (goal <= 0.85: missed)" in text
    with pytest.raises(SystemExit):
        parse_args(["--packed"])
