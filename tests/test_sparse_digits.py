"""Sparse Digits benchmark: the dataset generator, the hit-rate geometry, and the shipped demo checkpoint."""

import hashlib
import importlib
import json
import os
import re
import sys

import numpy as np
import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "benchmarks", "sparse_digits")
ASSETS = os.path.join(REPO, "src", "lookwhere_hf", "assets")

pytest.importorskip("sklearn", reason="Sparse Digits uses scikit-learn's handwritten digits")


def _load(name):
    """Import one of the benchmark's scripts as the module it is when run (they import their siblings by name)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(BENCH)
        return importlib.import_module(name)


@pytest.fixture(scope="module")
def md():
    return _load("make_dataset")


def _small_config(md, seed=0):
    return md.SparseDigitsConfig(
        seed=seed, canvas_size=160, min_digit_size=24, max_digit_size=40, num_train=12, num_validation=4, num_test=6
    )


def _digests(folder):
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def generated(md, tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("sparse_digits") / "data")
    info = md.write_dataset(folder, _small_config(md), progress=False)
    return folder, info


# ----------------------------------------------------------------------------------------------------- generator
def test_same_seed_gives_identical_files_for_any_number_of_workers(md, generated, tmp_path):
    folder, _ = generated
    again = str(tmp_path / "again")
    md.write_dataset(again, _small_config(md), progress=False, num_workers=2)
    first, second = _digests(folder), _digests(again)
    assert len(first) == 12 + 4 + 6 + 2  # images + annotations.jsonl + dataset_info.json
    assert first == second


def test_different_seed_gives_different_images(md, generated, tmp_path):
    folder, _ = generated
    other = str(tmp_path / "other")
    md.write_dataset(other, _small_config(md, seed=1), progress=False)
    rows_a, rows_b = md.read_annotations(folder), md.read_annotations(other)
    assert [r["box"] for r in rows_a.values()] != [r["box"] for r in rows_b.values()]
    images_a = {v for k, v in _digests(folder).items() if k.endswith(".png")}
    images_b = {v for k, v in _digests(other).items() if k.endswith(".png")}
    assert not images_a & images_b  # not a single identical image


def test_render_sample_is_a_pure_function_of_the_generator(md):
    images, _ = md.load_source_digits()
    config = _small_config(md)
    a, info_a = md.render_sample(images[5], md.sample_rng(3, "test", 7), config)
    b, info_b = md.render_sample(images[5], md.sample_rng(3, "test", 7), config)
    c, _ = md.render_sample(images[5], md.sample_rng(3, "test", 8), config)
    np.testing.assert_array_equal(a, b)
    assert info_a == info_b
    assert a.shape == (160, 160, 3) and a.dtype == np.uint8
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 5


def test_digit_lies_in_its_box_and_clutter_does_not_erase_it(md, generated):
    folder, _ = generated
    from PIL import Image

    images, _ = md.load_source_digits()
    rows = md.read_annotations(folder)
    assert len(rows) == 22
    for row in rows.values():
        x0, y0, x1, y1 = row["box"]
        px0, py0, px1, py1 = row["placed_box"]
        size = row["digit_size"]
        assert 24 <= size <= 40 and (px1 - px0, py1 - py0) == (size, size)
        assert 0 <= px0 <= x0 < x1 <= px1 <= 160 and 0 <= py0 <= y0 < y1 <= py1 <= 160
        # the recorded box is exactly the tight box of the scaled source digit's ink, at the placed position
        alpha = md.scale_digit(images[row["source_index"]], size)
        ax0, ay0, ax1, ay1 = md.ink_box(alpha)
        assert [px0 + ax0, py0 + ay0, px0 + ax1, py0 + ay1] == row["box"]
        # the digit was alpha-blended on top of everything with the recorded ink colour: wherever its ink is strong,
        # the written pixel is within (1 - alpha) * 255 of the ink colour whatever lay underneath (nothing was drawn
        # over the digit), and there are enough such pixels to read it
        image = np.asarray(Image.open(os.path.join(folder, row["file_name"])).convert("RGB")).astype(float)
        crop = image[py0:py1, px0:px1]
        strong = alpha > 0.5
        assert strong.sum() >= 0.05 * size * size
        ink = np.asarray(row["ink_color"]) * 255.0
        assert np.all(np.abs(crop[strong] - ink) <= (1.0 - alpha[strong])[:, None] * 255.0 + 1.0)
        # ... and the crop, read as "closeness to the ink colour", correlates with the scaled source digit
        closeness = 1.0 - np.abs(crop - ink).mean(axis=-1) / 255.0
        assert np.corrcoef(closeness.ravel(), alpha.ravel())[0, 1] > 0.6


def test_labels_match_the_source_digits_and_folders(md, generated):
    folder, info = generated
    _, labels = md.load_source_digits()
    for name, row in md.read_annotations(folder).items():
        assert row["label"] == int(labels[row["source_index"]])
        assert name.split("/")[:2] == [row["split"], str(row["label"])]
        assert os.path.isfile(os.path.join(folder, name))
    counts = info["counts_per_label"]
    assert [sum(counts[s]) for s in ("train", "validation", "test")] == [12, 4, 6]


def test_splits_use_disjoint_source_digits(md, generated):
    folder, info = generated
    _, labels = md.load_source_digits()
    pools = md.split_sources(labels, seed=0)
    sets = {name: set(pool.tolist()) for name, pool in pools.items()}
    assert not sets["train"] & sets["validation"] and not sets["train"] & sets["test"]
    assert not sets["validation"] & sets["test"]
    assert len(sets["train"] | sets["validation"] | sets["test"]) == len(labels) == 1797
    for pool in sets.values():  # stratified: every class in every split
        assert {int(labels[i]) for i in pool} == set(range(10))
    assert info["source_indices"] == {name: sorted(pool) for name, pool in sets.items()}
    for row in md.read_annotations(folder).values():
        assert row["source_index"] in sets[row["split"]]


def test_imagefolder_reads_the_labels(generated):
    from datasets import load_dataset

    folder, _ = generated
    dataset = load_dataset("imagefolder", data_dir=folder)
    assert set(dataset) == {"train", "validation", "test"}
    assert [len(dataset[s]) for s in ("train", "validation", "test")] == [12, 4, 6]
    names = dataset["test"].features["label"].names
    expected = sorted(r["label"] for r in _load("make_dataset").read_annotations(folder, "test").values())
    assert sorted(int(names[i]) for i in dataset["test"]["label"]) == expected


def test_bad_generation_settings_are_rejected(md, generated):
    folder, _ = generated
    with pytest.raises(ValueError, match="max_digit_size"):
        md.SparseDigitsConfig(canvas_size=64, max_digit_size=64).validate()
    with pytest.raises(ValueError, match="min_digit_size"):
        md.SparseDigitsConfig(min_digit_size=50, max_digit_size=40).validate()
    with pytest.raises(ValueError, match="num_test"):
        md.SparseDigitsConfig(num_test=0).validate()
    with pytest.raises(FileExistsError, match="--overwrite"):
        md.write_dataset(folder, _small_config(md), progress=False)
    assert md.main(["--output_dir", folder, "--canvas_size", "20"]) == 2


def test_aligned_digits_stay_inside_one_grid_cell(md, tmp_path):
    config = md.SparseDigitsConfig(
        seed=2,
        canvas_size=160,
        min_digit_size=24,
        max_digit_size=32,
        align_to_grid=40,
        num_train=10,
        num_validation=2,
        num_test=2,
    )
    md.write_dataset(str(tmp_path), config, progress=False)
    rows = md.read_annotations(str(tmp_path)).values()
    cells = set()
    for row in rows:
        x0, y0, x1, y1 = row["placed_box"]
        assert x0 // 40 == (x1 - 1) // 40 and y0 // 40 == (y1 - 1) // 40
        cells.add((x0 // 40, y0 // 40))
    assert len(cells) > 5  # the cells themselves are random
    with pytest.raises(ValueError, match="align_to_grid"):
        md.SparseDigitsConfig(canvas_size=160, max_digit_size=48, align_to_grid=40).validate()


def test_teacher_patch_targets():
    tt = _load("train_teacher")
    # box [30, 30, 50, 50) on a 4x4 grid of 20 px patches: patches (1,1) and (1,2), (2,1), (2,2) each 10x10 = 25%
    targets = tt.patch_token_labels([30, 30, 50, 50], (0, 0, 80), image_size=80, patch=20, label=7, background=10)
    expected = torch.full((16,), 10)
    expected[[5, 6, 9, 10]] = 7
    assert torch.equal(targets, expected)
    # zoomed windows: through (20, 20, side 40) the box becomes [20, 60) x 2 -> four whole patches; through
    # (30, 30, side 20) it fills the whole input
    zoomed = tt.patch_token_labels([30, 30, 50, 50], (20, 20, 40), image_size=80, patch=20, label=3, background=10)
    assert torch.equal(zoomed, torch.where(expected == 7, 3, 10))
    full = tt.patch_token_labels([30, 30, 50, 50], (30, 30, 20), image_size=80, patch=20, label=3, background=10)
    assert torch.equal(full, torch.full((16,), 3))


# ----------------------------------------------------------------------------------------------------- hit rate
def test_hit_rate_geometry():
    ev = _load("evaluate_sparse_digits")
    # a 4x4 grid of 10 px patches; the box [5, 5, 15, 12) touches patches (0,0), (0,1), (1,0), (1,1)
    overlaps = ev.patch_overlaps(np.array([5, 5, 15, 12]), grid=4, patch=10)
    expected = np.zeros(16)
    expected[[0, 1, 4, 5]] = [25, 25, 10, 10]
    np.testing.assert_array_equal(overlaps, expected)
    found = ev.selection_hits(np.array([[0, 9], [1, 4], [15, 14]]), np.stack([overlaps] * 3))
    assert found["hit"].tolist() == [True, True, False]
    np.testing.assert_allclose(found["coverage"], [25 / 70, 35 / 70, 0.0])
    assert found["full"].tolist() == [False, False, False]
    assert ev.selection_hits(np.array([[5, 4, 1, 0]]), overlaps[None])["full"].tolist() == [True]
    # chance level: 1 - C(12, k) / C(16, k)
    assert ev.random_hit_probability(16, 4, 1) == pytest.approx(4 / 16)
    assert ev.random_hit_probability(16, 4, 2) == pytest.approx(1 - (12 * 11) / (16 * 15))
    assert ev.random_hit_probability(16, 4, 13) == 1.0


def test_the_stages_run_the_repository_scripts(tmp_path):
    """Every stage runs a script of this repository; fine-tuning is the example script itself with --no_augment; the
    data come from --data_seed, every training stage from the run's own seed."""
    rb = _load("run_benchmark")
    args = rb.parse_args(["--output_dir", str(tmp_path), "--k_ratio", "0.25", "--seeds", "3,5", "--data_seed", "7"])
    assert args.seeds == [3, 5] and args.demo_seed == 3
    paths = rb.seed_paths(str(tmp_path), 5)
    assert paths["data"] == str(tmp_path / "data") and paths["teacher"] == str(tmp_path / "seed_5" / "teacher")
    commands = rb.stage_commands(args, paths, seed=5)
    assert list(commands) == list(rb.STAGES) == ["data", "teacher", "pretrain", "finetune", "evaluate"]
    for name, command in commands.items():
        assert command[0] == sys.executable and os.path.isfile(command[1]), command[1]
        assert os.path.commonpath([command[1], REPO]) == REPO
        assert command[command.index("--seed") + 1] == ("7" if name == "data" else "5")
    finetune = commands["finetune"]
    assert finetune[1] == os.path.join(
        REPO, "examples", "pytorch", "image-classification", "run_image_classification.py"
    )
    assert "--no_augment" in finetune and finetune[finetune.index("--k_ratio") + 1] == "0.25"
    assert finetune[finetune.index("--model_name_or_path") + 1] == paths["pretrained"]
    assert os.path.basename(commands["evaluate"][1]) == "evaluate_sparse_digits.py"
    assert commands["teacher"][commands["teacher"].index("--attention_loss_weight") + 1] == "1.0"
    assert rb.flags(seed=3, overwrite=True, lr=0.5) == ["--seed", "3", "--overwrite", "--lr", "0.5"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seeds", "0,x"], "comma-separated integers"),
        (["--seeds", "1,1"], "each once"),
        (["--seeds", "0,1", "--demo_seed", "2"], "not one of --seeds"),
    ],
)
def test_bad_seed_arguments_are_rejected(argv, message, capsys):
    rb = _load("run_benchmark")
    with pytest.raises(SystemExit):
        rb.parse_args(argv)
    assert message in capsys.readouterr().err


def _fake_results(accuracy: float, hit: float, latency: float, k_ratio: float = 0.1) -> dict:
    row = {
        "k_ratio": k_ratio, "k": 25, "selector_hit_rate": hit, "selector_box_coverage": hit,
        "selector_full_cover_rate": hit, "teacher_map_hit_rate": 0.5, "teacher_map_box_coverage": 0.5,
        "random_hit_rate": 0.1, "random_box_coverage": 0.1, "accuracy_lookwhere": accuracy,
        "accuracy_lookwhere_random_patches": 0.1, "accuracy_teacher_on_selected_patches": accuracy,
    }  # fmt: skip
    return {
        "split": "test", "num_images": 500, "image_size": 448, "patch_size": 28, "grid": 16, "low_res_size": 224,
        "model_k_ratio": k_ratio, "accuracy_teacher_full_resolution": 0.9, "per_k_ratio": [row],
        "flops": [{"k_ratio": k_ratio, "k": 25, "counted_teacher": 4000, "counted_lookwhere": 1000,
                   "analytic_teacher": 4000, "analytic_lookwhere": 1000}],
        "latency": [{"threads": 1, "batch_size": 1, "k": 25, "teacher_s": 2 * latency, "lookwhere_s": latency,
                     "speedup": 2.0, "lookwhere_given_low_res_s": latency, "speedup_given_low_res": 2.0}],
        "machine": {"platform": "x", "cpu_count": 2, "torch": "2", "attn_implementation": "sdpa"},
        "models": {"lookwhere": f"lw{accuracy}", "teacher": "t"},
        "arguments": {"latency_runs": 20, "latency_warmup": 3},
    }  # fmt: skip


def test_aggregate_gives_mean_and_sample_std_over_seeds():
    ev = _load("evaluate_sparse_digits")
    runs = [_fake_results(0.80, 0.90, 0.010), _fake_results(0.84, 1.00, 0.012), _fake_results(0.86, 0.95, 0.014)]
    out = ev.aggregate_results(runs, seeds=[0, 1, 2])
    row = out["per_k_ratio"][0]
    assert row["k_ratio"] == 0.1 and row["k"] == 25  # settings stay plain
    assert row["accuracy_lookwhere"]["values"] == [0.80, 0.84, 0.86]
    assert row["accuracy_lookwhere"]["mean"] == pytest.approx(2.5 / 3, rel=1e-12)
    # sample std (ddof 1): deviations -1/30, 1/150, 4/150 -> sum of squares 0.0018667 / 2
    assert row["accuracy_lookwhere"]["std"] == pytest.approx((0.0018666666666666666 / 2) ** 0.5, rel=1e-9)
    assert row["selector_hit_rate"]["std"] == pytest.approx(0.05, rel=1e-9)
    random_hits = row["random_hit_rate"]  # a measurement equal in every run: still mean ± std (± 0)
    assert random_hits["values"] == [0.1] * 3 and random_hits["std"] == 0.0
    assert random_hits["mean"] == pytest.approx(0.1, rel=1e-15)
    assert out["flops"][0]["counted_teacher"] == 4000  # integers equal in every run stay plain
    assert out["latency"][0]["lookwhere_s"]["mean"] == pytest.approx(0.012, rel=1e-12)
    assert out["seeds"] == [0, 1, 2] and out["models"]["2"]["lookwhere"] == "lw0.86"
    text = ev.format_markdown(out)
    assert "over 3 training seeds" in text
    assert "| 0.1 | 25 | 95.0 ± 5.0% |" in text and "**83.3 ± 3.1%**" in text and "90.0 ± 0.0%" in text
    assert "| 1 | 1 | 25 | 24.0 ± 4.0 ms | 12.0 ± 2.0 ms | **2.0 ± 0.0x** |" in text
    single = ev.format_markdown(runs[0])
    assert "±" not in single and "| 0.1 | 25 | 90.0% |" in single


def test_aggregate_refuses_runs_evaluated_differently():
    ev = _load("evaluate_sparse_digits")
    with pytest.raises(ValueError, match="setting 'k_ratio'"):
        ev.aggregate_results([_fake_results(0.8, 0.9, 0.01), _fake_results(0.8, 0.9, 0.01, k_ratio=0.2)], [0, 1])
    with pytest.raises(ValueError, match="one result per seed"):
        ev.aggregate_results([_fake_results(0.8, 0.9, 0.01)], [0, 1])


def test_per_seed_headline_and_gap():
    rb = _load("run_benchmark")
    numbers = rb.headline(_fake_results(0.84, 0.95, 0.01), k_ratio=0.1)
    assert numbers["selector_hit_rate"] == 0.95 and numbers["accuracy_gap_points"] == pytest.approx(6.0, rel=1e-12)
    assert "| 4 | 95.0% | 84.0% | 90.0% | 6.0 |" in rb.format_per_seed({"4": numbers})
    with pytest.raises(ValueError, match="no row for k_ratio 0.25"):
        rb.headline(_fake_results(0.84, 0.95, 0.01), k_ratio=0.25)


def test_teacher_attention_map_loss():
    tt = _load("train_teacher")
    logits = torch.tensor([[2.0, 0.0, 0.0, -1.0], [0.0, 1.0, 3.0, 0.0], [5.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    on_digit = torch.tensor([[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    log_p = torch.log_softmax(logits, dim=-1)
    # image 0: target 0.9 on patch 0 + 0.1 / 4 everywhere; image 1: 0.45 on patches 1 and 2 + 0.025; image 2: no
    # digit patch, left out
    t0 = torch.tensor([0.925, 0.025, 0.025, 0.025], dtype=torch.float64)
    t1 = torch.tensor([0.025, 0.475, 0.475, 0.025], dtype=torch.float64)
    expected = -((t0 * log_p[0]).sum() + (t1 * log_p[1]).sum()) / 2
    loss = tt.attention_map_loss(logits, on_digit, smoothing=0.1)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)  # computed in float32 from float64 inputs
    assert tt.attention_map_loss(logits[2:], on_digit[2:], 0.1).item() == 0.0
    # gradient of a softmax cross-entropy: (softmax - target) / number of images kept; none for the left-out image
    logits.requires_grad_(True)
    tt.attention_map_loss(logits, on_digit, 0.1).backward()
    expected_grad = torch.stack([log_p[0].exp() - t0, log_p[1].exp() - t1, torch.zeros(4, dtype=torch.float64)]) / 2
    torch.testing.assert_close(logits.grad, expected_grad, rtol=0, atol=1e-6)
    assert logits.grad[0, 0] < 0  # raises the digit patch's logit


# ----------------------------------------------------------------------------------------------------- demo
def _demo_images():
    folder = os.path.join(ASSETS, "demo_images")
    return (
        sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".png"))
        if os.path.isdir(folder)
        else []
    )


def test_demo_checkpoint_is_small_and_complete():
    folder = os.path.join(ASSETS, "demo_model")
    files = {"config.json", "model.safetensors", "preprocessor_config.json"}
    assert files <= set(os.listdir(folder)), "run the Sparse Digits benchmark with --export_demo to create it"
    assert sum(os.path.getsize(os.path.join(folder, f)) for f in files) < 10 * 2**20
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    assert config["model_type"] == "lookwhere" and len(config["id2label"]) == 10
    assert len(_demo_images()) >= 5


@pytest.mark.slow
def test_demo_checkpoint_classifies_its_example_images_through_pipeline():
    from PIL import Image
    from transformers import pipeline

    classifier = pipeline("image-classification", model=os.path.join(ASSETS, "demo_model"), device="cpu")
    paths = _demo_images()
    assert len(paths) >= 5
    true = [int(re.match(r"digit_(\d)_", os.path.basename(p)).group(1)) for p in paths]
    outputs = classifier([Image.open(p) for p in paths], top_k=1)
    predicted = [int(out[0]["label"]) for out in outputs]
    assert predicted == true
    assert len(set(true)) == len(true)  # distinct digits
    # LookWhere really looked at a small part of the image
    model = classifier.model
    inputs = classifier.image_processor([Image.open(paths[0])], return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
    grid = inputs["pixel_values"].shape[-1] // model.config.patch_size
    assert out.selected_indices.shape[1] == int(model.config.k_ratio * grid * grid) < grid * grid // 4


# ----------------------------------------------------------------------------------------------------- smoke run
SMOKE_SEEDS = (0, 1)
SMOKE_ARGS = [
    "--canvas_size", "224", "--low_res_size", "112", "--num_train", "300", "--num_validation", "10",
    "--num_test", "100", "--teacher_epochs", "3", "--pretrain_epochs", "3", "--batch_size", "16",
    "--num_threads", "1", "--stages", "data,teacher,pretrain",
]  # fmt: skip


def _hit_rates(model, processor, data_dir: str, k_ratio: float) -> tuple[float, float]:
    """(selector hit rate, exact chance level of k random patches) on the test split."""
    from PIL import Image

    from lookwhere_hf.models.lookwhere.selection import select_top_k

    ev, md = _load("evaluate_sparse_digits"), _load("make_dataset")
    rows = sorted(md.read_annotations(data_dir, "test").values(), key=lambda r: r["file_name"])
    size, patch = processor.size["height"], model.config.patch_size
    grid = size // patch
    k = int(k_ratio * grid * grid)
    images = [Image.open(os.path.join(data_dir, r["file_name"])).convert("RGB") for r in rows]
    overlaps = np.stack([ev.patch_overlaps(np.asarray(r["box"]) * size / images[0].size[0], grid, patch) for r in rows])
    inputs = processor(images, return_tensors="pt")
    with torch.no_grad():
        selector_map = model.select(inputs["pixel_values"], inputs["low_res_pixel_values"])[0]
    hits = ev.selection_hits(select_top_k(selector_map, k).numpy(), overlaps)["hit"]
    chance = np.mean([ev.random_hit_probability(grid * grid, int((o > 0).sum()), k) for o in overlaps])
    return float(hits.mean()), float(chance)


@pytest.mark.slow
def test_smoke_run_learns_where_the_digit_is_on_every_seed(tmp_path, monkeypatch):
    """The benchmark's data -> teacher -> pretraining stages at a tiny scale (224 px canvas, 8x8 patches, 300
    training images, a few epochs), for two training seeds: on 100 test images, the selector's top 10% of patches
    contain the digit far more often than k random patches (chance: 9.4%) and than the same selector with random
    weights. Measured on seeds 0-5 with these settings: see benchmarks/sparse_digits/README.md."""
    from lookwhere_hf import LookWhereImageProcessor, LookWhereModel

    monkeypatch.syspath_prepend(BENCH)  # as when run as a script: the benchmark imports its siblings by name
    rb = _load("run_benchmark")
    seeds = ",".join(map(str, SMOKE_SEEDS))
    summary = rb.main(["--output_dir", str(tmp_path), "--seeds", seeds, *SMOKE_ARGS])
    assert set(summary["timings"]["seeds"]) == {str(s) for s in SMOKE_SEEDS}
    data_dir = str(tmp_path / "data")
    for seed in SMOKE_SEEDS:
        pretrained = rb.seed_paths(str(tmp_path), seed)["pretrained"]
        model = LookWhereModel.from_pretrained(pretrained).eval()
        processor = LookWhereImageProcessor.from_model_config(model.config)
        trained, chance = _hit_rates(model, processor, data_dir, k_ratio=0.1)
        torch.manual_seed(seed)
        untrained, _ = _hit_rates(LookWhereModel(model.config).eval(), processor, data_dir, k_ratio=0.1)
        assert abs(chance - 6 / 64) < 1e-12  # every digit lies inside one patch: 1 - C(63, 6) / C(64, 6)
        assert trained >= 0.6, f"seed {seed}: selector hit rate {trained:.2f} (random weights {untrained:.2f})"
        assert trained >= untrained + 0.3, f"seed {seed}: trained {trained:.2f} vs random weights {untrained:.2f}"
