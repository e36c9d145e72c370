"""The everyday transformers flows, written the way transformers' docs write them, for every family and task class:

- `pipeline(task, model=folder)(images, batch_size=N)` equals one image at a time (fixed and budgeted models), in the
  manner of transformers' `PipelineTesterMixin`;
- the image-classification tutorial's `Trainer` + `compute_metrics`, unchanged;
- every saved class of every family loads through `AutoModel` and every `AutoModelFor*` of its family, and its image
  processor through `AutoImageProcessor`, with `trust_remote_code=True` in a process where `import lookwhere_hf`
  fails (slow: a subprocess).

Models are tiny, random and run in float64 where outputs are compared: batched and single forwards then differ by
float64 rounding (<= 1e-12 here, see `FLOAT64_TOLERANCE` in conftest), so labels, masks and exits cannot flip on a
near-tie unless two values lie within that of each other, which the helpers below check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FLOAT64_TOLERANCE, make_tiny_config
from datasets import Dataset
from datasets import Image as DatasetImage
from PIL import Image
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    DefaultDataCollator,
    ResNetConfig,
    Trainer,
    TrainingArguments,
    pipeline,
)

from lookwhere_hf import (
    GlanceFocusConfig,
    GlanceFocusForImageClassification,
    LookupViTConfig,
    LookupViTForImageClassification,
    LookupViTForSemanticSegmentation,
    LookupViTModel,
    LookWhereForImageClassification,
    LookWhereForPreTraining,
    LookWhereForSemanticSegmentation,
    LookWhereModel,
    image_processor_for,
)
from lookwhere_hf.metrics import metric_path

NUM_LABELS = 4
LABELS = {0: "shirt", 1: "bag", 2: "shoe", 3: "coat"}
BATCH_SIZES = (1, 2, 5)


# ------------------------------------------------------------------------------------------------ tiny families
def lookwhere_config(**kwargs):
    """112 px (8 x 8 = 64 patches), selector 56 px; rungs glance + k = 6, 16, 32."""
    return make_tiny_config(glance_head=True, anytime_k_ratios=[0.1, 0.25, 0.5], k_ratio=0.25, **kwargs)


def lookupvit_config(**kwargs):
    return LookupViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=112,
        patch_size=14,
        compressed_grid=2,
        compressed_grids=[2, 4],
        lookup_mlp_ratio=0.5,
        **kwargs,
    )


def glance_focus_config(**kwargs):
    backbone = ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", downsample_in_first_stage=False
    )
    return GlanceFocusConfig(
        backbone_config=backbone,
        image_size=64,
        patch_size=32,
        num_steps=3,
        classifier_hidden_size=16,
        policy_hidden_size=16,
        policy_mlp_size=32,
        **kwargs,
    )


CONFIGS = {"lookwhere": lookwhere_config, "lookupvit": lookupvit_config, "glance_focus": glance_focus_config}
CLASSES = {
    "lookwhere": {
        "AutoModel": LookWhereModel,
        "AutoModelForImageClassification": LookWhereForImageClassification,
        "AutoModelForSemanticSegmentation": LookWhereForSemanticSegmentation,
    },
    "lookupvit": {
        "AutoModel": LookupViTModel,
        "AutoModelForImageClassification": LookupViTForImageClassification,
        "AutoModelForSemanticSegmentation": LookupViTForSemanticSegmentation,
    },
    "glance_focus": {"AutoModelForImageClassification": GlanceFocusForImageClassification},
}
TASK_AUTO_CLASS = {
    "image-classification": "AutoModelForImageClassification",
    "image-segmentation": "AutoModelForSemanticSegmentation",
    "image-feature-extraction": "AutoModel",
}


def build(family: str, auto_class: str, seed: int = 0):
    """A tiny model of `family` for `auto_class`, with weights spread out (a fresh initialisation predicts nearly
    uniform probabilities, where every image would exit at the same rung)."""
    torch.manual_seed(seed)
    config = CONFIGS[family](num_labels=NUM_LABELS, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    model = CLASSES[family][auto_class](config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim > 1 and "backbone" not in name:
                param.add_(torch.randn_like(param) * 0.3)
    return model


def save(model, folder: Path) -> Path:
    model.save_pretrained(folder)
    image_processor_for(model.config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def images():
    """Five real photos of different sizes (scikit-image), one of them grayscale."""
    from skimage import data

    arrays = [data.astronaut(), data.coffee(), data.chelsea(), data.camera(), data.rocket()]
    return [Image.fromarray(a) for a in arrays]


def spread_thresholds(confidences: torch.Tensor) -> list[float]:
    """Exit thresholds for every rung but the last, each halfway in the widest gap between the images' confidences at
    that rung (so some images exit there and some go on). The gap must exceed 1e-3: far above float32 rounding of a
    softmax (~1e-6), so the same exits hold when a model calibrated in float64 runs in float32 (tests/test_app.py)."""
    thresholds = []
    for rung in range(confidences.shape[1] - 1):
        values = confidences[:, rung].sort().values
        gaps = values[1:] - values[:-1]
        widest = int(gaps.argmax())
        assert gaps[widest] > 1e-3, f"rung {rung}: confidences {values.tolist()} leave no gap to put a threshold in"
        thresholds.append(float(values[widest] + gaps[widest] / 2))
    return thresholds


def budgeted(model, images) -> None:
    """Calibrate `model` so that the five images exit at different rungs (the thresholds are saved in its config)."""
    processor = image_processor_for(model.config)
    inputs = processor(images, return_tensors="pt")
    with torch.no_grad():
        rung_logits = model(**inputs.to(torch.float64), anytime=True).rung_logits  # (B, R, C)
    model.config.budget_thresholds = spread_thresholds(rung_logits.softmax(-1).amax(-1))


def one_at_a_time_equals_batched(runner, images, compare) -> None:
    single = [runner(image) for image in images]
    for batch_size in BATCH_SIZES:
        batched = runner(images, batch_size=batch_size)
        assert len(batched) == len(images)
        for one, many in zip(single, batched, strict=True):
            compare(one, many)


def same_scores(one, many):
    assert [r["label"] for r in one] == [r["label"] for r in many]
    np.testing.assert_allclose([r["score"] for r in one], [r["score"] for r in many], **FLOAT64_TOLERANCE)


def same_masks(one, many):
    assert [r["label"] for r in one] == [r["label"] for r in many]
    for a, b in zip(one, many, strict=True):
        np.testing.assert_array_equal(np.asarray(a["mask"]), np.asarray(b["mask"]))


def same_features(one, many):
    np.testing.assert_allclose(np.asarray(one), np.asarray(many), **FLOAT64_TOLERANCE)


# ------------------------------------------------------------------------------------------- pipeline batching
PIPELINE_CASES = [
    ("lookwhere", "image-classification", False),
    ("lookwhere", "image-classification", True),
    ("lookwhere", "image-segmentation", False),
    ("lookwhere", "image-feature-extraction", False),
    ("lookupvit", "image-classification", False),
    ("lookupvit", "image-segmentation", False),
    ("lookupvit", "image-feature-extraction", False),
    ("glance_focus", "image-classification", False),
    ("glance_focus", "image-classification", True),
]


@pytest.mark.parametrize(("family", "task", "with_budget"), PIPELINE_CASES)
def test_batched_pipeline_equals_one_image_at_a_time(tmp_path, images, family, task, with_budget):
    model = build(family, TASK_AUTO_CLASS[task]).double()
    if with_budget:
        budgeted(model, images)
    folder = save(model, tmp_path / "model")
    runner = pipeline(task, model=str(folder), dtype=torch.float64)
    if with_budget:  # the pipeline runs the budgeted forward, and the batch holds images exiting at different rungs
        processor = image_processor_for(model.config)
        with torch.no_grad():
            exits = runner.model(**processor(images, return_tensors="pt").to(torch.float64)).exit_rung
        assert len(set(exits.tolist())) >= 2, exits
    compare = {"image-classification": same_scores, "image-segmentation": same_masks}.get(task, same_features)
    one_at_a_time_equals_batched(runner, images, compare)
    if task == "image-classification":  # and one image at a time is the model's own forward
        processor = image_processor_for(model.config)
        with torch.no_grad():
            probs = model(**processor(images[0], return_tensors="pt").to(torch.float64)).logits.softmax(-1)[0]
        top = runner(images[0], top_k=NUM_LABELS)
        expected = {LABELS[i]: p for i, p in enumerate(probs.tolist())}
        np.testing.assert_allclose([r["score"] for r in top], [expected[r["label"]] for r in top], **FLOAT64_TOLERANCE)


@pytest.mark.parametrize("family", ["lookwhere", "lookupvit", "glance_focus"])
def test_every_output_field_is_per_image_along_dim_zero(images, family):
    """What a pipeline un-batches: every tensor field of every forward mode has the batch on dim 0."""
    model = build(family, "AutoModelForImageClassification")
    inputs = image_processor_for(model.config)(images, return_tensors="pt")
    modes = [{}]
    if family != "lookupvit":
        budgeted(model.double(), images)
        model.float()
        modes += [{"anytime": True}, {"budget": True}, {"budget": False}]
    for mode in modes:
        with torch.no_grad():
            outputs = model(**inputs, labels=torch.arange(len(images)) % NUM_LABELS, **mode)
        for name, value in outputs.items():
            if name == "loss":
                continue
            assert isinstance(value, torch.Tensor), f"{name} ({mode}) is a {type(value).__name__}, not a tensor"
            assert value.shape[0] == len(images), f"{name} ({mode}) has shape {tuple(value.shape)}"


# ------------------------------------------------------------------------------------------------ tutorial Trainer
def tutorial_dataset(num_images: int, seed: int) -> Dataset:
    """An image classification dataset as `datasets` loads one: an `image` column of PIL images and a `label`."""
    rng = np.random.default_rng(seed)
    pictures = [Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)) for _ in range(num_images)]
    data = Dataset.from_dict({"image": pictures, "label": [i % NUM_LABELS for i in range(num_images)]})
    return data.cast_column("image", DatasetImage())


@pytest.mark.parametrize("family", ["lookwhere", "lookupvit", "glance_focus"])
def test_tutorial_trainer_with_compute_metrics(tmp_path, family):
    """transformers' image classification tutorial (and its `run_image_classification.py`), unchanged but for the
    offline accuracy module: torchvision transforms built from the processor's size / mean / std make `pixel_values`
    only (LookWhere and Glance-and-Focus make their second view themselves), the Trainer evaluates with
    `compute_metrics` on `np.argmax(predictions, axis=1)`."""
    import evaluate
    from torchvision.transforms import CenterCrop, Compose, Normalize, RandomResizedCrop, Resize, ToTensor

    folder = save(build(family, "AutoModelForImageClassification"), tmp_path / "model")
    model = AutoModelForImageClassification.from_pretrained(folder)
    image_processor = AutoImageProcessor.from_pretrained(folder)

    normalize = Normalize(mean=image_processor.image_mean, std=image_processor.image_std)
    size = (
        image_processor.size["shortest_edge"]
        if "shortest_edge" in image_processor.size
        else (image_processor.size["height"], image_processor.size["width"])
    )
    train_transforms = Compose([RandomResizedCrop(size), ToTensor(), normalize])
    val_transforms = Compose([Resize(size), CenterCrop(size), ToTensor(), normalize])

    def transforms(compose):
        def apply(examples):
            examples["pixel_values"] = [compose(img.convert("RGB")) for img in examples["image"]]
            del examples["image"]
            return examples

        return apply

    train, test = tutorial_dataset(12, seed=0), tutorial_dataset(6, seed=1)
    train, test = train.with_transform(transforms(train_transforms)), test.with_transform(transforms(val_transforms))
    accuracy = evaluate.load(metric_path("accuracy"))

    def compute_metrics(eval_pred):
        predictions, labels = eval_pred
        predictions = np.argmax(predictions, axis=1)
        return accuracy.compute(predictions=predictions, references=labels)

    training_args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        remove_unused_columns=False,
        eval_strategy="epoch",
        save_strategy="no",
        learning_rate=5e-5,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        num_train_epochs=1,
        report_to="none",
        use_cpu=True,
        seed=0,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        data_collator=DefaultDataCollator(),
        train_dataset=train,
        eval_dataset=test,
        processing_class=image_processor,
        compute_metrics=compute_metrics,
    )
    trainer.train()
    metrics = trainer.evaluate()
    prediction = trainer.predict(test)
    # the predictions are the logits alone, one row per image ...
    assert isinstance(prediction.predictions, np.ndarray)
    assert prediction.predictions.shape == (len(test), NUM_LABELS)
    # ... the model's own forward in eval mode, batch by batch as the Trainer ran it
    model.eval()
    collate = DefaultDataCollator()
    with torch.no_grad():
        logits = torch.cat(
            [model(**collate([test[i] for i in range(s, min(s + 4, len(test)))])).logits for s in (0, 4)]
        )
    np.testing.assert_array_equal(prediction.predictions, logits.numpy())
    expected = float((logits.argmax(-1).numpy() == np.asarray(test["label"])).mean())
    assert metrics["eval_accuracy"] == pytest.approx(expected, abs=1e-12)


# ------------------------------------------------------------------------------------------------ remote code
# Every saved class of each family, and what every Auto class of the family must load from it.
SAVED = [(family, auto_class) for family, classes in CLASSES.items() for auto_class in classes]

REMOTE_SCRIPT = """
import importlib.abc, json, sys

class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "lookwhere_hf" or name.startswith("lookwhere_hf."):
            raise ImportError(f"{name} is blocked in this test: the folder must carry its own code")
        return None

sys.meta_path.insert(0, Blocked())
try:
    import lookwhere_hf  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("the import hook did not block lookwhere_hf")

import torch, transformers
from transformers import AutoImageProcessor

import traceback

torch.set_num_threads(1)
for folder, auto_classes, out in json.loads(sys.argv[1]):  # each saved folder with the Auto classes to load it with
    try:
        inputs = torch.load(folder + "/inputs.pt")
        processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
        results = {"processor": type(processor).__name__, "processor_module": type(processor).__module__, "models": {}}
        pixels = processor(torch.load(folder + "/image.pt"), return_tensors="pt")
        results["processor_equal"] = all(torch.equal(pixels[k], inputs[k]) for k in inputs)
        for name in auto_classes:
            model = getattr(transformers, name).from_pretrained(folder, trust_remote_code=True).eval().double()
            results["models"][name] = [type(model).__name__, type(model).__module__]
            if name == "AutoModelForPreTraining":  # its forward needs a teacher: loading is what is checked
                continue
            with torch.no_grad():
                output = model(**{k: v.double() for k, v in inputs.items()})
            first = output.logits if "logits" in output else output.last_hidden_state
            torch.save(first, f"{out}/{name}.pt")
    except Exception:
        results = {"error": traceback.format_exc()}
    json.dump(results, open(out + "/results.json", "w"))
assert not any(m == "lookwhere_hf" or m.startswith("lookwhere_hf.") for m in sys.modules), "lookwhere_hf imported"
"""


@pytest.fixture(scope="module")
def remote_loads(tmp_path_factory, images):
    """Every saved class of every family (`SAVED`), each in its own folder (named after it: its remote code becomes
    its own module) with the inputs its processor made here, loaded by `REMOTE_SCRIPT` in one process where
    `import lookwhere_hf` fails. Per `(family, saved_class)`: `(model, inputs, processor type, the script's results
    folder)`."""
    root = tmp_path_factory.mktemp("remote_code")
    jobs, runs = [], {}
    for family, saved_class in SAVED:
        model = build(family, saved_class).double()
        folder = save(model, root / f"{family}-{saved_class}")
        processor = image_processor_for(model.config)
        inputs = processor(images[2], return_tensors="pt")
        torch.save(dict(inputs), folder / "inputs.pt")
        torch.save(torch.from_numpy(np.array(images[2])), folder / "image.pt")
        auto_classes = list(CLASSES[family])
        if family == "lookwhere":
            auto_classes.append("AutoModelForPreTraining")
        if family == "glance_focus":
            auto_classes.insert(0, "AutoModel")  # the family has no headless model: AutoModel gives the classifier
        out = root / f"out-{family}-{saved_class}"
        out.mkdir()
        jobs.append([str(folder), auto_classes, str(out)])
        runs[family, saved_class] = (model, inputs, type(processor), auto_classes, out)
    (root / "script.py").write_text(REMOTE_SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(root / "modules")}
    result = subprocess.run(
        [sys.executable, str(root / "script.py"), json.dumps(jobs)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return runs, result


@pytest.mark.slow
@pytest.mark.parametrize(("family", "saved_class"), SAVED)
def test_every_auto_class_loads_every_saved_class_without_the_package(remote_loads, family, saved_class):
    runs, result = remote_loads
    assert result.returncode == 0, result.stderr[-4000:]
    model, inputs, expected_processor, auto_classes, out = runs[family, saved_class]
    results = json.loads((out / "results.json").read_text())
    assert "error" not in results, results.get("error")
    assert results["processor"] == expected_processor.__name__
    if expected_processor.__module__.startswith("lookwhere_hf"):  # LookupViT's is transformers' own BeitImageProcessor
        assert results["processor_module"].startswith("transformers_modules"), results
    assert results["processor_equal"]
    expected_classes = {**CLASSES[family], "AutoModelForPreTraining": LookWhereForPreTraining}
    expected_classes.setdefault("AutoModel", GlanceFocusForImageClassification)
    for auto_class in auto_classes:
        name, module = results["models"][auto_class]
        assert module.startswith("transformers_modules"), (auto_class, module)
        assert name == expected_classes[auto_class].__name__, (auto_class, name)
    # the class that was saved comes back with all its weights: the same outputs as here
    with torch.no_grad():
        output = model(**{k: v.double() for k, v in inputs.items()})
    expected = output.logits if "logits" in output else output.last_hidden_state
    got = torch.load(out / f"{saved_class}.pt")
    torch.testing.assert_close(got, expected, **FLOAT64_TOLERANCE)


NO_TORCHVISION_SCRIPT = """
import sys
sys.modules["torchvision"] = None  # as if it were not installed: imports fail, find_spec says absent
from transformers import AutoImageProcessor
try:
    AutoImageProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)
except ImportError as error:
    print(error)
else:
    raise SystemExit("no ImportError")
"""


@pytest.mark.slow
@pytest.mark.parametrize("family", ["lookwhere", "glance_focus"])
def test_processor_without_torchvision_says_what_to_install(tmp_path, family):
    folder = save(build(family, "AutoModelForImageClassification"), tmp_path / "model")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, "-c", NO_TORCHVISION_SCRIPT, str(folder)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pip install torchvision" in result.stdout


# ------------------------------------------------------------------------------------------------ CLI refusals
@pytest.mark.parametrize(
    ("family", "saved_class", "name"),
    [
        ("lookwhere", "AutoModel", "LookWhereModel"),
        ("lookwhere", "AutoModelForSemanticSegmentation", "LookWhereForSemanticSegmentation"),
        ("lookupvit", "AutoModel", "LookupViTModel"),
    ],
)
def test_cli_predict_refuses_a_folder_without_a_classifier(tmp_path, images, capsys, family, saved_class, name):
    """Before: random labels with exit status 0 (transformers' missing-weights report was silenced)."""
    from lookwhere_hf import cli

    folder = save(build(family, saved_class), tmp_path / "model")
    images[2].save(tmp_path / "cat.png")
    assert cli.main(["predict", str(tmp_path / "cat.png"), "--model", str(folder)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # (above it: progress bars of saving and loading)
    assert error.startswith("lookwhere-hf predict: error: ") and f"holds a {name}" in error and "random" in error


def test_cli_refuses_a_decompression_bomb_in_one_line(tmp_path, capsys, monkeypatch):
    """PIL refuses images over twice `MAX_IMAGE_PIXELS` (a 20000 x 20000 photo with the default); lowered here so
    that a small file triggers the same refusal."""
    from lookwhere_hf import cli

    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert cli.main(["predict", str(tmp_path / "big.png")]) == 2
    error = capsys.readouterr().err
    assert "too large to open safely" in error and "downscale" in error, error
    assert error.count("\n") == 1, error  # one line, no traceback


def test_cli_visualize_defaults_to_the_demo_checkpoint(tmp_path, images, capsys):
    from lookwhere_hf import cli

    images[0].save(tmp_path / "astronaut.png")
    output = tmp_path / "where.png"
    assert cli.main(["visualize", str(tmp_path / "astronaut.png"), "--output", str(output)]) == 0
    assert Image.open(output).size == (1000, 500)
    assert str(output) in capsys.readouterr().out


def test_cli_demo_runs_a_bare_model_folder_without_classifying(tmp_path, capsys):
    """A converted or pretrained bare model has no head: the demo times it and draws where it looks, classifying
    nothing (loading it as a classifier would give a random head, which the loader refuses)."""
    from lookwhere_hf import cli

    folder = save(build("lookwhere", "AutoModel"), tmp_path / "model")
    argv = ["demo", "--model", str(folder), "--repeats", "1", "--output-dir", str(tmp_path / "out")]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "Classifying" not in out and "Saved where the selector looked" in out
    assert any(p.suffix == ".png" for p in (tmp_path / "out").iterdir())
