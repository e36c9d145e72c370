"""Deployment exports of LookWhere and LookupViT models, checked against the eager model: ONNX and `torch.export`
programs.

LookWhere: the whole fixed-`k` forward is one graph: the low-resolution view, the selector, the top-k selection, the
gather of the selected patches, the extractor, the head and (for dense outputs) the inverse-distance spreading. The
exported graph takes `pixel_values` only (normalized, `(batch, 3, image_size, image_size)`, as
`LookWhereImageProcessor` makes them) and makes the selector's low-resolution view itself, exactly like the eager model
without `low_res_pixel_values`. Image size and `k` are fixed at export time (one graph per operating point, as for
`torch.compile(dynamic=False)`).

LookupViT: the forward at one image size and one compressed grid `(h, w)` (default: `config.compressed_grid`, the
eval-mode grid): patch embedding, the (antialiased) bilinear resize to the compressed tokens, every block's gather /
refine / scatter / lookup MLP, the final norms and the head.

Outputs, by model class (the names are the ONNX output names and the keys of [`run_exported`]):

- `LookWhereForImageClassification`: `logits (B, num_labels)`, `selector_map (B, G*G)`, `selected_indices (B, k)`;
- `LookWhereForSemanticSegmentation`: `logits (B, num_labels, G, G)`, `selector_map`, `selected_indices`;
- `LookWhereModel`: `last_hidden_state (B, P + k, D)`, `pooler_output (B, D)`, `selector_map`, `selected_indices`
  and, with `dense_features=True`, `dense_features (B, D, G, G)`; with `cls_only=True` (the extractor's last layer
  computes the CLS token only, as the classification model's does) `last_hidden_state` is `(B, 1, D)`;
- `LookupViTForImageClassification`: `logits (B, num_labels)`;
- `LookupViTForSemanticSegmentation`: `logits (B, num_labels, G, G)`;
- `LookupViTModel`: `last_hidden_state (B, h*w, D)`, `pooler_output (B, D)`, `lookup_last_hidden_state (B, G*G, D)`.

The batch dimension stays dynamic when the graph has no dense LookWhere output. LookWhere's dense spreading sizes its
memory blocks from the batch size, so graphs with dense LookWhere outputs are exported for one batch size
(`batch_size`, default 1); LookupViT graphs (segmentation included) always have a dynamic batch.

After writing the file, [`export_lookwhere`] loads it back (ONNX Runtime's CPU session for ONNX, `torch.export.load`
for `.pt2`) and compares every output with the eager model on a seeded random input and on a real image: the same
selected patches (LookWhere), and every float output within `tolerance` (default 1e-4) times its scale
(`max(1, max |eager|)`). A near-tie in the selector map (two patches whose eager scores differ by less than twice
the measured map error) may legitimately swap the selection; that image's selection-dependent outputs are then not
compared, and the report says so. Anything else beyond tolerance raises [`ExportError`], and the exported file (and
its report) is removed.

```bash
lookwhere-hf export --format onnx MODEL_DIR model.onnx [--image-size 518] [--k 136]
lookwhere-hf export --format torch MODEL_DIR model.pt2
lookwhere-hf export --format onnx LOOKUPVIT_DIR model.onnx [--compressed-grid 7 | 7x5]
```

Note on the ONNX graph optimizer: `onnxscript`'s default rewrite rules match `x + c` as a no-op when `|c| <= 1e-8`
(its pattern constants compare with `math.isclose(..., abs_tol=1e-8)`), which deletes the `+ 1e-8` of the spreading
weights `1 / (d + 1e-8)` and turns every selected position's weight into `1 / 0`. The export therefore skips that
optimizer (`optimize=False`); ONNX Runtime applies its own graph optimizations when it loads the model. The
spreading's weighted sum (`F.embedding_bag`) is written as Gather + Mul + ReduceSum instead of the exporter's ONNX Loop
over the grid positions (see `_embedding_bag_as_gather_sum`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .image_processing import image_processor_for
from .models.lookupvit.modeling_lookupvit import (
    LookupViTForImageClassification,
    LookupViTForSemanticSegmentation,
    LookupViTModel,
    LookupViTPreTrainedModel,
)
from .models.lookwhere.configuration_lookwhere import to_pair
from .models.lookwhere.modeling_lookwhere import (
    LookWhereForImageClassification,
    LookWhereForSemanticSegmentation,
    LookWhereModel,
    LookWherePreTrainedModel,
)

__all__ = [
    "EXPORT_FORMATS",
    "ExportError",
    "ExportResult",
    "OutputCheck",
    "export_lookwhere",
    "load_for_export",
    "onnx_session",
    "output_names_for",
    "run_exported",
]

EXPORT_FORMATS = ("onnx", "torch")
DEFAULT_TOLERANCE = 1e-4
_SUFFIXES = {"onnx": ".onnx", "torch": ".pt2"}
_ONNX_PACKAGES = "pip install onnx onnxscript onnxruntime  (or: pip install 'lookwhere_hf[export]')"


class ExportError(ValueError):
    """An export could not be made or did not reproduce the eager model; the message says what and what to do."""


@dataclass
class OutputCheck:
    """One output of the exported file compared with the eager model on one input."""

    input: str
    output: str
    max_abs_diff: float
    scale: float
    tolerance: float
    passed: bool
    note: str = ""


@dataclass
class ExportResult:
    """What [`export_lookwhere`] wrote and how it compared with the eager model."""

    path: str
    format: str
    model_class: str
    image_size: int
    k: int | None  # LookWhere's number of selected patches (None for LookupViT)
    batch_size: int | None  # None: dynamic
    input_names: list[str]
    output_names: list[str]
    checks: list[OutputCheck] = field(default_factory=list)
    compressed_grid: list[int] | None = None  # LookupViT's (h, w) (None for LookWhere)
    cls_only: bool = False  # LookWhereModel: the last layer computes the CLS token only (`last_hidden_state (B, 1, D)`)

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------------------- the graph
ExportableModel = LookWherePreTrainedModel | LookupViTPreTrainedModel


def output_names_for(model: ExportableModel, dense_features: bool = False) -> list[str]:
    """The exported outputs of `model`'s class, in order (see the module docstring)."""
    if isinstance(model, (LookWhereForImageClassification, LookWhereForSemanticSegmentation)):
        return ["logits", "selector_map", "selected_indices"]
    if isinstance(model, LookWhereModel):
        names = ["last_hidden_state", "pooler_output", "selector_map", "selected_indices"]
        return [*names, "dense_features"] if dense_features else names
    if isinstance(model, (LookupViTForImageClassification, LookupViTForSemanticSegmentation)):
        return ["logits"]
    if isinstance(model, LookupViTModel):
        return ["last_hidden_state", "pooler_output", "lookup_last_hidden_state"]
    raise ExportError(
        f"Cannot export a {type(model).__name__}: pass a LookWhereModel, LookWhereForImageClassification, "
        "LookWhereForSemanticSegmentation (a pretraining checkpoint loads as LookWhereModel), LookupViTModel, "
        "LookupViTForImageClassification or LookupViTForSemanticSegmentation."
    )


class _FixedForward(nn.Module):
    """`pixel_values -> tuple of tensors`: the model's forward at a fixed operating point (`call_kwargs`: LookWhere's
    `k` and dense flag, or LookupViT's `compressed_grid`) with its outputs in `output_names` order."""

    def __init__(self, model: ExportableModel, call_kwargs: dict, output_names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.call_kwargs = call_kwargs
        self.output_names = output_names

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.model(pixel_values, **self.call_kwargs)
        return tuple(outputs[name] for name in self.output_names)


def _has_dense_output(model: ExportableModel, output_names: list[str]) -> bool:
    """Whether the graph runs LookWhere's dense spreading (whose memory blocks are sized from the batch size)."""
    return isinstance(model, LookWhereForSemanticSegmentation) or "dense_features" in output_names


def _check_image_size(image_size, patch: int, default: int) -> int:
    if image_size is None:
        image_size = default
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < patch or image_size % patch:
        raise ExportError(
            f"`image_size` must be a positive multiple of the patch size {patch} (e.g. {default}), got {image_size!r}."
        )
    return image_size


def _resolve_operating_point(
    model: ExportableModel, image_size: int | None, k: int | None, compressed_grid
) -> tuple[int, dict]:
    """The image size and the fixed forward keywords: `{"k": k}` for LookWhere, `{"compressed_grid": (h, w)}` for
    LookupViT (each family refuses the other's knob)."""
    config = model.config
    if isinstance(model, LookupViTPreTrainedModel):
        if k is not None:
            raise ExportError(
                f"`k` is LookWhere's number of selected patches; a {type(model).__name__} has none: drop `k` (pass "
                "`compressed_grid` to pick LookupViT's compute)."
            )
        image_size = _check_image_size(image_size, config.patch_size, config.image_size)
        token_grid = (image_size // config.patch_size, image_size // config.patch_size)
        try:  # in eval mode: None gives config.compressed_grid
            grid = model.eval().resolve_compressed_grid(compressed_grid, token_grid)
        except ValueError as err:
            raise ExportError(f"{err} (at image size {image_size})") from None
        return image_size, {"compressed_grid": grid}
    if compressed_grid is not None:
        raise ExportError(
            f"`compressed_grid` is LookupViT's; a {type(model).__name__} selects `k` patches instead: drop "
            "`compressed_grid` (pass `k`)."
        )
    patch = to_pair(config.extractor_config.patch_size)[0]
    image_size = _check_image_size(image_size, patch, config.high_res_size)
    num_patches = (image_size // patch) ** 2
    try:
        k = config.num_selected(num_patches, k)
    except (TypeError, ValueError) as err:
        raise ExportError(f"{err} (at image size {image_size}: {image_size // patch}^2 patches)") from None
    return image_size, {"k": k}


def _check_output_path(output_path: str | os.PathLike, format: str) -> Path:
    if format not in EXPORT_FORMATS:
        raise ExportError(f"`format` must be one of {EXPORT_FORMATS}, got {format!r}.")
    path = Path(output_path).expanduser()
    if path.is_dir():
        raise ExportError(f"{str(path)!r} is a directory; pass a file name such as model{_SUFFIXES[format]}.")
    if path.suffix != _SUFFIXES[format]:
        raise ExportError(f"`format={format!r}` is written to a {_SUFFIXES[format]} file, got {str(path)!r}.")
    return path


def _remove_export(path: Path) -> None:
    """Remove a failed export and its report (a report left from an earlier export would describe a missing file)."""
    path.unlink(missing_ok=True)
    Path(f"{path}.json").unlink(missing_ok=True)


def _require_onnx(with_runtime: bool = True) -> None:
    import importlib.util

    needed = ["onnx", "onnxscript"] + (["onnxruntime"] if with_runtime else [])
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(f"ONNX export needs the packages {missing}: {_ONNX_PACKAGES}")


def _embedding_bag_as_gather_sum(
    weight,
    indices,
    offsets,
    scale_grad_by_freq=False,
    mode=0,
    sparse=False,
    per_sample_weights=None,
    include_last_offset=False,
    padding_idx=None,
):
    """ONNX translation of `aten::embedding_bag.padding_idx` for the dense spreading's weighted bag sums: one Gather of
    the `(num_bags * K, D)` neighbour tokens, a multiply by the weights and a ReduceSum over each bag's K (the default
    translation is an ONNX Loop over the bags, slower in ONNX Runtime).

    Valid only for what the spreading calls, `F.embedding_bag` on a 2-D `(num_bags, K)` input (bags of equal size K,
    offsets `0, K, 2K, ...`, `mode="sum"`, `per_sample_weights` given, no padding index). Only the first output (the
    bag sums) is used; the other three are placeholders."""
    from onnxscript import opset18 as op

    tokens = op.Gather(weight, indices, axis=0)  # (num_bags * K, D)
    weighted = op.Mul(tokens, op.Unsqueeze(per_sample_weights, op.Constant(value_ints=[1])))
    shape = op.Concat(op.Shape(offsets), op.Constant(value_ints=[-1]), op.Shape(weight, start=1), axis=0)
    sums = op.ReduceSum(op.Reshape(weighted, shape), op.Constant(value_ints=[1]), keepdims=0)  # (num_bags, D)
    return sums, offsets, offsets, offsets


def _write(wrapper: _FixedForward, example: torch.Tensor, path: Path, format: str, dynamic_batch: bool) -> None:
    dynamic_shapes = {"pixel_values": {0: torch.export.Dim("batch", min=1, max=4096)}} if dynamic_batch else None
    if format == "onnx":
        _require_onnx(with_runtime=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with torch.no_grad():
            if format == "torch":
                program = torch.export.export(wrapper, (example,), dynamic_shapes=dynamic_shapes)
                torch.export.save(program, str(path))
                return
            program = torch.onnx.export(
                wrapper,
                (example,),
                input_names=["pixel_values"],
                output_names=wrapper.output_names,
                dynamic_shapes=dynamic_shapes,
                dynamo=True,
                optimize=False,  # see the module docstring: onnxscript's rewrites drop the spreading's `+ 1e-8`
                verbose=False,
                custom_translation_table={torch.ops.aten.embedding_bag.padding_idx: _embedding_bag_as_gather_sum},
            )
            program.save(str(path))
    except Exception as err:  # the exporters raise many types; the CLI needs one error with the cause named
        _remove_export(path)
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ExportError(
            f"The {format} exporter failed on {type(wrapper.model).__name__}: {type(err).__name__}: {first} "
            "Please report it with the model and the command (the chained traceback has the details)."
        ) from err


# ----------------------------------------------------------------------------------------------------- running
def onnx_session(path: str | os.PathLike, num_threads: int | None = None):
    """An ONNX Runtime CPU `InferenceSession` for an exported file (`num_threads`: intra-op threads)."""
    _require_onnx()
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: not the notes on CastLike nodes it leaves unfolded
    if num_threads is not None:
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def run_exported(exported, pixel_values: torch.Tensor, output_names: list[str]) -> dict[str, torch.Tensor]:
    """Run an exported model: an ONNX Runtime session or a `torch.export` program (or its `.module()`)."""
    if hasattr(exported, "get_outputs"):  # onnxruntime.InferenceSession
        values = exported.run(output_names, {"pixel_values": pixel_values.detach().cpu().numpy()})
        return {name: torch.from_numpy(value) for name, value in zip(output_names, values)}
    module = exported.module() if hasattr(exported, "module") else exported
    with torch.no_grad():
        return dict(zip(output_names, module(pixel_values)))


def _load_exported(path: Path, format: str):
    return onnx_session(path) if format == "onnx" else torch.export.load(str(path))


# ----------------------------------------------------------------------------------------------------- checking
def _compare(
    name: str, got: dict, expected: dict, k: int, tolerance: float, map_name: str = "selector_map"
) -> list[OutputCheck]:
    """Compare one input's outputs; see the module docstring for the near-tie rule."""
    checks = []
    if "selected_indices" not in expected:  # LookupViT: no selection, every output compared on every row
        return [_compare_values(name, output, got[output], value, tolerance) for output, value in expected.items()]
    eager_map, exported_map = expected[map_name].double(), got[map_name].double()
    map_error = float((eager_map - exported_map).abs().max())
    rows_equal = (got["selected_indices"] == expected["selected_indices"]).all(dim=1)
    tied = torch.zeros_like(rows_equal)
    if not rows_equal.all():
        top = eager_map.topk(min(k + 1, eager_map.shape[1]), dim=1).values
        smallest_gap = (top[:, :-1] - top[:, 1:]).min(dim=1).values
        tied = ~rows_equal & (smallest_gap <= 2 * map_error)
        if not (rows_equal | tied).all():
            raise ExportError(
                f"The exported model selects other patches than the eager model on the {name} input, and not on a "
                f"near-tie of the selector map (max map difference {map_error:.3g}). The export is wrong; please "
                "report it with the model and the command."
            )
    keep = rows_equal
    for output, expected_value in expected.items():
        if output == "selected_indices":
            checks.append(OutputCheck(name, output, 0.0, 1.0, 0.0, True, f"{int(keep.sum())} rows identical"))
            continue
        rows = slice(None) if output == map_name else keep
        note = ""
        if output != map_name and not keep.all():
            note = f"{int((~keep).sum())} near-tie rows not compared"
        if output != map_name and not keep.any():
            checks.append(OutputCheck(name, output, float("nan"), float("nan"), tolerance, True, note))
            continue
        checks.append(_compare_values(name, output, got[output][rows], expected_value[rows], tolerance, note))
    return checks


def _compare_values(name: str, output: str, got: torch.Tensor, expected: torch.Tensor, tolerance: float, note=""):
    """One output: max abs difference against `tolerance x max(1, max |eager|)`; NaN / inf always fail."""
    if got.shape != expected.shape:
        return OutputCheck(name, output, float("inf"), 1.0, tolerance, False, f"shape {tuple(got.shape)}")
    reference, value = expected.double(), got.double()
    diff = float((reference - value).abs().max())
    scale = max(1.0, float(reference.abs().max()))
    finite = bool(torch.isfinite(value).all())
    return OutputCheck(name, output, diff, scale, tolerance, finite and diff <= tolerance * scale, note)


def _check_inputs(model, image_size: int, batch_size: int, check_image) -> dict[str, torch.Tensor]:
    """The seeded random input and the real image, both `(batch_size, 3, image_size, image_size)`."""
    generator = torch.Generator().manual_seed(0)
    random_input = torch.randn(batch_size, 3, image_size, image_size, generator=generator)
    if check_image is None:
        from .demo_assets import demo_image_paths

        paths = demo_image_paths()
        if not paths:
            return {"random (seed 0)": random_input}
        check_image = paths[0]
    from PIL import Image

    try:
        with Image.open(check_image) as opened:
            image = opened.convert("RGB")
    except OSError as err:  # missing file, or not an image (PIL's UnidentifiedImageError is an OSError)
        raise ExportError(
            f"Cannot read the check image {str(check_image)!r} ({type(err).__name__}); pass an image file."
        ) from None
    processor = image_processor_for(model)
    size = {"height": image_size, "width": image_size}
    pixel_values = processor(image, size=size, return_tensors="pt")["pixel_values"]
    label = f"image {Path(str(check_image)).name}"
    return {"random (seed 0)": random_input, label: pixel_values.expand(batch_size, -1, -1, -1).contiguous()}


# ----------------------------------------------------------------------------------------------------- entry points
_FAMILIES = {  # model_type -> (the bare model, the task classes)
    "lookwhere": (LookWhereModel, (LookWhereForImageClassification, LookWhereForSemanticSegmentation)),
    "lookupvit": (LookupViTModel, (LookupViTForImageClassification, LookupViTForSemanticSegmentation)),
}


def load_for_export(model_dir: str | os.PathLike) -> ExportableModel:
    """Load a saved LookWhere or LookupViT folder as the class its `config.json` names (any other architecture, such
    as a LookWhere pretraining checkpoint, as the family's bare model), in eval mode."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_dir)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(f"Could not read a model config from {str(model_dir)!r}: {first}") from None
    model_type = getattr(config, "model_type", None)
    if model_type not in _FAMILIES:
        raise ExportError(
            f"{str(model_dir)!r} holds a {model_type!r} model; export handles LookWhere and LookupViT models."
        )
    bare, tasks = _FAMILIES[model_type]
    architecture = (getattr(config, "architectures", None) or [bare.__name__])[0]
    return {cls.__name__: cls for cls in tasks}.get(architecture, bare).from_pretrained(model_dir).eval()


def export_lookwhere(
    model: ExportableModel | str | os.PathLike,
    output_path: str | os.PathLike,
    format: str = "onnx",
    image_size: int | None = None,
    k: int | None = None,
    compressed_grid: int | tuple[int, int] | None = None,
    batch_size: int = 1,
    dense_features: bool = False,
    check: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    check_image: str | os.PathLike | None = None,
    log=print,
    cls_only: bool = False,
) -> ExportResult:
    """Export a LookWhere model at a fixed image size and `k` (a LookupViT model at a fixed image size and compressed
    grid), then check the file against the eager model.

    Args:
        model: a LookWhere or LookupViT model (any of the three inference classes of either) or a saved folder
            ([`load_for_export`]).
        output_path: the `.onnx` (format `"onnx"`) or `.pt2` (format `"torch"`) file to write; `output_path` +
            `.json` gets the [`ExportResult`] (names, shapes, parity figures).
        format: `"onnx"` (`torch.onnx.export(..., dynamo=True)`) or `"torch"` (`torch.export` ExportedProgram).
        image_size: the square input side in pixels (default: the config's high-resolution / image size).
        k: LookWhere only: the number of high-res patches (default: `floor(config.k_ratio * num_patches)`).
        compressed_grid: LookupViT only: the compressed grid, an int `s` or `(h, w)` (default:
            `config.compressed_grid`).
        batch_size: the check's batch size; the exported batch dimension is dynamic unless the graph has a dense
            LookWhere output, which is exported for this batch size only.
        dense_features: `LookWhereModel` only: also output `dense_features`.
        cls_only: `LookWhereModel` only: export `model(..., cls_only=True)`, whose extractor's last layer computes the
            CLS token only (`last_hidden_state` is then `(B, 1, D)`; about 5% fewer FLOPs at 518 px, k = 10%). The
            classification model always does this.
        check: load the file back and compare it with the eager model (see the module docstring).
        tolerance: the allowed max abs difference per output, relative to `max(1, max |eager output|)`.
        check_image: the real image of the check (default: the first demo image shipped with the package).
        log: where progress and the check's figures go (`None`: nowhere).

    Raises:
        ExportError: bad arguments, missing ONNX packages, or a check beyond tolerance (the file is then removed).
    """
    if not isinstance(model, nn.Module):
        model = load_for_export(model)
    was_training = model.training
    try:
        return _export_and_check(
            model, output_path, format, image_size, k, compressed_grid, batch_size, dense_features, check, tolerance,
            check_image, log or (lambda *args: None), cls_only,
        )  # fmt: skip
    finally:
        model.train(was_training)  # exported and checked in eval mode; the caller's model keeps its mode


def _export_and_check(
    model, output_path, format, image_size, k, compressed_grid, batch_size, dense_features, check, tolerance,
    check_image, log, cls_only=False,
) -> ExportResult:  # fmt: skip
    """The body of [`export_lookwhere`] (same arguments; `model` is a module)."""
    path = _check_output_path(output_path, format)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ExportError(f"`batch_size` must be a positive int, got {batch_size!r}.")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 < tolerance < 1:
        raise ExportError(f"`tolerance` must be a number in (0, 1), got {tolerance!r}.")
    if dense_features and type(model) is not LookWhereModel:
        raise ExportError(
            f"`dense_features` is for LookWhereModel, got a {type(model).__name__} (LookWhere's segmentation logits "
            "are already dense; LookupViTModel outputs `lookup_last_hidden_state`)."
        )
    if not isinstance(cls_only, bool):
        raise ExportError(f"`cls_only` must be True or False, got {cls_only!r}.")
    if cls_only and type(model) is not LookWhereModel:
        raise ExportError(
            f"`cls_only` is for LookWhereModel, got a {type(model).__name__} (LookWhereForImageClassification always "
            "computes the last layer for the CLS token only; segmentation and LookupViT need every token)."
        )
    if cls_only and dense_features:
        raise ExportError(
            "`cls_only` computes the extractor's last layer for the CLS token only, but `dense_features` needs every "
            "token's output: pass one of them."
        )
    if check and format == "onnx":
        _require_onnx()
    names = output_names_for(model, dense_features)
    image_size, call_kwargs = _resolve_operating_point(model, image_size, k, compressed_grid)
    model = model.eval()
    dynamic_batch = not _has_dense_output(model, names)
    if "dense_features" in names:
        call_kwargs["output_dense_features"] = True
    if cls_only:
        call_kwargs["cls_only"] = True
    wrapper = _FixedForward(model, call_kwargs, names).eval()
    k, grid = call_kwargs.get("k"), call_kwargs.get("compressed_grid")
    point = f"k = {k}" if grid is None else f"compressed grid {grid[0]}x{grid[1]}"
    # A dynamic batch is traced at 2: an example of 1 would be specialized (sizes 0 and 1 always are).
    dtype = next(model.parameters()).dtype
    example = torch.zeros(2 if dynamic_batch else batch_size, 3, image_size, image_size, dtype=dtype)
    log(
        f"Exporting {type(model).__name__} to {format} at {image_size}x{image_size} px, {point}, batch "
        f"{'dynamic' if dynamic_batch else batch_size}: {path}"
    )
    check_inputs = _check_inputs(model, image_size, batch_size, check_image) if check else {}
    _write(wrapper, example, path, format, dynamic_batch)
    result = ExportResult(
        path=str(path),
        format=format,
        model_class=type(model).__name__,
        image_size=image_size,
        k=k,
        batch_size=None if dynamic_batch else batch_size,
        input_names=["pixel_values"],
        output_names=names,
        compressed_grid=None if grid is None else list(grid),
        cls_only=cls_only,
    )
    if check:
        exported = _load_exported(path, format)
        for label, pixel_values in check_inputs.items():
            pixel_values = pixel_values.to(dtype)
            with torch.no_grad():
                expected = dict(zip(names, wrapper(pixel_values)))
            try:
                checks = _compare(label, run_exported(exported, pixel_values, names), expected, k, tolerance)
            except ExportError:  # another selection: the file is wrong, do not leave it behind
                _remove_export(path)
                raise
            result.checks.extend(checks)
        failed = [c for c in result.checks if not c.passed]
        for c in result.checks:
            if c.output != "selected_indices":
                verdict = ("ok" if c.passed else "FAILED") + (f" ({c.note})" if c.note else "")
                log(
                    f"  {c.input:>24} {c.output:>18}: max abs diff {c.max_abs_diff:.2e} (scale {c.scale:.3g}, "
                    f"allowed {c.tolerance * c.scale:.1e}) {verdict}"
                )
        if failed:
            _remove_export(path)
            worst = ", ".join(f"{c.output} on {c.input}: {c.max_abs_diff:.3g}" for c in failed)
            raise ExportError(
                f"The exported {format} model does not reproduce the eager model within {tolerance:g} x scale "
                f"({worst}); {path} was removed. Please report it with the model and the command."
            )
        same = ", same selected patches" if k is not None else ""
        log(f"Parity check passed: {len(result.checks)} comparisons{same}.")
    Path(f"{path}.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    return result
