"""The deployment rows of the inference benchmark: `torch.compile`, ONNX Runtime and bf16 autocast on the CPU.

`lookwhere-hf benchmark --compile --onnx --bf16` (any of the three flags) times, in one process and in interleaved
rounds ([`time_interleaved`], so that the machine's load changes hit every variant alike), at batch 1 and
`k = floor(k_ratio * patches)`:

- LookWhere eager float32, CLS path (`model(x, k=k, cls_only=True)`: the extractor's last layer computes the CLS token
  only, as in `LookWhereForImageClassification`) and dense path (`output_dense_features=True`);
- `--compile`: the same two paths through `torch.compile(fullgraph=True, dynamic=False)` (inductor), and the
  full-resolution model eager and compiled (the compiled speedup of both);
- `--onnx`: the two paths exported with [`lookwhere_hf.export.export_lookwhere`] (the selection inside the graph; the
  CLS graph with `cls_only=True`) and
  run by an ONNX Runtime CPU session with the same number of threads; their max abs difference to eager is reported;
- `--packed` (with any of the three): the two paths and the full model with their linear layers on oneDNN-packed
  weights ([`lookwhere_hf.packed_linear`]);
- `--bf16`: the two paths (and the full model) under `torch.autocast("cpu", dtype=torch.bfloat16)`, and the overlap
  of the bf16 top-k selection with the float32 one on real images: the random-weight ViT-B on photos (scikit-image's,
  when installed) and the trained demo checkpoint shipped in the package on its example images.

Models: random-weight ViT-B/14 LookWhere (selector depth 3 at 154 px) and transformers' `Dinov2WithRegistersModel`
(SDPA), as in the rest of the benchmark. The first call of each variant is a warm-up (for the compiled ones it
includes compilation, reported separately).
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ..models.lookwhere.configuration_lookwhere import LookWhereConfig
from ..models.lookwhere.modeling_lookwhere import LookWhereForImageClassification, LookWhereModel
from ..packed_linear import pack_linear_weights
from .timing import build_full_resolution_model, random_weight_model, time_interleaved

__all__ = ["DEPLOYMENT_SECTION", "render_deployment_markdown", "run_deployment_benchmark", "top_k_overlap"]

DEPLOYMENT_SECTION = "## Compile, export, bf16 (CPU)"


def top_k_overlap(indices: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean over the batch of `|indices ∩ reference| / k` for two `(B, k)` selections."""
    shared = [len(set(a.tolist()) & set(b.tolist())) for a, b in zip(indices, reference)]
    return sum(shared) / (reference.shape[0] * reference.shape[1])


def _bf16_overlaps(model: LookWhereModel, resolution: int, k: int) -> dict[str, float]:
    """bf16-vs-fp32 selection overlap on real images: the benchmark model on photos, the shipped demo checkpoint on
    its example images (whatever of the two is available)."""
    from ..demo_assets import default_demo_model_path, demo_image_paths
    from ..models.lookwhere.image_processing_lookwhere import LookWhereImageProcessor

    def overlap(net, pixel_values, k_) -> float:
        with torch.inference_mode():
            fp32 = net(pixel_values, k=k_).selected_indices
            with torch.autocast("cpu", dtype=torch.bfloat16):
                bf16 = net(pixel_values, k=k_).selected_indices
        return top_k_overlap(bf16, fp32)

    result = {}
    try:
        from skimage import data

        photos = [data.astronaut(), data.coffee(), data.chelsea()]
        processor = LookWhereImageProcessor.from_model_config(model.config)
        size = {"height": resolution, "width": resolution}
        pixel_values = processor(photos, size=size, return_tensors="pt")["pixel_values"]
        result["random-weight ViT-B, 3 scikit-image photos"] = overlap(model, pixel_values, k)
    except ImportError:
        pass
    demo = default_demo_model_path()
    if demo is not None:
        from PIL import Image

        net = LookWhereForImageClassification.from_pretrained(demo).eval()
        processor = LookWhereImageProcessor.from_pretrained(demo)
        images = [Image.open(path).convert("RGB") for path in demo_image_paths()]
        pixel_values = processor(images, return_tensors="pt")["pixel_values"]
        grid = pixel_values.shape[-1] // net.config.patch_size
        demo_k = net.config.num_selected(grid * grid)
        label = f"trained demo checkpoint (Sparse Digits), {len(images)} shipped images, k = {demo_k}"
        result[label] = overlap(net, pixel_values, demo_k)
    return result


def run_deployment_benchmark(args: argparse.Namespace, config: LookWhereConfig | None = None) -> list[dict]:
    """One row per resolution: median seconds of every variant, compile times, ONNX parity, bf16 overlaps.

    `args` holds `resolutions`, `k_ratios` (the first is used), `threads`, `compile`, `onnx`, `bf16`, `target_seconds`,
    `min_repeats`, `max_repeats` (see `lookwhere_hf.benchmarking.parse_args`); `config` defaults to the released ViT-B
    size (`LookWhereConfig()`)."""
    torch.set_num_threads(args.threads)
    config = LookWhereConfig() if config is None else config
    config._attn_implementation = "sdpa"
    return [_measure_resolution(args, config, resolution) for resolution in args.resolutions]


def _measure_resolution(args: argparse.Namespace, config: LookWhereConfig, resolution: int) -> dict:
    # Every transformers model's forward runs through one decorator code object (`can_return_tuple`'s wrapper), so all
    # compiled variants share Dynamo's per-code-object cache (8 entries by default), and their graphs guard on the
    # size of transformers' `_CAN_RECORD_REGISTRY`, which grows when a model of a new class is built (here: the full
    # model, the demo checkpoint of the bf16 check): each growth recompiles every variant once at its next call. The
    # warm-up round below runs after all models are built, so the timed calls never compile; the previous
    # resolution's compiled models are not used again.
    torch._dynamo.reset()
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    torch.manual_seed(0)
    pixel_values = torch.randn(1, 3, resolution, resolution)
    grid = resolution // config.patch_size
    k = config.num_selected(grid * grid, max(1, int(args.k_ratios[0] * grid * grid)))
    lookwhere = random_weight_model(LookWhereModel, config)
    full = build_full_resolution_model(config, resolution, attn_implementation="sdpa")
    row = {"resolution": resolution, "k": k, "threads": args.threads, "compile_s": {}, "parity": {}}

    def lw(net, dense):  # the CLS path runs the CLS-only last extractor layer, as the classification model does
        if dense:
            return lambda: net(pixel_values, k=k, output_dense_features=True)
        return lambda: net(pixel_values, k=k, cls_only=True)

    calls = {
        ("eager", "cls"): lw(lookwhere, False),
        ("eager", "dense"): lw(lookwhere, True),
        ("full eager", "cls"): lambda: full(pixel_values=pixel_values),
    }
    if args.onnx:  # exported outside inference mode (torch.export traces with autograd's tensors)
        from ..export import export_lookwhere, onnx_session, run_exported

        with torch.no_grad():
            eager = lookwhere(pixel_values, k=k, output_dense_features=True)
        # The sessions hold the graphs in memory: the files (~0.5 GB each at ViT-B) are removed once they are loaded.
        with tempfile.TemporaryDirectory(prefix="lookwhere_onnx_") as folder:
            for mode, dense in (("cls", False), ("dense", True)):
                result = export_lookwhere(
                    lookwhere, Path(folder) / f"{mode}.onnx", image_size=resolution, k=k, dense_features=dense,
                    cls_only=not dense, check=False, log=None,
                )  # fmt: skip
                session = onnx_session(result.path, num_threads=args.threads)
                names = result.output_names
                calls[("onnx", mode)] = lambda s=session, n=names: run_exported(s, pixel_values, n)
                row["parity"][f"onnx {mode}"] = _parity(run_exported(session, pixel_values, names), eager)
    with torch.inference_mode():
        if args.compile:
            compiled = torch.compile(lookwhere, fullgraph=True, dynamic=False)
            compiled_full = torch.compile(full, fullgraph=True, dynamic=False)
            for key, fn in (
                (("compiled", "cls"), lw(compiled, False)),
                (("compiled", "dense"), lw(compiled, True)),
                (("full compiled", "cls"), lambda: compiled_full(pixel_values=pixel_values)),
            ):
                start = time.perf_counter()
                out = fn()
                row["compile_s"][" ".join(key)] = time.perf_counter() - start
                calls[key] = fn
            eager = lookwhere(pixel_values, k=k, output_dense_features=True)
            got = compiled(pixel_values, k=k, output_dense_features=True)
            row["parity"]["compiled"] = _parity(got, eager)
            del out
        if getattr(args, "packed", False):  # copies on oneDNN-packed linear weights (lookwhere_hf.packed_linear)
            packed, packed_full = copy.deepcopy(lookwhere), copy.deepcopy(full)
            if not (pack_linear_weights(packed) and pack_linear_weights(packed_full)):
                raise RuntimeError("--packed: no linear layer was packed; this torch build has no oneDNN linear.")
            calls[("packed", "cls")] = lw(packed, False)
            calls[("packed", "dense")] = lw(packed, True)
            calls[("full packed", "cls")] = lambda: packed_full(pixel_values=pixel_values)
            row["parity"]["packed"] = _parity(
                packed(pixel_values, k=k, output_dense_features=True),
                lookwhere(pixel_values, k=k, output_dense_features=True),
            )
        if args.bf16:

            def autocast(fn):
                def run():
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        return fn()

                return run

            calls[("bf16", "cls")] = autocast(lw(lookwhere, False))
            calls[("bf16", "dense")] = autocast(lw(lookwhere, True))
            calls[("full bf16", "cls")] = autocast(lambda: full(pixel_values=pixel_values))
            row["bf16_overlap"] = _bf16_overlaps(lookwhere, resolution, k)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                got = lookwhere(pixel_values, k=k, output_dense_features=True)
            row["parity"]["bf16"] = _parity(got, lookwhere(pixel_values, k=k, output_dense_features=True))

        first = {}
        for key, fn in calls.items():  # warm-up (the compiled ones are compiled already)
            start = time.perf_counter()
            fn()
            first[key] = time.perf_counter() - start
        slowest = max(first.values())
        repeats = max(args.min_repeats, min(args.max_repeats, math.ceil(args.target_seconds / slowest)))
        timings = time_interleaved(calls, repeats, desc=f"{resolution} px")
    row["seconds"] = {" ".join(key): statistics.median(t.wall) for key, t in timings.items()}
    row["repeats"] = repeats
    return row


def _parity(got, eager) -> dict:
    """Max abs differences (relative to `max(1, max |eager|)`) of CLS and dense features, and the selection overlap."""

    def get(outputs, name):
        return outputs[name] if isinstance(outputs, dict) else getattr(outputs, name)

    result = {"overlap": top_k_overlap(get(got, "selected_indices"), eager.selected_indices)}
    for name in ("pooler_output", "dense_features"):
        try:
            value = get(got, name)
        except (KeyError, AttributeError):
            continue
        if value is None:
            continue
        reference = get(eager, name).float()
        result[name] = float((value.float() - reference).abs().max()) / max(1.0, float(reference.abs().max()))
    return result


def render_deployment_markdown(rows: list[dict], machine: str, command: str, started: str, loads: tuple) -> str:
    """The "Compile, export, bf16 (CPU)" section: one table per resolution, then parity and selection overlap."""
    lines = [
        DEPLOYMENT_SECTION,
        "",
        f"Measured {started} with `{command}`: {machine}. Load average {loads[0]} at the start, {loads[1]} at the end. "
        "The machine is shared and noisy: compare the ratios within one table (one process, interleaved rounds), not "
        "the absolute seconds across runs. Batch 1, random weights (ViT-B/14 LookWhere, selector depth 3 at 154 px; "
        "the full model: transformers `Dinov2WithRegistersModel`, SDPA).",
        "",
    ]
    names = {
        "eager": "LookWhere eager fp32",
        "compiled": "LookWhere `torch.compile` (inductor)",
        "onnx": "LookWhere ONNX Runtime (CPU)",
        "bf16": "LookWhere bf16 autocast",
        "packed": "LookWhere eager fp32, packed linear weights",
        "full eager": "full DINOv2-reg eager fp32",
        "full compiled": "full DINOv2-reg `torch.compile`",
        "full bf16": "full DINOv2-reg bf16 autocast",
        "full packed": "full DINOv2-reg eager fp32, packed linear weights",
    }
    for row in rows:
        seconds = row["seconds"]
        eager_cls, full_eager = seconds["eager cls"], seconds["full eager cls"]
        lines += [
            f"**{row['resolution']} px, k = {row['k']}, {row['threads']} threads** ({row['repeats']} interleaved "
            "rounds, medians):",
            "",
            "| variant | CLS s | dense s | CLS vs eager LookWhere | speedup vs full eager |",
            "|---|---|---|---|---|",
        ]
        for variant, label in names.items():
            cls_s = seconds.get(f"{variant} cls")
            if cls_s is None:
                continue
            dense_s = seconds.get(f"{variant} dense")
            dense = f"{dense_s:.3f}" if dense_s is not None else ""
            lines.append(f"| {label} | {cls_s:.3f} | {dense} | {eager_cls / cls_s:.2f}x | {full_eager / cls_s:.1f}x |")
        if "full compiled cls" in seconds:
            lines.append("")
            lines.append(
                f"Compiled over eager: LookWhere {eager_cls / seconds['compiled cls']:.2f}x (CLS), "
                f"{seconds['eager dense'] / seconds['compiled dense']:.2f}x (dense); full model "
                f"{full_eager / seconds['full compiled cls']:.2f}x. Compile time (first call): "
                + ", ".join(f"{name} {value:.0f} s" for name, value in row["compile_s"].items())
                + "."
            )
        if row["parity"]:
            lines += ["", "Agreement with eager fp32 (max abs difference / max(1, max |eager|); top-k overlap):", ""]
            for name, parity in row["parity"].items():
                parts = [f"{key} {value:.1e}" for key, value in parity.items() if key != "overlap"]
                lines.append(f"- {name}: {', '.join(parts)}; selected patches overlap {parity['overlap']:.1%}")
        if row.get("bf16_overlap"):
            lines += ["", "bf16 autocast vs fp32 selection on real images (mean |top-k ∩ top-k| / k):", ""]
            lines += [f"- {name}: {value:.1%}" for name, value in row["bf16_overlap"].items()]
        lines.append("")
    return "\n".join(lines)
