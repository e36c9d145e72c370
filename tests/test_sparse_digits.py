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
    """Every stage runs a script of this repository; fine-tuning is the example script itself with --no_augment."""
    rb = _load("run_benchmark")
    args = rb.parse_args(["--output_dir", str(tmp_path), "--k_ratio", "0.25"])
    paths = {name: str(tmp_path / name) for name in ("data", "teacher", "pretrained", "finetuned", "eval")}
    commands = rb.stage_commands(args, paths)
    assert list(commands) == list(rb.STAGES) == ["data", "teacher", "pretrain", "finetune", "evaluate"]
    for command in commands.values():
        assert command[0] == sys.executable and os.path.isfile(command[1]), command[1]
        assert os.path.commonpath([command[1], REPO]) == REPO
    finetune = commands["finetune"]
    assert finetune[1] == os.path.join(
        REPO, "examples", "pytorch", "image-classification", "run_image_classification.py"
    )
    assert "--no_augment" in finetune and finetune[finetune.index("--k_ratio") + 1] == "0.25"
    assert finetune[finetune.index("--model_name_or_path") + 1] == paths["pretrained"]
    assert os.path.basename(commands["evaluate"][1]) == "evaluate_sparse_digits.py"
    assert rb.flags(seed=3, overwrite=True, lr=0.5) == ["--seed", "3", "--overwrite", "--lr", "0.5"]


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
