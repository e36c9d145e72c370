"""Varied Items through the families harness's one command (slow smoke test): scikit-learn's digits as items at
varied sizes on a small canvas, every stage end to end (data, label-only teacher, LookWhere pretraining and
fine-tuning, multi-rung / budgeted LookWhere, LookupViT, Glance-and-Focus, evaluation, report), seed 0.

It asserts that the selector finds the items far more often than random patches (a margin from the counts), that
every per-size-bin number adds up to the overall one, and that the report shows every family, every size bin and the
budgeted exit shares."""

import json
import math
import os
import re

import pytest
from test_compare_families import TINY_FAMILIES, assert_consistent, run_harness

pytest.importorskip("sklearn", reason="the smoke data use scikit-learn's handwritten digits as items")

BINS = ("small", "medium", "large")
NUM_TEST = 90
SMOKE_RECIPE = [
    "--canvas_size", "112", "--patch_size", "14", "--low_res_size", "56", "--selector_depth", "1",
    "--teacher_epochs", "2", "--pretrain_epochs", "20", "--finetune_epochs", "1", "--k_min", "2", "--k_max", "16",
    "--batch_size", "16", "--teacher_flags", "hidden_size=32,num_hidden_layers=2,num_attention_heads=2",
    "--data_flags", f"items=digits,min_item_size=8,max_item_size=56,num_train=240,num_validation=48,"
    f"num_test={NUM_TEST}",
    # the selector needs the steps (a step costs milliseconds here; each stage's start costs seconds); LookupViT's
    # default, LookWhere's pretraining + fine-tuning epochs, would be as many
    "--lookupvit_epochs", "2",
]  # fmt: skip


def _weighted(per_bin: dict, counts: dict) -> float:
    """The overall mean from per-bin means and the bins' image counts (empty bins, NaN, count 0)."""
    return math.fsum(per_bin[b] * counts[b] for b in BINS if counts[b]) / sum(counts.values())


HARNESS_RUNS = {
    "test_varied_items_runs_end_to_end_with_every_number_per_size_bin": (
        "varied_items",
        [*SMOKE_RECIPE, *TINY_FAMILIES],
    )
}


@pytest.mark.slow
def test_varied_items_runs_end_to_end_with_every_number_per_size_bin(request, background_runs):
    out, results_md, seed, gf, agg = run_harness(request, background_runs)
    assert_consistent(out, seed, gf, agg)
    counts = seed["test_images_per_bin"]
    assert set(counts) == set(BINS) and sum(counts.values()) == seed["splits"]["test"] == NUM_TEST
    assert min(counts.values()) >= 5, counts  # log-uniform sizes: about a third per bin

    # (a) where to look: at the smallest k_ratio (the lowest chance level), the selector's hits exceed the exact
    # expectation of k random patches by more than 3 standard deviations of a random selection's hit count
    # (at most sqrt(n / 4) images for n independent images).
    point = seed["fixed_k"]["0.05"]
    n = seed["splits"]["test"]
    margin = 3 * math.sqrt(n / 4) / n
    assert point["hit_rate"] >= point["random_hit_rate"] + margin, (point["hit_rate"], point["random_hit_rate"])
    # random patches hit large items more often than small ones (they cover more patches)
    chance = point["random_hit_rate_per_bin"]
    assert chance["small"] < chance["medium"] < chance["large"]

    # (b) every quantity per size bin, and each adds up to the overall number (exact arithmetic of the counts)
    def check(point: dict, key: str, share: bool = True) -> None:
        per = point[f"{key}_per_bin"]
        assert set(per) == set(BINS), key
        if share:  # a rate: in [0, 1]
            assert all(0.0 <= per[b] <= 1.0 for b in BINS if counts[b]), (key, per)
        else:  # a cost: positive
            assert all(per[b] > 0.0 for b in BINS if counts[b]), (key, per)
        assert _weighted(per, counts) == pytest.approx(point[key], rel=1e-9, abs=1e-12), key

    check(seed["teacher"], "accuracy")
    for point in seed["fixed_k"].values():
        for key in ("accuracy", "hit_rate", "teacher_map_hit_rate", "random_hit_rate"):
            check(point, key)
    for name in ("multirung_rungs", "random_rung_rungs", "lookupvit"):
        for point in seed[name].values():
            check(point, "accuracy")
    for point in gf["steps"].values():
        check(point, "accuracy")
    for key in ("crop_hit_rate", "crop_contains_rate", "random_crop_hit_rate"):
        check(gf, key)
    # (at this size Glance-and-Focus's glance alone costs about as much as the teacher: no budget below the
    # teacher's cost fits its steps, and its budgeted rows, checked the same way when present, are absent)
    assert seed["budgeted"] and seed["budgeted_no_glance"], "no budget fell within LookWhere's cost range"
    budgets = [*seed["budgeted"].values(), *seed["budgeted_no_glance"].values(), *gf["budgeted"].values()]
    for point in budgets:
        check(point, "accuracy")
        check(point, "gflops", share=False)
        shares = point["exit_shares_per_bin"]
        for t, overall in enumerate(point["exit_shares"]):
            per_rung = {b: shares[b][t] for b in BINS}
            assert _weighted(per_rung, counts) == pytest.approx(overall, rel=1e-9, abs=1e-12)
        for b in BINS:
            assert sum(shares[b]) == pytest.approx(1.0, rel=1e-12)

    # the report: every family, every size bin (columns and exit-share rows), the chance levels, issue 24's goals
    text = results_md.read_text()
    assert text.count("## Varied Items: the families side by side") == 1
    families = (
        "| teacher (full resolution) |", "| LookWhere, fixed k |", "| LookWhere multi-rung, one rung |",
        "| LookWhere, budgeted |", "| LookWhere, budgeted, glance exit off |", "| LookupViT |",
        "| Glance-and-Focus, fixed steps |",
    )  # fmt: skip
    for row in families:
        assert row in text, row
    assert "| accuracy (%) | small (%) | medium (%) | large (%) |" in text
    for family in ("LookWhere, budgeted", "LookWhere, budgeted, glance exit off"):  # exit shares, a row per bin
        for b in BINS:
            assert re.search(rf"\| {family} \| teacher / [0-9.]+ \| {b} \| [0-9.]+ ± [0-9.]+ \|", text), (family, b)
    for row in ("| k_ratio 0.05: LookWhere selector |", "| k_ratio 0.05: teacher's map |", "random patches |"):
        assert row in text
    assert "placed at random |" in text and "Issue 24's goals, measured" in text
    assert os.path.getsize(out / "families.png") > 10_000
    with open(out / "summary.json", encoding="utf-8") as f:
        recipe = json.load(f)["arguments"]
    # the label-only teacher of the description, at the test's size
    assert recipe["teacher_flags"]["attention_loss_weight"] == 0.0 and recipe["teacher_flags"]["hidden_size"] == 32
