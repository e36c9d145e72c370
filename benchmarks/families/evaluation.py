"""Evaluate one training seed of every family: budgets calibrated on **validation**, numbers on **test**.

Per seed (`evaluate_seed`): accuracy and analytic GFLOPs of the teacher, LookWhere at each fixed k, each rung of the
multi-rung models, budgeted LookWhere (thresholds fitted on validation for means of teacher GFLOPs /
`--budget_speedups`, with and without the glance exit), LookupViT at each compressed grid and Glance-and-Focus at
each step count and budget; where they look (LookWhere's selector against the teacher's own attention map and the
exact chance level of k random patches; Glance-and-Focus's crops against the exact chance of random crops); the exit
shares of every budget; `FlopCounterMode`'s count against the analytic FLOPs; CPU latency at batch 1 and 16,
interleaved in one process.

When the annotations give item sizes (`size_bin`), every accuracy, hit rate and exit share also comes per size bin
(`*_per_bin`: `{bin: value}`, NaN for a bin without test images).
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import torch
from geometry import (
    crop_hits,
    patch_overlaps,
    processed_boxes,
    random_crop_hit_probability,
    random_hit_probability,
    selection_hits,
)
from imagefolder import ImageFolderSplit
from stages import GF_STAGES, seed_paths

FAMILY_HOOKS: dict = {}
"""Further families: name -> object with `evaluate(args, paths, seed, {"validation": split, "test": split}) -> dict`
(its result goes into the seed's results under that name)."""

BATCH = 50


def glance_focus_json(args) -> str:
    """File name of the Glance-and-Focus results in `seed_<s>/eval/` for `--glance_focus_backbone`."""
    return "glance_focus.json" if args.glance_focus_backbone == "teacher" else "glance_focus_resnet.json"


def per_bin(values: torch.Tensor, bins: list[str] | None, names: tuple[str, ...]) -> dict[str, float] | None:
    """Mean of per-image `values` in each size bin (NaN for an empty bin); None without bins."""
    if bins is None:
        return None
    values = values.double()
    out = {}
    for name in names:
        mask = torch.tensor([b == name for b in bins], dtype=torch.bool)
        out[name] = float(values[mask].mean()) if mask.any() else float("nan")
    return out


def _with_bins(point: dict, key: str, values: torch.Tensor, bins, names) -> dict:
    """`point[key]` = the mean of `values`, and `point[key + "_per_bin"]` with bins."""
    point[key] = float(values.double().mean())
    by_bin = per_bin(values, bins, names)
    if by_bin is not None:
        point[f"{key}_per_bin"] = by_bin
    return point


def exit_shares(exits: torch.Tensor, num_rungs: int) -> list[float]:
    """Share of the images that exits at each rung."""
    return (torch.bincount(exits, minlength=num_rungs).double() / len(exits)).tolist()


def _exit_shares_per_bin(exits: torch.Tensor, num_rungs: int, bins, names) -> dict[str, list[float]] | None:
    if bins is None:
        return None
    return {
        name: exit_shares(exits[torch.tensor([b == name for b in bins], dtype=torch.bool)], num_rungs)
        if name in bins
        else [float("nan")] * num_rungs
        for name in names
    }


def _load_models(paths: dict[str, str], attn_implementation: str = "sdpa") -> dict:
    """The seed's models in eval mode: `teacher`, `fixed` (the fixed-k fine-tune) and, when trained, `multirung`,
    `random_rung`, `lookupvit`, `gf_stage3`."""
    from transformers import AutoModelForImageClassification

    from lookwhere_hf import LookWhereForImageClassification
    from lookwhere_hf.models.glance_focus.modeling_glance_focus import GlanceFocusForImageClassification
    from lookwhere_hf.models.lookupvit.modeling_lookupvit import LookupViTForImageClassification

    kw = {"attn_implementation": attn_implementation}
    models = {
        "teacher": AutoModelForImageClassification.from_pretrained(paths["teacher"], **kw),
        "fixed": LookWhereForImageClassification.from_pretrained(paths["finetuned"], **kw),
    }
    for name, cls in (
        ("gf_stage3", GlanceFocusForImageClassification),
        ("multirung", LookWhereForImageClassification),
        ("random_rung", LookWhereForImageClassification),
        ("lookupvit", LookupViTForImageClassification),
    ):
        if os.path.isfile(os.path.join(paths[name], "model.safetensors")):
            # a convolutional Glance-and-Focus backbone has no attention to choose; transformers' default is sdpa
            # where the backbone supports it, the ViT teacher's case
            models[name] = cls.from_pretrained(paths[name], **({} if name == "gf_stage3" else kw))
    return {name: model.eval() for name, model in models.items()}


def _processors(paths: dict[str, str], models: dict) -> dict:
    from transformers import AutoImageProcessor

    from lookwhere_hf import LookWhereImageProcessor

    processors = {
        "lookwhere": LookWhereImageProcessor.from_pretrained(paths["finetuned"]),
        "teacher": AutoImageProcessor.from_pretrained(paths["teacher"]),
    }
    for name in ("lookupvit", "gf_stage3"):
        if name in models:
            processors[name] = AutoImageProcessor.from_pretrained(paths[name])
    return processors


def _inputs(processors: dict, images: list) -> dict:
    out = {}
    for name, processor in processors.items():
        encoded = processor(images, return_tensors="pt")
        out[name] = {key: value for key, value in encoded.items() if key.endswith("pixel_values")}
    return out


def num_kept(model, ratio: float) -> int:
    """High-resolution patches a LookWhere model keeps at `ratio` (floor, at least 1, as `config.num_selected`)."""
    grid = model.config.extractor_config.image_size // model.config.patch_size
    return model.config.num_selected(grid * grid, max(1, int(ratio * grid * grid)))


def _rung_gflops(model, inputs: dict) -> list[float]:
    """Cumulative GFLOPs per image of exiting at each rung (the model's own `rung_flops`)."""
    with torch.no_grad():
        flops = model(**{key: value[:1] for key, value in inputs.items()}, anytime=True).rung_flops[0]
    return [float(f) / 1e9 for f in flops]


def _box_overlaps(rows: list[dict], canvas: int, grid: int, patch: int) -> np.ndarray:
    """`(B, grid * grid)` box-patch intersection areas of the rows' boxes (canvas pixels) on a model's patch grid."""
    scale = grid * patch / canvas
    return np.stack([patch_overlaps(np.asarray(r["box"]) * scale, grid, patch) for r in rows])


def _collect(args, models: dict, processors: dict, split: ImageFolderSplit, budgets: dict | None) -> dict:
    """Predictions of every model and operating point on one split (batches of 50).

    Returns `labels (N,)`, `teacher`, `fixed/<ratio>`, `lookupvit/<grid>` (logits), `anytime/<model>` (softmax per
    rung, `(N, T, C)`), per image at each ratio `hits/<ratio>` (the selector's top-k overlaps the box),
    `teacher_map_hits/<ratio>` (the teacher's own attention map's top-k) and `random_hits/<ratio>` (exact chance of
    k random patches), and, with `budgets` (name -> thresholds), the real budgeted forward's `budgeted/<name>` logits
    and `budgeted_flops/<name>` (per image)."""
    from lookwhere_hf.models.lookwhere.distillation_losses import compute_teacher_targets
    from lookwhere_hf.models.lookwhere.selection import select_top_k

    fixed, teacher = models["fixed"], models["teacher"]
    patch = fixed.config.patch_size
    grid = fixed.config.extractor_config.image_size // patch
    teacher_patch = teacher.config.patch_size
    teacher_grid = teacher.config.image_size // teacher_patch
    ks = [num_kept(fixed, ratio) for ratio in args.k_ratios]
    teacher_ks = [max(1, int(ratio * teacher_grid * teacher_grid)) for ratio in args.k_ratios]
    out: dict[str, list] = {}

    def add(key, value):
        out.setdefault(key, []).append(value)

    for start in range(0, len(split), BATCH):
        indices = range(start, min(start + BATCH, len(split)))
        rows = [split.rows[i] for i in indices]
        views = {name: processors[name] for name in ("lookwhere", "teacher", "lookupvit") if name in processors}
        inputs = _inputs(views, [split.image(i) for i in indices])
        lw = inputs["lookwhere"]
        add("labels", torch.tensor([int(r["label"]) for r in rows]))
        with torch.no_grad():
            add("teacher", teacher(**inputs["teacher"]).logits)
            for ratio, k in zip(args.k_ratios, ks):
                add(f"fixed/{ratio}", fixed(**lw, k=k).logits)
            for name in ("multirung", "random_rung"):
                if name in models:
                    add(f"anytime/{name}", models[name](**lw, anytime=True).rung_logits.softmax(-1))
            if "lookupvit" in models:
                for g in args.compressed_grids:
                    add(f"lookupvit/{g}", models["lookupvit"](**inputs["lookupvit"], compressed_grid=g).logits)
            for name, thresholds in (budgets or {}).items():
                result = models["multirung"](**lw, exit_thresholds=thresholds)
                add(f"budgeted/{name}", result.logits)
                add(f"budgeted_flops/{name}", result.flops.double())
            selector_map = fixed.lookwhere.select(lw["pixel_values"], lw["low_res_pixel_values"])[0]
            backbone = teacher.dinov2_with_registers
            map_layer = getattr(fixed.config, "pretrain_map_layer", -1)  # the map the selector was distilled from
            teacher_map = compute_teacher_targets(backbone, inputs["teacher"]["pixel_values"], map_layer).attention_map
        canvas = split.image(indices[0]).size[0]  # boxes are in canvas pixels
        overlaps = _box_overlaps(rows, canvas, grid, patch)
        teacher_overlaps = _box_overlaps(rows, canvas, teacher_grid, teacher_patch)
        for ratio, k, teacher_k in zip(args.k_ratios, ks, teacher_ks):
            hits = selection_hits(select_top_k(selector_map, k).numpy(), overlaps)["hit"]
            add(f"hits/{ratio}", torch.from_numpy(hits))
            teacher_hits = selection_hits(select_top_k(teacher_map, teacher_k).numpy(), teacher_overlaps)["hit"]
            add(f"teacher_map_hits/{ratio}", torch.from_numpy(teacher_hits))
            chance = [random_hit_probability(grid * grid, int((o > 0).sum()), k) for o in overlaps]
            add(f"random_hits/{ratio}", torch.tensor(chance, dtype=torch.float64))
    return {key: torch.cat(values) for key, values in out.items()}


def _correct(logits_or_probs, labels) -> torch.Tensor:
    return logits_or_probs.argmax(-1) == labels


def _accuracy(logits_or_probs, labels) -> float:
    return float(_correct(logits_or_probs, labels).double().mean())


def _counted_flops(args, paths: dict, split: ImageFolderSplit, budgets: dict) -> dict:
    """FLOPs per image counted by `FlopCounterMode` (eager attention: the counter does not see the CPU SDPA kernel's
    matmuls) on 4 test images: teacher, fixed k, LookupViT per grid, and one budgeted forward (its per-image FLOPs
    summed, against the count)."""
    from torch.utils.flop_counter import FlopCounterMode

    models = _load_models(paths, "eager")
    processors = _processors(paths, models)
    inputs = _inputs(processors, [split.image(i) for i in range(min(4, len(split)))])
    n = inputs["teacher"]["pixel_values"].shape[0]
    calls = {"teacher": lambda: models["teacher"](**inputs["teacher"])}
    for ratio in args.k_ratios:
        k = num_kept(models["fixed"], ratio)
        calls[f"fixed/{ratio}"] = lambda k=k: models["fixed"](**inputs["lookwhere"], k=k)
    if "lookupvit" in models:
        for g in args.compressed_grids:
            calls[f"lookupvit/{g}"] = lambda g=g: models["lookupvit"](**inputs["lookupvit"], compressed_grid=g)
    reported = {}
    if "multirung" in models and budgets:
        name, thresholds = next(iter(budgets.items()))

        def budgeted():
            result = models["multirung"](**inputs["lookwhere"], exit_thresholds=thresholds)
            reported["budgeted"] = float(result.flops.double().sum()) / n
            return result

        calls[f"budgeted/{name}"] = budgeted
    counted = {}
    with torch.no_grad():
        for key, call in calls.items():
            with FlopCounterMode(display=False) as counter:
                call()
            counted[key] = counter.get_total_flops() / n / 1e9
    counted.update({f"{key}_reported": value / 1e9 for key, value in reported.items()})
    return counted


def _latency(args, models: dict, processors: dict, split: ImageFolderSplit, budgets: dict, gf_budgets=None) -> dict:
    """Milliseconds per image, median of `--latency_runs` interleaved rounds (one process, the current torch
    threads): each model on the first `--latency_images` test images as one batch (`b16`) and one image at a time
    (`b1`: the loop over the same images, divided by their number), so budgeted runs see the test set's mix."""
    from lookwhere_hf.benchmarking import time_interleaved

    count = min(args.latency_images, len(split))
    inputs = _inputs(processors, [split.image(i) for i in range(count)])
    forwards = {"teacher": ("teacher", lambda x: models["teacher"](**x))}
    for ratio in args.k_ratios:
        k = num_kept(models["fixed"], ratio)
        forwards[f"fixed/{ratio}"] = ("lookwhere", lambda x, k=k: models["fixed"](**x, k=k))
    for name, thresholds in budgets.items():
        forwards[f"budgeted/{name}"] = (
            "lookwhere",
            lambda x, t=thresholds: models["multirung"](**x, exit_thresholds=t),
        )
    if "lookupvit" in models:
        for g in args.compressed_grids:
            forwards[f"lookupvit/{g}"] = ("lookupvit", lambda x, g=g: models["lookupvit"](**x, compressed_grid=g))
    for name, thresholds in (gf_budgets or {}).items():
        forwards[f"gf_budgeted/{name}"] = (
            "gf_stage3",
            lambda x, t=thresholds: models["gf_stage3"](**x, exit_thresholds=t),
        )
    calls = {}
    for key, (view, forward) in forwards.items():
        batch = inputs[view]
        singles = [{name: value[i : i + 1] for name, value in batch.items()} for i in range(count)]
        calls[f"b{count}/{key}"] = lambda f=forward, b=batch: f(b)
        calls[f"b1/{key}"] = lambda f=forward, s=singles: [f(x) for x in s]
    with torch.inference_mode():
        timings = time_interleaved(calls, args.latency_runs, warmup=1, desc="latency")
    return {key: 1000 * timing.median / count for key, timing in timings.items()}


def evaluate_glance_focus(args, model, processor, validation, test, teacher_gflops: float) -> tuple[dict, dict]:
    """Glance-and-Focus: per-step accuracy (anytime), thresholds fitted on validation for the same budgets as
    LookWhere, the budgeted forward on test with its exit shares, and where its policy looks: the share of images in
    which a focus crop overlaps (contains) the item's box, against the exact chance of as many random crops."""
    from lookwhere_hf.budget import fit_budget_thresholds, simulate_exits

    num_crops = model.config.num_steps - 1
    crop, side = model.config.patch_size, model.config.image_size

    def collect(split, budgets):
        out: dict[str, list] = {}
        for start in range(0, len(split), BATCH):
            indices = range(start, min(start + BATCH, len(split)))
            images = [split.image(i) for i in indices]
            inputs = processor(images, return_tensors="pt")
            rows = [split.rows[i] for i in indices]
            out.setdefault("labels", []).append(torch.tensor([int(r["label"]) for r in rows]))
            boxes = processed_boxes(
                processor, torch.tensor([r["box"] for r in rows], dtype=torch.float64), images[0].size[0]
            )
            out.setdefault("boxes", []).append(boxes)
            chance = [random_crop_hit_probability(box.tolist(), crop, side, num_crops) for box in boxes]
            out.setdefault("random_crop_hits", []).append(torch.tensor(chance, dtype=torch.float64))
            with torch.no_grad():
                result = model(**inputs, anytime=True)
                probs = result.rung_logits.softmax(-1)
                out.setdefault("probs", []).append(probs)
                out.setdefault("crops", []).append(result.crop_boxes.double())
                out["rung_gflops"] = [[float(f) / 1e9 for f in result.rung_flops[0]]]
                for name, thresholds in budgets.items():
                    budgeted = model(**inputs, exit_thresholds=thresholds)
                    out.setdefault(f"budgeted/{name}", []).append(budgeted.logits)
                    out.setdefault(f"budgeted_flops/{name}", []).append(budgeted.flops.double() / 1e9)
        rung_gflops = out.pop("rung_gflops")[0]
        return {key: torch.cat(values) for key, values in out.items()}, rung_gflops

    val, rung_gflops = collect(validation, {})
    budgets, fits = {}, {}
    for speedup in args.budget_speedups:
        target = teacher_gflops / speedup
        if rung_gflops[0] <= target <= rung_gflops[-1]:
            fit = fit_budget_thresholds(val["probs"], val["labels"], rung_gflops, target)
            budgets[f"{speedup:g}x"], fits[f"{speedup:g}x"] = fit.thresholds, fit
    data, _ = collect(test, budgets)
    labels, bins, names = data["labels"], test.size_bins(), args.description.size_bins
    overlap, contain = crop_hits(data["crops"], data["boxes"])
    results = {
        "rung_gflops": rung_gflops,
        "validation_step_accuracy": [_accuracy(val["probs"][:, t], val["labels"]) for t in range(len(rung_gflops))],
        "steps": {
            str(t + 1): _with_bins(
                {"gflops": rung_gflops[t]}, "accuracy", _correct(data["probs"][:, t], labels), bins, names
            )
            for t in range(len(rung_gflops))
        },
        "budgeted": {},
    }
    _with_bins(results, "crop_hit_rate", overlap, bins, names)
    _with_bins(results, "crop_contains_rate", contain, bins, names)
    _with_bins(results, "random_crop_hit_rate", data["random_crop_hits"], bins, names)
    confidences = data["probs"].max(-1).values.double()
    for name, fit in fits.items():
        exits = simulate_exits(confidences, fit.thresholds)
        point = {
            "target_gflops": fit.target_flops,
            "thresholds": fit.thresholds,
            "validation_accuracy": fit.accuracy,
            "validation_gflops": fit.expected_flops,
            "gflops": float(data[f"budgeted_flops/{name}"].mean()),
            "exit_shares": exit_shares(exits, len(rung_gflops)),
        }
        _with_bins(point, "accuracy", _correct(data[f"budgeted/{name}"], labels), bins, names)
        by_bin = _exit_shares_per_bin(exits, len(rung_gflops), bins, names)
        if by_bin is not None:
            point["gflops_per_bin"] = per_bin(data[f"budgeted_flops/{name}"], bins, names)
            point["exit_shares_per_bin"] = by_bin
        results["budgeted"][name] = point
    return results, budgets


def _calibrate(args, models: dict, val: dict, rung_gflops: dict, teacher_gflops: float) -> tuple[dict, dict]:
    """Budget thresholds fitted on the validation split: `(budgets, calibrations)`, `budgets` the multi-rung model's
    thresholds per budget name (`<s>x`, and `<s>x_no_glance` with the glance exit switched off), `calibrations` the
    fits of both multi-rung models."""
    from lookwhere_hf.budget import NEVER_EXIT, fit_budget_thresholds

    budgets, calibrations = {}, {}
    for name in rung_gflops:
        probs = val[f"anytime/{name}"]
        calibrations[name] = {}
        for speedup in args.budget_speedups:
            target = teacher_gflops / speedup
            low, high = rung_gflops[name][0], rung_gflops[name][-1]
            if not low <= target <= high:
                print(f"budget {target:.4f} GFLOPs (teacher / {speedup:g}) outside [{low:.4f}, {high:.4f}]: skipped")
                continue
            fit = fit_budget_thresholds(probs, val["labels"], rung_gflops[name], target)
            calibrations[name][f"{speedup:g}x"] = fit.to_dict()
            if name == "multirung":
                budgets[f"{speedup:g}x"] = fit.thresholds
    # The same calibration with the glance exit switched off (threshold above 1): GFNet's exit profiles (share at
    # rung t proportional to p ** t) always send images to the first rung first, useful only if the glance can
    # classify. The selector pass is paid either way, so the focus rungs keep their cumulative costs.
    if "multirung" in models and models["multirung"].config.glance_head:
        costs = rung_gflops["multirung"][1:]
        for speedup in args.budget_speedups:
            target = teacher_gflops / speedup
            if costs[0] <= target <= costs[-1]:
                probs = val["anytime/multirung"][:, 1:]
                fit = fit_budget_thresholds(probs, val["labels"], costs, target)
                name = f"{speedup:g}x_no_glance"
                calibrations["multirung"][name] = fit.to_dict()
                budgets[name] = [NEVER_EXIT, *fit.thresholds]
    return budgets, calibrations


def _training_times(paths: dict, names) -> tuple[dict, dict]:
    """CPU and wall seconds of the training stages `names` (their `stage_timing.json`)."""
    cpu, wall = {}, {}
    for name in names:
        timing_file = os.path.join(paths[name], "stage_timing.json")
        if os.path.isfile(timing_file):
            with open(timing_file, encoding="utf-8") as f:
                timing = json.load(f)
            cpu[name], wall[name] = timing["cpu_s"], timing["wall_s"]
    return cpu, wall


def evaluate_seed(args, seed: int) -> dict:
    """Calibrate on validation, evaluate on test, count FLOPs and time the models of one seed; writes
    `seed_<s>/eval/results.json` (and `glance_focus.json`) and returns the results."""
    from lookwhere_hf.budget import simulate_exits
    from lookwhere_hf.flops import dinov2_flops, lookupvit_flops, lookwhere_flops

    paths = seed_paths(args.output_dir, seed, args.recipe_dir, args.glance_focus_backbone)
    torch.manual_seed(seed)
    models = _load_models(paths)
    processors = _processors(paths, models)
    lw_processor = processors["lookwhere"]
    validation = ImageFolderSplit(paths["data"], "validation", lw_processor, args.max_eval_samples)
    test = ImageFolderSplit(paths["data"], "test", lw_processor, args.max_eval_samples)
    bins, names = test.size_bins(), args.description.size_bins
    if names and bins is None:
        raise ValueError(f"{paths['data']}/annotations.jsonl has no size_bin, but {args.description.name} has bins.")
    teacher, fixed = models["teacher"], models["fixed"]
    image_size = fixed.config.extractor_config.image_size
    num_labels = fixed.config.num_labels
    teacher_gflops = (dinov2_flops(teacher.config, image_size) + 2 * 2 * teacher.config.hidden_size * num_labels) / 1e9
    results: dict = {
        "seed": seed,
        "teacher_gflops": teacher_gflops,
        "splits": {"validation": len(validation), "test": len(test)},
    }
    if bins is not None:
        results["test_images_per_bin"] = {name: bins.count(name) for name in names}

    start = time.time()
    val = _collect(args, models, processors, validation, None)
    first = _inputs({"lookwhere": lw_processor}, [validation.image(0)])["lookwhere"]
    rung_gflops = {name: _rung_gflops(models[name], first) for name in ("multirung", "random_rung") if name in models}
    budgets, calibrations = _calibrate(args, models, val, rung_gflops, teacher_gflops)
    results["rung_training"] = {
        name: {
            "validation_rung_accuracy": [_accuracy(val[f"anytime/{name}"][:, t], val["labels"])
                                         for t in range(val[f"anytime/{name}"].shape[1])],
            "validation_budgeted": {b: {"accuracy": c["accuracy"], "gflops": c["expected_flops"]}
                                    for b, c in calibrations[name].items() if not b.endswith("_no_glance")},
        }
        for name in calibrations
    }  # fmt: skip
    cpu, wall = _training_times(paths, ("multirung", "random_rung", "lookupvit"))
    if cpu:
        results["training_cpu_s"], results["training_wall_s"] = cpu, wall

    data = _collect(args, models, processors, test, budgets)
    labels = data["labels"]
    results["teacher"] = _with_bins({}, "accuracy", _correct(data["teacher"], labels), bins, names)
    results["teacher"]["gflops"] = teacher_gflops
    results["fixed_k"] = {}
    for ratio in args.k_ratios:
        point = _with_bins({}, "accuracy", _correct(data[f"fixed/{ratio}"], labels), bins, names)
        flops = lookwhere_flops(fixed.config, image_size=image_size, k_ratio=ratio, num_labels=num_labels).total
        point["gflops"] = flops / 1e9
        _with_bins(point, "hit_rate", data[f"hits/{ratio}"], bins, names)
        _with_bins(point, "teacher_map_hit_rate", data[f"teacher_map_hits/{ratio}"], bins, names)
        _with_bins(point, "random_hit_rate", data[f"random_hits/{ratio}"], bins, names)
        results["fixed_k"][str(ratio)] = point
    for name in rung_gflops:
        model, probs = models[name], data[f"anytime/{name}"]
        points = {}
        if model.config.glance_head:
            points["glance"] = _with_bins({}, "accuracy", _correct(probs[:, 0], labels), bins, names)
            points["glance"]["gflops"] = rung_gflops[name][0]
        offset = int(model.config.glance_head)
        for t, ratio in enumerate(model.config.anytime_k_ratios):
            flops = lookwhere_flops(model.config, image_size=image_size, k_ratio=ratio, num_labels=num_labels).total
            points[str(ratio)] = _with_bins({}, "accuracy", _correct(probs[:, offset + t], labels), bins, names)
            points[str(ratio)]["gflops"] = flops / 1e9
        results[f"{name}_rungs"] = points
    confidences = data["anytime/multirung"].max(-1).values if "anytime/multirung" in data else None
    results["budgeted"], results["budgeted_no_glance"] = {}, {}
    rung_costs = torch.tensor(rung_gflops.get("multirung", []), dtype=torch.float64)
    results["budget_rung_gflops"] = rung_costs.tolist()
    for name, thresholds in budgets.items():
        exits = simulate_exits(confidences.double(), thresholds)
        fit = calibrations["multirung"][name]
        flops = data[f"budgeted_flops/{name}"] / 1e9
        point = {
            "target_gflops": fit["target_flops"],
            "thresholds": thresholds,
            "validation_accuracy": fit["accuracy"],
            "validation_gflops": fit["expected_flops"],
            "accuracy": _accuracy(data[f"budgeted/{name}"], labels),
            "gflops": float(flops.mean()),
            "exit_shares": exit_shares(exits, len(rung_costs)),
            "gflops_of_simulated_exits": float(rung_costs[exits].mean()),
        }
        by_bin = per_bin(_correct(data[f"budgeted/{name}"], labels), bins, names)
        if by_bin is not None:
            point["accuracy_per_bin"] = by_bin
            point["gflops_per_bin"] = per_bin(flops, bins, names)
            point["exit_shares_per_bin"] = _exit_shares_per_bin(exits, len(rung_costs), bins, names)
        results["budgeted_no_glance" if name.endswith("_no_glance") else "budgeted"][name.split("_")[0]] = point
    if "lookupvit" in models:
        results["lookupvit"] = {}
        for g in args.compressed_grids:
            point = _with_bins({}, "accuracy", _correct(data[f"lookupvit/{g}"], labels), bins, names)
            config = models["lookupvit"].config
            point["gflops"] = lookupvit_flops(config, image_size, g, num_labels=num_labels).total / 1e9
            results["lookupvit"][str(g)] = point
    for name, hook in FAMILY_HOOKS.items():
        results[name] = hook.evaluate(args, paths, seed, {"validation": validation, "test": test})
    gf, gf_budgets = None, {}
    if "gf_stage3" in models and seed in args.glance_focus_seeds:
        gf, gf_budgets = evaluate_glance_focus(
            args, models["gf_stage3"], processors["gf_stage3"], validation, test, teacher_gflops
        )
    print(f"seed {seed}: predictions in {time.time() - start:.0f} s")
    results["counted_gflops"] = _counted_flops(args, paths, test, budgets)
    latency = _latency(args, models, processors, test, budgets, gf_budgets)
    results["latency_ms_per_image"] = {key: value for key, value in latency.items() if "/gf_" not in key}
    results["torch_threads"] = torch.get_num_threads()
    os.makedirs(paths["eval"], exist_ok=True)
    if gf is not None:  # its own file: Glance-and-Focus may run on fewer seeds (--glance_focus_seeds)
        gf["latency_ms_per_image"] = {key: value for key, value in latency.items() if "/gf_" in key}
        gf_cpu, _ = _training_times(paths, GF_STAGES)
        if gf_cpu:
            gf["training_cpu_s"] = gf_cpu
        with open(os.path.join(paths["eval"], glance_focus_json(args)), "w", encoding="utf-8") as f:
            json.dump(gf, f, indent=1)
    with open(os.path.join(paths["eval"], "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    print(f"seed {seed}: evaluation done in {time.time() - start:.0f} s -> {paths['eval']}/results.json")
    return results
