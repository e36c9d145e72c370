#!/usr/bin/env python
"""Train Glance-and-Focus (GFNet) in its three stages with a plain `accelerate` loop.

    # 1: encoders + classifier with random crops (from a vision backbone, or a Glance-and-Focus folder)
    python run_glance_focus.py --stage 1 --backbone_name_or_path path/to/resnet --num_steps 4 --patch_size 96 \\
        --dataset_name path/to/imagefolder --output_dir outputs/gf-stage1 --learning_rate 1e-3 --num_train_epochs 30
    # 2: the patch policy with PPO (encoders and classifier frozen)
    python run_glance_focus.py --stage 2 --model_name_or_path outputs/gf-stage1 \\
        --dataset_name path/to/imagefolder --output_dir outputs/gf-stage2 --num_train_epochs 15
    # 3: the classifier with the learned policy; then exit thresholds for 1.5 GFLOPs per image
    python run_glance_focus.py --stage 3 --model_name_or_path outputs/gf-stage2 \\
        --dataset_name path/to/imagefolder --output_dir outputs/gf-stage3 --learning_rate 1e-4 --calibrate_budget 1.5

Several processes / GPUs: `accelerate launch --num_processes N run_glance_focus.py ...`. Resume an interrupted stage
with `--checkpointing_steps N` and then `--resume_from_checkpoint latest` (or a `step_N` / `epoch_N` folder). The PPO
settings (`--ppo_clip`, `--ppo_epochs`, `--ppo_gamma`, `--ppo_learning_rate`, `--ppo_value_coef`,
`--ppo_entropy_coef`, `--policy_action_std`) default to the official code's. Each stage's folder holds the model, the
image processor and `all_results.json`; it loads with `pipeline("image-classification", model=<folder>)`.
"""

import os

from accelerate.utils import set_seed

from lookwhere_hf.training import (
    IMAGE_CLASSIFICATION,
    DataTrainingArguments,
    NoTrainerArguments,
    SeededDataset,
    TaskMetric,
    calibrate_after_training,
    collate_fn,
    load_datasets,
    make_accelerator,
    parse_script_arguments,
    prepare_classification_labels,
    run_cli,
    save_outputs,
    train_loop,
)
from lookwhere_hf.training.arguments import HubArguments
from lookwhere_hf.training.glance_focus import (
    GlanceFocusArguments,
    GlanceFocusStage,
    GlanceFocusTransform,
    build_glance_focus_model,
    describe_stage,
    stage_training_settings,
    validate_glance_focus_arguments,
)


def main(argv: list[str] | None = None) -> dict:
    gf_args, data_args, args, hub = parse_script_arguments(
        (GlanceFocusArguments, DataTrainingArguments, NoTrainerArguments, HubArguments), argv
    )

    # Everything that can be wrong with the arguments is checked before data or weights are loaded.
    validate_glance_focus_arguments(gf_args, data_args, hub)
    changed = stage_training_settings(gf_args, args)  # stage 2: the PPO optimizer settings
    accelerator = make_accelerator(args)
    set_seed(args.seed)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)

    with accelerator.main_process_first():
        dataset = load_datasets(data_args, hub, task=IMAGE_CLASSIFICATION, seed=args.seed)
        dataset, id2label = prepare_classification_labels(dataset, data_args.label_column_name)
    model, image_processor = build_glance_focus_model(gf_args, hub, id2label)
    stage = GlanceFocusStage(
        model, gf_args.stage, ppo=gf_args.ppo_settings(), train_encoders=gf_args.train_encoders,
        sample_crops=gf_args.stage3_sample_crops, freeze_glance_encoder=gf_args.freeze_glance_encoder,
    )  # fmt: skip
    describe_stage(stage, image_processor, dataset, changed, accelerator.print)

    columns = (image_processor, data_args.image_column_name, data_args.label_column_name)
    random_crops = model.config.num_steps if gf_args.stage == 1 else None  # stage 1: seeded random crop centres
    train_data = SeededDataset(dataset["train"], args.seed)
    dataset["train"].set_transform(
        GlanceFocusTransform(*columns, train=True, augment=not data_args.no_augment, random_crops=random_crops)
    )
    dataset["validation"].set_transform(GlanceFocusTransform(*columns, train=False, random_crops=random_crops))

    stage, results = train_loop(
        accelerator, args, stage, train_data, collate_fn=collate_fn,
        eval_dataset=SeededDataset(dataset["validation"], args.seed), metric=TaskMetric(IMAGE_CLASSIFICATION, id2label),
        log_names=stage.log_names, updates_per_batch=stage.ppo.epochs if gf_args.stage == 2 else 1,
        project_name=f"glance_focus_stage{gf_args.stage}",
    )  # fmt: skip
    model = stage.model
    if gf_args.calibrate_budget is not None:
        dataset["validation"].set_transform(GlanceFocusTransform(*columns, train=False))
        results.update(
            calibrate_after_training(
                model, dataset["validation"], gf_args.calibrate_budget, args.per_device_eval_batch_size,
                accelerator.print,
            )
        )  # fmt: skip
    save_outputs(accelerator, args, model, image_processor, {"stage": gf_args.stage, **results})
    return results


if __name__ == "__main__":
    run_cli(main, os.path.basename(__file__))
