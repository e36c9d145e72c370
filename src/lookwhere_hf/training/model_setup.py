"""The models the example scripts train, with their image processors: a LookWhere or LookupViT task model from its own
weights or from a DINOv2-with-registers (LookupViT also: ViT) checkpoint (fine-tuning), or a `LookWhereForPreTraining`
student around a frozen teacher (pretraining)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from torch import nn

from ..budget import BUDGET_CONFIG_FIELDS
from ..image_processing import processor_output_size
from ..models.lookupvit.modeling_lookupvit import (
    LookupViTForImageClassification,
    LookupViTForSemanticSegmentation,
    LookupViTPreTrainedModel,
    lookupvit_image_processor,
)
from ..models.lookupvit.modeling_lookupvit import resize_position_embeddings as resize_lookupvit_positions
from ..models.lookwhere.configuration_lookwhere import to_pair
from ..models.lookwhere.image_processing_lookwhere import LookWhereImageProcessor
from ..models.lookwhere.modeling_lookwhere import (
    LookWhereForImageClassification,
    LookWhereForPreTraining,
    LookWhereForSemanticSegmentation,
    resize_position_embeddings,
)
from .arguments import (
    SELECTOR_DEPTH,
    ArgumentError,
    ModelArguments,
    PretrainingDataArguments,
    PretrainingModelArguments,
    check_model_source,
    format_grid,
    lookupvit_grids,
)
from .data import IMAGE_CLASSIFICATION, SEMANTIC_SEGMENTATION

logger = logging.getLogger(__name__)

TASK_MODELS = {
    "lookwhere": {
        IMAGE_CLASSIFICATION: LookWhereForImageClassification,
        SEMANTIC_SEGMENTATION: LookWhereForSemanticSegmentation,
    },
    "lookupvit": {
        IMAGE_CLASSIFICATION: LookupViTForImageClassification,
        SEMANTIC_SEGMENTATION: LookupViTForSemanticSegmentation,
    },
}
"""The task model class of each `(family, task)`."""


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


def set_lookupvit_sizes(
    model, image_size: int | None, compressed_grid: tuple[int, int], compressed_grids: list[tuple[int, int]]
) -> list[str]:
    """Set a LookupViT model's input size and compressed grids, in the weights and in the config (so
    `save_pretrained` writes a consistent folder). Returns a description of what changed.

    - `image_size`: the lookup position embeddings are resized (bicubic, no antialias) to the new token grid and
      `config.image_size` is set.
    - `compressed_grid` / `compressed_grids`: set in the config; if that changes `config.position_grid` (the largest
      grid), the compressed position embeddings, stored at that grid, are resized to it.
    """
    config = model.config
    embeddings = (model.lookupvit if hasattr(model, "lookupvit") else model).embeddings
    changes = []

    def resize(name: str, source_grid: tuple[int, int], grid: tuple[int, int]) -> None:
        old = getattr(embeddings, name)
        resized = resize_lookupvit_positions(old.data, source_grid, grid).contiguous()
        setattr(embeddings, name, nn.Parameter(resized, requires_grad=old.requires_grad))

    if image_size is not None and image_size != config.image_size:
        changes.append(f"image size {config.image_size} -> {image_size} (lookup position embeddings resized)")
        old_grid = config.token_grid
        config.image_size = image_size
        resize("lookup_position_embeddings", old_grid, config.token_grid)
    grids = [list(grid) for grid in compressed_grids]
    old_position_grid = config.position_grid
    if grids != config.compressed_grids:
        old, new = (", ".join(format_grid(g) for g in values) for values in (config.compressed_grids, grids))
        changes.append(f"training compressed grids {old} -> {new}")
    if list(compressed_grid) != config.compressed_grid:
        changes.append(f"evaluation grid {format_grid(config.compressed_grid)} -> {format_grid(compressed_grid)}")
    config.compressed_grid, config.compressed_grids = list(compressed_grid), grids
    if config.position_grid != old_position_grid:
        changes.append(
            f"compressed position embeddings resized from {format_grid(old_position_grid)} to the largest grid "
            f"{format_grid(config.position_grid)}"
        )
        resize("compressed_position_embeddings", old_position_grid, config.position_grid)
    config.validate_lookupvit()
    return changes


def _anytime_config(model_args) -> dict:
    """Config fields of `--k_ratios` / `--glance_head` (multi-rung training). Changing the rungs drops any saved
    budget calibration: its thresholds belong to the old rungs (`--calibrate_budget` fits new ones)."""
    ratios = model_args.anytime_ratios() if hasattr(model_args, "anytime_ratios") else None
    glance = bool(getattr(model_args, "glance_head", False))
    if ratios is None and not glance:
        return {}
    fields = {"train_all_rungs": True, "glance_head": glance, **dict.fromkeys(BUDGET_CONFIG_FIELDS)}
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


def build_model_and_processor(task: str, model_args: ModelArguments, id2label: dict[int, str]):
    """The task model of the run's family (LookWhere or LookupViT, see [`check_model_source`]) and its image
    processor, ready for fine-tuning.

    From `--model_name_or_path` (a classifier of another size needs `--ignore_mismatched_sizes`), `--init_from_dinov2`
    or (LookupViT) `--init_from_vit`. LookWhere: `--k_ratio`, `--freeze_selector`, `--image_size` and `--low_res_size`
    are applied to the config, the weights and the processor (two views). LookupViT: `--image_size`,
    `--compressed_grid` and `--compressed_grids` ([`set_lookupvit_sizes`]); its processor makes one view.

    Args:
        task (`str`): `IMAGE_CLASSIFICATION` or `SEMANTIC_SEGMENTATION` (`lookwhere_hf.training`).

    Returns:
        `(model, image_processor)`.
    """
    if task not in TASK_MODELS["lookwhere"]:
        raise ValueError(f"Unknown task {task!r}: use one of {list(TASK_MODELS['lookwhere'])}.")
    flag, source, source_config, family = check_model_source(model_args)
    model_class = TASK_MODELS[family][task]
    id2label = dict(enumerate(id2label.values()))
    labels = {"num_labels": len(id2label), "id2label": id2label, "label2id": {n: i for i, n in id2label.items()}}
    if family == "lookupvit":
        model = _build_lookupvit(model_class, model_args, flag, source, source_config, labels)
    else:
        model = _build_lookwhere(model_class, model_args, labels)
    return model, _image_processor(model, model_args, family, flag, source)


def _load_pretrained(model_class, source: str, config, model_args: ModelArguments):
    """`model_class.from_pretrained` with the run's config; a classifier that does not fit the labels is an
    [`ArgumentError`] pointing to `--ignore_mismatched_sizes`."""
    try:
        return model_class.from_pretrained(
            source,
            config=config,
            ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
            trust_remote_code=model_args.trust_remote_code,
            **model_args.hub_kwargs(),
        )
    except (RuntimeError, ValueError) as error:
        if "size" in str(error).lower() and "mismatch" in str(error).lower():
            raise ArgumentError(
                f"The checkpoint's weights do not fit {config.num_labels} labels ({str(error).splitlines()[0]}). Pass "
                "--ignore_mismatched_sizes to re-initialize the classifier."
            ) from error
        raise


def _build_lookwhere(model_class, model_args: ModelArguments, labels: dict):
    from transformers import AutoConfig

    labels = {**labels, **_anytime_config(model_args)}
    freeze_selector = True if model_args.freeze_selector is None else model_args.freeze_selector
    if model_args.init_from_dinov2:
        sizes = {
            "low_res_size": model_args.low_res_size,
            "high_res_size": model_args.image_size,
            "k_ratio": model_args.k_ratio,
        }
        model = model_class.from_dinov2(
            model_args.init_from_dinov2,
            selector_depth=model_args.selector_depth or SELECTOR_DEPTH,
            freeze_selector=freeze_selector,
            **{name: value for name, value in sizes.items() if value is not None},
            **labels,
        )
        if freeze_selector:
            logger.warning(
                "--init_from_dinov2 gives a selector head that is freshly initialized (not pretrained), so with "
                "--freeze_selector the patch selection stays random. Pretrain the selector first for real use."
            )
    else:
        source = model_args.model_name_or_path
        config = AutoConfig.from_pretrained(
            source, trust_remote_code=model_args.trust_remote_code, **labels, **model_args.hub_kwargs()
        )
        if model_args.k_ratio is not None:
            config.k_ratio = model_args.k_ratio
        config.freeze_selector = freeze_selector
        model = _load_pretrained(model_class, source, config, model_args)
    for change in set_model_resolution(model, model_args.image_size, model_args.low_res_size):
        logger.info(f"Resized: {change} (position embeddings interpolated; the saved config uses the new size).")
    return model


def _build_lookupvit(model_class, model_args: ModelArguments, flag: str, source: str, source_config, labels: dict):
    from transformers import AutoConfig, AutoModel

    grid, grids = lookupvit_grids(model_args, source_config)
    hub_kwargs = model_args.hub_kwargs()
    if flag == "--model_name_or_path":
        config = AutoConfig.from_pretrained(
            source, trust_remote_code=model_args.trust_remote_code, **labels, **hub_kwargs
        )
        model = _load_pretrained(model_class, source, config, model_args)
    else:
        backbone = AutoModel.from_pretrained(source, **hub_kwargs)
        build = model_class.from_vit if flag == "--init_from_vit" else model_class.from_dinov2
        sizes = {"image_size": model_args.image_size} if model_args.image_size is not None else {}
        model = build(
            backbone, compressed_grid=list(grid), compressed_grids=[list(g) for g in grids], **sizes, **labels
        )
        logger.info(
            f"Built {model_class.__name__} from {flag} {source}: patch embedding, position embeddings and the "
            "compressed stream's layers copied; cross-attentions, lookup MLPs and the head newly initialized."
        )
    for change in set_lookupvit_sizes(model, model_args.image_size, grid, grids):
        logger.info(f"Changed: {change}; the saved config has the new values.")
    return model


def _image_processor(model, model_args: ModelArguments, family: str, flag: str, source: str):
    """The processor saved with the model: `--image_processor_name`, else the checkpoint's own (with
    `--model_name_or_path`), else one made from the config (LookWhere: two views; LookupViT: one view, with the
    normalization of the DINOv2 / ViT checkpoint it was built from). `--image_size` / `--low_res_size` applied."""
    from transformers import AutoImageProcessor

    hub_kwargs = model_args.hub_kwargs()

    def load(name: str | None):
        if not name:
            return None
        try:
            return AutoImageProcessor.from_pretrained(name, **hub_kwargs)
        except (OSError, ValueError):
            return None

    processor = load(model_args.image_processor_name or (source if flag == "--model_name_or_path" else None))
    if family == "lookupvit":
        if processor is not None and hasattr(processor, "low_res_size"):
            raise ArgumentError(
                f"The image processor of {model_args.image_processor_name or source!r} makes LookWhere's two views; "
                "LookupViT takes one view. Drop --image_processor_name or pass a one-view processor."
            )
        if processor is None:
            backbone_processor = load(source)  # a DINOv2 / ViT checkpoint's normalization, if it ships a processor
            overrides = {
                name: list(getattr(backbone_processor, name))
                for name in ("image_mean", "image_std")
                if getattr(backbone_processor, name, None) is not None
            }
            processor = lookupvit_image_processor(model.config, **overrides)
    elif processor is None:
        processor = LookWhereImageProcessor.from_model_config(model.config)
    if model_args.image_size is not None:
        processor.size = {"height": model_args.image_size, "width": model_args.image_size}
        if getattr(processor, "do_center_crop", False):  # a cropping processor's output is its crop
            processor.crop_size = {"height": model_args.image_size, "width": model_args.image_size}
    if model_args.low_res_size is not None:
        processor.low_res_size = {"height": model_args.low_res_size, "width": model_args.low_res_size}
    patch = model.config.patch_size
    height, width = processor_output_size(processor)
    if height % patch or width % patch:
        raise ArgumentError(
            f"The image processor resizes to {height}x{width}, not a multiple of the patch size {patch}: pass "
            f"--image_size {max(patch, height // patch * patch)}."
        )
    return processor


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
    processor = LookWhereImageProcessor.from_model_config(config, size={"height": image_size, "width": image_size})
    return model, processor


def describe_setup(model, processor, dataset, print_fn: Callable = print) -> None:
    """Print what is about to be trained: sizes, k, parameters (and the teacher's), data."""
    config = model.config
    height, width = processor_output_size(processor)
    grid = (height // config.patch_size) * (width // config.patch_size)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    if isinstance(model, LookupViTPreTrainedModel):
        what = (
            f"{config.num_labels} labels, input {height}x{width} ({grid} lookup tokens), compressed grids "
            f"{', '.join(format_grid(g) for g in config.compressed_grids)} (one drawn per training forward), "
            f"evaluation grid {format_grid(config.compressed_grid)}"
        )
    else:
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
                f"{config.num_labels} labels, {sizes}, k_ratio {config.k_ratio} -> {config.num_selected(grid)} of "
                f"{grid} patches, selector {'frozen' if config.freeze_selector else 'trained'}"
            )
    print_fn(f"Model: {type(model).__name__}, {what}; {trainable:,} of {total:,} parameters trainable.")
    sizes = {name: (len(split) if hasattr(split, "__len__") else "streamed") for name, split in dataset.items()}
    print_fn("Data: " + ", ".join(f"{name} {count} examples" for name, count in sizes.items()))
