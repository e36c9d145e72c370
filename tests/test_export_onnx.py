"""ONNX export (`torch.onnx.export(..., dynamo=True)`, selection inside the graph) run by ONNX Runtime's CPU session,
`.pt2` programs, `lookwhere_hf.export.export_lookwhere` and its self-check, and `lookwhere-hf export`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import EPS32, FLOAT64_TOLERANCE, assert_top_k_margin, make_tiny_config

from lookwhere_hf import (
    LookWhereForImageClassification,
    LookWhereForSemanticSegmentation,
    LookWhereImageProcessor,
    LookWhereModel,
    cli,
)
from lookwhere_hf import export as lw_export
from lookwhere_hf.export import ExportError, export_lookwhere, onnx_session, run_exported

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

REPO = Path(__file__).resolve().parents[1]
# The bar: ONNX Runtime within 1e-4 of eager, relative to the output's scale max(1, max |eager|). Both sides
# compute in float32 with other kernels and summation orders; for these tiny models (reductions of <= 588 terms, 2
# layers) the rounding differences are ~1e-6 of the scale, so 1e-4 holds with a wide margin on any CPU, while a wrong
# op (a dropped term, a different interpolation, another selection) is far above it.
PARITY = 1e-4
SIZE, K = 140, 12  # a 10 x 10 grid: the position embeddings and the selector map are resized inside the graph


def tiny(cls):
    torch.manual_seed(0)
    return cls(make_tiny_config(num_labels=3)).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One ONNX export per class (the bare model with dense features), made once for the module."""
    root = tmp_path_factory.mktemp("onnx")
    made = {}
    for cls in (LookWhereModel, LookWhereForImageClassification, LookWhereForSemanticSegmentation):
        model = tiny(cls)
        extra = {"dense_features": True} if cls is LookWhereModel else {}
        result = export_lookwhere(
            model, root / f"{cls.__name__}.onnx", image_size=SIZE, k=K, log=lambda *a: None, **extra
        )
        made[cls] = (model, result)
    return made


def eager_outputs(model, pixel_values, names):
    kwargs = {"output_dense_features": True} if "dense_features" in names else {}
    with torch.no_grad():
        out = model(pixel_values, k=K, **kwargs)
    return {name: out[name] for name in names}


def assert_parity(got: dict, expected: dict) -> None:
    """Every output within PARITY x its scale, and the same selection. Two maps that differ by at most `delta` select
    the same patches in the same order when every gap among the top k + 1 scores exceeds 2 delta, so the selection is
    compared only where that holds (the margin check fails on a near-tie instead of passing or failing by chance)."""
    delta = (got["selector_map"] - expected["selector_map"]).abs().max().item()
    assert delta <= PARITY * max(1.0, expected["selector_map"].abs().max().item())
    assert_top_k_margin(expected["selector_map"], K, margin=2 * delta, ordered=True)
    assert torch.equal(got["selected_indices"], expected["selected_indices"])
    for name, value in expected.items():
        scale = max(1.0, value.abs().max().item())
        assert got[name].shape == value.shape, name
        torch.testing.assert_close(got[name].to(value.dtype), value, rtol=0, atol=PARITY * scale, msg=name)


# ----------------------------------------------------------------------------------------------------- ONNX Runtime
@pytest.mark.parametrize("cls", [LookWhereModel, LookWhereForImageClassification, LookWhereForSemanticSegmentation])
def test_onnx_runtime_matches_eager(exported, cls, photos):
    """ONNX Runtime's CPU session gives the eager outputs (logits, dense features, map) and the same selected patches,
    on a random input and on a real photo; graphs without dense outputs take any batch size."""
    model, result = exported[cls]
    session = onnx_session(result.path)
    assert [i.name for i in session.get_inputs()] == ["pixel_values"]
    assert [o.name for o in session.get_outputs()] == result.output_names
    processor = LookWhereImageProcessor.from_model_config(model.config)
    photo = processor(photos["chelsea"], size={"height": SIZE, "width": SIZE}, return_tensors="pt")["pixel_values"]
    batch = 3 if result.batch_size is None else result.batch_size
    torch.manual_seed(2)  # seed 1 draws a map with a near-tie (gap 2e-8) among the top 13 of its first image
    for pixel_values in (torch.randn(batch, 3, SIZE, SIZE), photo):
        assert_parity(
            run_exported(session, pixel_values, result.output_names),
            eager_outputs(model, pixel_values, result.output_names),
        )
    assert (result.batch_size is None) == (cls is LookWhereForImageClassification)


def test_selection_is_inside_the_onnx_graph(exported):
    """One input (`pixel_values`), a TopK node choosing the patches, and a Gather of the chosen patches' pixels: the
    graph selects, it is not handed indices."""
    _, result = exported[LookWhereForImageClassification]
    graph = onnx.load(result.path).graph
    assert [i.name for i in graph.input] == ["pixel_values"]
    ops = {node.op_type for node in graph.node}
    assert "TopK" in ops and "GatherND" in ops
    # The dense spreading's bag sums are a Gather + ReduceSum, not an ONNX Loop over the grid positions.
    dense_ops = {node.op_type for node in onnx.load(exported[LookWhereModel][1].path).graph.node}
    assert "Loop" not in dense_ops and "ReduceSum" in dense_ops


def test_onnx_dense_features_keep_the_selected_tokens(exported):
    """A selected position keeps its own token (weight 1 / (0 + 1e-8) against <= 1 for the others). onnxscript's
    default optimizer deletes the `+ 1e-8` (it matches `x + c` with |c| <= 1e-8 as `x + 0`) and makes these positions
    NaN; the export skips that optimizer."""
    model, result = exported[LookWhereModel]
    pixel_values = torch.randn(1, 3, SIZE, SIZE)
    got = run_exported(onnx_session(result.path), pixel_values, result.output_names)
    dense = got["dense_features"].flatten(2).transpose(1, 2)  # (1, G*G, D)
    own = dense[0, got["selected_indices"][0]]
    tokens = got["last_hidden_state"][0, model.config.num_prefix_tokens :]
    assert torch.isfinite(got["dense_features"]).all()
    # The K - 1 other neighbours are >= 1 grid unit away, weight <= 1 each against 1e8 for the token itself, so they
    # move it by <= 2 (K - 1) 1e-8 of the largest token; float32 weights and the 5-term sum add <= 8 EPS32 of it.
    scale = tokens.abs().max().item()
    bound = (2 * model.config.num_spread_neighbors * 1e-8 + 8 * EPS32) * scale
    torch.testing.assert_close(own, tokens, rtol=0, atol=bound)


def test_onnx_cls_only_graph_gives_the_full_layers_cls_token(tmp_path):
    """`cls_only=True` exports the bare model whose extractor's last layer computes the CLS token only: ONNX Runtime
    gives `last_hidden_state (B, 1, D)` equal to the CLS token of the full-layer eager model, and the graph has fewer
    matrix products (the last layer's query, output projection and MLP run on one row)."""
    model = tiny(LookWhereModel)
    result = export_lookwhere(model, tmp_path / "cls.onnx", image_size=SIZE, k=K, cls_only=True, log=None)
    assert result.cls_only and all(check.passed for check in result.checks)
    assert json.loads(Path(result.path + ".json").read_text())["cls_only"] is True
    torch.manual_seed(2)
    pixel_values = torch.randn(2, 3, SIZE, SIZE)
    got = run_exported(onnx_session(result.path), pixel_values, result.output_names)
    expected = eager_outputs(model, pixel_values, result.output_names)  # the full last layer
    assert got["last_hidden_state"].shape == (2, 1, model.config.hidden_size)
    expected["last_hidden_state"] = expected["last_hidden_state"][:, :1]
    assert_parity(got, expected)
    # The last layer's query, attention row, output projection and MLP are matrix products with one row (per
    # image); the full-layer graph has none (every token row is computed).
    inferred = onnx.shape_inference.infer_shapes(onnx.load(result.path))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in inferred.graph.value_info}
    rows = [shapes[n.input[0]][-2] for n in inferred.graph.node if n.op_type == "MatMul" and n.input[0] in shapes]
    assert rows.count(1) >= 4, rows


# ----------------------------------------------------------------------------------------------------- torch.export
@pytest.mark.parametrize("cls", [LookWhereForImageClassification, LookWhereForSemanticSegmentation])
def test_pt2_program_matches_eager(tmp_path, cls):
    """`--format torch`: the saved ExportedProgram reloads with `torch.export.load` and gives the eager outputs (float64
    on both sides: two operation orders agree to FLOAT64_TOLERANCE)."""
    model = tiny(cls).double()
    result = export_lookwhere(model, tmp_path / "m.pt2", format="torch", image_size=112, k=K, check=False, log=None)
    program = torch.export.load(result.path)
    pixel_values = torch.randn(2 if result.batch_size is None else 1, 3, 112, 112, dtype=torch.float64)
    expected = eager_outputs(model, pixel_values, result.output_names)
    got = run_exported(program, pixel_values, result.output_names)
    scale = 1 + expected["selector_map"].abs().max().item()
    assert_top_k_margin(expected["selector_map"], K, margin=2 * FLOAT64_TOLERANCE["atol"] * scale, ordered=True)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, **FLOAT64_TOLERANCE, msg=name)


# ----------------------------------------------------------------------------------------------------- self-check
def test_self_check_report(exported):
    """The export's own check ran on the random input and the real image, every output compared and within 1e-4;
    the report is written next to the file."""
    _, result = exported[LookWhereForSemanticSegmentation]
    inputs = {check.input for check in result.checks}
    assert len(inputs) == 2 and any(name.startswith("image ") for name in inputs)
    assert {check.output for check in result.checks} == set(result.output_names)
    for check in result.checks:
        assert check.passed and check.max_abs_diff <= PARITY * check.scale, check
    saved = json.loads(Path(f"{result.path}.json").read_text())
    assert saved["k"] == K and saved["image_size"] == SIZE and saved["checks"][0]["max_abs_diff"] >= 0


def test_self_check_fails_loudly_and_removes_the_file(tmp_path, monkeypatch):
    """An exported model that drifts beyond the tolerance (here: logits off by 1e-3 of their scale) is an error, and
    the file is not left behind."""
    real = lw_export.run_exported

    def drifting(exported, pixel_values, names):
        outputs = real(exported, pixel_values, names)
        outputs["logits"] = outputs["logits"] + 1e-3 * max(1.0, outputs["logits"].abs().max().item())
        return outputs

    monkeypatch.setattr(lw_export, "run_exported", drifting)
    path = tmp_path / "m.pt2"
    with pytest.raises(ExportError, match="does not reproduce the eager model"):
        export_lookwhere(tiny(LookWhereForImageClassification), path, format="torch", k=K, log=None)
    assert not path.exists()

    def reselecting(exported, pixel_values, names):
        """Another selection while the maps agree: not a near-tie, a wrong graph."""
        outputs = real(exported, pixel_values, names)
        outputs["selected_indices"] = outputs["selected_indices"].flip(1)
        return outputs

    monkeypatch.setattr(lw_export, "run_exported", reselecting)
    with pytest.raises(ExportError, match="selects other patches than the eager model"):
        export_lookwhere(tiny(LookWhereForImageClassification), path, format="torch", k=K, log=None)
    assert not path.exists()


def test_bad_export_arguments(tmp_path):
    model = tiny(LookWhereForImageClassification)
    cases = [
        ({"output_path": tmp_path / "m.onnx", "format": "tflite"}, "`format` must be one of"),
        ({"output_path": tmp_path / "m.pt2"}, "is written to a .onnx file"),
        ({"output_path": tmp_path, "format": "torch"}, "is a directory"),
        ({"output_path": tmp_path / "m.onnx", "image_size": 100}, "multiple of the patch size 14"),
        ({"output_path": tmp_path / "m.onnx", "k": 65}, "between 1 and the number of high-res patches"),
        ({"output_path": tmp_path / "m.onnx", "batch_size": 0}, "`batch_size` must be a positive int"),
        ({"output_path": tmp_path / "m.onnx", "dense_features": True}, "`dense_features` is for LookWhereModel"),
        ({"output_path": tmp_path / "m.onnx", "tolerance": 2.0}, "`tolerance` must be a number in"),
        ({"output_path": tmp_path / "m.onnx", "cls_only": True}, "`cls_only` is for LookWhereModel"),
        ({"output_path": tmp_path / "m.onnx", "cls_only": 1}, "`cls_only` must be True or False"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ExportError, match=message):
            export_lookwhere(model, log=None, **kwargs)
    with pytest.raises(ExportError, match="`dense_features` needs every token"):
        export_lookwhere(tiny(LookWhereModel), tmp_path / "m.onnx", cls_only=True, dense_features=True, log=None)
    with pytest.raises(ExportError, match="Could not read a model config"):
        export_lookwhere(tmp_path / "missing", tmp_path / "m.onnx", log=None)
    (tmp_path / "not_an_image.png").write_text("hello")
    with pytest.raises(ExportError, match="Cannot read the check image"):
        export_lookwhere(model, tmp_path / "m.pt2", format="torch", check_image=tmp_path / "not_an_image.png", log=None)


# ----------------------------------------------------------------------------------------------------- CLI
def test_cli_export_onnx_of_the_shipped_checkpoint(tmp_path, capsys):
    """`lookwhere-hf export --format onnx MODEL_DIR OUT` on the trained demo checkpoint: exit 0, the file and its
    report, every check within 1e-4; and the same numbers from a fresh ONNX Runtime session on a shipped image."""
    model_dir = cli.default_demo_model_path()
    if model_dir is None:
        pytest.skip("no demo checkpoint in this installation")
    out = tmp_path / "demo.onnx"
    assert cli.main(["export", "--format", "onnx", model_dir, str(out), "--k", "30"]) == 0
    assert "Parity check passed" in capsys.readouterr().out
    report = json.loads(Path(f"{out}.json").read_text())
    assert report["k"] == 30 and report["model_class"] == "LookWhereForImageClassification"
    assert all(check["passed"] for check in report["checks"])

    model = LookWhereForImageClassification.from_pretrained(model_dir).eval()
    processor = LookWhereImageProcessor.from_pretrained(model_dir)
    from PIL import Image

    images = [Image.open(path).convert("RGB") for path in cli.demo_image_paths()[:3]]
    pixel_values = processor(images, return_tensors="pt")["pixel_values"]  # batch 3 through the dynamic batch axis
    got = run_exported(onnx_session(out), pixel_values, report["output_names"])
    with torch.no_grad():
        expected = model(pixel_values, k=30)
    assert torch.equal(got["selected_indices"], expected.selected_indices)
    torch.testing.assert_close(got["logits"], expected.logits, rtol=0, atol=PARITY * expected.logits.abs().max())


def test_cli_export_errors(tmp_path, capsys):
    model_dir = cli.default_demo_model_path()
    if model_dir is None:
        pytest.skip("no demo checkpoint in this installation")
    assert cli.main(["export", model_dir, str(tmp_path / "m.onnx"), "--image-size", "100"]) == 2
    assert "multiple of the patch size" in capsys.readouterr().err
    assert cli.main(["export", str(tmp_path / "nowhere"), str(tmp_path / "m.onnx")]) == 2
    assert "model folder not found" in capsys.readouterr().err
    assert cli.main(["export", "--format", "torch", model_dir, str(tmp_path / "m.onnx")]) == 2
    assert "written to a .pt2 file" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_export_subprocess(tmp_path):
    """The console script end to end, `--format torch` (a .pt2 program)."""
    model_dir = cli.default_demo_model_path()
    if model_dir is None:
        pytest.skip("no demo checkpoint in this installation")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "demo.pt2"
    run = subprocess.run(
        [sys.executable, "-m", "lookwhere_hf.cli", "export", "--format", "torch", model_dir, str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stderr
    assert out.is_file() and "Parity check passed" in run.stdout
    assert torch.export.load(str(out)) is not None


# ----------------------------------------------------------------------------------------------------- LookupViT
# Tiny LookupViT: hidden 32, 2 heads, 2 blocks, 112 px / patch 14 = an 8 x 8 lookup grid, config compressed grid 4x4.
# The same float32 bound as LookWhere (PARITY): both sides compute in float32 with other kernels and summation orders,
# reductions of <= 588 terms (the patch embedding's 3 x 14 x 14) over 2 blocks, so rounding differences are ~1e-6 of
# the scale; a wrong op (no antialias in the compressed resize, another grid, a dropped residual) is > 1e-3 of it.
LOOKUPVIT_GRID = (3, 2)  # not the config's 4x4, and not square: the exported graph must use the asked grid


def tiny_lookupvit(cls, tmp_path):
    from test_lookupvit import tiny_config

    from lookwhere_hf.models.lookupvit.modeling_lookupvit import lookupvit_image_processor

    config = tiny_config(num_labels=3)
    torch.manual_seed(0)
    model = cls(config).eval()
    model.save_pretrained(tmp_path)
    lookupvit_image_processor(config).save_pretrained(tmp_path)
    return model


@pytest.fixture(scope="module")
def lookupvit_exports(tmp_path_factory):
    """Each LookupViT task model saved with save_pretrained and exported by `lookwhere-hf export --format onnx` at the
    compressed grid 3x2; the segmentation model at 140 px (a 10 x 10 lookup grid: both position embeddings are resized
    inside the graph), the classifier at its config's 112 px."""
    from lookwhere_hf import LookupViTForImageClassification, LookupViTForSemanticSegmentation

    made = {}
    for cls in (LookupViTForImageClassification, LookupViTForSemanticSegmentation):
        folder = tmp_path_factory.mktemp(cls.__name__)
        model = tiny_lookupvit(cls, folder / "model")
        out = folder / "model.onnx"
        grid = f"{LOOKUPVIT_GRID[0]}x{LOOKUPVIT_GRID[1]}"
        size = "140" if cls is LookupViTForSemanticSegmentation else "112"
        argv = ["export", str(folder / "model"), str(out), "--compressed-grid", grid, "--image-size", size]
        assert cli.main(argv) == 0
        made[cls] = (model, out, json.loads(Path(f"{out}.json").read_text()))
    return made


@pytest.mark.slow
@pytest.mark.parametrize("name", ["LookupViTForImageClassification", "LookupViTForSemanticSegmentation"])
def test_lookupvit_onnx_runtime_matches_eager(lookupvit_exports, name, photos):
    """`lookwhere-hf export --format onnx` on a saved LookupViT: the report (3x2 grid, dynamic batch, every check of
    the random input and the real image passed), and a fresh ONNX Runtime session reproduces the eager logits at that
    grid within PARITY on a batch of 3 random images and a photo; the config's 4x4 grid gives other logits (by far
    more than PARITY), so the graph really runs the asked grid."""
    import lookwhere_hf

    cls = getattr(lookwhere_hf, name)
    model, out, report = lookupvit_exports[cls]
    assert report["model_class"] == name and report["compressed_grid"] == list(LOOKUPVIT_GRID)
    assert report["k"] is None and report["batch_size"] is None and report["output_names"] == ["logits"]
    assert {c["input"] for c in report["checks"]} >= {"random (seed 0)"} and len(report["checks"]) == 2
    assert all(c["passed"] and c["max_abs_diff"] <= PARITY * c["scale"] for c in report["checks"])

    session = onnx_session(out)
    processor = lookwhere_hf.image_processor_for(model.config)
    size = report["image_size"]
    assert size == (140 if "Segmentation" in name else 112)
    photo = processor(photos["chelsea"], size={"height": size, "width": size}, return_tensors="pt")["pixel_values"]
    torch.manual_seed(3)
    for pixel_values in (torch.randn(3, 3, size, size), photo):
        got = run_exported(session, pixel_values, ["logits"])["logits"]
        with torch.no_grad():
            expected = model(pixel_values, compressed_grid=LOOKUPVIT_GRID).logits
            other_grid = model(pixel_values).logits  # config.compressed_grid 4x4
        scale = max(1.0, expected.abs().max().item())
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=0, atol=PARITY * scale)
        assert (other_grid - expected).abs().max().item() > 10 * PARITY * scale


def test_lookupvit_pt2_program_matches_eager(tmp_path):
    """`--format torch` for the bare LookupViTModel: its three outputs from the reloaded program equal eager in float64
    (two operation orders agree to FLOAT64_TOLERANCE), at the config's grid and a dynamic batch."""
    from lookwhere_hf import LookupViTModel

    model = tiny_lookupvit(LookupViTModel, tmp_path / "model").double()
    result = export_lookwhere(model, tmp_path / "m.pt2", format="torch", check=False, log=None)
    assert result.output_names == ["last_hidden_state", "pooler_output", "lookup_last_hidden_state"]
    assert result.compressed_grid == [4, 4] and result.batch_size is None and result.image_size == 112
    pixel_values = torch.randn(3, 3, 112, 112, dtype=torch.float64)
    got = run_exported(torch.export.load(result.path), pixel_values, result.output_names)
    with torch.no_grad():
        expected = model(pixel_values)
    assert got["last_hidden_state"].shape == (3, 16, 32) and got["lookup_last_hidden_state"].shape == (3, 64, 32)
    for name in result.output_names:
        torch.testing.assert_close(got[name], expected[name], **FLOAT64_TOLERANCE, msg=name)


def test_lookupvit_export_arguments(tmp_path, capsys):
    """Each family refuses the other's knob, a grid larger than the token grid and `dense_features` are errors that
    say what to do, and the CLI's --compressed-grid parses S / HxW and refuses the rest."""
    from lookwhere_hf import LookupViTForImageClassification, LookupViTModel

    lookupvit = tiny_lookupvit(LookupViTForImageClassification, tmp_path / "model")
    cases = [
        (lookupvit, {"k": 5}, "a LookupViTForImageClassification has none: drop `k`"),
        (lookupvit, {"compressed_grid": 9}, "larger than the lookup token grid 8x8"),
        (lookupvit, {"compressed_grid": 2, "image_size": 14}, "larger than the lookup token grid 1x1"),
        (lookupvit, {"image_size": 100}, "multiple of the patch size 14 \\(e.g. 112\\)"),
        (tiny(LookWhereForImageClassification), {"compressed_grid": 3}, "drop `compressed_grid` \\(pass `k`\\)"),
        (tiny_lookupvit(LookupViTModel, tmp_path / "bare"), {"dense_features": True}, "got a LookupViTModel"),
    ]
    for model, kwargs, message in cases:
        with pytest.raises(ExportError, match=message):
            export_lookwhere(model, tmp_path / "m.onnx", log=None, **kwargs)
    assert not (tmp_path / "m.onnx").exists()
    assert cli._compressed_grid_argument("7") == (7, 7) and cli._compressed_grid_argument("3x5") == (3, 5)
    for bad in ("0", "3x", "2.5", "3x4x5"):
        with pytest.raises(SystemExit):
            cli.main(["export", str(tmp_path / "model"), str(tmp_path / "m.onnx"), "--compressed-grid", bad])
        assert "expected a grid such as 7 or 7x5" in capsys.readouterr().err
    assert cli.main(["export", str(tmp_path / "model"), str(tmp_path / "m.onnx"), "--k", "3"]) == 2
    assert "drop `k`" in capsys.readouterr().err


def test_lookupvit_loads_as_its_saved_class(tmp_path):
    """`load_for_export` on a LookupViT folder gives the saved task class in eval mode (no dropout in the export)."""
    from lookwhere_hf import LookupViTForSemanticSegmentation

    tiny_lookupvit(LookupViTForSemanticSegmentation, tmp_path)
    loaded = lw_export.load_for_export(tmp_path)
    assert type(loaded) is LookupViTForSemanticSegmentation and not loaded.training


# ----------------------------------------------------------------------------------------------------- failures
def test_failed_export_removes_a_stale_report(tmp_path, monkeypatch):
    """A check that fails removes the file and the `.json` report next to it, also one left by an earlier export
    (it described a file that is no longer there)."""
    model = tiny(LookWhereForImageClassification)
    path = tmp_path / "m.pt2"
    export_lookwhere(model, path, format="torch", k=K, log=None)
    assert Path(f"{path}.json").is_file()
    real = lw_export.run_exported

    def drifting(exported, pixel_values, names):
        outputs = real(exported, pixel_values, names)
        outputs["logits"] = outputs["logits"] + 1.0
        return outputs

    monkeypatch.setattr(lw_export, "run_exported", drifting)
    with pytest.raises(ExportError, match="does not reproduce the eager model"):
        export_lookwhere(model, path, format="torch", k=K, log=None)
    assert not path.exists() and not Path(f"{path}.json").exists()


def test_exporter_failure_is_an_export_error(tmp_path, monkeypatch, capsys):
    """An exporter that raises (an unsupported op, say) gives an ExportError naming the model and the cause, with the
    original exception chained, and `lookwhere-hf export` exit status 2 instead of a traceback."""

    def unsupported(*args, **kwargs):
        raise RuntimeError("no decomposition for aten::made_up_op\nlong details")

    monkeypatch.setattr(torch.export, "export", unsupported)
    with pytest.raises(ExportError, match="torch exporter failed on LookWhereForImageClassification: Runtime") as info:
        export_lookwhere(tiny(LookWhereForImageClassification), tmp_path / "m.pt2", format="torch", k=K, log=None)
    assert isinstance(info.value.__cause__, RuntimeError) and "made_up_op" in str(info.value)
    assert not (tmp_path / "m.pt2").exists()
    model_dir = tmp_path / "model"
    tiny(LookWhereForImageClassification).save_pretrained(model_dir)
    assert cli.main(["export", "--format", "torch", str(model_dir), str(tmp_path / "m.pt2"), "--k", "3"]) == 2
    assert "exporter failed" in capsys.readouterr().err
    with pytest.raises(ExportError, match="`tolerance` must be a number in"):
        export_lookwhere(tiny(LookWhereForImageClassification), tmp_path / "m.pt2", format="torch", tolerance="1e-4")


def test_export_keeps_the_callers_training_mode(tmp_path):
    """The export and its check run in eval mode (a LookupViT in training mode would draw a random grid; dropout
    would be on), and a model passed in training mode is in training mode again afterwards."""
    from lookwhere_hf import LookupViTForImageClassification

    lookupvit = tiny_lookupvit(LookupViTForImageClassification, tmp_path / "model").train()
    result = export_lookwhere(lookupvit, tmp_path / "m.pt2", format="torch", log=None)
    assert result.compressed_grid == [4, 4] and all(check.passed for check in result.checks)
    assert lookupvit.training and all(module.training for module in lookupvit.modules())
    lookwhere = tiny(LookWhereForImageClassification).train()
    with pytest.raises(ExportError):
        export_lookwhere(lookwhere, tmp_path / "m.pt2", format="torch", k=10_000, log=None)
    assert lookwhere.training
    export_lookwhere(lookwhere, tmp_path / "m.pt2", format="torch", k=K, check=False, log=None)
    assert lookwhere.training


def test_self_check_near_tie_rule():
    """A row whose selection differs on a near-tie of the eager map (a gap among the top k + 1 within twice the map
    error) is left out of the selection-dependent comparisons, and the report says so; the same swap without a
    near-tie is an ExportError."""
    expected = {
        "logits": torch.tensor([[1.0, 2.0], [3.0, 4.0]]),
        "selector_map": torch.tensor([[3.0, 2.0, 1.0, 0.0], [1.0, 0.99999, 0.5, 0.0]]),
        "selected_indices": torch.tensor([[0, 1], [0, 1]]),
    }
    got = {
        "logits": torch.tensor([[1.0, 2.0], [30.0, 40.0]]),  # row 1 took the other patch: other logits
        "selector_map": expected["selector_map"] + torch.tensor([[0.0, 0, 0, 0], [0.0, 1e-5, 0, 0]]),
        "selected_indices": torch.tensor([[0, 1], [1, 0]]),
    }
    checks = {c.output: c for c in lw_export._compare("random", got, expected, k=2, tolerance=PARITY)}
    assert all(c.passed for c in checks.values())
    assert checks["logits"].max_abs_diff == 0.0 and checks["logits"].note == "1 near-tie rows not compared"
    assert checks["selector_map"].max_abs_diff == pytest.approx(1e-5, abs=2 * EPS32)  # float32 values ~1
    assert checks["selected_indices"].note == "1 rows identical"
    apart = {**expected, "selector_map": torch.tensor([[3.0, 2.0, 1.0, 0.0], [1.0, 0.9, 0.5, 0.0]])}
    with pytest.raises(ExportError, match="not on a near-tie"):
        lw_export._compare("random", {**got, "selector_map": apart["selector_map"]}, apart, k=2, tolerance=PARITY)
