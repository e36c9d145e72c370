"""`lookwhere-hf app`: an interactive Gradio page for every model family (needs `pip install -e ".[app]"`).

```bash
lookwhere-hf app                                  # the shipped demo checkpoint and its example images, offline
lookwhere-hf app --model lookupvit-folder --model gfnet-folder --port 7860
```

Drop in an image (any size, grayscale, RGBA, 16-bit) or pick an example, and the page shows the top predictions, the
analytic GFLOPs next to the full-resolution model's, the measured latency of the forward and, per family:

- **LookWhere**: the selector map as a heat overlay and the patches the extractor computed, with a `k_ratio` slider;
- **budgeted** models (saved `config.budget_thresholds`, LookWhere or Glance-and-Focus): the rung each image exits
  at, with a **GFLOPs cap** slider (see [`capped_thresholds`] for why a cap and not a mean budget);
- **LookupViT**: the compressed-token grid, picked from `config.compressed_grids`;
- **Glance-and-Focus**: the glance and each focus crop, step by step, with the prediction after every step.

The work is done by [`AppModel.analyze`], which has no Gradio in it; [`build_app`] lays out the page, whose one API
endpoint is `/predict` (inputs: model name, image, k_ratio, budgeted, GFLOPs cap, compressed grid; outputs: the top
predictions, the picture, the Markdown summary; errors come back as a summary starting with `**Error:**`):

```python
from gradio_client import Client, handle_file

client = Client("http://127.0.0.1:7860/")
label, picture, summary = client.predict(
    "LookWhere demo checkpoint (Sparse Digits)", handle_file("photo.png"), 0.1, True, 1.0, None, api_name="/predict"
)
label["label"], picture  # the top class, the path of a downloaded copy of the selection picture (PNG)
```
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoModelForImageClassification

from .demo_assets import default_demo_model_path, demo_image_paths
from .flops import full_resolution_flops, lookupvit_flops, lookwhere_flops, vit_flops_like
from .image_processing import processor_output_size
from .models.lookupvit.configuration_lookupvit import grid_pair
from .user_inputs import CLASSIFIER_FAMILIES, check_model_path, load_model_and_processor, open_image_file
from .user_inputs import UserInputError as CLIError  # the messages of `lookwhere-hf` (shown in the page)
from .visualization import compressed_grid_image, crop_steps_image, selection_image

__all__ = [
    "AppModel",
    "Analysis",
    "build_app",
    "capped_thresholds",
    "default_model_paths",
    "example_images",
    "load_app_model",
    "main",
    "read_image",
]

FAMILY_NAMES = {"lookwhere": "LookWhere", "lookupvit": "LookupViT", "glance_focus": "Glance-and-Focus"}
TOP_K = 5
HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def default_model_paths() -> list[str]:
    """The shipped demo checkpoint (a one-item list), or `[]` in an installation without it."""
    path = default_demo_model_path()
    return [path] if path else []


def example_images() -> list[str]:
    """The shipped demo images (the page's examples), or `[]`."""
    return demo_image_paths()


# ----------------------------------------------------------------------------------------------------- images
def read_image(path: str | os.PathLike) -> Image.Image | np.ndarray:
    """Open an uploaded file the way `lookwhere-hf predict` does, with its messages for unreadable or oversized files
    (`CLIError`). 16-bit (and 32-bit integer) grayscale stays a `uint16` array, which the image processors scale by
    65535; everything else becomes RGB (grayscale repeated, alpha dropped)."""
    path = Path(path)
    if not path.is_file():
        raise CLIError(f"image file not found: {path}")
    image = open_image_file(path)  # the CLI's reader and messages
    with Image.open(path) as raw:
        if raw.mode in HIGH_BIT_MODES:
            array = np.asarray(raw)
            if array.dtype != np.uint16:  # mode "I" holds int32; a 16-bit PNG fits in uint16
                if array.min() < 0 or array.max() > 65535:
                    raise CLIError(f"{path.name} holds 32-bit values outside 0..65535; save it as 8- or 16-bit")
                array = array.astype(np.uint16)
            return array
    return image


def _shown(image: Image.Image | np.ndarray) -> np.ndarray:
    """The image as 8-bit RGB for pictures (16-bit scaled down)."""
    if isinstance(image, np.ndarray):
        array = (image.astype(np.float64) / 257.0).round().astype(np.uint8)
        return np.repeat(array[..., None], 3, axis=-1) if array.ndim == 2 else array
    return np.asarray(image.convert("RGB"))


def _model_input_picture(processor, pixel_values: torch.Tensor) -> np.ndarray:
    """`pixel_values[0]` un-normalized back to 8-bit RGB: the image as the model saw it (resized / centre-cropped)."""
    values = pixel_values[0].detach().double().cpu()
    if getattr(processor, "do_normalize", False):
        mean = torch.tensor(processor.image_mean, dtype=values.dtype)[:, None, None]
        std = torch.tensor(processor.image_std, dtype=values.dtype)[:, None, None]
        values = values * std + mean
    scale = 1.0 / processor.rescale_factor if getattr(processor, "do_rescale", False) else 1.0
    return (values * scale).clamp(0, 255).round().byte().permute(1, 2, 0).numpy()


# ----------------------------------------------------------------------------------------------------- models
@dataclass
class Analysis:
    """What the page shows for one image.

    Attributes:
        predictions (`dict[str, float]`): the top classes and their probabilities (at most `TOP_K`).
        picture (`PIL.Image.Image`): the family's picture (selection, token grids or crops).
        summary (`str`): Markdown: the settings of the call, GFLOPs, latency, exit rung, per-step table.
        gflops (`float`): analytic GFLOPs of this call; `full_gflops`: the full-resolution model's.
        latency_ms (`float`): measured wall time of the model's forward.
        exit_rung (`int` or `None`): the rung / step the image exited at (budgeted and Glance-and-Focus models).
        logits (`torch.Tensor`): the logits of the forward, `(num_labels,)`.
    """

    predictions: dict[str, float]
    picture: Image.Image
    summary: str
    gflops: float
    full_gflops: float
    latency_ms: float
    exit_rung: int | None = None
    logits: torch.Tensor | None = field(default=None, repr=False)


def capped_thresholds(thresholds: Sequence[float], rung_gflops: Sequence[float], cap_gflops: float | None) -> list:
    """Exit thresholds that keep an image's cost under `cap_gflops`: the saved thresholds for the rungs it can
    afford, and 0 (always exit) at the last rung within the cap (at least the first rung).

    Why a per-image cap: saved thresholds were fitted on a held-out split for a *mean* budget
    (`lookwhere_hf.budget.calibrate_budget`); a page holding one image has no split to refit them on, and scaling all
    thresholds by one factor would give costs nobody calibrated. A cap is exact for the one image shown: it exits
    where the saved rule says, or at the most expensive rung the cap allows, whichever comes first; at the slider's
    maximum the saved rule is unchanged.
    """
    if cap_gflops is None:
        return [float(t) for t in thresholds]
    affordable = [i for i, cost in enumerate(rung_gflops) if cost <= cap_gflops * (1 + 1e-9)]
    last = max(affordable) if affordable else 0
    return [float(t) if rung < last else 0.0 for rung, t in enumerate(thresholds)]


@dataclass
class AppModel:
    """A loaded classifier of any family, with what the page needs to know about it."""

    name: str
    path: str
    model: torch.nn.Module
    processor: object
    family: str
    rung_gflops: list[float] = field(default_factory=list)

    @property
    def config(self):
        return self.model.config

    @property
    def budgeted(self) -> bool:
        """Saved exit thresholds (LookWhere or Glance-and-Focus)."""
        return self.family != "lookupvit" and getattr(self.config, "budget_thresholds", None) is not None

    @property
    def compressed_grids(self) -> list[str]:
        """LookupViT: the grid choices as `"HxW"` strings, the config's default first."""
        if self.family != "lookupvit":
            return []
        grids = [grid_pair(self.config.compressed_grid)] + [grid_pair(g) for g in self.config.compressed_grids]
        return list(dict.fromkeys(f"{h}x{w}" for h, w in grids))

    def input_size(self) -> tuple[int, int]:
        """`(height, width)` of `pixel_values`: the centre crop where the processor crops, else the resize."""
        return processor_output_size(self.processor)

    # ------------------------------------------------------------------ one image
    def analyze(
        self,
        image: Image.Image | np.ndarray,
        k_ratio: float | None = None,
        budgeted: bool = True,
        budget_gflops: float | None = None,
        compressed_grid: str | Sequence[int] | None = None,
    ) -> Analysis:
        """Classify `image` and draw what the model did. Settings a family does not have are ignored.

        Args:
            image: PIL image or array, as [`read_image`] returns.
            k_ratio (`float`, *optional*): LookWhere, fixed-`k` mode: share of the high-resolution patches computed
                (default: `config.k_ratio`).
            budgeted (`bool`): budgeted models: exit early with the saved thresholds (else LookWhere runs fixed `k`
                and Glance-and-Focus every step).
            budget_gflops (`float`, *optional*): budgeted mode: per-image GFLOPs cap (see [`capped_thresholds`]).
            compressed_grid (`str` "HxW" or a pair, *optional*): LookupViT's grid (default: `config.compressed_grid`).
        """
        try:
            inputs = self.processor(image, return_tensors="pt")
        except ValueError as err:  # the processors' messages say what to pass
            raise CLIError(str(err)) from None
        run = {"lookwhere": self._lookwhere, "lookupvit": self._lookupvit, "glance_focus": self._glance_focus}
        return run[self.family](inputs, k_ratio, budgeted, budget_gflops, compressed_grid)

    def _forward(self, inputs, **kwargs):
        """The model's forward on `inputs`, timed (wall clock), without gradients."""
        with torch.inference_mode():
            start = time.perf_counter()
            outputs = self.model(**inputs, **kwargs)
            latency = time.perf_counter() - start
        return outputs, latency * 1e3

    def _predictions(self, logits: torch.Tensor) -> dict[str, float]:
        probs = logits.float().softmax(-1)
        top = probs.topk(min(TOP_K, probs.numel()))
        return {self.config.id2label[int(i)]: float(p) for p, i in zip(top.values, top.indices, strict=True)}

    def _summary(self, lines: list[str], gflops: float, full_gflops: float, full_name: str, latency: float) -> str:
        saving = f" ({full_gflops / gflops:.1f}x fewer)" if gflops > 0 else ""
        table = [
            "| | GFLOPs |",
            "|---|---|",
            f"| this call | {gflops:.3g}{saving} |",
            f"| {full_name} | {full_gflops:.3g} |",
        ]
        return "\n".join([*lines, "", *table, "", f"Measured latency of this forward: **{latency:.1f} ms** (CPU)"])

    def _rung_rows(self, inputs, labels: list[str], exit_rung: int | None) -> list[str]:
        """A Markdown table: each rung's cost and prediction (an extra anytime forward, not timed)."""
        with torch.inference_mode():
            rung_logits = self.model(**inputs, anytime=True).rung_logits[0]
        rows = ["| rung | what | cumulative GFLOPs | top-1 |", "|---|---|---|---|"]
        for rung, logits in enumerate(rung_logits):
            probs = logits.float().softmax(-1)
            score, label = probs.max(0)
            mark = " **(exit)**" if rung == exit_rung else ""
            cost = self.rung_gflops[rung] if rung < len(self.rung_gflops) else float("nan")
            rows.append(
                f"| {rung}{mark} | {labels[rung]} | {cost:.3g} | "
                f"{self.config.id2label[int(label)]} ({float(score):.1%}) |"
            )
        return rows

    def _lookwhere(self, inputs, k_ratio, budgeted, budget_gflops, compressed_grid) -> Analysis:
        config = self.config
        height, width = inputs["pixel_values"].shape[-2:]
        grid = (height // config.patch_size, width // config.patch_size)
        num_patches = grid[0] * grid[1]
        picture_input = _model_input_picture(self.processor, inputs["pixel_values"])
        full = full_resolution_flops(config, (height, width)) / 1e9
        full_name = f"full-resolution DINOv2-with-registers ({num_patches} patches)"
        if self.budgeted and budgeted:
            thresholds = capped_thresholds(config.budget_thresholds, self.rung_gflops, budget_gflops)
            outputs, latency = self._forward(inputs, exit_thresholds=thresholds)
            exit_rung = int(outputs.exit_rung[0])
            k = int(outputs.rung_k[0, exit_rung])
            gflops = float(outputs.flops[0]) / 1e9
            rung_k = outputs.rung_k[0].tolist()
            labels = ["glance (selector only)" if rk == 0 else f"k = {rk}" for rk in rung_k]
            cap = "" if budget_gflops is None else f", GFLOPs cap {budget_gflops:.3g}"
            lines = [
                f"**Budgeted** (saved thresholds {[round(t, 3) for t in config.budget_thresholds]}{cap}): "
                f"exits at rung **{exit_rung}** ({labels[exit_rung]}).",
                "",
                *self._rung_rows(inputs, labels, exit_rung),
            ]
            title = f"exit at rung {exit_rung}: k = {k} of {num_patches} patches"
        else:
            ratio = config.k_ratio if k_ratio is None else float(k_ratio)
            if not 0.0 < ratio <= 1.0:
                raise CLIError(f"k_ratio must be in (0, 1], got {ratio}")
            k = max(1, int(ratio * num_patches))
            outputs, latency = self._forward(inputs, k=k)
            exit_rung = None
            gflops = lookwhere_flops(config, (height, width), k=k, num_labels=config.num_labels).total / 1e9
            lines = [f"**Fixed k**: k = {k} of {num_patches} patches (k_ratio {ratio:g})."]
            title = f"k = {k} of {num_patches} patches"
        picture = selection_image(picture_input, outputs.selector_map[0], outputs.selected_indices[0, :k], grid, title)
        summary = self._summary(lines, gflops, full, full_name, latency)
        return Analysis(
            self._predictions(outputs.logits[0]), picture, summary, gflops, full, latency, exit_rung, outputs.logits[0]
        )

    def _lookupvit(self, inputs, k_ratio, budgeted, budget_gflops, compressed_grid) -> Analysis:
        config = self.config
        height, width = inputs["pixel_values"].shape[-2:]
        if compressed_grid is None or compressed_grid == "":
            grid = grid_pair(config.compressed_grid)
        elif isinstance(compressed_grid, str):
            parts = compressed_grid.lower().split("x")
            if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
                raise CLIError(f"compressed grid must look like 7x7, got {compressed_grid!r}")
            grid = (int(parts[0]), int(parts[-1]))
        else:
            grid = grid_pair(tuple(int(v) for v in compressed_grid))
        try:
            outputs, latency = self._forward(inputs, compressed_grid=grid)
        except ValueError as err:  # a grid larger than the token grid
            raise CLIError(str(err)) from None
        token_grid = (height // config.patch_size, width // config.patch_size)
        used = tuple(int(v) for v in outputs.compressed_grid[0])
        flops = lookupvit_flops(config, (height, width), used, mode="cls", num_labels=config.num_labels)
        gflops = flops.total / 1e9
        full = vit_flops_like(config, (height, width)) / 1e9
        lines = [
            f"**Compressed grid {used[0]}x{used[1]}**: {used[0] * used[1]} compressed tokens run the full layers; "
            f"the {token_grid[0] * token_grid[1]} lookup (patch) tokens only exchange with them."
        ]
        title = f"compressed grid {used[0]}x{used[1]} over the {token_grid[0]}x{token_grid[1]} patch grid"
        picture = compressed_grid_image(
            _model_input_picture(self.processor, inputs["pixel_values"]), token_grid, used, title
        )
        summary = self._summary(
            lines,
            gflops,
            full,
            f"plain ViT of the same size ({token_grid[0] * token_grid[1]} tokens every layer)",
            latency,
        )
        return Analysis(
            self._predictions(outputs.logits[0]), picture, summary, gflops, full, latency, None, outputs.logits[0]
        )

    def _glance_focus(self, inputs, k_ratio, budgeted, budget_gflops, compressed_grid) -> Analysis:
        config = self.config
        height, width = inputs["pixel_values"].shape[-2:]
        if self.budgeted and budgeted:
            thresholds = capped_thresholds(config.budget_thresholds, self.rung_gflops, budget_gflops)
            outputs, latency = self._forward(inputs, exit_thresholds=thresholds)
            cap = "" if budget_gflops is None else f", GFLOPs cap {budget_gflops:.3g}"
            mode = f"**Budgeted** (saved thresholds {[round(t, 3) for t in config.budget_thresholds]}{cap})"
        else:
            outputs, latency = self._forward(inputs, budget=False)
            mode = "**Every step** (no early exit)"
        exit_rung = int(outputs.exit_rung[0])
        boxes = outputs.crop_boxes[0]
        labels = ["glance"] + [
            f"crop ({x0}, {y0})-({x1}, {y1})" if x0 >= 0 else "not taken" for x0, y0, x1, y1 in boxes.tolist()
        ]
        lines = [
            f"{mode}: exits after step **{exit_rung}** of steps 0-{config.num_steps - 1} ({config.patch_size} px "
            f"crops of the {height}x{width} input; the prediction is that step's).",
            "",
            *self._rung_rows(inputs, labels, exit_rung),
        ]
        gflops = float(outputs.flops[0]) / 1e9
        full = _full_resolution_backbone_flops(self.model, height, width) / 1e9
        picture = crop_steps_image(
            _model_input_picture(self.processor, inputs["pixel_values"]),
            boxes,
            config.glance_side,
            f"exits after step {exit_rung}",
        )
        full_name = f"the backbone on the whole {height}x{width} input"
        summary = self._summary(lines, gflops, full, full_name, latency)
        return Analysis(
            self._predictions(outputs.logits[0]), picture, summary, gflops, full, latency, exit_rung, outputs.logits[0]
        )


# per model (weakly held: a model that is freed takes its entry along) and input size
_FULL_BACKBONE_FLOPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _full_resolution_backbone_flops(model, height: int, width: int) -> int:
    """Glance-and-Focus's full-resolution reference: its encoder backbone on the whole input (counted once)."""
    from .models.glance_focus.modeling_glance_focus import count_flops

    counted = _FULL_BACKBONE_FLOPS.setdefault(model, {})
    if (height, width) not in counted:
        parameter = next(model.parameters())
        zeros = torch.zeros(1, model.glance_encoder.num_channels, height, width, dtype=parameter.dtype)
        with torch.no_grad():
            counted[height, width] = count_flops(model.glance_encoder, zeros.to(parameter.device))
    return counted[height, width]


def _rung_gflops(app_model: AppModel) -> list[float]:
    """Cumulative GFLOPs of each rung at the processor's input size (budgeted models), for the cap slider."""
    if not app_model.budgeted:
        return []
    model = app_model.model
    if app_model.family == "glance_focus":
        return [f / 1e9 for f in model.rung_flops()]
    height, width = app_model.input_size()
    zeros = torch.zeros(1, 3, height, width, dtype=model.dtype)
    with torch.inference_mode():
        return [float(f) / 1e9 for f in model(pixel_values=zeros, anytime=True).rung_flops[0]]


def load_app_model(path: str, name: str | None = None) -> AppModel:
    """Load a classifier folder (or Hub id) of any family, with the CLI's checks and messages (`CLIError`)."""
    path = check_model_path(path)
    model, processor = load_model_and_processor(AutoModelForImageClassification, path, None, CLASSIFIER_FAMILIES)
    if not getattr(model.config, "num_labels", 0) or not hasattr(model, "classifier"):
        raise CLIError(f"{path!r} is not an image-classification model (no classifier head)")
    family = model.config.model_type
    if name is None:
        shipped = default_model_paths()
        demo = bool(shipped) and Path(path).resolve() == Path(shipped[0]).resolve()
        name = "LookWhere demo checkpoint (Sparse Digits)" if demo else f"{Path(path).name} ({FAMILY_NAMES[family]})"
    app_model = AppModel(name, path, model, processor, family)
    app_model.rung_gflops = _rung_gflops(app_model)
    height, width = app_model.input_size()  # one warm-up forward: the first call's one-time costs are not latency
    with torch.inference_mode():
        model(pixel_values=torch.zeros(1, 3, height, width, dtype=model.dtype))
    return app_model


# ----------------------------------------------------------------------------------------------------- the page
ERROR_PREFIX = "**Error:** "


def _controls(app_model: AppModel) -> dict:
    """What the controls show for one model: visibility, and the GFLOPs cap slider's range and value (its rungs)."""
    config = app_model.config
    costs = app_model.rung_gflops
    return {
        "k_ratio": {
            "visible": app_model.family == "lookwhere",
            "value": getattr(config, "k_ratio", 0.1),
            "interactive": not app_model.budgeted,  # budgeted mode picks k per image; untick it to set k
        },
        "budgeted": {"visible": app_model.budgeted, "value": app_model.budgeted},
        "budget": {
            "visible": app_model.budgeted,
            "minimum": 0.0,
            "maximum": costs[-1] if costs else 1.0,
            "step": (costs[-1] if costs else 1.0) / 1000,
            "value": costs[-1] if costs else 1.0,
        },
        "grid": {
            "visible": app_model.family == "lookupvit",
            "value": app_model.compressed_grids[0] if app_model.compressed_grids else None,
        },
    }


def build_app(model_paths: Sequence[str] | None = None, examples: Sequence[str] | None = None):
    """The Gradio page (a `gradio.Blocks`; call `.launch()`), with one API endpoint, `/predict`.

    Args:
        model_paths: classifier folders / Hub ids of any family for the model picker (default: the shipped demo
            checkpoint). They are loaded now, so a bad folder fails here with the CLI's message (`CLIError`).
        examples: example image files (default: the shipped demo images).
    """
    try:
        import gradio as gr
    except ImportError as err:
        raise CLIError('the app needs Gradio: pip install -e ".[app]" (or pip install gradio)') from err

    model_paths = list(model_paths) if model_paths else default_model_paths()
    if not model_paths:
        raise CLIError("no --model given and no demo checkpoint is shipped in this installation; pass --model")
    models: dict[str, AppModel] = {}
    for path in model_paths:
        app_model = load_app_model(path)
        if app_model.name in models:
            app_model.name = f"{app_model.name} [{app_model.path}]"
        models[app_model.name] = app_model
    first = next(iter(models.values()))
    examples = list(examples) if examples is not None else example_images()

    def predict(model_name, image_path, k_ratio, budgeted, budget_gflops, compressed_grid):
        """One image through the chosen model: `(top predictions, picture, Markdown summary)`; errors become a
        Markdown message (no traceback)."""
        if model_name not in models:
            return None, None, f"{ERROR_PREFIX}unknown model {model_name!r}; pick one of {sorted(models)}"
        if not image_path:
            return None, None, "Upload an image or pick an example."
        try:
            image = read_image(image_path)
            analysis = models[model_name].analyze(image, k_ratio, bool(budgeted), budget_gflops, compressed_grid)
        except CLIError as err:
            return None, None, f"{ERROR_PREFIX}{err}"
        size = _shown(image).shape
        family = FAMILY_NAMES[models[model_name].family]
        header = f"Input: {size[1]}x{size[0]} px; model: {model_name}" + (
            "" if family in model_name else f" ({family})"
        )
        return analysis.predictions, analysis.picture, f"{header}\n\n{analysis.summary}"

    def on_model(model_name):
        controls = _controls(models[model_name])
        controls["grid"]["choices"] = models[model_name].compressed_grids
        return (
            gr.update(**controls["k_ratio"]),
            gr.update(**controls["budgeted"]),
            gr.update(**controls["budget"]),
            gr.update(**controls["grid"]),
        )

    # The components' own bounds and choices cover every model, because API calls are checked against them (a page
    # narrows them to the chosen model): the GFLOPs cap runs from 0 to the costliest ladder (a cap at or above a
    # model's last rung is its saved rule), the grid list holds every LookupViT's grids.
    def on_budgeted(model_name, budgeted):
        return gr.update(interactive=not (budgeted and models[model_name].budgeted))

    start = _controls(first)
    highest = max([m.rung_gflops[-1] for m in models.values() if m.rung_gflops] or [1.0])
    start["budget"].update(maximum=highest, step=highest / 1000)
    start["grid"]["choices"] = list(dict.fromkeys(g for m in models.values() for g in m.compressed_grids))
    with gr.Blocks(title="LookWhere: see where it looks") as demo:
        gr.Markdown(
            "# See where it looks\nLookWhere, LookupViT and Glance-and-Focus: adaptive-computation vision models "
            "for `transformers`. Drop in an image (any size, grayscale, RGBA, 16-bit) or pick an example."
        )
        with gr.Row():
            with gr.Column(scale=1):
                model_box = gr.Dropdown(list(models), value=first.name, label="Model", elem_id="model")
                image_box = gr.Image(
                    type="filepath", image_mode=None, label="Image", sources=["upload", "clipboard"], elem_id="image"
                )
                _tolerant_upload(image_box)
                k_slider = gr.Slider(
                    0.01,
                    1.0,
                    step=0.01,
                    label="k_ratio: share of patches computed (fixed k)",
                    elem_id="k_ratio",
                    **start["k_ratio"],
                )
                budget_box = gr.Checkbox(
                    label="Budgeted: exit early with the saved thresholds", elem_id="budgeted", **start["budgeted"]
                )
                budget_slider = gr.Slider(
                    label="GFLOPs cap per image (max = the saved rule)", elem_id="budget", **start["budget"]
                )
                grid_box = gr.Dropdown(
                    label="Compressed grid", elem_id="grid", allow_custom_value=True, **start["grid"]
                )
                if examples:
                    gr.Examples(examples, inputs=image_box, label="Examples (the shipped demo images)")
            with gr.Column(scale=2):
                label_box = gr.Label(num_top_classes=TOP_K, label="Top predictions", elem_id="predictions")
                picture_box = gr.Image(type="pil", label="What the model did", elem_id="picture", format="png")
                summary_box = gr.Markdown(elem_id="summary")
        inputs = [model_box, image_box, k_slider, budget_box, budget_slider, grid_box]
        outputs = [label_box, picture_box, summary_box]
        # One forward at a time, whichever event asks (the latency shown is then the model's alone); the API
        # endpoint first: the private events below would otherwise take the name `predict`.
        one_at_a_time = {"concurrency_id": "forward", "concurrency_limit": 1}
        image_box.change(predict, inputs, outputs, api_name="predict", **one_at_a_time)
        model_box.change(
            on_model, model_box, [k_slider, budget_box, budget_slider, grid_box], api_visibility="private"
        ).then(predict, inputs, outputs, api_visibility="private", **one_at_a_time)
        for slider in (k_slider, budget_slider):
            slider.release(predict, inputs, outputs, api_visibility="private", **one_at_a_time)
        grid_box.change(predict, inputs, outputs, api_visibility="private", **one_at_a_time)
        budget_box.change(on_budgeted, [model_box, budget_box], k_slider, api_visibility="private").then(
            predict, inputs, outputs, api_visibility="private", **one_at_a_time
        )
    demo.app_models = models
    return demo


def _tolerant_upload(image_box) -> None:
    """Make a `gr.Image`'s upload step never fail: a file PIL cannot open reaches `predict` as its path, so that the
    page shows the CLI's message for it (Gradio's own check would show a bare "Error"). Patched on the instance: a
    subclass of a Gradio component would make Gradio write a `.pyi` stub next to this file."""
    plain = image_box.preprocess

    def preprocess(payload):
        try:
            return plain(payload)
        except Exception:  # unreadable or oversized files: `read_image` says why
            return None if payload is None or payload.path is None else str(payload.path)

    image_box.preprocess = preprocess


def main(model_paths: Sequence[str] | None = None, port: int | None = None, host: str | None = None, **launch):
    """Build the page and serve it (blocking)."""
    demo = build_app(model_paths)
    demo.launch(server_name=host, server_port=port, **launch)
    return 0
