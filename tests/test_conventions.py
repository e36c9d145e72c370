"""transformers' model and config conventions: composite config, frozen unused parameters (DDP), hidden states and
kwargs, torch.export."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import FLOAT64_TOLERANCE, assert_top_k_margin, make_tiny_config, sum_rtol
from huggingface_hub.errors import StrictDataclassClassValidationError
from transformers import (
    AutoConfig,
    AutoModelForImageClassification,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    Trainer,
    TrainingArguments,
)

from lookwhere_hf import (
    LookWhereConfig,
    LookWhereExtractorConfig,
    LookWhereForImageClassification,
    LookWhereForPreTraining,
    LookWhereForSemanticSegmentation,
    LookWhereModel,
    LookWhereSelectorConfig,
)

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = ROOT / "src" / "lookwhere_hf" / "assets" / "demo_model"
OLD_LAYOUT_CONFIG = Path(__file__).parent / "fixtures" / "lookwhere_config_before_sub_configs.json"
TASK_CLASSES = (LookWhereForImageClassification, LookWhereForSemanticSegmentation)
PRETRAIN_DEFAULTS = {
    "pretrain_k_min": 16,
    "pretrain_k_max": 128,
    "pretrain_cls_loss_weight": 1.0,
    "pretrain_dense_loss_weight": 1.0,
    "pretrain_map_loss_weight": 0.1,
    "pretrain_k_seed": 0,
    "pretrain_map_layer": -1,
}


def _without_volatile_keys(config_dict: dict) -> dict:
    return {k: v for k, v in config_dict.items() if k not in ("_name_or_path", "transformers_version")}


def _tiny_teacher() -> Dinov2WithRegistersModel:
    config = Dinov2WithRegistersConfig(
        hidden_size=32,
        num_attention_heads=2,
        mlp_ratio=4,
        patch_size=14,
        image_size=112,
        num_register_tokens=4,
        num_hidden_layers=2,
    )
    return Dinov2WithRegistersModel(config).eval()


def _pretraining_model(**kwargs) -> LookWhereForPreTraining:
    return LookWhereForPreTraining.from_teacher(_tiny_teacher(), selector_depth=1, low_res_size=56, **kwargs)


# ----------------------------------------------------------------------------------------------------- composite config
def test_sub_configs_are_their_own_classes_with_base_config_keys():
    config = make_tiny_config()
    assert type(config.selector_config) is LookWhereSelectorConfig
    assert type(config.extractor_config) is LookWhereExtractorConfig
    assert LookWhereSelectorConfig.base_config_key == "selector_config"
    assert LookWhereExtractorConfig.base_config_key == "extractor_config"
    assert LookWhereConfig.sub_configs == {
        "selector_config": LookWhereSelectorConfig,
        "extractor_config": LookWhereExtractorConfig,
    }
    # Both are DINOv2-with-registers configs; only the extractor keeps that model_type (see the next test).
    assert isinstance(config.selector_config, Dinov2WithRegistersConfig)
    assert (LookWhereSelectorConfig.model_type, LookWhereExtractorConfig.model_type) == (
        "lookwhere_selector",
        "dinov2_with_registers",
    )
    # Defaults: the released architecture (ViT-B/14, 4 registers, 154 px depth 3 / 518 px depth 12).
    release = LookWhereConfig()
    assert (release.selector_config.num_hidden_layers, release.selector_config.image_size) == (3, 154)
    assert (release.extractor_config.num_hidden_layers, release.extractor_config.image_size) == (12, 518)
    assert release.selector_config.patch_size == release.extractor_config.patch_size == 14
    # A plain Dinov2WithRegistersConfig is accepted and converted, fields unchanged.
    plain = Dinov2WithRegistersConfig(hidden_size=32, num_attention_heads=2, patch_size=14, image_size=56)
    converted = LookWhereConfig(selector_config=plain, extractor_config=plain.to_dict() | {"image_size": 112})
    assert type(converted.selector_config) is LookWhereSelectorConfig
    assert converted.selector_config.image_size == 56 and converted.extractor_config.image_size == 112


def test_sub_config_from_pretrained_picks_its_part(tmp_path):
    make_tiny_config(selector_depth=1, extractor_depth=2).save_pretrained(tmp_path)
    selector = LookWhereSelectorConfig.from_pretrained(tmp_path)
    extractor = LookWhereExtractorConfig.from_pretrained(tmp_path)
    assert type(selector) is LookWhereSelectorConfig and type(extractor) is LookWhereExtractorConfig
    assert (selector.num_hidden_layers, selector.image_size) == (1, 56)
    assert (extractor.num_hidden_layers, extractor.image_size) == (2, 112)
    # A plain DINOv2-with-registers config of a LookWhere folder is the extractor (it used to be the selector).
    dinov2 = Dinov2WithRegistersConfig.from_pretrained(tmp_path)
    assert type(dinov2) is Dinov2WithRegistersConfig
    assert (dinov2.num_hidden_layers, dinov2.image_size, dinov2.hidden_size) == (2, 112, 32)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), LookWhereConfig)


def test_a_sub_config_saved_alone_loads_with_auto_config(tmp_path):
    make_tiny_config(selector_depth=1, extractor_depth=2).selector_config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is LookWhereSelectorConfig
    assert (loaded.num_hidden_layers, loaded.image_size) == (1, 56)


def test_config_round_trips(tmp_path):
    config = make_tiny_config(k_ratio=0.3, num_labels=4, pretrain_k_min=4, pretrain_k_max=24, pretrain_k_seed=7)
    config.update({"num_spread_neighbors": 3, "pretrain_map_loss_weight": 0.25, "low_res_antialias": True})
    assert (config.num_spread_neighbors, config.pretrain_map_loss_weight, config.low_res_antialias) == (3, 0.25, True)
    config.save_pretrained(tmp_path)  # (adds `auto_map`: the package registers its classes for trust_remote_code)
    reference = _without_volatile_keys(config.to_dict())
    assert reference["pretrain_k_seed"] == 7 and reference["selector_config"]["model_type"] == "lookwhere_selector"
    copies = {
        "from_dict": LookWhereConfig.from_dict(config.to_dict()),
        "to_json_string": LookWhereConfig.from_dict(json.loads(config.to_json_string())),
        "diff json": LookWhereConfig.from_dict(json.loads(config.to_json_string(use_diff=True))),
        "from_pretrained": LookWhereConfig.from_pretrained(tmp_path),
        "AutoConfig": AutoConfig.from_pretrained(tmp_path),
    }
    for name, copy in copies.items():
        assert type(copy) is LookWhereConfig, name
        assert type(copy.selector_config) is LookWhereSelectorConfig, name
        assert type(copy.extractor_config) is LookWhereExtractorConfig, name
        assert _without_volatile_keys(copy.to_dict()) == reference, name
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["pretrain_k_max"] == 24 and saved["extractor_config"]["model_type"] == "dinov2_with_registers"


def test_folders_saved_before_still_load(tmp_path):
    """A config.json written before the sub-config classes existed (the demo checkpoint's config as shipped until
    2026-11-23, kept in tests/fixtures): plain dict sub-configs that both say `dinov2_with_registers`, `pretrain_*`
    keys set by attribute. It loads as a config, as a whole model (same numbers as the model it describes) and, saved
    again, in the new layout. The shipped demo checkpoint loads too."""
    old = json.loads(OLD_LAYOUT_CONFIG.read_text())
    assert old["selector_config"]["model_type"] == old["extractor_config"]["model_type"] == "dinov2_with_registers"
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text(json.dumps(old))
    loaded = LookWhereConfig.from_pretrained(tmp_path / "old")
    assert type(loaded.selector_config) is LookWhereSelectorConfig
    assert (loaded.selector_config.num_hidden_layers, loaded.selector_config.image_size) == (2, 224)
    assert (loaded.extractor_config.num_hidden_layers, loaded.extractor_config.image_size) == (4, 448)
    assert (loaded.pretrain_k_min, loaded.pretrain_k_max) == (old["pretrain_k_min"], old["pretrain_k_max"])
    assert LookWhereSelectorConfig.from_pretrained(tmp_path / "old").num_hidden_layers == 2
    assert LookWhereExtractorConfig.from_pretrained(tmp_path / "old").num_hidden_layers == 4

    # A whole model folder of the old layout: weights saved by today's code, config.json as written back then.
    torch.manual_seed(0)
    model = LookWhereForImageClassification(loaded).eval()
    model.save_pretrained(tmp_path / "model")
    (tmp_path / "model" / "config.json").write_text(json.dumps(old))
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "model").eval()
    assert type(reloaded) is LookWhereForImageClassification and reloaded.config.num_labels == 10
    # Every tensor loads exactly, and the architecture read from the old file is the one the weights were saved from.
    saved_state, loaded_state = model.state_dict(), reloaded.state_dict()
    assert saved_state.keys() == loaded_state.keys()
    assert all(torch.equal(saved_state[name], loaded_state[name]) for name in saved_state)
    assert reloaded.config.selector_config.to_dict() == model.config.selector_config.to_dict()
    assert reloaded.config.extractor_config.to_dict() == model.config.extractor_config.to_dict()

    # Saved again, the selector carries its own model_type, so a plain DINOv2 config of the folder is the extractor.
    loaded.save_pretrained(tmp_path / "new")
    assert json.loads((tmp_path / "new" / "config.json").read_text())["selector_config"]["model_type"] == (
        "lookwhere_selector"
    )
    assert Dinov2WithRegistersConfig.from_pretrained(tmp_path / "new").num_hidden_layers == 4

    demo = AutoModelForImageClassification.from_pretrained(DEMO_MODEL)
    assert type(demo) is LookWhereForImageClassification and demo.config.num_labels == 10


# --------------------------------------------------------------------------------------------------- pretraining fields
def test_pretraining_settings_are_declared_fields_with_one_set_of_defaults():
    fields = LookWhereConfig.__dataclass_fields__
    assert {name: fields[name].default for name in PRETRAIN_DEFAULTS} == PRETRAIN_DEFAULTS
    assert {name: getattr(LookWhereConfig(), name) for name in PRETRAIN_DEFAULTS} == PRETRAIN_DEFAULTS

    # The model takes its defaults from the config (no second set of defaults) ...
    model = _pretraining_model()
    assert {name: getattr(model.config, name) for name in PRETRAIN_DEFAULTS} == PRETRAIN_DEFAULTS
    assert model.k_range(64) == (16, 64)
    config = make_tiny_config(pretrain_k_min=3, pretrain_k_max=9, pretrain_map_loss_weight=0.5)
    assert LookWhereForPreTraining(config).k_range(64) == (3, 9)
    # ... and keyword overrides are written to it, so they are saved with checkpoints.
    model = LookWhereForPreTraining(make_tiny_config(), k_max=40, dense_loss_weight=2.0)
    assert (model.config.pretrain_k_min, model.config.pretrain_k_max) == (16, 40)
    assert model.config.pretrain_dense_loss_weight == 2.0 and model.config.pretrain_map_loss_weight == 0.1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"pretrain_k_min": 0}, "pretrain_k_min"),
        ({"pretrain_k_min": 30, "pretrain_k_max": 20}, "pretrain_k_max"),
        ({"pretrain_cls_loss_weight": -1.0}, "pretrain_cls_loss_weight"),
        ({"pretrain_map_loss_weight": float("nan")}, "pretrain_map_loss_weight"),
        ({"pretrain_map_layer": 1.0}, "pretrain_map_layer"),
    ],
)
def test_invalid_pretraining_settings_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_tiny_config(**kwargs)
    overrides = {name.removeprefix("pretrain_"): value for name, value in kwargs.items()}
    with pytest.raises(ValueError, match=match):
        LookWhereForPreTraining(make_tiny_config(), **overrides)


def test_values_changed_after_construction_are_checked_when_saving(tmp_path):
    config = make_tiny_config()
    config.pretrain_k_min = 500  # above pretrain_k_max
    with pytest.raises(StrictDataclassClassValidationError, match="pretrain_k_min"):
        config.save_pretrained(tmp_path)


# ---------------------------------------------------------------------------------------------------- frozen parameters
def _build(cls, **config_kwargs):
    if cls is LookWhereForPreTraining:
        return _pretraining_model(**config_kwargs)
    return cls(make_tiny_config(num_labels=3, **config_kwargs))


def _frozen_names(model) -> set[str]:
    return {name for name, param in model.named_parameters() if not param.requires_grad}


@pytest.mark.parametrize(
    "cls", [LookWhereModel, LookWhereForImageClassification, LookWhereForSemanticSegmentation, LookWhereForPreTraining]
)
def test_extractor_prefix_tokens_are_frozen_and_round_trip(tmp_path, cls):
    model = _build(cls)
    prefix = "" if cls is LookWhereModel else "lookwhere."
    unused = {f"{prefix}extractor.embeddings.cls_token", f"{prefix}extractor.embeddings.register_tokens"}
    frozen = _frozen_names(model)
    assert unused <= frozen
    if cls in TASK_CLASSES:  # frozen selector (config default), as in the official fine-tuning
        assert frozen == unused | {n for n, _ in model.named_parameters() if n.startswith("lookwhere.selector.")}
    else:
        assert frozen == unused
    with torch.no_grad():
        for name in sorted(unused):
            model.get_parameter(name).normal_()
    model.save_pretrained(tmp_path)
    loaded = cls.from_pretrained(tmp_path)
    # transformers re-creates loaded parameters with requires_grad=True: the freezing must survive loading.
    assert _frozen_names(loaded) == frozen
    state = loaded.state_dict()
    for name in unused:
        assert torch.equal(state[name], model.state_dict()[name]), name


@pytest.mark.parametrize(
    "cls, freeze_selector",
    [
        (LookWhereForImageClassification, True),
        (LookWhereForImageClassification, False),
        (LookWhereForSemanticSegmentation, True),
        (LookWhereForSemanticSegmentation, False),
        (LookWhereForPreTraining, None),
    ],
)
def test_every_trainable_parameter_gets_a_gradient(cls, freeze_selector):
    """What DDP without `find_unused_parameters` requires: no trainable parameter is left without a gradient."""
    model = _build(cls, **({} if freeze_selector is None else {"freeze_selector": freeze_selector})).train()
    pixel_values = torch.randn(2, 3, 112, 112)
    labels = {
        LookWhereForImageClassification: torch.tensor([0, 2]),
        LookWhereForSemanticSegmentation: torch.randint(0, 3, (2, 112, 112)),
    }.get(cls)
    loss = model(pixel_values, k=12).loss if labels is None else model(pixel_values, labels=labels).loss
    loss.backward()
    no_gradient = [name for name, param in model.named_parameters() if param.requires_grad and param.grad is None]
    assert no_gradient == []
    if freeze_selector is False:  # the selector encoder is trained through the prefix tokens, its head is not
        selector = model.lookwhere.selector
        assert selector.encoder.layer[0].mlp.fc1.weight.grad.abs().sum() > 0
        assert not any(p.requires_grad for p in selector.head.parameters())


def test_frozen_parameters_are_not_in_the_trainer_optimizer(tmp_path):
    model = LookWhereForImageClassification(make_tiny_config(num_labels=3))
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    optimizer = Trainer(model=model, args=args).create_optimizer()
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert in_optimizer == trainable
    assert id(model.lookwhere.extractor.embeddings.cls_token) not in in_optimizer


DDP_SCRIPT = """
import os
import sys

import torch
from transformers import Trainer, TrainingArguments

sys.path.insert(0, {tests!r})
from conftest import make_tiny_config  # noqa: E402

from lookwhere_hf import LookWhereForImageClassification, LookWhereForSemanticSegmentation  # noqa: E402


class Data(torch.utils.data.Dataset):
    def __init__(self, segmentation):
        self.segmentation = segmentation

    def __len__(self):
        return 4  # one global batch: 2 processes x 2

    def __getitem__(self, i):
        gen = torch.Generator().manual_seed(i)
        labels = torch.randint(0, 3, (112, 112) if self.segmentation else (), generator=gen)
        return {{"pixel_values": torch.randn(3, 112, 112, generator=gen), "labels": labels}}


for cls in (LookWhereForImageClassification, LookWhereForSemanticSegmentation):
    torch.manual_seed(0)
    model = cls(make_tiny_config(num_labels=3))
    data = Data(cls is LookWhereForSemanticSegmentation)
    with torch.no_grad():  # the first step's loss, before any update, over the whole global batch
        batch = torch.utils.data.default_collate([data[i] for i in range(len(data))])
        expected = model(**batch).loss.item()
    cls_token = model.lookwhere.extractor.embeddings.cls_token.detach().clone()
    args = TrainingArguments(
        output_dir=sys.argv[1], max_steps=3, per_device_train_batch_size=2, activation_checkpointing=True,
        use_cpu=True, report_to="none", save_strategy="no", logging_steps=1, dataloader_num_workers=0, seed=0,
        disable_tqdm=True, learning_rate=1e-3,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    assert trainer.accelerator.num_processes == 2 and model.is_activation_checkpointing
    assert trainer.state.global_step == 3
    assert torch.equal(model.lookwhere.extractor.embeddings.cls_token, cls_token)
    if trainer.is_world_process_zero():
        print(f"RESULT {{cls.__name__}} {{trainer.state.log_history[0]['loss']!r}} {{expected!r}}", flush=True)

# Leave without interpreter finalization. Gloo completes an all-gather's work object on its own run-loop thread, and
# that object's destructor takes the GIL to release its tensors. When that happens while Python is finalizing, CPython
# ends the thread with pthread_exit, which unwinds through a noexcept C++ frame: std::terminate, SIGABRT, exit -6 in
# about 1 run in 10 (torch 2.14 CPU, Python 3.11; seen in gdb). Every result above is already printed and flushed.
torch.distributed.barrier()
torch.distributed.destroy_process_group()
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
"""


@pytest.mark.slow
def test_trainer_ddp_with_gradient_checkpointing_two_processes(tmp_path):
    """2 CPU processes (gloo) through the Trainer with activation (gradient) checkpointing, which makes the Trainer wrap
    the model in DDP with `find_unused_parameters=False`. Trainable parameters without gradients (the extractor's
    own CLS / register tokens) used to stop the second step with "Expected to have finished reduction in the prior
    iteration before starting a new one"."""
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(tests=str(ROOT / "tests"))))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    done = subprocess.run(
        command + [str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-5000:]
    results = re.findall(r"RESULT (\w+) ([\d.e+-]+) ([\d.e+-]+)", done.stdout)
    assert sorted(name for name, _, _ in results) == [
        "LookWhereForImageClassification",
        "LookWhereForSemanticSegmentation",
    ], output[-3000:]
    for name, first, expected in results:
        # The logged loss is the mean over the global batch, not scaled by the number of processes (which the Trainer
        # does to models that take `num_items_in_batch`, and which doubled it here). Two float32 means of at most
        # 4 x 112 x 112 per-pixel terms, summed in different orders: within sum_rtol of that many terms.
        assert float(first) == pytest.approx(float(expected), rel=sum_rtol(4 * 112 * 112)), name


# ----------------------------------------------------------------------------------------------------- hidden states
def test_hidden_states_and_attentions_are_the_same_in_the_three_classes():
    config = make_tiny_config(num_labels=3, selector_depth=1, extractor_depth=2)
    heads = [cls(config).eval() for cls in TASK_CLASSES]
    heads[1].load_state_dict(heads[0].state_dict(), strict=False)  # same body, the classifiers differ in shape
    base = heads[0].lookwhere
    for model in (base, *heads):
        model.set_attn_implementation("eager")
    pixel_values, k = torch.randn(2, 3, 112, 112), 10
    outputs = [model(pixel_values, k=k, output_hidden_states=True, output_attentions=True) for model in (base, *heads)]
    reference = outputs[0]

    ext, sel = config.extractor_config, config.selector_config
    extractor_tokens, selector_tokens = 5 + k, 5 + (56 // 14) ** 2
    assert len(reference.hidden_states) == ext.num_hidden_layers + 1
    assert len(reference.selector_hidden_states) == sel.num_hidden_layers + 1
    assert len(reference.attentions) == ext.num_hidden_layers
    assert len(reference.selector_attentions) == sel.num_hidden_layers
    assert all(h.shape == (2, extractor_tokens, 32) for h in reference.hidden_states)
    assert all(h.shape == (2, selector_tokens, 32) for h in reference.selector_hidden_states)
    assert all(a.shape == (2, 2, extractor_tokens, extractor_tokens) for a in reference.attentions)
    assert all(a.shape == (2, 2, selector_tokens, selector_tokens) for a in reference.selector_attentions)
    # The first entry is the encoder input (selector prefix + embedded patches), the last the last layer's output
    # before the final norm; the same tensors computed the same way, so equal bit for bit.
    embedded = base.extractor.embeddings.embed_selected(pixel_values, reference.selected_indices)
    assert torch.equal(reference.hidden_states[0], torch.cat((reference.selector_prefix_tokens, embedded), 1))
    assert torch.equal(base.extractor.layernorm(reference.hidden_states[-1]), reference.last_hidden_state)
    selector_normed = base.selector.layernorm(reference.selector_hidden_states[-1])
    assert torch.equal(selector_normed[:, :5], reference.selector_prefix_tokens)
    for out in outputs[1:]:
        for field in ("hidden_states", "attentions", "selector_hidden_states", "selector_attentions"):
            assert len(out[field]) == len(reference[field]), field
            for got, want in zip(out[field], reference[field]):
                assert torch.equal(got, want), field


@pytest.mark.parametrize("cls", [LookWhereModel, *TASK_CLASSES])
def test_output_flags_default_to_the_config_and_kwargs_override(cls):
    config = make_tiny_config(num_labels=3)
    config.output_hidden_states = True
    model = cls(config).eval()
    pixel_values = torch.randn(1, 3, 112, 112)
    out = model(pixel_values)
    assert len(out.hidden_states) == 3 and len(out.selector_hidden_states) == 2
    out = model(pixel_values, output_hidden_states=False)
    assert out.hidden_states is None and out.selector_hidden_states is None
    as_tuple = model(pixel_values, return_dict=False)  # the per-layer tuples are part of the plain tuple too
    assert isinstance(as_tuple, tuple)
    assert [len(item) for item in as_tuple if isinstance(item, tuple)] == [3, 2]


def test_kwargs_reach_the_loss():
    """`num_items_in_batch` (a `TransformersKwargs` key) is passed on to transformers' loss functions, not dropped."""
    pixel_values = torch.randn(2, 3, 112, 112)
    classifier = LookWhereForImageClassification(make_tiny_config(num_labels=3)).eval()
    labels = torch.tensor([0, 2])
    out = classifier(pixel_values, labels=labels, num_items_in_batch=torch.tensor(8))
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels, reduction="sum") / 8)

    segmenter = LookWhereForSemanticSegmentation(make_tiny_config(num_labels=3)).eval()
    labels = torch.randint(0, 3, (2, 28, 28))
    labels[:, :4] = 255
    out = segmenter(pixel_values, labels=labels, num_items_in_batch=torch.tensor(1000))
    upsampled = F.interpolate(out.logits, size=(28, 28), mode="bilinear", align_corners=False)
    expected = F.cross_entropy(upsampled, labels, ignore_index=255, reduction="sum") / 1000
    torch.testing.assert_close(out.loss, expected)
    # Without it: the mean over the labelled pixels, as before.
    mean = segmenter(pixel_values, labels=labels).loss
    torch.testing.assert_close(mean, F.cross_entropy(upsampled, labels, ignore_index=255))


# ----------------------------------------------------------------------------------------------------- torch.export
@pytest.mark.parametrize("cls", [LookWhereModel, *TASK_CLASSES])
def test_torch_export_matches_eager(cls):
    """Eval mode, fixed k: the exported program gives the eager outputs (float64 on both sides, so two operation orders
    agree to FLOAT64_TOLERANCE; the top-k margin makes the same selection certain)."""
    model = cls(make_tiny_config(num_labels=3)).eval().double()
    pixel_values = torch.randn(2, 3, 112, 112, dtype=torch.float64)
    k = 10
    kwargs = {"k": k, "output_dense_features": True} if cls is LookWhereModel else {"k": k}
    with torch.no_grad():
        eager = model(pixel_values, **kwargs)
        exported = torch.export.export(model, (pixel_values,), kwargs=kwargs)
        got = exported.module()(pixel_values, **kwargs)
    scale = 1 + eager.selector_map.abs().max().item()
    assert_top_k_margin(eager.selector_map, k, margin=2 * FLOAT64_TOLERANCE["atol"] * scale, ordered=True)
    assert type(got) is type(eager)
    assert torch.equal(got.selected_indices, eager.selected_indices)
    compared = [name for name, value in eager.items() if isinstance(value, torch.Tensor)]
    assert "logits" in compared or "dense_features" in compared
    for name in compared:
        torch.testing.assert_close(got[name], eager[name], **FLOAT64_TOLERANCE, msg=name)
