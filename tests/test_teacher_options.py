"""The label-only teacher options of `benchmarks/sparse_digits/train_teacher.py` (tried for Varied Items, issue 24):
the multiple-instance loss and progressive resizing (`--train_image_size`)."""

import json

import pytest
import torch

pytest.importorskip("sklearn", reason="the tiny imagefolder is Sparse Digits with scikit-learn's digits")
from test_sparse_digits import _load  # noqa: E402  (imports a benchmark script as the module it is when run)


@pytest.fixture(scope="module")
def tt():
    return _load("train_teacher")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    md = _load("make_dataset")
    folder = str(tmp_path_factory.mktemp("teacher_options") / "data")
    config = md.SparseDigitsConfig(
        seed=0, canvas_size=80, min_digit_size=24, max_digit_size=28, num_train=8, num_validation=4, num_test=2
    )
    md.write_dataset(folder, config, progress=False)
    return folder


def _tiny_model(tt, num_labels=10):
    from transformers import Dinov2WithRegistersConfig

    torch.manual_seed(0)
    config = Dinov2WithRegistersConfig(
        image_size=40, patch_size=10, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_labels=num_labels
    )
    model = tt.Dinov2WithRegistersForImageClassification(config).double()
    model.mil_head = torch.nn.Linear(16, num_labels).double()
    return model


def test_multiple_instance_loss_is_cross_entropy_of_the_log_sum_exp_over_patches(tt):
    model = _tiny_model(tt)
    torch.manual_seed(1)
    pixels = torch.randn(3, 3, 40, 40, dtype=torch.float64)
    labels = torch.tensor([0, 4, 9])
    outputs = model(pixel_values=pixels, output_hidden_states=True)
    tokens = model.dinov2_with_registers.layernorm(outputs.hidden_states[-1])[:, 1 + model.config.num_register_tokens :]
    assert tokens.shape == (3, 16, 16)  # the 4x4 patches only, no CLS or registers
    scores = model.mil_head(tokens)  # (B, patches, classes)
    image_scores = torch.stack([torch.log(torch.exp(s).sum(dim=0)) for s in scores])
    expected = -torch.stack([torch.log_softmax(image_scores[i], -1)[labels[i]] for i in range(3)]).mean()
    loss = tt.multiple_instance_loss(model, outputs, labels)
    # float64 model, float32 log-sum-exp inside the loss: float32 rounding of values of order 1
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # ... and so is its gradient, which trains the patch head (and through it the backbone)
    weight = model.mil_head.weight
    (got,) = torch.autograd.grad(loss, weight, retain_graph=True)
    (want,) = torch.autograd.grad(expected, weight)
    assert got.abs().max() > 0
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)  # float32 log-sum-exp, values of order 1


def _train(tt, data_dir, out, **extra):
    argv = [
        "--data_dir", data_dir, "--output_dir", str(out), "--image_size", "80", "--patch_size", "20",
        "--hidden_size", "16", "--num_hidden_layers", "1", "--num_attention_heads", "2",
        "--do_train", "--num_train_epochs", "1", "--per_device_train_batch_size", "4", "--learning_rate", "1e-3",
        "--report_to", "none", "--save_strategy", "no", "--seed", "0", "--use_cpu", "--disable_tqdm", "true",
    ]  # fmt: skip
    for key, value in extra.items():
        argv += [f"--{key}", str(value)]
    return tt.main(argv)


def test_progressive_resizing_trains_at_the_small_size_and_saves_the_full_size(tt, data_dir, tmp_path, monkeypatch):
    seen = []
    base = tt.Dinov2WithRegistersForImageClassification

    class RecordingForImageClassification(base):  # the name picks the loss, as in transformers
        def forward(self, pixel_values=None, **kwargs):
            seen.append((self.training, tuple(pixel_values.shape[-2:])))
            return super().forward(pixel_values=pixel_values, **kwargs)

    monkeypatch.setattr(tt, "Dinov2WithRegistersForImageClassification", RecordingForImageClassification)
    _train(tt, data_dir, tmp_path / "teacher", train_image_size=40, mil_loss_weight=1.0, do_eval=True)
    assert {shape for training, shape in seen if training} == {(40, 40)}  # 2x2 patches while training
    assert {shape for training, shape in seen if not training} == {(80, 80)}  # evaluation at image_size
    with open(tmp_path / "teacher" / "preprocessor_config.json") as f:
        assert json.load(f)["size"] == {"height": 80, "width": 80}
    with open(tmp_path / "teacher" / "config.json") as f:
        config = json.load(f)
    assert config["image_size"] == 80  # the position table of the full resolution: 4x4 patches
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "teacher" / "model.safetensors"))
    assert not any(name.startswith("mil_head") for name in weights)  # the training-only head is not saved
    assert weights["dinov2_with_registers.embeddings.position_embeddings"].shape == (1, 1 + 16, 16)


def test_teacher_options_refuse_what_they_cannot_do(tt, data_dir, tmp_path):
    for size in (50, 0, -20):
        with pytest.raises(ValueError, match="positive multiple of --patch_size"):
            _train(tt, data_dir, tmp_path / "a", train_image_size=size)
    for weight in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="--mil_loss_weight must be >= 0"):
            _train(tt, data_dir, tmp_path / "d", mil_loss_weight=weight)
    with pytest.raises(ValueError, match="zoom curriculum do not support"):
        _train(tt, data_dir, tmp_path / "b", train_image_size=40, token_loss_weight=1.0)
    with pytest.raises(ValueError, match="label-only alternative"):
        _train(tt, data_dir, tmp_path / "c", mil_loss_weight=1.0, attention_loss_weight=1.0)
