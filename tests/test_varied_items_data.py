"""The Varied Items generator (benchmarks/varied_items/make_dataset.py): IDX reader, splits, boxes, determinism.

Fast and offline: Fashion-MNIST is replaced by tiny IDX files the tests write themselves (the Debian package is not
needed), and the digits source is scikit-learn's bundled set."""

import gzip
import hashlib
import importlib.util
import json
import os
import sys

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="the generator reuses Sparse Digits' module, which imports scikit-learn lazily")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "varied_items", "make_dataset.py")


def _load_generator():
    name = "varied_items_make_dataset"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


gen = _load_generator()


def write_idx(path: str, array: np.ndarray, type_code: int = 0x08, magic: bytes | None = None) -> None:
    """An IDX file (gzip if the name ends in .gz): magic 00 00 <type> <ndim>, big-endian int32 dims, the data."""
    header = magic if magic is not None else bytes([0, 0, type_code, array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype({0x08: np.uint8, 0x0C: ">i4"}[type_code]).tobytes()
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(data)


def fake_fashion_mnist(folder: str, num_train: int = 60, num_test: int = 30, gz: bool = True) -> dict:
    """A tiny stand-in for Fashion-MNIST's four IDX files: 28x28 uint8 'photos' (a bright rectangle whose size encodes
    the class), labels cycling 0-9. Returns the arrays."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for part, count in (("train", num_train), ("test", num_test)):
        labels = (np.arange(count) % 10).astype(np.uint8)
        images = rng.integers(0, 20, size=(count, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            images[i, 4 : 10 + 2 * label, 6:22] = 200 + i % 50
        arrays[part] = (images, labels)
        image_stem, label_stem = gen.IDX_FILES[part]
        suffix = ".gz" if gz else ""
        write_idx(os.path.join(folder, image_stem + suffix), images)
        write_idx(os.path.join(folder, label_stem + suffix), labels)
    return arrays


def small_config(**overrides):
    values = dict(
        seed=3, items="digits", canvas_size=112, min_item_size=10, max_item_size=56, num_train=24, num_validation=8,
        num_test=8,
    )  # fmt: skip
    values.update(overrides)
    return gen.VariedItemsConfig(**values)


def digest(folder: str) -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def read_rows(folder: str) -> list[dict]:
    with open(os.path.join(folder, "annotations.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# ----------------------------------------------------------------------------------------------------- IDX reader
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_round_trip(tmp_path, suffix):
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    labels = np.array([7, 0, 9], dtype=np.uint8)
    write_idx(str(tmp_path / f"images{suffix}"), images)
    write_idx(str(tmp_path / f"labels{suffix}"), labels)
    read_images = gen.read_idx(str(tmp_path / f"images{suffix}"))
    assert read_images.shape == (3, 4, 5) and read_images.dtype == np.uint8
    np.testing.assert_array_equal(read_images, images)
    np.testing.assert_array_equal(gen.read_idx(str(tmp_path / f"labels{suffix}")), labels)


def test_read_idx_int32_big_endian(tmp_path):
    values = np.array([[1, -2], [70000, 3]], dtype=np.int32)
    write_idx(str(tmp_path / "ints"), values, type_code=0x0C)
    np.testing.assert_array_equal(gen.read_idx(str(tmp_path / "ints")), values)


def test_read_idx_bad_magic_number(tmp_path):
    path = str(tmp_path / "bad-images-idx3-ubyte")
    write_idx(path, np.zeros((2, 3, 3)), magic=b"\x12\x34\x08\x03")
    with pytest.raises(ValueError, match=r"not an IDX file: bad magic number 0x12340803"):
        gen.read_idx(path)
    write_idx(path, np.zeros((2, 3, 3)), magic=b"\x00\x00\x42\x03")  # unknown type byte
    with pytest.raises(ValueError, match="bad magic number 0x00004203"):
        gen.read_idx(path)


def test_read_idx_wrong_length_and_not_gzip(tmp_path):
    path = str(tmp_path / "short")
    write_idx(path, np.zeros((2, 3, 3)))
    with open(path, "ab") as f:
        f.write(b"\x00")  # one byte too many
    with pytest.raises(ValueError, match=r"shape \(2, 3, 3\).*34 bytes with the header.*35 bytes"):
        gen.read_idx(path)
    plain = str(tmp_path / "plain.gz")  # named .gz but not compressed
    write_idx(str(tmp_path / "plain"), np.zeros(4))
    os.rename(str(tmp_path / "plain"), plain)
    with pytest.raises(ValueError, match="Cannot read the IDX file"):
        gen.read_idx(plain)


def test_load_idx_pair_checks_shapes_and_names_missing_files(tmp_path):
    arrays = fake_fashion_mnist(str(tmp_path), gz=False)
    images, labels = gen.load_idx_pair(str(tmp_path), "test")
    assert images.shape == (30, 28, 28) and labels.dtype == np.int64
    np.testing.assert_array_equal(labels, arrays["test"][1])
    write_idx(str(tmp_path / "t10k-labels-idx1-ubyte"), np.zeros(29))  # one label short
    with pytest.raises(ValueError, match=r"one label per image.*\(30\)"):
        gen.load_idx_pair(str(tmp_path), "test")
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        gen.load_idx_pair(str(tmp_path / "nowhere"), "train")


# ----------------------------------------------------------------------------------------------------- generation
def test_size_bins_are_log_terciles():
    config = gen.VariedItemsConfig(min_item_size=20, max_item_size=224)
    low, high = config.size_bin_edges()
    assert low == pytest.approx(20 * 11.2 ** (1 / 3)) and high == pytest.approx(20 * 11.2 ** (2 / 3))
    assert (round(low, 1), round(high, 1)) == (44.7, 100.1)
    assert [gen.size_bin(s, (low, high)) for s in (20, 44, 45, 100, 101, 224)] == [
        "small", "small", "medium", "medium", "large", "large",
    ]  # fmt: skip
    # log-uniform draws fill the three bins about equally (seeded)
    rng = np.random.default_rng(0)
    sizes = np.array([gen.item_size_draw(rng, config) for _ in range(3000)])
    assert sizes.min() >= 20 and sizes.max() <= 224
    shares = [np.mean([gen.size_bin(s, (low, high)) == b for s in sizes]) for b in gen.SIZE_BINS]
    assert all(0.29 < s < 0.37 for s in shares), shares


def test_item_is_visible_and_box_is_tight():
    item = np.zeros((28, 28), dtype=np.float32)
    item[7:21, 10:18] = 1.0  # a bright 14 x 8 px product on the photo's black background
    config = small_config(canvas_size=224, min_item_size=56, max_item_size=56)
    image, info = gen.render_sample(item, np.random.default_rng(5), config)
    x0, y0, x1, y1 = info["box"]
    px0, py0, px1, py1 = info["placed_box"]
    assert info["item_size"] == 56 and (px1 - px0, py1 - py0) == (56, 56)
    assert px0 <= x0 < x1 <= px1 and py0 <= y0 < y1 <= py1
    assert 14 <= x1 - x0 <= 20 and 26 <= y1 - y0 <= 32  # the 8 x 14 px rectangle scaled 2x, plus bicubic overshoot
    inside = image[y0 + 3 : y1 - 3, x0 + 3 : x1 - 3].astype(float).mean(axis=-1)
    assert inside.min() > 0.75 * 255 * 0.95  # opaque, light tint
    assert image.astype(float).mean() < 0.5 * 255  # on a dark canvas


def test_fashion_mnist_splits_are_disjoint(tmp_path):
    items_dir = str(tmp_path / "fmnist")
    arrays = fake_fashion_mnist(items_dir, num_train=60, num_test=30)
    config = small_config(items="fashion_mnist", items_dir=items_dir, num_train=40, num_validation=20, num_test=30)
    info = gen.write_dataset(str(tmp_path / "out"), config, progress=False)
    pools = info["item_pools"]
    train, validation = set(pools["train"]["indices"]), set(pools["validation"]["indices"])
    assert (pools["train"]["source_split"], pools["validation"]["source_split"]) == ("train", "train")
    assert pools["test"]["source_split"] == "test" and pools["test"]["indices"] == list(range(30))
    assert not train & validation and len(train | validation) == 60
    assert len(validation) == 10  # round(6 / 6) = 1 of each class's 6 items
    rows = read_rows(str(tmp_path / "out"))
    for row in rows:
        used = {"train": train, "validation": validation, "test": set(range(30))}[row["split"]]
        assert row["source_index"] in used
        assert row["source_split"] == ("test" if row["split"] == "test" else "train")
        assert row["label"] == int(arrays[row["source_split"]][1][row["source_index"]])
        assert row["class_name"] == f"{row['label']}_{gen.FASHION_MNIST_CLASSES[row['label']]}"
        assert row["file_name"].startswith(f"{row['split']}/{row['class_name']}/")
    # each pool is cycled: the 30 test images show 30 distinct test items
    assert len({r["source_index"] for r in rows if r["split"] == "test"}) == 30
    assert info["class_names"][0] == "0_t-shirt_top" and info["class_names"][9] == "9_ankle_boot"


def test_deterministic_and_boxes_inside_canvas(tmp_path):
    config = small_config(seed=7)
    gen.write_dataset(str(tmp_path / "a"), config, progress=False, num_workers=1)
    info = gen.write_dataset(str(tmp_path / "b"), small_config(seed=7), progress=False, num_workers=2)
    a, b = digest(str(tmp_path / "a")), digest(str(tmp_path / "b"))
    assert len(a) == 24 + 8 + 8 + 2 and a == b  # every PNG, annotations and info byte-identical
    gen.write_dataset(str(tmp_path / "c"), small_config(seed=8), progress=False)
    other = digest(str(tmp_path / "c"))
    assert sum(a[k] != other[k] for k in a if k.endswith(".png") and k in other) == sum(k in other for k in a) - 2

    rows = read_rows(str(tmp_path / "a"))
    edges = tuple(info["size_bins"]["edges_px"])
    assert len(rows) == 40
    for row in rows:
        x0, y0, x1, y1 = row["box"]
        px0, py0, px1, py1 = row["placed_box"]
        assert 0 <= px0 <= x0 < x1 <= px1 <= 112 and 0 <= py0 <= y0 < y1 <= py1 <= 112
        assert 10 <= row["item_size"] <= 56 and px1 - px0 == row["item_size"] == py1 - py0
        assert row["size_bin"] == gen.size_bin(row["item_size"], edges)
        assert row["label"] == int(row["class_name"]) and 0 <= row["label"] <= 9
    assert info["counts_per_size_bin"]["train"] == {
        b: sum(r["size_bin"] == b and r["split"] == "train" for r in rows) for b in gen.SIZE_BINS
    }


def test_digits_source_splits_and_imagefolder(tmp_path):
    info = gen.write_dataset(str(tmp_path / "d"), small_config(), progress=False)
    pools = {split: set(p["indices"]) for split, p in info["item_pools"].items()}
    assert not pools["train"] & pools["validation"] and not pools["train"] & pools["test"]
    assert not pools["validation"] & pools["test"] and sum(map(len, pools.values())) == 1797
    assert info["source"].startswith("sklearn.datasets.load_digits")
    for split, count in (("train", 24), ("validation", 8), ("test", 8)):
        files = [f for _, _, fs in os.walk(tmp_path / "d" / split) for f in fs]
        assert len(files) == count and all(f.endswith(".png") for f in files)
    from PIL import Image

    first = read_rows(str(tmp_path / "d"))[0]
    image = Image.open(tmp_path / "d" / first["file_name"])
    assert image.size == (112, 112) and image.mode == "RGB"


def test_cli_errors_are_clear(tmp_path, capsys):
    out = str(tmp_path / "x")
    assert gen.main(["--output_dir", out, "--items_dir", str(tmp_path / "missing"), "--num_workers", "1"]) == 2
    assert "dataset-fashion-mnist" in capsys.readouterr().err
    args = ["--output_dir", out, "--items", "digits", "--min_item_size", "60", "--max_item_size", "40"]
    assert gen.main(args) == 2
    assert "--min_item_size <= --max_item_size" in capsys.readouterr().err
    ok = ["--output_dir", out, "--items", "digits", "--canvas_size", "64", "--min_item_size", "8"]
    ok += ["--max_item_size", "32", "--num_train", "3", "--num_validation", "2", "--num_test", "2"]
    ok += ["--num_workers", "1"]
    assert gen.main(ok) == 0
    printed = capsys.readouterr().out
    assert "Wrote 7 images (train: 3, validation: 2, test: 2) of 64x64 px with digits items of 8-32 px" in printed
    assert gen.main(ok) == 2  # not empty without --overwrite
    assert "--overwrite" in capsys.readouterr().err


def test_split_seed_keeps_pools_fixed(tmp_path):
    base = gen.write_dataset(str(tmp_path / "a"), small_config(seed=0), progress=False)
    extra = gen.write_dataset(str(tmp_path / "b"), small_config(seed=5, split_seed=0), progress=False)
    other = gen.write_dataset(str(tmp_path / "c"), small_config(seed=5), progress=False)
    assert extra["item_pools"] == base["item_pools"] and other["item_pools"] != base["item_pools"]
    assert digest(str(tmp_path / "b")) != digest(str(tmp_path / "a"))  # other canvases
    with pytest.raises(ValueError, match="--split_seed"):
        small_config(split_seed=-2).validate()


def test_light_clutter_paints_item_like_clutter():
    item = np.zeros((28, 28), dtype=np.float32)
    item[7:21, 10:18] = 1.0

    def light_pixels_outside_item(light: float) -> int:
        config = small_config(canvas_size=224, min_item_size=30, max_item_size=30, light_clutter=light)
        total = 0
        for seed in range(5):
            image, info = gen.render_sample(item, np.random.default_rng(seed), config)
            x0, y0, x1, y1 = info["placed_box"]
            light_mask = image.min(axis=-1) >= 0.75 * 255 * 0.95
            light_mask[y0:y1, x0:x1] = False
            total += int(light_mask.sum())
        return total

    dark, light = light_pixels_outside_item(0.0), light_pixels_outside_item(1.0)
    assert dark < 300  # only single-pixel speckles are near-white by default
    assert light > 10 * dark + 2000  # strokes, blobs and fragments in the item's light tint
    with pytest.raises(ValueError, match="--light_clutter"):
        small_config(light_clutter=1.5).validate()
