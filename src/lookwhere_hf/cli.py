"""The `lookwhere-hf` command line: demo, predict, visualize, convert, export, benchmark, app.

```bash
lookwhere-hf demo                                   # LookWhere vs full-resolution DINOv2: speed + where it looked
lookwhere-hf predict photo.jpg --model MODEL_DIR    # top-5 classes per image
lookwhere-hf visualize photo.jpg --model MODEL_DIR --output where.png
lookwhere-hf convert --checkpoint_path lookwhere_dinov2.pt --output_dir lookwhere-dinov2-hf
lookwhere-hf convert-gfnet --checkpoint_path resnet50_patch_size_96_T_5.pth.tar --output_dir gfnet-resnet50-96
lookwhere-hf export --format onnx MODEL_DIR model.onnx   # lookwhere_hf.export: ONNX / .pt2, checked vs eager
lookwhere-hf benchmark --quick                      # lookwhere_hf.benchmarking: latency, FLOPs, memory
lookwhere-hf app [--model DIR ...] [--port N]       # lookwhere_hf.app: interactive Gradio page (.[app] extra)
```

Every subcommand has `--help`. Bad inputs (missing files, out-of-range values) end with exit status 2 and a
one-line message on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import AutoModel, AutoModelForImageClassification, PretrainedConfig, pipeline
from transformers.utils import logging as hf_logging

from . import demo_assets
from .benchmarking import build_full_resolution_model, random_weight_model, time_interleaved
from .demo_assets import ASSETS
from .flops import format_flops, full_resolution_flops, lookwhere_flops
from .models.lookwhere.configuration_lookwhere import LookWhereConfig
from .models.lookwhere.convert_lookwhere_original_to_hf import main as convert_main
from .models.lookwhere.image_processing_lookwhere import LookWhereImageProcessor
from .models.lookwhere.modeling_lookwhere import LookWhereModel
from .user_inputs import CLASSIFIER_FAMILIES, check_model_path, load_model_and_processor, open_image_file
from .user_inputs import UserInputError as CLIError  # a user error: one line on stderr, exit status 2
from .utils import k_ratio_argument, positive_int_argument
from .visualization import save_selection_figure

__all__ = ["main", "default_demo_model_path", "demo_image_paths"]

PROG = "lookwhere-hf"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (`lookwhere-hf predict: error: ... (see --help)`) and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


# ----------------------------------------------------------------------------------------------------- helpers
def default_demo_model_path() -> str | None:
    """[`lookwhere_hf.demo_assets.default_demo_model_path`] in this module's `ASSETS` (the package's assets)."""
    return demo_assets.default_demo_model_path(ASSETS)


def demo_image_paths() -> list[str]:
    """[`lookwhere_hf.demo_assets.demo_image_paths`] in this module's `ASSETS` (the package's assets)."""
    return demo_assets.demo_image_paths(ASSETS)


def _check_image_files(paths) -> list[Path]:
    files = []
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise CLIError(f"image file not found: {path}")
        if not path.is_file():
            raise CLIError(f"not a file: {path} (pass image files, e.g. photo.jpg)")
        files.append(path)
    return files


def _resolve_model_path(model: str | None) -> str:
    if model is None:
        model = default_demo_model_path()
        if model is None:
            raise CLIError(
                "no --model given and no demo checkpoint is shipped in this installation; pass --model with a folder "
                "written by save_pretrained (or by `lookwhere-hf convert`)"
            )
        return model
    return check_model_path(model)


def _warn_if_busy() -> None:
    """Timings on an oversubscribed CPU mostly measure the other processes; say so."""
    try:
        load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    except (OSError, AttributeError):
        return
    if load > cpus:
        print(
            f"  (the machine is busy: load average {load:.1f} on {cpus} CPUs, so the timings are noisy; many "
            "small multi-threaded ops suffer most, try --threads 1)"
        )


def _tiny_demo_config() -> LookWhereConfig:
    backbone = dict(hidden_size=64, num_attention_heads=2, patch_size=14, num_register_tokens=4, mlp_ratio=4)
    return LookWhereConfig(
        selector_config=dict(backbone, num_hidden_layers=1, image_size=56),
        extractor_config=dict(backbone, num_hidden_layers=2, image_size=224),
        selector_pretrain_grid=16,
        k_ratio=0.1,
    )


# ----------------------------------------------------------------------------------------------------- commands
def cmd_demo(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if args.tiny and args.vit_b:
        raise CLIError("--tiny and --vit-b exclude each other; pick one")
    if args.model and (args.tiny or args.vit_b):
        raise CLIError("--model cannot be combined with --tiny / --vit-b (those use random weights)")
    random_weights = args.tiny or args.vit_b
    model_path = (
        None if random_weights else (_resolve_model_path(args.model) if args.model else default_demo_model_path())
    )

    trained = model_path is not None
    if trained:
        print(f"Loading the LookWhere model from {model_path}")
        # A classifier folder classifies the examples; a bare model folder (converted or pretrained) is loaded as
        # what it is, for the timing and the pictures (its missing head would be random).
        saved = PretrainedConfig.get_config_dict(model_path)[0].get("architectures") or []
        classifier = any(name.endswith("ForImageClassification") for name in saved)
        auto_class = AutoModelForImageClassification if classifier else AutoModel
        model, processor = load_model_and_processor(auto_class, model_path, args.k_ratio)
        body = model.lookwhere if hasattr(model, "lookwhere") else model
    else:
        config = _tiny_demo_config() if args.tiny else LookWhereConfig()
        if args.k_ratio is not None:
            config.k_ratio = args.k_ratio
        config._attn_implementation = "sdpa"
        what = "a tiny" if args.tiny else "a ViT-B/14"
        why = "as asked" if random_weights else "no trained checkpoint is shipped in this installation"
        print(f"Building {what} LookWhere model with RANDOM weights ({why}).")
        model = body = random_weight_model(LookWhereModel, config, seed=0)
        processor = LookWhereImageProcessor.from_model_config(config)
    config = body.config
    size = processor.size["height"] if isinstance(processor.size, dict) else processor.size.height
    width = processor.size["width"] if isinstance(processor.size, dict) else processor.size.width
    if size != width:
        raise CLIError(f"the demo expects a square processor size, got {size}x{width}")

    # 1. classify the shipped example images (trained checkpoint only)
    images = [Path(p) for p in demo_image_paths()] if trained else []
    pictures = []
    if trained and hasattr(model, "classifier") and images:
        print(f"\nClassifying {len(images)} example images from {images[0].parent}:")
        for path in images:
            image = open_image_file(path)
            with torch.inference_mode():
                outputs = model(**processor(image, return_tensors="pt"))
            probs = outputs.logits.softmax(-1)[0]
            score, label = probs.max(0)
            print(f"  {path.name:<28} -> {model.config.id2label[int(label)]} ({float(score):.1%})")
            pictures.append((path.stem, image, outputs.selector_map[0], outputs.selected_indices[0]))

    # 2. time LookWhere against the full-resolution model on a real photo
    if pictures:
        photo_name, photo = images[0].name, pictures[0][1]
    else:
        try:
            from skimage import data
        except ImportError as err:
            raise CLIError("the random-weights demo times a scikit-image photo: pip install scikit-image") from err
        photo_name, photo = "skimage astronaut", Image.fromarray(data.astronaut())
    inputs = processor(photo, return_tensors="pt")
    grid = (size // config.patch_size, size // config.patch_size)
    k = config.num_selected(grid[0] * grid[1])
    print(
        f"\nTiming on {photo_name} at {size}x{size}, batch 1, {torch.get_num_threads()} threads, "
        f"k = {k} of {grid[0] * grid[1]} patches ({config.k_ratio:.0%}):"
    )
    _warn_if_busy()
    full = build_full_resolution_model(config, size)
    with torch.inference_mode():
        calls = {"LookWhere": lambda: body(**inputs), "full": lambda: full(pixel_values=inputs["pixel_values"])}
        timings = time_interleaved(calls, args.repeats, warmup=1, desc="timing")
        outputs = body(**inputs)
    lookwhere_time, full_time = timings["LookWhere"].median, timings["full"].median
    lw_flops = lookwhere_flops(config, size).total
    full_flops = full_resolution_flops(config, size)
    print(f"  LookWhere                      {lookwhere_time * 1e3:8.1f} ms   {format_flops(lw_flops)}")
    print(
        f"  full-resolution DINOv2-reg     {full_time * 1e3:8.1f} ms   {format_flops(full_flops)}"
        "   (transformers Dinov2WithRegistersModel, same size, SDPA, random weights: speed does not depend on them)"
    )
    print(f"  speedup {full_time / lookwhere_time:.1f}x measured, {full_flops / lw_flops:.1f}x fewer FLOPs")
    if not pictures:
        pictures.append(("astronaut", photo, outputs.selector_map[0], outputs.selected_indices[0]))

    # 3. pictures of where the selector looked
    print()
    note = "" if trained else " (random weights: the selection is arbitrary)"
    for stem, image, selector_map, indices in pictures:
        path = output_dir / f"where_{stem}.png"
        title = f"LookWhere on {stem}{note}"
        save_selection_figure(image, selector_map, indices, grid, path, title=title)
        print(f"Saved where the selector looked: {path}")
    if not trained:
        print(
            "\nNOTE: the LookWhere weights are RANDOM, so the selection and features are meaningless; the timings "
            "and FLOPs are representative. Pass --model with a trained checkpoint for real predictions."
        )
    return 0


def cmd_predict(args) -> int:
    files = _check_image_files(args.images)
    images = [open_image_file(path) for path in files]  # fail on unreadable files before loading the model
    model_path = _resolve_model_path(args.model)
    model, processor = load_model_and_processor(
        AutoModelForImageClassification, model_path, args.k_ratio, CLASSIFIER_FAMILIES
    )
    if not getattr(model.config, "num_labels", 0) or not hasattr(model, "classifier"):
        raise CLIError(f"{model_path!r} is not an image-classification model (no classifier head)")
    if args.budget is not None:
        _check_budget(model.config, processor, args.budget, args.k_ratio)
    classifier = pipeline("image-classification", model=model, image_processor=processor, device=args.device)
    top_k = min(args.top_k, model.config.num_labels)
    results = []
    pairs = list(zip(files, images, strict=True))
    for path, image in tqdm(pairs, desc="predicting", disable=len(files) < 2, file=sys.stderr):
        with torch.inference_mode():
            predictions = classifier(image, top_k=top_k)
        results.append({"image": str(path), "predictions": predictions})
        if not args.json:
            best = ", ".join(f"{p['label']} ({p['score']:.1%})" for p in predictions)
            print(f"{path}: {best}")
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


def _check_budget(config, processor, budget: float, k_ratio: float | None) -> None:
    """`predict --budget GFLOPS`: the saved exit thresholds must exist, fit the budget and match the input size.

    Exit thresholds are fitted on held-out data (`lookwhere_hf.budget.calibrate_budget`), which `predict` does not
    have, so `--budget` checks the saved calibration against the budget instead of fitting one."""
    if k_ratio is not None:
        raise CLIError("--budget and --k-ratio exclude each other (budgeted inference picks k per image)")
    if getattr(config, "budget_thresholds", None) is None:
        raise CLIError(
            "this model has no budget thresholds; fit them on a held-out split with "
            "lookwhere_hf.budget.calibrate_budget(model, eval_data, target_gflops) and save the model"
        )
    expected = config.budget_expected_gflops
    if expected is not None and expected > budget:
        raise CLIError(
            f"the saved thresholds spend {expected:.3g} GFLOPs per image on their calibration split (target "
            f"{config.budget_target_gflops:.3g}), more than --budget {budget:g}; recalibrate for this budget"
        )
    # The size the model sees: the centre crop when the processor crops (Glance-and-Focus), else the resize.
    size = (getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None) or {}
    size = size or getattr(processor, "size", None) or {}
    calibrated = config.budget_image_size
    if calibrated is not None and [size.get("height"), size.get("width")] != list(calibrated):
        raise CLIError(
            f"the thresholds were calibrated at {config.budget_image_size[0]}x{config.budget_image_size[1]} pixels but "
            f"the image processor resizes to {size.get('height')}x{size.get('width')}; the rung costs differ"
        )
    config.use_budget = True
    if expected is not None:
        accuracy = config.budget_calibration_accuracy
        note = f", accuracy {accuracy:.1%}" if accuracy is not None else ""
        print(f"budgeted inference: {expected:.3g} GFLOPs per image on the calibration split{note}", file=sys.stderr)


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not number > 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}")
    return number


def cmd_visualize(args) -> int:
    (path,) = _check_image_files([args.image])
    output = Path(args.output)
    if output.suffix.lower() != ".png":
        raise CLIError(f"--output must be a .png file, got {output}")
    image = open_image_file(path)
    model_path = _resolve_model_path(args.model)
    model, processor = load_model_and_processor(AutoModel, model_path, args.k_ratio)
    inputs = processor(image, return_tensors="pt")
    with torch.inference_mode():
        outputs = model(**inputs)
    p = model.config.patch_size
    grid = (inputs["pixel_values"].shape[-2] // p, inputs["pixel_values"].shape[-1] // p)
    k = outputs.selected_indices.shape[1]
    width, height = save_selection_figure(
        image,
        outputs.selector_map[0],
        outputs.selected_indices[0],
        grid,
        output,
        title=f"{path.name}: k = {k} of {grid[0] * grid[1]} patches",
    )
    print(f"Saved the selector heat map and the {k} chosen patches ({width}x{height} px): {output}")
    return 0


def cmd_export(args) -> int:
    from .export import ExportError, export_lookwhere

    model_path = _resolve_model_path(args.model)
    if args.check_image is not None:
        _check_image_files([args.check_image])
    hf_logging.set_verbosity_error()
    try:
        result = export_lookwhere(
            model_path,
            args.output,
            format=args.format,
            image_size=args.image_size,
            k=args.k,
            compressed_grid=args.compressed_grid,
            batch_size=args.batch_size,
            dense_features=args.dense_features,
            cls_only=args.cls_only,
            check=not args.skip_check,
            tolerance=args.tolerance,
            check_image=args.check_image,
        )
    except ExportError as err:
        raise CLIError(str(err)) from None
    batch = "dynamic" if result.batch_size is None else result.batch_size
    grid = result.compressed_grid
    point = f"k = {result.k}" if grid is None else f"compressed grid {grid[0]}x{grid[1]}"
    print(
        f"Wrote {result.path} ({result.model_class}, {result.image_size}x{result.image_size} px, {point}, "
        f"batch {batch}; outputs {', '.join(result.output_names)}) and {result.path}.json"
    )
    return 0


def _compressed_grid_argument(value: str) -> tuple[int, int]:
    """`--compressed-grid S` (an S x S grid) or `HxW`."""
    parts = value.lower().split("x")
    if len(parts) in (1, 2) and all(part.strip().isdigit() and int(part) >= 1 for part in parts):
        return (int(parts[0]), int(parts[-1]))
    raise argparse.ArgumentTypeError(f"expected a grid such as 7 or 7x5 (positive ints), got {value!r}")


def cmd_app(args) -> int:
    from .app import main as app_main

    return app_main(args.model or None, port=args.port, host=args.host, share=False)


def cmd_benchmark(argv: list[str]) -> int:
    from .benchmarking import main as benchmark_main

    return benchmark_main(argv, prog=f"{PROG} benchmark")


def cmd_convert(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(f"usage: {PROG} convert [converter arguments]  (the arguments of convert_lookwhere_original_to_hf)\n")
    return convert_main(argv) or 0


def cmd_convert_gfnet(argv: list[str]) -> int:
    from .models.glance_focus.convert_gfnet_original_to_hf import main as convert_gfnet_main

    if any(a in ("-h", "--help") for a in argv):
        print(f"usage: {PROG} convert-gfnet [converter arguments]  (the arguments of convert_gfnet_original_to_hf)\n")
    return convert_gfnet_main(argv) or 0


# ----------------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="LookWhere: learning where to look. Demo, inference and tools.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    demo = sub.add_parser(
        "demo",
        help="time LookWhere against a full-resolution DINOv2 and save a picture of where it looked",
        description=(
            "Runs LookWhere and a same-size full-resolution transformers Dinov2WithRegistersModel (random weights, "
            "SDPA) on a real photo, prints both latencies and the speedup, and saves a picture of where the selector "
            "looked. Uses the trained checkpoint shipped in the package (and classifies its example images) when "
            "there is one, otherwise a ViT-B/14 LookWhere with random weights (and says so)."
        ),
    )
    demo.add_argument(
        "--output-dir", default="lookwhere_demo", help="where the pictures go (default: ./lookwhere_demo)"
    )
    demo.add_argument(
        "--model", default=None, help="a LookWhere image-classification folder to use instead of the shipped one"
    )
    demo.add_argument("--tiny", action="store_true", help="a tiny random model (a smoke test; seconds)")
    demo.add_argument(
        "--vit-b",
        action="store_true",
        help="ignore the shipped checkpoint: time a random-weight ViT-B/14 LookWhere (the released size) against a "
        "ViT-B/14 DINOv2 at 518 px",
    )
    demo.add_argument(
        "--k-ratio", type=k_ratio_argument, default=None, help="fraction of high-res patches computed, in (0, 1]"
    )
    demo.add_argument(
        "--repeats", type=positive_int_argument, default=3, help="timed runs per model after one warm-up (default 3)"
    )
    demo.add_argument(
        "--threads", type=positive_int_argument, default=None, help="torch CPU threads (default: torch's choice)"
    )

    predict = sub.add_parser(
        "predict",
        help="classify images with a LookWhere, LookupViT or Glance-and-Focus image-classification model",
        description="Prints the top classes of each image (or JSON with --json).",
    )
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    predict.add_argument("--model", default=None, help="model folder or Hub id (default: the shipped demo checkpoint)")
    predict.add_argument(
        "--k-ratio", type=k_ratio_argument, default=None, help="fraction of high-res patches computed, in (0, 1]"
    )
    predict.add_argument(
        "--budget",
        type=_positive_float,
        default=None,
        metavar="GFLOPS",
        help="budgeted inference with the model's saved exit thresholds, checked to spend at most GFLOPS per image "
        "on average (fit them with lookwhere_hf.budget.calibrate_budget)",
    )
    predict.add_argument("--top-k", type=positive_int_argument, default=5, help="classes printed per image (default 5)")
    predict.add_argument("--json", action="store_true", help="print the predictions as JSON")
    predict.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: cpu)")

    visualize = sub.add_parser(
        "visualize",
        help="save the selector heat map and the chosen patches over an image as PNG",
        description="Runs the selector and extractor on IMAGE and saves a two-panel PNG (1000x500 px).",
    )
    visualize.add_argument("image", metavar="IMAGE", help="image file")
    visualize.add_argument(
        "--model", default=None, help="LookWhere model folder or Hub id (default: the shipped demo checkpoint)"
    )
    visualize.add_argument("--output", required=True, metavar="PNG", help="output .png file")
    visualize.add_argument(
        "--k-ratio", type=k_ratio_argument, default=None, help="fraction of high-res patches computed, in (0, 1]"
    )

    sub.add_parser(
        "convert",
        help="convert an official LookWhere .pt checkpoint to a save_pretrained folder (see `convert --help`)",
        add_help=False,
    )
    export = sub.add_parser(
        "export",
        help="export a LookWhere or LookupViT model to ONNX or a torch.export program (.pt2), checked against the "
        "eager model",
        description=(
            "Exports a LookWhere model's fixed-k forward (selection inside the graph), or a LookupViT model's forward "
            "at a fixed compressed grid, at one image size, loads the file back (ONNX Runtime CPU / "
            "torch.export.load) and compares it with the eager model on a seeded random input and a real image; "
            "fails (exit status 2, file removed) beyond the tolerance. See lookwhere_hf.export."
        ),
    )
    export.add_argument("model", metavar="MODEL_DIR", help="a LookWhere or LookupViT folder written by save_pretrained")
    export.add_argument("output", metavar="OUT", help="the file to write: .onnx (--format onnx) or .pt2 (torch)")
    export.add_argument("--format", choices=("onnx", "torch"), default="onnx", help="default: onnx")
    export.add_argument(
        "--image-size", type=positive_int_argument, default=None, help="square input side in px (default: config's)"
    )
    export.add_argument(
        "--k",
        type=positive_int_argument,
        default=None,
        help="LookWhere: high-res patches computed (default: config's k_ratio)",
    )
    export.add_argument(
        "--compressed-grid",
        type=_compressed_grid_argument,
        default=None,
        metavar="HxW",
        help="LookupViT: the compressed-token grid, S or HxW (default: config's compressed_grid)",
    )
    export.add_argument(
        "--batch-size",
        type=positive_int_argument,
        default=1,
        help="batch size of LookWhere graphs with dense outputs (others get a dynamic batch dimension; default 1)",
    )
    export.add_argument(
        "--dense-features", action="store_true", help="bare LookWhereModel only: also output the dense features"
    )
    export.add_argument(
        "--cls-only",
        action="store_true",
        help="bare LookWhereModel only: the extractor's last layer computes the CLS token only (last_hidden_state "
        "(B, 1, D); the classification model always does this)",
    )
    export.add_argument(
        "--check-image", default=None, metavar="IMAGE", help="the real image of the check (default: a shipped one)"
    )
    export.add_argument(
        "--tolerance",
        type=_positive_float,
        default=1e-4,
        help="allowed max abs difference per output, times max(1, max |eager output|) (default 1e-4)",
    )
    export.add_argument("--skip-check", action="store_true", help="write the file without the parity check")
    app = sub.add_parser(
        "app",
        help="interactive Gradio page: predictions, where LookWhere looks, budgets, LookupViT grids, GFNet crops",
        description=(
            'Serves a Gradio page (pip install -e ".[app]") for the shipped demo checkpoint and every --model '
            "folder (LookWhere, LookupViT or Glance-and-Focus image classifiers), with the demo images as examples. "
            "Works offline. See lookwhere_hf.app."
        ),
    )
    app.add_argument(
        "--model",
        action="append",
        default=None,
        metavar="DIR",
        help="a classifier folder or Hub id of any family; repeat for a model picker (default: the demo checkpoint)",
    )
    app.add_argument("--port", type=positive_int_argument, default=None, help="port (default: Gradio's, 7860)")
    app.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    sub.add_parser(
        "convert-gfnet",
        help="convert an official Glance-and-Focus (GFNet) .pth.tar checkpoint to a save_pretrained folder",
        add_help=False,
    )
    sub.add_parser(
        "benchmark",
        help="LookWhere vs full-resolution DINOv2: latency, FLOPs, memory (see `benchmark --help`)",
        add_help=False,
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `lookwhere-hf` console script; returns the exit status."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "convert":
            return cmd_convert(argv[1:])
        if argv and argv[0] == "convert-gfnet":
            return cmd_convert_gfnet(argv[1:])
        if argv and argv[0] == "benchmark":
            return cmd_benchmark(argv[1:])
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        commands = {
            "demo": cmd_demo,
            "predict": cmd_predict,
            "visualize": cmd_visualize,
            "export": cmd_export,
            "app": cmd_app,
        }
        return commands[args.command](args)
    except CLIError as err:
        command = argv[0] if argv else ""
        print(f"{PROG} {command}: error: {err}".replace("  ", " "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
