"""The models the example scripts train, with their image processors: a LookWhere task model from LookWhere weights
or a DINOv2-with-registers checkpoint (fine-tuning), or a `LookWhereForPreTraining` student around a frozen teacher
(pretraining)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from torch import nn

from ..models.lookwhere.configuration_lookwhere import to_pair
from ..models.lookwhere.image_processing_lookwhere import LookWhereImageProcessor
from ..models.lookwhere.modeling_lookwhere import LookWhereForPreTraining, resize_position_embeddings
from .arguments import ArgumentError, ModelArguments, PretrainingDataArguments, PretrainingModelArguments
from .transforms import processor_size

logger = logging.getLogger(__name__)


def _resize_embeddings(embeddings: nn.Module, image_size: int) -> None:
    """Resize `embeddings.position_embeddings` to `image_size // patch_size` per side (bicubic, no antialias)."""
    grid = image_size // embeddings.patch_size
    old = embeddings.position_embeddings
    resized = resize_position_embeddings(old.data, embeddings.grid, (grid, grid)).contiguous()
    embeddings.position_embeddings = nn.Parameter(resized, requires_grad=old.requires_grad)
    embeddings.grid = grid


def set_model_resolution(model, image_size: int | None = None, low_res_size: int | None = None) -> list[str]:
    """Change the sizes a LookWhere model is trained at, in the weights and in the config (so `save_pretrained`
    writes a consistent folder). Returns a description of what changed.

    - `image_size`: the extractor's position embeddings are resized to the new grid, `extractor_config.image_size`
      is set.
    - `low_res_size`: the selector's position embeddings are resized, `selector_config.image_size` is set, and
      `selector_pretrain_grid` is set to `r * low_grid` so the selector head keeps its `r * r` outputs.
    """
    config = model.config
    body = model.lookwhere if hasattr(model, "lookwhere") else model
    changes = []
    if image_size is not None and image_size != config.high_res_size:
        changes.append(f"extractor image size {config.high_res_size} -> {image_size}")
        _resize_embeddings(body.extractor.embeddings, image_size)
        config.extractor_config.image_size = image_size
    if low_res_size is not None and low_res_size != config.low_res_size:
        r = config.selector_upsample_factor
        changes.append(f"selector image size {config.low_res_size} -> {low_res_size}")
        _resize_embeddings(body.selector.embeddings, low_res_size)
        config.selector_config.image_size = low_res_size
        config.selector_pretrain_grid = r * (low_res_size // body.selector.embeddings.patch_size)
    return changes


def _anytime_config(model_args) -> dict:
    """Config fields of `--k_ratios` / `--glance_head` (multi-rung training). Changing the rungs drops any saved
    budget calibration: its thresholds belong to the old rungs (`--calibrate_budget` fits new ones)."""
    ratios = model_args.anytime_ratios() if hasattr(model_args, "anytime_ratios") else None
    glance = bool(getattr(model_args, "glance_head", False))
    if ratios is None and not glance:
        return {}
    budget = ("thresholds", "rung_gflops", "image_size", "target_gflops", "expected_gflops", "calibration_accuracy")
    fields = {"train_all_rungs": True, "glance_head": glance, **{f"budget_{name}": None for name in budget}}
    if ratios is not None:
        fields["anytime_k_ratios"] = ratios
    return fields


def calibrate_after_training(model, eval_dataset, target_gflops: float, batch_size: int, print_fn: Callable = print):
    """`--calibrate_budget`: fit exit thresholds on the (transformed) validation split and write them into the model's
    config. Returns the calibration as `budget_*` metrics."""
    from ..budget import calibrate_budget

    if eval_dataset is None:
        raise ArgumentError("--calibrate_budget needs a validation split (the thresholds are fitted on held-out data).")
    result = calibrate_budget(model, eval_dataset, target_gflops, batch_size=batch_size)
    print_fn(
        f"Budget calibration on {result.num_images} validation images: target {target_gflops:g} GFLOPs, "
        f"{result.expected_flops:.4g} GFLOPs per image on average, accuracy {result.accuracy:.4f}, exit shares "
        + ", ".join(f"{share:.2f}" for share in result.exit_shares)
    )
    return {
        "budget_target_gflops": result.target_flops,
        "budget_expected_gflops": result.expected_flops,
        "budget_calibration_accuracy": result.accuracy,
    }


def build_model_and_processor(model_class, model_args: ModelArguments, id2label: dict[int, str]):
    """The LookWhere task model and its image processor, ready for fine-tuning.

    From `--model_name_or_path` (LookWhere weights; a classifier of another size needs `--ignore_mismatched_sizes`)
    or `--init_from_dinov2`. `--k_ratio`, `--freeze_selector`, `--image_size` and `--low_res_size` are applied to the
    config, the weights and the processor.

    Returns:
        `(model, image_processor)`.
    """
    from transformers import AutoConfig, AutoImageProcessor

    id2label = dict(enumerate(id2label.values()))
    labels = {"num_labels": len(id2label), "id2label": id2label, "label2id": {n: i for i, n in id2label.items()}}
    labels.update(_anytime_config(model_args))
    hub_kwargs = model_args.hub_kwargs()
    if model_args.init_from_dinov2:
        sizes = {
            "low_res_size": model_args.low_res_size,
            "high_res_size": model_args.image_size,
            "k_ratio": model_args.k_ratio,
        }
        model = model_class.from_dinov2(
            model_args.init_from_dinov2,
            selector_depth=model_args.selector_depth,
            freeze_selector=model_args.freeze_selector,
            **{name: value for name, value in sizes.items() if value is not None},
            **labels,
        )
        if model_args.freeze_selector:
            logger.warning(
                "--init_from_dinov2 gives a selector head that is freshly initialized (not pretrained), so with "
                "--freeze_selector the patch selection stays random. Pretrain the selector first for real use."
            )
    else:
        source = model_args.model_name_or_path
        config = AutoConfig.from_pretrained(
            source, trust_remote_code=model_args.trust_remote_code, **labels, **hub_kwargs
        )
        if model_args.k_ratio is not None:
            config.k_ratio = model_args.k_ratio
        config.freeze_selector = model_args.freeze_selector
        try:
            model = model_class.from_pretrained(
                source,
                config=config,
                ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
                trust_remote_code=model_args.trust_remote_code,
                **hub_kwargs,
            )
        except (RuntimeError, ValueError) as error:
            if "size" in str(error).lower() and "mismatch" in str(error).lower():
                raise ArgumentError(
                    f"The checkpoint's weights do not fit {len(id2label)} labels ({str(error).splitlines()[0]}). Pass "
                    "--ignore_mismatched_sizes to re-initialize the classifier."
                ) from error
            raise

    for change in set_model_resolution(model, model_args.image_size, model_args.low_res_size):
        logger.info(f"Resized: {change} (position embeddings interpolated; the saved config uses the new size).")
    processor = None
    processor_source = model_args.image_processor_name or model_args.model_name_or_path
    if processor_source:
        try:
            processor = AutoImageProcessor.from_pretrained(processor_source, **hub_kwargs)
        except (OSError, ValueError):
            processor = None
    if processor is None:
        processor = LookWhereImageProcessor.from_lookwhere_config(model.config)
    if model_args.image_size is not None:
        processor.size = {"height": model_args.image_size, "width": model_args.image_size}
    if model_args.low_res_size is not None:
        processor.low_res_size = {"height": model_args.low_res_size, "width": model_args.low_res_size}
    patch = model.config.patch_size
    height, width = processor_size(processor)
    if height % patch or width % patch:
        raise ArgumentError(
            f"The image processor resizes to {height}x{width}, not a multiple of the patch size {patch}: pass "
            f"--image_size {max(patch, height // patch * patch)}."
        )
    return model, processor


def build_pretraining_model(model_args: PretrainingModelArguments, data_args: PretrainingDataArguments):
    """Load the teacher and build (or load, with `--model_name_or_path`) the student around it; the image processor
    that is saved with the checkpoints (so `pipeline(...)` works on them).

    Returns:
        `(model, image_processor)`: a [`LookWhereForPreTraining`] (its config holds the effective k range and loss
        weights) and a [`LookWhereImageProcessor`] at the training sizes.
    """
    from transformers import AutoModel

    load_kwargs = model_args.hub_kwargs()
    if model_args.attn_implementation:
        load_kwargs["attn_implementation"] = model_args.attn_implementation
    try:
        teacher = AutoModel.from_pretrained(model_args.teacher_name_or_path, **load_kwargs)
    except Exception as error:
        raise ArgumentError(
            f"Could not load the teacher {model_args.teacher_name_or_path!r}: {type(error).__name__}: {error}. Pass a "
            "DINOv2-with-registers / DINOv2 checkpoint (folder or Hub id) with --teacher_name_or_path."
        ) from error
    settings = model_args.pretraining_settings()
    if model_args.model_name_or_path:
        # set_teacher (called in __init__) checks the teacher's patch and hidden size against the student.
        model = LookWhereForPreTraining.from_pretrained(
            model_args.model_name_or_path, teacher=teacher, teacher_dtype=model_args.teacher_dtype, **settings,
            **load_kwargs,
        )  # fmt: skip
        if data_args.low_res_size is not None and model.config.low_res_size != data_args.low_res_size:
            raise ArgumentError(
                f"The student at {model_args.model_name_or_path!r} was built for --low_res_size "
                f"{model.config.low_res_size}, got {data_args.low_res_size}. Pass --low_res_size "
                f"{model.config.low_res_size}."
            )
    else:
        sizes = {"low_res_size": data_args.low_res_size, "high_res_size": data_args.image_size}
        model = LookWhereForPreTraining.from_teacher(
            teacher,
            selector_depth=model_args.selector_depth,
            teacher_dtype=model_args.teacher_dtype,
            init_from_teacher=model_args.init_from_teacher,
            low_res_antialias=model_args.low_res_antialias,
            **{name: value for name, value in sizes.items() if value is not None},
            **settings,
        )
    config, patch = model.config, to_pair(teacher.config.patch_size)[0]
    image_size = data_args.image_size or config.high_res_size
    num_patches = (image_size // patch) ** 2
    if config.pretrain_k_min > num_patches:
        raise ArgumentError(
            f"--k_min {config.pretrain_k_min} exceeds the {num_patches} patches of a {image_size}px image (patch "
            f"{patch}); lower it."
        )
    if config.pretrain_k_max > num_patches:
        logger.warning(f"--k_max {config.pretrain_k_max} is clipped to the {num_patches} high-resolution patches.")
    processor = LookWhereImageProcessor.from_lookwhere_config(config, size={"height": image_size, "width": image_size})
    return model, processor


def describe_setup(model, processor, dataset, print_fn: Callable = print) -> None:
    """Print what is about to be trained: sizes, k, parameters (and the teacher's), data."""
    config = model.config
    height, width = processor_size(processor)
    grid = (height // config.patch_size) * (width // config.patch_size)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    sizes = f"input {height}x{width} (selector {config.low_res_size}x{config.low_res_size})"
    if isinstance(model, LookWhereForPreTraining):
        k_min, k_max = model.k_range(grid)
        teacher = sum(p.numel() for p in model.teacher.parameters())
        what = (
            f"{sizes}, k in [{k_min}, {k_max}] of {grid} patches per step, selector depth "
            f"{config.selector_config.num_hidden_layers}; teacher {teacher:,} parameters (frozen)"
        )
    else:
        what = (
            f"{config.num_labels} labels, {sizes}, k_ratio {config.k_ratio} -> {config.num_selected(grid)} of {grid} "
            f"patches, selector {'frozen' if config.freeze_selector else 'trained'}"
        )
    print_fn(f"Model: {type(model).__name__}, {what}; {trainable:,} of {total:,} parameters trainable.")
    sizes = {name: (len(split) if hasattr(split, "__len__") else "streamed") for name, split in dataset.items()}
    print_fn("Data: " + ", ".join(f"{name} {count} examples" for name, count in sizes.items()))
