"""The families harness (`benchmarks/families/`): the stage commands, the dataset descriptions, the hit-rate chance
levels, the aggregation over seeds, the Sparse Digits wrappers, and a tiny Sparse Digits run through the one command
whose numbers must be consistent with each other."""

import importlib
import json
import math
import os
import sys

import numpy as np
import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAMILIES = os.path.join(REPO, "benchmarks", "families")
BENCH = os.path.join(REPO, "benchmarks", "sparse_digits")
FINETUNE = os.path.join(REPO, "examples", "pytorch", "image-classification", "run_image_classification.py")

pytest.importorskip("sklearn", reason="Sparse Digits uses scikit-learn's handwritten digits")


def _load(name, folder=FAMILIES):
    """Import one of the benchmark modules as the module it is when run (they import their siblings by name)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(folder)
        return importlib.import_module(name)


def _value(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def _parse(*argv):
    return _load("harness").parse_args(["--dataset", "sparse_digits", *argv])


def test_stage_commands_give_every_family_the_stated_budget(tmp_path):
    stages, harness = _load("stages"), _load("harness")
    args = _parse("--recipe_dir", str(tmp_path / "none"), "--output_dir", str(tmp_path / "out"))
    # without a summary.json the recipe is the Sparse Digits description's: 4 pretraining + 8 fine-tuning epochs
    assert args.multirung_epochs == 8 and args.lookupvit_epochs == 12 and args.lookupvit_lr == 3e-4
    assert args.glance_focus_epochs == [8.0, 2.0, 2.0]
    assert args.stages == [*stages.FAMILY_STAGES, "evaluate", "aggregate"]  # a reused recipe is not retrained
    paths = stages.seed_paths(args.output_dir, 2, args.recipe_dir)
    commands = stages.training_commands(args, paths, seed=2)
    assert list(commands) == list(stages.TRAIN_STAGES) == ["multirung", "random_rung", "lookupvit"]
    multirung, random_rung, lookupvit = commands["multirung"], commands["random_rung"], commands["lookupvit"]
    assert multirung[1] == FINETUNE and lookupvit[1] == FINETUNE
    assert _value(multirung, "--model_name_or_path") == paths["pretrained"] == str(tmp_path / "none/seed_2/pretrained")
    assert _value(multirung, "--k_ratios") == "0.025,0.05,0.1,0.25" and "--glance_head" in multirung
    assert "--freeze_selector" in multirung and "--no_augment" in multirung
    assert _value(multirung, "--num_train_epochs") == "8.0" and _value(multirung, "--seed") == "2"
    assert random_rung[1] == stages.ENTRY_POINT and os.path.isfile(random_rung[1])
    assert random_rung[2] == "train-random-rung" and _value(random_rung, "--epochs") == "8.0"
    assert _value(random_rung, "--model") == paths["pretrained"]
    assert _value(lookupvit, "--model_family") == "lookupvit"
    assert _value(lookupvit, "--init_from_dinov2") == paths["teacher"]
    assert _value(lookupvit, "--compressed_grids") == "2,4,8" and _value(lookupvit, "--num_train_epochs") == "12.0"
    assert harness.full_command(["--seeds", "0,1", "--stages", "evaluate", "--update_results"]) == (
        "python benchmarks/families/compare_families.py --seeds 0,1 --update_results"
    )
    for name, command in commands.items():
        assert _value(command, "--output_dir") == paths[name] == str(tmp_path / "out" / "seed_2" / name)
        assert _value(command, "--learning_rate") == "0.0003"


def test_recipe_stages_are_the_published_sparse_digits_commands(tmp_path):
    """The harness's data / teacher / pretraining / fine-tuning commands for Sparse Digits are the ones
    run_benchmark.py ran for the published numbers (its defaults are the description's)."""
    stages, descriptions = _load("stages"), _load("descriptions")
    rb = _load("run_benchmark", BENCH)
    paths = stages.seed_paths(str(tmp_path), 1)
    commands = stages.recipe_commands(descriptions.SPARSE_DIGITS, paths, seed=1, data_seed=0)
    assert commands == {k: v for k, v in rb.stage_commands(rb.parse_args([]), paths, 1).items() if k != "evaluate"}
    data, teacher = commands["data"], commands["teacher"]
    assert data[1] == os.path.join(BENCH, "make_dataset.py") and _value(data, "--align_to_grid") == "28"
    assert (_value(data, "--num_train"), _value(data, "--num_test"), _value(data, "--seed")) == ("2000", "500", "0")
    assert _value(teacher, "--hidden_size") == "64" and _value(teacher, "--attention_loss_weight") == "1.0"
    assert _value(teacher, "--num_train_epochs") == "10" and _value(teacher, "--seed") == "1"
    # the later --per_device_train_batch_size wins (argparse): the teacher trains with batch 16
    assert teacher[len(teacher) - 1 - teacher[::-1].index("--per_device_train_batch_size") + 1] == "16"
    assert _value(commands["pretrain"], "--k_max") == "64" and _value(commands["finetune"], "--k_ratio") == "0.1"


def test_varied_items_description_is_label_only_and_overridable(tmp_path, capsys):
    descriptions, harness = _load("descriptions"), _load("harness")
    vi = descriptions.VARIED_ITEMS
    assert vi.size_bins == ("small", "medium", "large") and vi.teacher_flags is descriptions.VARIED_ITEMS_TEACHER
    # teacher A of TEACHER_ATTEMPTS.md: no box-based loss
    assert {vi.teacher_flags[k] for k in ("zoom_curriculum", "token_loss_weight", "attention_loss_weight")} == {0.0}
    assert (vi.teacher_flags["hidden_size"], vi.teacher_epochs, vi.teacher_lr, vi.teacher_batch_size) == (
        96,
        8,
        1e-3,
        32,
    )
    args = harness.parse_args(
        ["--dataset", "varied_items", "--data_flags", "items=digits, num_train=30", "--teacher_flags",
         "hidden_size=32", "--teacher_epochs", "1.5", "--output_dir", str(tmp_path)]
    )  # fmt: skip
    d = args.description
    assert d.data_flags["items"] == "digits" and d.data_flags["num_train"] == 30
    assert d.data_flags["max_item_size"] == 224 and d.teacher_flags["num_hidden_layers"] == 4
    assert d.teacher_flags["hidden_size"] == 32 and d.teacher_epochs == 1.5
    assert descriptions.VARIED_ITEMS.teacher_flags["hidden_size"] == 96  # the description itself is unchanged
    teacher = _load("stages").recipe_commands(d, _load("stages").seed_paths(str(tmp_path), 0), 0, 0)["teacher"]
    assert _value(teacher, "--token_loss_weight") == "0.0" and _value(teacher, "--hidden_size") == "32"
    for argv, message in (
        (["--data_flags", "num_train"], "key=value pairs"),
        (["--canvas_size", "450"], "multiples of the patch size"),
        (["--k_ratio", "0"], "k_ratio must be in (0, 1]"),
        (["--data_flags", "seed=3"], "may not set ['seed']"),
    ):
        with pytest.raises(SystemExit):
            harness.parse_args(["--dataset", "varied_items", *argv])
        assert message in capsys.readouterr().err


def test_pretrain_flags_reach_the_pretraining_command(tmp_path, capsys):
    descriptions, harness, stages = _load("descriptions"), _load("harness"), _load("stages")
    # both benchmarks distil LookWhere's own target, the teacher's last-layer map
    assert descriptions.VARIED_ITEMS.pretrain_flags == descriptions.SPARSE_DIGITS.pretrain_flags == {}
    paths = stages.seed_paths(str(tmp_path), 0)
    assert "--map_layer" not in stages.recipe_commands(descriptions.VARIED_ITEMS, paths, 0, 0)["pretrain"]
    args = harness.parse_args(["--dataset", "varied_items", "--pretrain_flags", "map_layer=0"])
    assert args.description.pretrain_flags == {"map_layer": 0}
    assert args.description.recipe()["pretrain_flags"] == {"map_layer": 0}
    pretrain = stages.recipe_commands(args.description, paths, 0, 0)["pretrain"]
    assert _value(pretrain, "--map_layer") == "0" and _value(pretrain, "--k_max") == "64"
    with pytest.raises(SystemExit):
        harness.parse_args(["--dataset", "varied_items", "--pretrain_flags", "k_max=3"])
    assert "pretrain_flags may not set ['k_max']" in capsys.readouterr().err


def _saved_teacher(folder, image_size=448, patch_size=28):
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"image_size": image_size, "patch_size": patch_size}))
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "preprocessor_config.json").write_text("{}")
    return str(folder)


def test_teacher_model_is_copied_into_every_seed_instead_of_trained(tmp_path, capsys):
    harness = _load("harness")
    teacher = _saved_teacher(tmp_path / "teacher")
    out = tmp_path / "out"
    args = harness.parse_args(
        ["--dataset", "varied_items", "--teacher_model", teacher, "--output_dir", str(out), "--seeds", "0,2",
         "--stages", "teacher"]
    )  # fmt: skip
    for seed in args.seeds:
        harness.run_seed_training(args, seed, env={}, timings={})
    for seed in (0, 2):
        copied = out / f"seed_{seed}" / "teacher"
        assert (copied / "model.safetensors").read_bytes() == b"weights"
        assert json.loads((copied / "teacher_source.json").read_text()) == {"teacher_model": os.path.abspath(teacher)}
    summary = harness.write_summary(args, "cmd", {"seeds": {}}, start=0.0)
    assert json.loads(open(summary).read())["arguments"]["teacher_model"] == teacher
    report = _load("report")
    assert f"trained once (`--teacher_model {teacher}`" in report.shared_teacher_note(args)
    assert report.shared_teacher_note(_parse()) == ""
    assert "per seed a copy of the one trained teacher" in report.one_command_note(args)
    assert "per seed the teacher," in report.one_command_note(_parse())
    for folder, message in (
        (_saved_teacher(tmp_path / "small", image_size=224), "differ from the description's 448 / 28 px"),
        (str(tmp_path / "missing"), "not a saved teacher"),
    ):
        with pytest.raises(SystemExit):
            harness.parse_args(["--dataset", "varied_items", "--teacher_model", folder])
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        harness.parse_args(["--dataset", "varied_items", "--teacher_model", teacher, "--recipe_dir", str(out)])
    assert "pass one of them" in capsys.readouterr().err


def test_recipe_comes_from_the_reused_run(tmp_path, capsys):
    (tmp_path / "summary.json").write_text(json.dumps({"arguments": {"pretrain_epochs": 2, "finetune_epochs": 3}}))
    args = _parse("--recipe_dir", str(tmp_path))
    assert args.multirung_epochs == 3 and args.lookupvit_epochs == 5
    # Glance-and-Focus gets the same 5 epochs: 2 + 2 for its policy and last stages, the rest for stage 1
    assert args.glance_focus_epochs == [1.0, 2.0, 2.0]
    (tmp_path / "summary.json").write_text(json.dumps({"arguments": {"pretrain_epochs": 2, "finetune_epochs": 2}}))
    with pytest.raises(SystemExit):
        _parse("--recipe_dir", str(tmp_path))
    assert "has 4 epochs, too few" in capsys.readouterr().err
    args = _parse("--recipe_dir", str(tmp_path), "--glance_focus_epochs", "2,1,1")
    assert args.glance_focus_epochs == [2.0, 1.0, 1.0]
    args = _parse("--recipe_dir", str(tmp_path), "--finetune_epochs", "6")  # the command line wins
    assert args.multirung_epochs == 6 and args.glance_focus_epochs == [4.0, 2.0, 2.0]


def test_sparse_digits_wrapper_is_the_harness_with_a_reused_recipe():
    wrapper = _load("compare_families", BENCH)
    assert wrapper.harness_argv(["--sparse_digits_dir", "a", "--seeds", "0"]) == [
        "--dataset", "sparse_digits", "--recipe_dir", "a", "--output_dir", "outputs/families", "--seeds", "0"
    ]  # fmt: skip
    assert wrapper.harness_argv(["--output_dir=b"]) == [
        "--dataset", "sparse_digits", "--recipe_dir", "outputs/sparse_digits", "--output_dir=b"
    ]  # fmt: skip


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--budget_speedups", "4,1"], "must be > 1"),
        (["--budget_speedups", "4,x"], "comma-separated numbers"),
        (["--seeds", "0,0"], "lists a seed twice"),
        (["--stages", "evaluate,plot"], "unknown stages"),
        (["--compressed_grids", ""], "at least one value"),
        (["--glance_focus_backbone", "cnn"], "invalid choice"),
        (["--glance_focus_backbone", "resnet", "--glance_focus_resnet_depths", "1,1"], "as many sizes as depths"),
        (["--glance_focus_resnet_sizes", "16,0,8,8"], "one positive integer per ResNet stage"),
        (["--glance_focus_glance_size", "96"], "is for --glance_focus_backbone resnet"),
        (["--recipe_dir", "x", "--stages", "teacher,evaluate"], "would rewrite the reused run"),
        (["--k_ratios", "0.1,1.5"], "fractions in (0, 1]"),
        (["--glance_focus_steps", "1"], "at least one focus step"),
        (["--max_eval_samples", "0"], "--max_eval_samples must be >= 1"),
        (["--dataset", "imagenet"], "invalid choice"),
        (["--multirung_epochs", "0"], "--multirung_epochs must be positive"),
        (["--lookupvit_lr", "0"], "--lookupvit_lr must be positive"),
        (["--glance_focus_epochs", "2,0,1"], "positive for each of the three stages"),
        (["--compressed_grids", "2,17"], "cannot be finer than the 16x16 patch grid"),
        (["--glance_focus_patch_size", "100"], "multiple of the teacher's patch size 28"),
        (["--glance_focus_crop_pct", "1.2"], "--glance_focus_crop_pct must be in (0, 1]"),
        (["--glance_focus_ppo_epochs", "0"], "--glance_focus_ppo_epochs must be >= 1"),
        (["--glance_focus_backbone", "resnet", "--glance_focus_crop_pct", "0.875"], "keeps the whole canvas"),
    ],
)
def test_bad_arguments_are_rejected(argv, message, capsys):
    with pytest.raises(SystemExit):
        _parse(*argv)
    assert message in capsys.readouterr().err


def test_glance_focus_teacher_backbone_is_the_default(tmp_path):
    stages, evaluation = _load("stages"), _load("evaluation")
    args = _parse("--recipe_dir", str(tmp_path / "none"), "--output_dir", str(tmp_path / "out"))
    assert args.glance_focus_backbone == "teacher" and args.glance_focus_lr == 3e-4
    paths = stages.seed_paths(args.output_dir, 1, args.recipe_dir)
    stage1 = stages.glance_focus_commands(args, paths, seed=1)["gf_stage1"]
    assert _value(stage1, "--backbone_name_or_path") == paths["teacher"] == str(tmp_path / "none/seed_1/teacher")
    assert _value(stage1, "--image_size") == "448" and "--model_name_or_path" not in stage1
    assert paths["gf_stage1"] == str(tmp_path / "out" / "seed_1" / "gf_stage1")
    assert evaluation.glance_focus_json(args) == "glance_focus.json"


@pytest.mark.parametrize(
    "argv, crop_pct",
    [
        ([], "0.875"),  # Sparse Digits' published rows: GFNet's evaluation transform
        (["--dataset", "varied_items"], "1.0"),  # the whole canvas, as every other family sees it
        (["--glance_focus_crop_pct", "1"], "1.0"),
        (["--dataset", "varied_items", "--glance_focus_crop_pct", "0.875"], "0.875"),
    ],
)
def test_glance_focus_view_reaches_every_stage(tmp_path, argv, crop_pct):
    from lookwhere_hf.models.glance_focus import GlanceFocusConfig, GlanceFocusImageProcessor

    stages = _load("stages")
    args = _parse("--recipe_dir", str(tmp_path / "none"), "--output_dir", str(tmp_path / "out"), *argv)
    commands = stages.glance_focus_commands(args, stages.seed_paths(args.output_dir, 0, args.recipe_dir), seed=0)
    assert [_value(c, "--crop_pct") for c in commands.values()] == [crop_pct] * 3
    assert all("--ppo_epochs" not in c for c in commands.values())  # the official single update per rollout
    args.glance_focus_ppo_epochs = 4
    commands = stages.glance_focus_commands(args, stages.seed_paths(args.output_dir, 0, args.recipe_dir), seed=0)
    assert [c.count("--ppo_epochs") for c in commands.values()] == [0, 1, 0]
    assert _value(commands["gf_stage2"], "--ppo_epochs") == "4"
    # what the flag builds in run_glance_focus.py: 1.0 keeps the canvas's 20 px white corner, 0.875 (the central
    # 392 of 448 px) drops it
    processor = GlanceFocusImageProcessor.from_model_config(
        GlanceFocusConfig(image_size=448, patch_size=112), crop_pct=args.glance_focus_crop_pct
    )
    image = np.zeros((448, 448, 3), dtype=np.uint8)
    image[:20, :20] = 255
    pixels = processor(image, return_tensors="pt")["pixel_values"][0]
    assert pixels.shape == (3, 448, 448)
    white, black = ((np.array([1.0, 0.0]) - processor.image_mean[0]) / processor.image_std[0]).tolist()
    assert pixels[0, 2, 2].item() == pytest.approx(white if crop_pct == "1.0" else black, abs=1e-5)


def test_glance_focus_resnet_backbone_is_built_saved_and_given_to_both_encoders(tmp_path):
    from transformers import AutoModel, ResNetModel

    from lookwhere_hf.models.glance_focus import GlanceFocusForImageClassification, GlanceFocusImageProcessor

    stages, evaluation = _load("stages"), _load("evaluation")
    argv = [
        "--recipe_dir", str(tmp_path / "none"), "--output_dir", str(tmp_path / "out"),
        "--glance_focus_backbone", "resnet", "--glance_focus_resnet_sizes", "8,16", "--glance_focus_resnet_depths",
        "1,2", "--glance_focus_patch_size", "64", "--glance_focus_glance_size", "96", "--glance_focus_steps", "3",
        "--glance_focus_lr", "1e-3",
    ]  # fmt: skip
    args = _parse(*argv)
    paths = stages.seed_paths(args.output_dir, 1, args.recipe_dir, args.glance_focus_backbone)
    assert paths["gf_stage1"] == str(tmp_path / "out" / "seed_1" / "gf_resnet_stage1")
    assert evaluation.glance_focus_json(args) == "glance_focus_resnet.json"
    names = [str(i) for i in range(10)]
    stages.build_resnet_glance_focus(args, paths, seed=1, names=names)

    backbone = AutoModel.from_pretrained(paths["gf_resnet_backbone"])
    assert isinstance(backbone, ResNetModel)
    config = backbone.config
    assert (config.embedding_size, config.hidden_sizes, config.depths) == (8, [8, 16], [1, 2])
    assert config.layer_type == "basic"
    model = GlanceFocusForImageClassification.from_pretrained(paths["gf_resnet_init"])
    assert (model.config.num_labels, model.config.num_steps, model.config.patch_size) == (10, 3, 64)
    assert (model.config.image_size, model.config.glance_side) == (448, 96)
    weights = backbone.state_dict()
    for encoder in (model.glance_encoder, model.focus_encoder):  # both encoders hold exactly the saved ResNet
        assert isinstance(encoder.backbone, ResNetModel)
        state = encoder.backbone.state_dict()
        assert state.keys() == weights.keys()
        assert all(torch.equal(state[key], weights[key]) for key in weights)
    processor = GlanceFocusImageProcessor.from_pretrained(paths["gf_resnet_init"])
    assert not processor.do_center_crop and (processor.size.height, processor.size.width) == (448, 448)

    # random weights drawn from the seed: the same seed gives the same ResNet, another seed another
    again = stages.seed_paths(str(tmp_path / "again"), 1, args.recipe_dir, "resnet")
    stages.build_resnet_glance_focus(args, again, seed=1, names=names)
    other = stages.seed_paths(args.output_dir, 2, args.recipe_dir, "resnet")
    stages.build_resnet_glance_focus(args, other, seed=2, names=names)
    same = AutoModel.from_pretrained(again["gf_resnet_backbone"]).state_dict()
    different = AutoModel.from_pretrained(other["gf_resnet_backbone"]).state_dict()
    conv = "embedder.embedder.convolution.weight"
    assert torch.equal(same[conv], weights[conv]) and not torch.equal(different[conv], weights[conv])

    # run_glance_focus.py receives it: stage 1 starts from that model (its whole-canvas processor: no --image_size,
    # which would rebuild the centre-cropping one), stages 2 and 3 from the stage before
    commands = stages.glance_focus_commands(args, paths, seed=1)
    stage1, stage2, stage3 = commands["gf_stage1"], commands["gf_stage2"], commands["gf_stage3"]
    assert stage1[1] == stages.GLANCE_FOCUS_SCRIPT and _value(stage1, "--model_name_or_path") == paths["gf_resnet_init"]
    assert "--backbone_name_or_path" not in stage1 and all("--image_size" not in c for c in commands.values())
    assert args.glance_focus_crop_pct == 1.0 and all("--crop_pct" not in c for c in commands.values())
    assert _value(stage1, "--num_steps") == "3" and _value(stage1, "--patch_size") == "64"
    assert _value(stage2, "--model_name_or_path") == paths["gf_stage1"]
    assert _value(stage3, "--model_name_or_path") == paths["gf_stage2"]
    assert _value(stage1, "--learning_rate") == _value(stage3, "--learning_rate") == "0.001"
    assert [_value(c, "--num_train_epochs") for c in commands.values()] == ["8.0", "2.0", "2.0"]


def test_digit_boxes_follow_the_processors_resize_and_crop():
    """The crop hit rate compares crops in processed pixels with digit boxes in canvas pixels: a white square drawn
    at a box must land where `processed_boxes` puts it, for the official centre-cropping processor and without."""
    import numpy as np
    from PIL import Image

    from lookwhere_hf.models.glance_focus import GlanceFocusImageProcessor

    geometry = _load("geometry")
    canvas = np.zeros((448, 448, 3), dtype=np.uint8)
    canvas[224:252, 56:84] = 255  # box [x0, y0, x1, y1] = [56, 224, 84, 252]
    box = torch.tensor([[56.0, 224.0, 84.0, 252.0]], dtype=torch.float64)
    cropping = GlanceFocusImageProcessor(size={"shortest_edge": 512}, crop_size={"height": 448, "width": 448})
    whole = GlanceFocusImageProcessor(size={"height": 448, "width": 448}, do_center_crop=False)
    # 448 -> 512 (x 8/7), then 32 px off each side; whole canvas: unchanged
    expected = {id(cropping): [32.0, 224.0, 64.0, 256.0], id(whole): [56.0, 224.0, 84.0, 252.0]}
    for processor in (cropping, whole):
        mapped = geometry.processed_boxes(processor, box, 448)[0]
        assert mapped.tolist() == pytest.approx(expected[id(processor)], abs=1e-9)
        pixels = processor(Image.fromarray(canvas), return_tensors="pt")["pixel_values"][0, 0]
        bright = (pixels > 1.0).nonzero()  # normalized white ~2.2, black ~-2.1; bilinear edges lie in between
        low, high = bright.min(0).values, bright.max(0).values + 1
        # inside the mapped box, within the resize's one-pixel bilinear blur
        assert torch.allclose(torch.stack([low[1], low[0], high[1], high[0]]).double(), mapped, atol=1.0)


def test_random_crop_chance_is_exact():
    """The chance level of Glance-and-Focus's crops: every corner its uniform policy can give counted by brute force
    (the corner is `floor(a * (side - crop))`, `a` uniform in [0, 1): drawn here on a fine grid of `a`)."""
    from lookwhere_hf.models.glance_focus.modeling_glance_focus import crop_boxes_from_centers

    geometry = _load("geometry")
    side, crop = 40, 12
    grid = (torch.arange(100_000, dtype=torch.float64) / 100_000).to(torch.float32)
    drawn = crop_boxes_from_centers(torch.stack([grid, grid], dim=-1), side, side, crop)[:, 0]
    corners = range(side - crop)
    assert sorted(set(drawn.tolist())) == list(corners)  # the model's own crops take exactly these corners

    def overlaps(corner, low, high):
        return min(corner + crop, high) > max(corner, low)

    for box in ([0, 0, 3, 3], [17.5, 2.2, 21.0, 9.9], [30, 30, 40, 40], [5, 14, 35, 20]):
        hits = sum(overlaps(x, box[0], box[2]) and overlaps(y, box[1], box[3]) for x in corners for y in corners)
        single = hits / len(corners) ** 2
        assert geometry.random_crop_hit_probability(box, crop, side, 1) == pytest.approx(single, rel=1e-12)
        assert geometry.random_crop_hit_probability(box, crop, side, 3) == pytest.approx(
            1 - (1 - single) ** 3, rel=1e-12
        )
    assert geometry.random_crop_hit_probability([0, 0, side, side], crop, side, 1) == 1.0
    # the last corner the policy reaches is side - crop - 1: a box on the last pixel column is missed by every crop
    assert geometry.random_crop_hit_probability([side - 1, 0, side, side], crop, side, 1) == 0.0
    assert geometry.random_crop_hit_probability([0, 0, 1, 1], side, side, 2) == 1.0  # a crop as large as the image
    with pytest.raises(ValueError, match="must fit"):
        geometry.random_crop_hit_probability([0, 0, 1, 1], 50, side, 1)


def test_per_bin_means_and_exit_shares():
    evaluation = _load("evaluation")
    names = ("small", "medium", "large")
    bins = ["small", "large", "small", "large", "small"]
    correct = torch.tensor([True, False, False, True, True])
    by_bin = evaluation.per_bin(correct, bins, names)
    assert by_bin["small"] == pytest.approx(2 / 3, rel=1e-12) and by_bin["large"] == 0.5
    assert math.isnan(by_bin["medium"])  # no medium image: NaN, shown as "—"
    assert evaluation.per_bin(correct, None, names) is None
    exits = torch.tensor([2, 0, 1, 0, 2])
    assert evaluation.exit_shares(exits, 3) == [0.4, 0.2, 0.4]
    shares = evaluation._exit_shares_per_bin(exits, 3, bins, names)
    assert shares["large"] == [1.0, 0.0, 0.0] and shares["small"] == pytest.approx([0, 1 / 3, 2 / 3], rel=1e-12)
    assert all(math.isnan(v) for v in shares["medium"])


def test_merge_seeds_gives_mean_and_sample_std():
    cf = _load("report")
    runs = [
        {"seed": 0, "splits": {"test": 500}, "a": {"accuracy": 0.80, "shares": [0.5, 0.5]}},
        {"seed": 1, "splits": {"test": 500}, "a": {"accuracy": 0.84, "shares": [0.25, 0.75]}},
        {"seed": 2, "splits": {"test": 500}, "a": {"accuracy": 0.86, "shares": [0.0, 1.0]}},
    ]
    out = cf.merge_seeds(runs)
    assert out["seed"] == [0, 1, 2] and out["splits"] == {"test": 500}  # equal integers stay plain
    accuracy = out["a"]["accuracy"]
    assert accuracy["values"] == [0.80, 0.84, 0.86] and accuracy["mean"] == pytest.approx(2.5 / 3, rel=1e-12)
    # sample std (ddof 1): deviations -1/30, 1/150, 4/150 -> sum of squares 0.0018667 / 2
    assert accuracy["std"] == pytest.approx((0.0018666666666666666 / 2) ** 0.5, rel=1e-9)
    assert out["a"]["shares"][0]["mean"] == pytest.approx(0.25, rel=1e-12)
    assert out["a"]["shares"][1]["std"] == pytest.approx(0.25, rel=1e-12)
    with pytest.raises(ValueError, match="same settings"):
        cf.merge_seeds([{"budgeted": {"4x": 1.0}}, {"budgeted": {"3x": 1.0}}])


# ----------------------------------------------------------------------------------------------------- end to end
TINY_RECIPE = [
    "--canvas_size", "112", "--patch_size", "14", "--low_res_size", "56", "--selector_depth", "1",
    "--teacher_epochs", "1", "--pretrain_epochs", "1", "--finetune_epochs", "1", "--k_min", "2", "--k_max", "16",
    "--batch_size", "16", "--teacher_flags", "hidden_size=32,num_hidden_layers=2,num_attention_heads=2",
]  # fmt: skip
TINY_FAMILIES = [
    "--k_ratios", "0.05,0.1,0.25", "--budget_speedups", "6,4,3", "--compressed_grids", "2,4", "--num_threads", "1",
    "--latency_runs", "1", "--latency_images", "2", "--glance_focus_epochs", "1,1,1", "--glance_focus_patch_size",
    "56", "--glance_focus_steps", "3",
]  # fmt: skip


def harness_command(dataset: str, out, results_md, *argv) -> list[str]:
    """The harness's one command for `dataset` at a tiny size, seed 0, writing to `out` and `results_md`."""
    return [
        sys.executable, os.path.join(FAMILIES, "compare_families.py"), "--dataset", dataset, "--output_dir", str(out),
        "--seeds", "0", *argv, "--update_results", "--results_md", str(results_md),
    ]  # fmt: skip


def harness_results(out) -> tuple[dict, dict, dict]:
    """`(seed results, Glance-and-Focus results, aggregate)` of a finished run in `out`."""
    loaded = []
    for path in (out / "seed_0" / "eval" / "results.json", out / "seed_0" / "eval" / "glance_focus.json"):
        with open(path, encoding="utf-8") as f:
            loaded.append(json.load(f))
    with open(out / "results.json", encoding="utf-8") as f:
        loaded.append(json.load(f))
    return tuple(loaded)


def run_harness(request, background_runs) -> tuple:
    """The end-to-end harness run of the calling test, its module's `HARNESS_RUNS[test name]` = `(dataset, argv)`:
    `(out, results_md, seed results, Glance-and-Focus results, aggregate)`.

    The first such test starts the runs of every selected test that has one (`BackgroundRuns`), so the runs (one
    process at one thread each) overlap with each other and with the tests in between; each test then waits for its
    own. Each run has its own folders and the same command as when it runs alone."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for item in [request.node, *request.session.items]:
        spec = getattr(getattr(item, "module", None), "HARNESS_RUNS", {}).get(item.name)
        if spec is not None:
            dataset, argv = spec
            root = background_runs.root / item.name
            root.mkdir(exist_ok=True)
            command = harness_command(dataset, root / "families", root / "RESULTS.md", *argv)
            # its own datasets cache: two runs side by side, and nothing written to the user's home
            background_runs.start(item.name, command, env={**env, "HF_HOME": str(root / "hf_home")}, cwd=REPO)
    returncode, output = background_runs.wait(request.node.name)
    assert returncode == 0, output[-6000:]
    root = background_runs.root / request.node.name
    return (root / "families", root / "RESULTS.md", *harness_results(root / "families"))


def assert_consistent(out, seed: dict, gf: dict, agg: dict) -> None:
    """What every tiny harness run must satisfy (the TINY_FAMILIES settings): costs counted = analytic, ordered and
    cumulative; budgets met on validation and replayed exactly on test; Glance-and-Focus's steps and budgets; the
    aggregate of one seed is that seed."""
    # the training budget: one epoch each (the tiny recipe's 1 + 1 for LookupViT), every stage timed
    assert set(seed["training_cpu_s"]) == {"multirung", "random_rung", "lookupvit"}
    with open(out / "seed_0" / "lookupvit" / "config.json", encoding="utf-8") as f:
        assert json.load(f)["compressed_grids"] == [[2, 2], [4, 4]]

    # costs: analytic = counted for every model; more patches / a larger grid cost more; rungs are cumulative
    for key, counted in seed["counted_gflops"].items():
        if key.startswith("budgeted/"):
            assert counted == pytest.approx(seed["counted_gflops"]["budgeted_reported"], rel=1e-9)
    assert seed["counted_gflops"]["teacher"] == pytest.approx(seed["teacher"]["gflops"], rel=1e-9)
    for ratio, point in seed["fixed_k"].items():
        assert seed["counted_gflops"][f"fixed/{ratio}"] == pytest.approx(point["gflops"], rel=1e-9)
        assert 0.0 <= point["accuracy"] <= 1.0 and 0.0 <= point["hit_rate"] <= 1.0
        assert 0.0 <= point["teacher_map_hit_rate"] <= 1.0 and 0.0 < point["random_hit_rate"] < 1.0
    for grid, point in seed["lookupvit"].items():
        assert seed["counted_gflops"][f"lookupvit/{grid}"] == pytest.approx(point["gflops"], rel=1e-9)
    fixed = [seed["fixed_k"][r]["gflops"] for r in ("0.05", "0.1", "0.25")]
    assert fixed == sorted(fixed) and len(set(fixed)) == 3
    chance = [seed["fixed_k"][r]["random_hit_rate"] for r in ("0.05", "0.1", "0.25")]
    assert chance == sorted(chance) and len(set(chance)) == 3  # more random patches hit more often
    assert seed["lookupvit"]["2"]["gflops"] < seed["lookupvit"]["4"]["gflops"] < seed["teacher"]["gflops"]
    rungs = seed["multirung_rungs"]
    assert list(rungs) == ["glance", "0.05", "0.1", "0.25"]
    assert rungs["glance"]["gflops"] < rungs["0.05"]["gflops"] < rungs["0.25"]["gflops"] < seed["teacher"]["gflops"]

    # budgets: each calibration meets its target on validation; a larger budget is never less accurate there; on
    # test, the mean FLOPs are those of the exit shares, and the model's own budgeted forward agrees with the replayed
    # exit rule (up to an image whose confidence lies within rounding of a threshold)
    budgeted = seed["budgeted"]
    assert budgeted, "no budget fell between the glance's and the last rung's cost"
    costs = seed["budget_rung_gflops"]  # cumulative: exiting at a rung pays for the rungs before it
    assert costs == sorted(costs) and costs[0] == rungs["glance"]["gflops"] and costs[-1] > rungs["0.25"]["gflops"]
    one_image = (costs[-1] - costs[0]) / seed["splits"]["test"]
    targets = sorted(budgeted.values(), key=lambda b: b["target_gflops"])
    for point in targets:
        assert point["validation_gflops"] <= point["target_gflops"] * (1 + 1e-12)
        assert sum(point["exit_shares"]) == pytest.approx(1.0, rel=1e-12)
        expected = sum(share * cost for share, cost in zip(point["exit_shares"], costs, strict=True))
        assert point["gflops_of_simulated_exits"] == pytest.approx(expected, rel=1e-12)
        assert abs(point["gflops"] - point["gflops_of_simulated_exits"]) <= one_image * (1 + 1e-9)
    for point in seed["budgeted_no_glance"].values():  # the glance exit off: nobody leaves there
        assert point["exit_shares"][0] == 0.0 and point["thresholds"][0] > 1.0
        assert point["validation_gflops"] <= point["target_gflops"] * (1 + 1e-12)
        assert costs[1] * (1 - 1e-12) <= point["gflops"] <= costs[-1] * (1 + 1e-12)
    accuracies = [point["validation_accuracy"] for point in targets]
    assert accuracies == sorted(accuracies)
    for name, training in seed["rung_training"].items():
        assert len(training["validation_rung_accuracy"]) == 4, name

    # Glance-and-Focus: its own file; cumulative step costs, budgets met on validation, hit rates against chance
    assert set(gf["training_cpu_s"]) == {"gf_stage1", "gf_stage2", "gf_stage3"}
    steps = gf["rung_gflops"]
    assert len(steps) == 3 and steps == sorted(steps) and len(set(steps)) == 3
    assert [gf["steps"][str(t)]["gflops"] for t in (1, 2, 3)] == steps
    assert 0.0 <= gf["crop_contains_rate"] <= gf["crop_hit_rate"] <= 1.0 and 0.0 < gf["random_crop_hit_rate"] <= 1.0
    for point in gf["budgeted"].values():
        assert point["validation_gflops"] <= point["target_gflops"] * (1 + 1e-12)
        assert steps[0] * (1 - 1e-12) <= point["gflops"] <= steps[-1] * (1 + 1e-12)
        assert sum(point["exit_shares"]) == pytest.approx(1.0, rel=1e-12)
    assert agg["glance_focus"]["seeds"] == [0]

    # the aggregate of one seed is that seed
    assert agg["teacher"]["accuracy"]["values"] == [seed["teacher"]["accuracy"]]
    assert agg["teacher"]["accuracy"]["std"] == 0.0
    assert (out / "families.png").stat().st_size > 10_000


HARNESS_RUNS = {
    "test_end_to_end_numbers_are_consistent": (
        "sparse_digits",
        [*TINY_RECIPE, "--data_flags", "num_train=48,num_validation=24,num_test=24", *TINY_FAMILIES],
    )
}


@pytest.mark.slow
def test_end_to_end_numbers_are_consistent(request, background_runs):
    """Sparse Digits through the harness's one command (data, teacher, LookWhere, the families, the report)."""
    out, results_md, seed, gf, agg = run_harness(request, background_runs)
    assert_consistent(out, seed, gf, agg)
    assert "size_bin" not in json.dumps(seed) and "accuracy_per_bin" not in seed["teacher"]  # no item sizes here
    with open(out / "summary.json", encoding="utf-8") as f:  # the recipe stages ran with the overrides, and were timed
        summary = json.load(f)
    assert summary["arguments"]["canvas_size"] == 112 and summary["arguments"]["teacher_flags"]["hidden_size"] == 32
    assert set(summary["timings"]["seeds"]["0"]) == {"teacher", "pretrain", "finetune"}
    text = results_md.read_text()
    assert text.count("## Sparse Digits: the families side by side") == 1
    rows = ("| teacher (full resolution) |", "| LookWhere, fixed k |", "| LookWhere, budgeted |", "| LookupViT |")
    for row in (*rows, "| Glance-and-Focus, fixed steps |", "| k_ratio 0.1: teacher's map |", "Issue 12's goal"):
        assert row in text
    assert "python benchmarks/families/compare_families.py --dataset sparse_digits" in text
    assert "One command" in text


def test_probe_oracle_crop_is_centred_on_the_digit_and_stays_inside():
    probe = _load("probe_glance_focus_encoder", BENCH)
    canvas = torch.arange(448 * 448, dtype=torch.float64).reshape(1, 448, 448)
    crop = probe.oracle_crop(canvas, [200, 100, 226, 126], 112)  # centre (213, 113) -> corner (157, 57)
    assert crop.shape == (1, 112, 112) and crop[0, 0, 0] == 57 * 448 + 157
    corner = probe.oracle_crop(canvas, [430, 2, 448, 20], 112)  # would leave the canvas: shifted inside
    assert corner[0, 0, 0] == 0 * 448 + 336 and corner[0, -1, -1] == 111 * 448 + 447
    with pytest.raises(ValueError, match="larger than"):
        probe.oracle_crop(canvas, [0, 0, 10, 10], 500)
    with pytest.raises(SystemExit):
        probe.parse_args(["--view", "glance", "--gf_model", "x"])


def test_max_samples_takes_a_seeded_sample_of_every_class_not_the_first_folders(tmp_path):
    imagefolder = _load("imagefolder")
    rows = [
        {"split": "test", "file_name": f"test/{label}_class/test_{i:05d}.png", "label": label, "box": [0, 0, 1, 1]}
        for label in range(4)
        for i in range(25)
    ]
    (tmp_path / "annotations.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    subset = imagefolder.ImageFolderSplit(str(tmp_path), "test", processor=None, max_samples=20)
    again = imagefolder.ImageFolderSplit(str(tmp_path), "test", processor=None, max_samples=20)
    names = [row["file_name"] for row in subset.rows]
    assert len(names) == 20 and names == [row["file_name"] for row in again.rows] and names == sorted(names)
    assert {row["label"] for row in subset.rows} == {0, 1, 2, 3}  # the first 20 file names are all class 0
    assert len(imagefolder.ImageFolderSplit(str(tmp_path), "test", processor=None, max_samples=500)) == 100
