"""The `lookwhere-hf` command line on tiny saved models: subprocess runs, files written, errors for bad input."""

import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import EPS32, make_tiny_config
from PIL import Image
from transformers import pipeline

from lookwhere_hf import LookWhereForImageClassification, LookWhereImageProcessor, LookWhereModel, cli
from lookwhere_hf import benchmarking as bench
from lookwhere_hf.visualization import DPI, PANEL_INCHES, selection_figure_data

REPO = Path(__file__).resolve().parents[1]
LABELS = {0: "cat", 1: "dog", 2: "person", 3: "cup"}
PICTURE_SIZE = (int(2 * PANEL_INCHES * DPI), int(PANEL_INCHES * DPI))


def run_cli(*args, timeout=180):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "lookwhere_hf.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, photos):
    """A tiny trained-looking classifier folder (weights perturbed so predictions are not uniform) and photos."""
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    config = make_tiny_config(num_labels=4, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    model = LookWhereForImageClassification(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.2)
    model.save_pretrained(root / "model")
    LookWhereImageProcessor(
        size={"height": 112, "width": 112}, low_res_size={"height": 56, "width": 56}
    ).save_pretrained(root / "model")
    Image.fromarray(photos["astronaut"]).save(root / "astronaut.png")
    Image.fromarray(photos["coffee"]).save(root / "coffee.jpg")
    (root / "not_an_image.png").write_text("hello")
    return root


def manual_predictions(model_dir, images, k_ratio, top_k):
    model = LookWhereForImageClassification.from_pretrained(model_dir).eval()
    model.config.k_ratio = k_ratio
    processor = LookWhereImageProcessor.from_pretrained(model_dir)
    classifier = pipeline("image-classification", model=model, image_processor=processor)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the CLI runs (run_cli, --threads 1): the same kernels, so no near-tie can differ
    try:
        return [classifier(Image.open(path).convert("RGB"), top_k=top_k) for path in images]
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------------- subprocesses
@pytest.mark.slow
def test_predict_prints_the_pipeline_predictions(workdir):
    images = [workdir / "astronaut.png", workdir / "coffee.jpg"]
    result = run_cli("predict", *images, "--model", workdir / "model", "--k-ratio", "0.25", "--top-k", "3", "--json")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    expected = manual_predictions(workdir / "model", images, k_ratio=0.25, top_k=3)
    assert [p["image"] for p in printed] == [str(i) for i in images]
    for got, want in zip(printed, expected, strict=True):
        assert [p["label"] for p in got["predictions"]] == [p["label"] for p in want]
        # the same logits (same model, input and thread count); at most the softmax differs: (n + 3) EPS32, n = 4
        np.testing.assert_allclose([p["score"] for p in got["predictions"]], [p["score"] for p in want], atol=7 * EPS32)
    # --k-ratio really changes the computation: 16 of 64 patches vs the saved config's 6
    default_k = manual_predictions(workdir / "model", images[:1], k_ratio=0.1, top_k=3)[0]
    assert not np.allclose([p["score"] for p in printed[0]["predictions"]], [p["score"] for p in default_k], atol=1e-6)


@pytest.mark.slow
def test_visualize_writes_a_png_of_the_selection(workdir, tmp_path):
    output = tmp_path / "pictures" / "where.png"
    result = run_cli(
        "visualize", workdir / "astronaut.png", "--model", workdir / "model", "--output", output, "--k-ratio", "0.25"
    )
    assert result.returncode == 0, result.stderr
    assert str(output) in result.stdout and "16 chosen patches" in result.stdout  # 25% of the 8x8 grid
    with Image.open(output) as picture:
        assert picture.format == "PNG"
        assert picture.size == PICTURE_SIZE
        pixels = np.asarray(picture.convert("RGB"), dtype=np.float32)
    assert pixels.std() > 10  # a picture, not a blank canvas


@pytest.mark.slow
def test_demo_tiny_runs_and_says_weights_are_random(tmp_path):
    result = run_cli("demo", "--tiny", "--output-dir", tmp_path, "--repeats", "1", "--threads", "1")
    assert result.returncode == 0, result.stderr
    assert "RANDOM" in result.stdout and "speedup" in result.stdout
    picture = tmp_path / "where_astronaut.png"
    assert str(picture) in result.stdout
    with Image.open(picture) as image:
        assert image.size == PICTURE_SIZE


def test_console_script_is_declared():
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts.get("lookwhere-hf") == "lookwhere_hf.cli:main"


# ----------------------------------------------------------------------------------------------------- in-process
def test_demo_with_a_checkpoint_classifies_the_example_images(workdir, tmp_path, monkeypatch, capsys):
    images = [str(workdir / "astronaut.png"), str(workdir / "coffee.jpg")]
    monkeypatch.setattr(cli, "demo_image_paths", lambda: images)
    threads = torch.get_num_threads()
    try:
        code = cli.main(
            [
                "demo",
                "--model",
                str(workdir / "model"),
                "--output-dir",
                str(tmp_path),
                "--repeats",
                "1",
                "--threads",
                "1",
            ]
        )
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert code == 0
    assert "RANDOM weights" not in out.split("full-resolution")[0]  # the LookWhere model is the trained one
    expected = [p[0]["label"] for p in manual_predictions(workdir / "model", images, k_ratio=0.1, top_k=1)]
    for path, label in zip(images, expected, strict=True):
        line = next(line for line in out.splitlines() if Path(path).name in line and "->" in line)
        assert f"-> {label} (" in line
        assert (tmp_path / f"where_{Path(path).stem}.png").is_file()


def test_selection_picture_marks_the_selected_patches(workdir):
    model = LookWhereForImageClassification.from_pretrained(workdir / "model").eval()
    processor = LookWhereImageProcessor.from_pretrained(workdir / "model")
    image = Image.open(workdir / "astronaut.png")
    with torch.no_grad():
        outputs = model(**processor(image, return_tensors="pt"), k=10)
    picture = selection_figure_data(image, outputs.selector_map[0], outputs.selected_indices[0], (8, 8))
    assert picture.selected.sum() == 10
    rows, cols = np.nonzero(picture.selected)
    assert sorted((rows * 8 + cols).tolist()) == sorted(outputs.selected_indices[0].tolist())
    np.testing.assert_allclose(picture.heat.sum(), 1.0, rtol=64 * EPS32)  # a float32 softmax over 64 cells
    # the chosen patches are the hottest cells of the heat map
    # a float32 softmax keeps the order of its inputs up to a rounding of its largest value
    assert picture.heat[picture.selected].min() >= picture.heat[~picture.selected].max() - EPS32 * picture.heat.max()
    assert picture.image.shape[:2] == (8 * picture.patch_size[0], 8 * picture.patch_size[1])


@pytest.mark.parametrize(
    "argv,fragments",
    [
        (["predict", "{img}", "--model", "{model}", "--k-ratio", "1.5"], ["--k-ratio", "(0, 1]"]),
        (["predict", "{img}", "--model", "{model}", "--k-ratio", "0"], ["--k-ratio", "(0, 1]"]),
        (["predict", "{img}", "--model", "{model}", "--k-ratio", "abc"], ["--k-ratio", "number"]),
        (["predict", "{dir}/missing.png", "--model", "{model}"], ["image file not found", "missing.png"]),
        (["visualize", "{dir}/missing.png", "--model", "{model}", "--output", "{dir}/o.png"], ["image file not found"]),
        (["predict", "{dir}/not_an_image.png", "--model", "{model}"], ["cannot read", "not_an_image.png"]),
        (["predict", "{img}", "--model", "{dir}/no_such_model"], ["model folder not found"]),
        (["predict", "{img}", "--model", "{dir}"], ["no config.json"]),
        (["visualize", "{img}", "--model", "{model}", "--output", "{dir}/out.jpg"], [".png"]),
        (["demo", "--repeats", "0"], ["--repeats", "positive"]),
        (["demo", "--tiny", "--vit-b"], ["exclude each other"]),
        (["predict"], ["IMAGE"]),
    ],
)
def test_bad_input_gives_exit_code_2_and_one_line(workdir, capsys, argv, fragments):
    argv = [a.format(img=workdir / "astronaut.png", model=workdir / "model", dir=workdir) for a in argv]
    try:
        code = cli.main(argv)
    except SystemExit as exit_:  # argparse errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0]


def test_predict_without_model_and_without_shipped_checkpoint(workdir, monkeypatch, capsys):
    monkeypatch.setattr(cli, "default_demo_model_path", lambda: None)
    assert cli.main(["predict", str(workdir / "astronaut.png")]) == 2
    assert "no --model given" in capsys.readouterr().err


def test_default_demo_model_path_finds_the_shipped_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "ASSETS", tmp_path)
    assert cli.default_demo_model_path() is None and cli.demo_image_paths() == []
    (tmp_path / "demo_model").mkdir()
    (tmp_path / "demo_model" / "config.json").write_text("{}")
    (tmp_path / "demo_images").mkdir()
    for name in ("b.png", "a.jpg", "notes.txt"):
        (tmp_path / "demo_images" / name).write_bytes(b"")
    assert cli.default_demo_model_path() == str(tmp_path / "demo_model")
    assert [Path(p).name for p in cli.demo_image_paths()] == ["a.jpg", "b.png"]


@pytest.mark.parametrize("command,expected", [("convert", "--checkpoint_path"), ("benchmark", "--quick")])
def test_delegated_subcommands_have_help(command, expected, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    assert expected in capsys.readouterr().out


def test_benchmark_rewrites_only_its_own_section(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## Inference speed\n\nold table\n\n## Sparse digits\n\nkeep me\n")
    bench.write_section(results, "## Inference speed\n\nnew table\n")
    text = results.read_text()
    assert "old table" not in text and "new table" in text
    assert text.index("new table") < text.index("## Sparse digits") and "keep me" in text
    bench.write_section(tmp_path / "fresh.md", "## Inference speed\n\nx\n")
    assert (tmp_path / "fresh.md").read_text().startswith("# Benchmark results\n\n## Inference speed")


def test_benchmark_summary_checks_the_targets():
    row = dict(
        resolution=1036,
        batch_size=1,
        k_ratio=0.1,
        k=547,
        lw_s=0.5,
        lw_cls_s=0.49,
        full_s=10.0,
        full_flops=2.04e12,
        lw_flops=1.12e11,
        lw_peak_mb=80.0,
        lw_cls_peak_mb=60.0,
        grid_mb=16.0,
        lw_cpu_s=1.0,
        lw_cls_cpu_s=1.0,
        full_cpu_s=19.0,
    )
    lines = bench.summary_lines([dict(row, mode="cls", lw_s=0.49), dict(row, mode="dense", lw_cpu_s=1.03)])
    text = "\n".join(lines)
    assert "1036 px, k = 10%, batch 1: 20.4x faster (target >= 18x: met" in text
    assert "CPU-time ratio 19.0x" in text
    assert "+2.0% wall (target <= +5%: met); CPU time +3.0%" in text
    assert "1.25" in text  # (80 - 60) / 16


def test_time_interleaved_runs_the_calls_round_by_round():
    order = []
    calls = {name: (lambda name=name: order.append(name)) for name in ("full", "lw-cls", "lw-dense")}
    timings = bench.time_interleaved(calls, {"full": 1, "lw-cls": 3, "lw-dense": 2}, warmup=1)
    warmup, timed = order[:3], order[3:]
    assert warmup == ["full", "lw-cls", "lw-dense"]
    assert timed == ["full", "lw-cls", "lw-dense", "lw-cls", "lw-dense", "lw-cls"]
    assert [len(timings[name].wall) for name in calls] == [1, 3, 2]
    assert all(len(t.cpu) == len(t.wall) and min(t.wall) >= 0 for t in timings.values())
    assert timings["lw-cls"].median == sorted(timings["lw-cls"].wall)[1]
    with pytest.raises(ValueError, match="one per call"):
        bench.time_interleaved(calls, {"full": 1})
    with pytest.raises(ValueError, match="int >= 0"):
        bench.time_interleaved(calls, -1)


def test_random_weight_models():
    config = make_tiny_config()
    a, b = (bench.random_weight_model(LookWhereModel, config, seed=3) for _ in range(2))
    assert not a.training
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), name  # same seed, same values
        if p.ndim >= 2:
            assert 0.01 < float(p.detach().std()) < 0.04, name  # normal(0, 0.02), >= 32 draws each
        else:
            assert torch.all(p == (0.0 if name.endswith("bias") else 1.0)), name
    other = bench.random_weight_model(LookWhereModel, config, seed=4)
    assert not torch.equal(other.extractor.embeddings.cls_token, a.extractor.embeddings.cls_token)

    full = bench.build_full_resolution_model(config, 168, attn_implementation="eager")
    ext = config.extractor_config
    assert full.config.image_size == 168 and full.config._attn_implementation == "eager"
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_register_tokens", "mlp_ratio"):
        assert getattr(full.config, key) == getattr(ext, key), key
    with torch.no_grad():
        out = full(pixel_values=torch.randn(1, 3, 168, 168))
    assert out.last_hidden_state.shape == (1, 1 + 4 + 12 * 12, 32)


def test_benchmark_bad_arguments_exit_2(capsys):
    for argv, fragment in (
        (["--resolutions", "500"], "multiples of the patch size 14"),
        (["--k-ratios", "0"], "(0, 1]"),
        (["--skip", "1036"], "RESOLUTIONxBATCH"),
        (["--min-repeats", "5", "--max-repeats", "2"], "must not exceed"),
    ):
        with pytest.raises(SystemExit) as exit_:
            cli.main(["benchmark", *argv])
        assert exit_.value.code == 2
        assert fragment in capsys.readouterr().err


@pytest.mark.slow
def test_benchmark_and_model_cards_work_from_an_installed_wheel(tmp_path):
    """Build a wheel from a copy of setup.py + src/ (no benchmarks/, no model_cards/), install it into a separate
    folder, and run `lookwhere-hf benchmark` (a tiny grid) and the model-card rendering from there."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("setup.py", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(
        REPO / "src" / "lookwhere_hf", source / "src" / "lookwhere_hf", ignore=shutil.ignore_patterns("__pycache__")
    )
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(source),
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            str(tmp_path / "dist"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = (tmp_path / "dist").glob("lookwhere_hf-*.whl")
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    assert (site / "lookwhere_hf" / "templates" / "model_card.md").is_file()

    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("OMP_WAIT_POLICY", None)  # the benchmark sets it and re-runs itself in a fresh interpreter
    work = tmp_path / "work"
    work.mkdir()
    tiny = [
        "--resolutions",
        "56",
        "--k-ratios",
        "0.25",
        "--batch-sizes",
        "1",
        "--modes",
        "cls",
        "--no-memory",
        "--threads",
        "1",
        "--min-repeats",
        "1",
        "--max-repeats",
        "1",
        "--output",
        str(work / "RESULTS.md"),
    ]
    code = (
        "import sys, lookwhere_hf; from lookwhere_hf.cli import main; "
        "print('imported from', lookwhere_hf.__file__, file=sys.stderr); sys.exit(main(sys.argv[1:]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "benchmark", *tiny], capture_output=True, text=True, timeout=400, env=env, cwd=work
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"imported from {site}" in result.stderr
    section = (work / "RESULTS.md").read_text()
    assert section.startswith("# Benchmark results\n\n## Inference speed")
    # ViT-B/14 at 56 px: 16 patches, k = floor(0.25 * 16) = 4, one CLS row with both models timed
    (row,) = [line for line in section.splitlines() if line.startswith("| 56 | 1 | 0.25 | 4 | cls |")]
    assert "OMP_WAIT_POLICY=PASSIVE" in section
    assert json.loads((work / "inference_speed.json").read_text())["rows"][0]["k"] == 4

    cards = subprocess.run(
        [sys.executable, "-m", "lookwhere_hf.model_cards", "--output_dir", "cards"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=work,
    )
    assert cards.returncode == 0, cards.stderr
    for name in ("lookwhere-dinov2-vitb14.md", "lookwhere-franca-vitb14.md"):  # the shipped template renders them
        assert (work / "cards" / name).read_text() == (REPO / "model_cards" / name).read_text()
