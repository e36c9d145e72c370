"""Glance-and-Focus training in three stages, on the one `accelerate` loop ([`train_loop`]) of the example scripts.

What the stages do, as we read the official training code (`train.py`, `network.py`, `configs.py` of
blackfeather-wang/GFNet-Pytorch) and the paper (Wang et al., NeurIPS 2020):

1. **Stage 1**: the glance and focus encoders and the recurrent classifier learn with *random* crops: every focus
   step's crop centre is uniform in `[0, 1]^2` (`torch.rand` in the official code). The loss is the official one,
   which the model computes: `(sum_t CE(step t) + encoder_loss_weight * sum_t CE(encoder head t)) / T` (the second
   sum is the deep supervision of each encoder's own head, the official `dsn_ratio`). The policy stays frozen.
2. **Stage 2**: the patch policy (actor-critic) learns with PPO; the encoders and the classifier are frozen and run
   in eval mode. Per image and focus step, the reward is the gain of the true class's softmax probability over the
   previous step; the returns are discounted with `gamma` and normalized over the batch (mean 0, std 1); the
   advantage is `return - value` (the value detached). The official settings: Adam lr 3e-4, betas (0.9, 0.999),
   `gamma` 0.7, clip 0.2, 1 PPO epoch per batch, value loss weight 0.5 (MSE to the normalized returns), entropy
   weight 0.01, Gaussian actions with std 0.1 (the model config's `policy_action_std`), sampled actions clipped to
   `[0, 1]` and their log-probability taken at the clipped value, 15 epochs.
3. **Stage 3**: the classifier (with `train_encoders` also the encoders and their heads, as the official stage 3
   does) is fine-tuned, with the same loss as stage 1, on the crops the learned policy picks. As in the official
   code, training *samples* the crops from the policy's Gaussian (exploration acts as augmentation) and evaluation
   takes the mean.

Differences from the official code, on purpose: stages 1 and 3 use the loop's AdamW and scheduler (the official SGD
with Nesterov momentum 0.9, weight decay 1e-4, lr 0.1 classifier / 0.01 encoders in stage 1, 0.01 in stage 3, cosine
per epoch, has no flag here); stage 3 trains the classifier alone unless `train_encoders`; with several processes
the returns are normalized over each process's batch (the official code runs one `DataParallel` batch); and with a
GRU classifier and `glance_logits="glance_head"` (official RegNet) the first focus step's reward is measured against
the glance head's prediction (the one inference uses), where the official stage 2 takes the GRU's. The official
MobileNet-V3 / EfficientNet recipe keeps the glance encoder frozen in stages 1 and 3: `freeze_glance_encoder`.

Every random draw is reproducible across a resume: stage 1's crop centres are drawn in the data transform, seeded per
example by [`SeededDataset`]; the policy's samples (stages 2 and 3) come from the global torch RNG, which
`accelerator.save_state` / `load_state` keep.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from ..budget import BUDGET_CONFIG_FIELDS
from ..image_processing import processor_output_size
from .arguments import ArgumentError
from .transforms import to_rgb

__all__ = [
    "GlanceFocusArguments",
    "GlanceFocusStage",
    "GlanceFocusStageOutput",
    "GlanceFocusTransform",
    "PPOLoss",
    "PPOSettings",
    "build_glance_focus_model",
    "confidence_gains",
    "describe_stage",
    "discounted_returns",
    "normalize_returns",
    "ppo_loss",
    "stage_training_settings",
    "true_class_confidences",
    "validate_glance_focus_arguments",
]

STAGES = (1, 2, 3)
RETURN_NORM_EPS = 1e-5  # added to the std when the returns are normalized (the official value)


# ----------------------------------------------------------------------------------------------- settings
@dataclass
class PPOSettings:
    """The PPO settings of stage 2 (defaults: the official GFNet code).

    Attributes:
        clip (`float`): the ratio clip `epsilon` of the clipped objective, in (0, 1).
        epochs (`int`): PPO epochs (optimizer updates) per batch of rollouts.
        gamma (`float`): discount of the per-step rewards, in [0, 1].
        value_coef (`float`): weight of the value (critic) loss.
        entropy_coef (`float`): weight of the entropy bonus (subtracted from the loss).
        normalize_returns (`bool`): normalize the discounted returns over the batch (mean 0, std 1).
    """

    clip: float = 0.2
    epochs: int = 1
    gamma: float = 0.7
    value_coef: float = 0.5
    entropy_coef: float = 0.01
    normalize_returns: bool = True

    def __post_init__(self) -> None:
        for name in ("clip", "gamma", "value_coef", "entropy_coef"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"The PPO {name} must be a number, got {value!r}.")
        if not 0.0 < self.clip < 1.0:
            raise ValueError(f"The PPO clip must be in (0, 1) (the official value is 0.2), got {self.clip}.")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"The PPO epochs per batch must be an integer >= 1 (officially 1), got {self.epochs!r}.")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"The PPO discount gamma must be in [0, 1] (officially 0.7), got {self.gamma}.")
        for name in ("value_coef", "entropy_coef"):
            value = getattr(self, name)
            if not 0.0 <= value < float("inf"):
                raise ValueError(f"The PPO {name} must be a finite number >= 0, got {value}.")


# ----------------------------------------------------------------------------------------------- rewards
def true_class_confidences(rung_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The softmax probability of the true class after every step.

    Args:
        rung_logits (`torch.Tensor` of shape `(batch_size, T, num_labels)`): the model output's `rung_logits`.
        labels (`torch.LongTensor` of shape `(batch_size,)`).

    Returns:
        `torch.Tensor` of shape `(batch_size, T)` (float32 or wider).
    """
    if rung_logits.ndim != 3:
        raise ValueError(f"`rung_logits` must have shape (batch_size, T, num_labels), got {tuple(rung_logits.shape)}.")
    logits = rung_logits.float()
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"`labels` must have shape ({logits.shape[0]},), got {tuple(labels.shape)}.")
    if labels.is_floating_point() or bool((labels < 0).any() or (labels >= logits.shape[-1]).any()):
        raise ValueError(
            f"`labels` must be class indices in [0, {logits.shape[-1]}) (the model's num_labels), got "
            f"{labels.tolist() if labels.numel() <= 8 else labels}."
        )
    index = labels.long().view(-1, 1, 1).expand(-1, logits.shape[1], 1)
    return logits.softmax(dim=-1).gather(-1, index).squeeze(-1)


def confidence_gains(rung_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The reward of every focus step: the gain of the true class's softmax probability over the previous step
    (the glance for the first focus step).

    Returns:
        `torch.Tensor` of shape `(batch_size, T - 1)`.
    """
    confidences = true_class_confidences(rung_logits, labels)
    return confidences[:, 1:] - confidences[:, :-1]


def discounted_returns(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """`G_t = r_t + gamma * G_{t+1}` along the steps (the episode ends after the last step).

    Args:
        rewards (`torch.Tensor` of shape `(batch_size, num_steps)`).

    Returns:
        `torch.Tensor` of the same shape.
    """
    returns = torch.empty_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for step in range(rewards.shape[1] - 1, -1, -1):
        running = rewards[:, step] + gamma * running
        returns[:, step] = running
    return returns


def normalize_returns(returns: torch.Tensor) -> torch.Tensor:
    """`(returns - mean) / (std + 1e-5)` over every entry (images and steps), as the official PPO update does; a
    single entry is only centred (its std is undefined)."""
    centred = returns - returns.mean()
    if returns.numel() < 2:
        return centred
    return centred / (returns.std() + RETURN_NORM_EPS)


# ----------------------------------------------------------------------------------------------- PPO
@dataclass
class PPOLoss(ModelOutput):
    """The PPO loss of one update and its parts (all scalars).

    Attributes:
        loss: `policy_loss + value_coef * value_loss - entropy_coef * entropy`.
        policy_loss: minus the clipped surrogate objective, averaged over images and steps.
        value_loss: mean squared error of the critic's values to the returns.
        entropy: mean entropy of the policy's action distributions.
        clip_fraction: share of the ratios outside `[1 - clip, 1 + clip]`.
        approx_kl: mean of `old_log_prob - log_prob` (how far the update moved the policy; 0 on the first epoch).
    """

    loss: torch.Tensor | None = None
    policy_loss: torch.Tensor | None = None
    value_loss: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    clip_fraction: torch.Tensor | None = None
    approx_kl: torch.Tensor | None = None


def ppo_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    values: torch.Tensor,
    returns: torch.Tensor,
    entropy: torch.Tensor,
    settings: PPOSettings,
) -> PPOLoss:
    """The PPO update's loss (Schulman et al. 2017, clipped surrogate), as GFNet's update computes it.

    `advantage = returns - values.detach()`; `ratio = exp(log_probs - old_log_probs)`;
    `policy_loss = -mean(min(ratio * advantage, clip(ratio, 1 - eps, 1 + eps) * advantage))`;
    `value_loss = mean((values - returns) ** 2)`; `loss = policy_loss + value_coef * value_loss - entropy_coef *
    mean(entropy)`.

    Args:
        log_probs (`torch.Tensor` of shape `(batch_size, num_steps)`): log-probabilities of the rollout's actions
            under the policy being trained (with gradient).
        old_log_probs (same shape): their log-probabilities when they were sampled (no gradient).
        values (same shape): the critic's state values (with gradient).
        returns (same shape): the (normalized) discounted returns.
        entropy (same shape): entropies of the action distributions.
        settings ([`PPOSettings`]).
    """
    shapes = {tuple(t.shape) for t in (log_probs, old_log_probs, values, returns, entropy)}
    if len(shapes) != 1:
        raise ValueError(
            "log_probs, old_log_probs, values, returns and entropy must have one shape (batch_size, num_steps), got "
            f"{[tuple(t.shape) for t in (log_probs, old_log_probs, values, returns, entropy)]}."
        )
    returns, old_log_probs = returns.detach(), old_log_probs.detach()
    advantages = returns - values.detach()
    ratios = torch.exp(log_probs - old_log_probs)
    surrogate = ratios * advantages
    clipped = ratios.clamp(1.0 - settings.clip, 1.0 + settings.clip) * advantages
    policy_loss = -torch.min(surrogate, clipped).mean()
    value_loss = F.mse_loss(values, returns)
    mean_entropy = entropy.mean()
    loss = policy_loss + settings.value_coef * value_loss - settings.entropy_coef * mean_entropy
    with torch.no_grad():
        clip_fraction = ((ratios - 1.0).abs() > settings.clip).float().mean()
        approx_kl = (old_log_probs - log_probs).mean()
    return PPOLoss(
        loss=loss,
        policy_loss=policy_loss.detach(),
        value_loss=value_loss.detach(),
        entropy=mean_entropy.detach(),
        clip_fraction=clip_fraction,
        approx_kl=approx_kl.detach(),
    )


# ----------------------------------------------------------------------------------------------- the stages
@dataclass
class GlanceFocusStageOutput(ModelOutput):
    """What a training stage's forward returns (the loop logs the scalars).

    Attributes:
        loss: the stage's training loss (stages 1 / 3: the cross-entropy averaged over the steps; stage 2: the PPO
            loss); None in evaluation.
        logits (`(batch_size, num_labels)`): the last step's prediction.
        reward: stage 2: mean reward (true-class confidence gain) per focus step of the rollout.
        policy_loss, value_loss, entropy, clip_fraction, approx_kl: stage 2: see [`PPOLoss`].
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    reward: torch.Tensor | None = None
    policy_loss: torch.Tensor | None = None
    value_loss: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    clip_fraction: torch.Tensor | None = None
    approx_kl: torch.Tensor | None = None


@dataclass
class _Rollout:
    """One batch's PPO rollout (no gradient): `states (B, S, C, h, w)`, `actions (B, S, 2)` and their `log_probs (B,
    S)` under the rollout's policy, the (normalized) discounted `returns (B, S)` of its rewards, their mean `reward`
    (scalar) and the last step's `logits (B, num_labels)`; `S = num_steps - 1` focus steps."""

    states: torch.Tensor
    actions: torch.Tensor
    log_probs: torch.Tensor
    returns: torch.Tensor
    reward: torch.Tensor
    logits: torch.Tensor


class GlanceFocusStage(nn.Module):
    """A [`GlanceFocusForImageClassification`] set up for one training stage, with the forward the training loop
    calls (`outputs.loss` to minimize, scalars to log).

    The constructor freezes what the stage does not train (`requires_grad=False`, so the optimizer and DDP see only
    the trained parameters) and [`train`] keeps the frozen modules in eval mode (batch-norm statistics and dropout
    off, as the official stage 2 runs the encoders).

    Args:
        model: the Glance-and-Focus classifier.
        stage (`int`): 1, 2 or 3 (see the module docstring).
        ppo ([`PPOSettings`], *optional*): stage 2's settings (default: the official ones).
        train_encoders (`bool`): stage 3 also fine-tunes the glance and focus encoders (default: classifier only).
        sample_crops (`bool`): stage 3 trains on crops sampled from the policy (the official choice); False: on the
            policy's mean crops.
        freeze_glance_encoder (`bool`): stages 1 and 3 (with `train_encoders`) keep the glance encoder and its head
            frozen, as the official MobileNet-V3 / EfficientNet recipe does (`train_model_prime` off: their glance
            encoder is a pretrained low-resolution model); default: trained, as for ResNet / DenseNet / RegNet.
    """

    def __init__(
        self,
        model: nn.Module,
        stage: int,
        ppo: PPOSettings | None = None,
        train_encoders: bool = False,
        sample_crops: bool = True,
        freeze_glance_encoder: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(stage, bool) or stage not in STAGES:
            raise ValueError(f"stage must be 1, 2 or 3, got {stage!r}.")
        if ppo is not None and not isinstance(ppo, PPOSettings):
            raise ValueError(f"`ppo` must be a PPOSettings (the stage-2 settings), got {type(ppo).__name__}.")
        for name in ("policy", "config"):
            if not hasattr(model, name):
                raise ValueError(
                    f"GlanceFocusStage needs a Glance-and-Focus model with a `{name}`; got a {type(model)}."
                )
        if stage == 2 and int(model.config.num_steps) < 2:
            raise ValueError(
                f"Stage 2 trains the policy that picks the focus crops, but this model has num_steps="
                f"{model.config.num_steps} (the glance alone, no focus step). Use a model with num_steps >= 2."
            )
        self.model, self.stage = model, stage
        self.ppo = ppo if ppo is not None else PPOSettings()
        self.train_encoders, self.sample_crops = bool(train_encoders), bool(sample_crops)
        self.freeze_glance_encoder = bool(freeze_glance_encoder)
        self._rollout: _Rollout | None = None
        trained = self.trained_modules()
        for name, module in model.named_children():
            module.requires_grad_(name in trained)
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError(f"Stage {stage} would train nothing: the model has no {sorted(trained)} parameters.")

    @property
    def num_steps(self) -> int:
        return int(self.model.config.num_steps)

    @property
    def log_names(self) -> tuple[str, ...]:
        """The scalars of [`GlanceFocusStageOutput`] the training loop logs in this stage."""
        if self.stage == 2:
            return ("loss", "reward", "policy_loss", "value_loss", "entropy", "clip_fraction", "approx_kl")
        return ("loss",)

    def trained_modules(self) -> set[str]:
        """Names of the model's top-level modules this stage trains (the others are frozen and run in eval mode).
        An encoder head that gets no gradient (no deep-supervision loss, `encoder_loss_weight = 0`, and not the
        glance step's logits) is not among them, so that DDP finds a gradient for every trained parameter. The
        parameterless `dropout` on the step features is among them whenever the classifier it feeds is trained
        (stages 1 and 3), so that `classifier_dropout` acts in training as in the official code."""
        children = {name for name, _ in self.model.named_children()}
        if self.stage == 2:
            return {"policy"}
        if self.stage == 1 or self.train_encoders:
            config = self.model.config
            unused = {"policy"}
            if not getattr(config, "encoder_loss_weight", 0):
                unused |= {"focus_head"} | ({"glance_head"} if config.glance_logits != "glance_head" else set())
            if self.freeze_glance_encoder:
                unused |= {"glance_encoder", "glance_head"}
            return children - unused
        if "classifier" not in children:
            raise ValueError(
                f"Stage 3 without encoder training needs the model's `classifier` module; its modules are "
                f"{sorted(children)}. Pass train_encoders=True (--train_encoders) to fine-tune all but the policy."
            )
        return {"classifier"} | ({"dropout"} & children)

    def train(self, mode: bool = True) -> GlanceFocusStage:
        super().train(mode)
        self._freeze_modes()
        return self

    def _freeze_modes(self) -> None:
        """Put the frozen modules in eval mode. Called by [`train`] and at every training forward, in case anything
        outside the stage set a whole-model mode (`model.train()`)."""
        trained = self.trained_modules()
        for name, module in self.model.named_children():
            if name not in trained and module.training:
                module.eval()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.LongTensor | None = None,
        crop_centers: torch.Tensor | None = None,
        ppo_epoch: int = 0,
        **inputs: Any,
    ) -> GlanceFocusStageOutput:
        """One training (or evaluation) forward of the stage.

        Args:
            pixel_values (`(batch_size, 3, H, W)`): the full-resolution images.
            labels (`(batch_size,)`): class ids (needed in training).
            crop_centers (`(batch_size, T - 1, 2)`, *optional*): stage 1: the random crop centres (from
                [`GlanceFocusTransform`]); without them stage 1 draws them here.
            ppo_epoch (`int`): stage 2: the PPO epoch over this batch; epoch 0 collects the rollout with the current
                policy, later epochs reuse it (the training loop passes it with `updates_per_batch > 1`).
            inputs: further model inputs (e.g. `glance_pixel_values`).
        """
        if not self.training:  # stage 1: the transform's random crops; stages 2 and 3: the policy's mean crops
            outputs = self.model(pixel_values, crop_centers=crop_centers if self.stage == 1 else None, **inputs)
            return GlanceFocusStageOutput(logits=outputs.logits)
        if labels is None:
            raise ValueError("Training a Glance-and-Focus stage needs `labels`.")
        self._freeze_modes()
        if self.stage == 2:
            return self._ppo_forward(pixel_values, labels, ppo_epoch, **inputs)
        if self.stage == 1:
            if crop_centers is None:
                crop_centers = torch.rand(pixel_values.shape[0], self.num_steps - 1, 2, device=pixel_values.device)
            outputs = self.model(pixel_values, labels=labels, crop_centers=crop_centers, anytime=True, **inputs)
        else:
            mode = "sample" if self.sample_crops else "mean"
            outputs = self.model(pixel_values, labels=labels, policy_mode=mode, anytime=True, **inputs)
        return GlanceFocusStageOutput(loss=outputs.loss, logits=outputs.logits)

    @torch.no_grad()
    def collect_rollout(self, pixel_values: torch.Tensor, labels: torch.LongTensor, **inputs: Any) -> _Rollout:
        """Run the model with crops sampled from the current policy; the rewards, returns and what the PPO update
        needs (states, actions and their log-probabilities)."""
        outputs = self.model(pixel_values, policy_mode="sample", anytime=True, return_policy=True, **inputs)
        rewards = confidence_gains(outputs.rung_logits, labels)
        returns = discounted_returns(rewards, self.ppo.gamma)
        if self.ppo.normalize_returns:
            returns = normalize_returns(returns)
        return _Rollout(
            states=outputs.policy_states,
            actions=outputs.policy_actions,
            log_probs=outputs.policy_log_probs,
            returns=returns,
            reward=rewards.mean(),
            logits=outputs.rung_logits[:, -1],
        )

    def _ppo_forward(self, pixel_values, labels, ppo_epoch: int, **inputs) -> GlanceFocusStageOutput:
        if ppo_epoch == 0 or self._rollout is None:
            self._rollout = self.collect_rollout(pixel_values, labels, **inputs)
        rollout = self._rollout
        log_probs, values, entropy = self.model.policy.evaluate(rollout.states, rollout.actions)
        parts = ppo_loss(log_probs, rollout.log_probs, values, rollout.returns, entropy, self.ppo)
        if ppo_epoch >= self.ppo.epochs - 1:
            self._rollout = None  # the batch is done: do not keep its tensors
        return GlanceFocusStageOutput(reward=rollout.reward, logits=rollout.logits, **parts)


# ----------------------------------------------------------------------------------------------- data
class GlanceFocusTransform:
    """`{image, label}` -> the image processor's tensors (`pixel_values`, and the glance view if it makes one) +
    `labels`, for `Dataset.set_transform`.

    Training: `RandomResizedCrop` to the processor size + horizontal flip (unless `augment=False`), then the processor
    without its resize; evaluation: the processor alone, as the pipeline does. With `random_crops` (stage 1) every
    example also gets `crop_centers` of shape `(num_steps - 1, 2)`, uniform in `[0, 1]`: drawn here, so that
    [`SeededDataset`] makes them a function of `(seed, epoch, index)` (exact resumes, N processes = 1 process).
    """

    def __init__(
        self,
        processor,
        image_column: str,
        label_column: str,
        train: bool,
        augment: bool = True,
        random_crops: int | None = None,
    ) -> None:
        from torchvision.transforms import v2

        self.processor, self.image_column, self.label_column = processor, image_column, label_column
        self.train, self.random_crops = train, random_crops
        size = processor_output_size(processor)
        self.augment = (
            v2.Compose([v2.RandomResizedCrop(size), v2.RandomHorizontalFlip()]) if train and augment else None
        )

    def __call__(self, batch: dict[str, list]) -> dict[str, Any]:
        images = [to_rgb(image) for image in batch[self.image_column]]
        if self.augment is not None:
            augmented = [self.augment(image) for image in images]
            inputs = self.processor(augmented, return_tensors="pt", do_resize=False, do_center_crop=False)
        else:
            inputs = self.processor(images, return_tensors="pt")
        examples = {key: list(value) for key, value in inputs.items() if isinstance(value, torch.Tensor)}
        if self.random_crops:
            examples["crop_centers"] = [torch.rand(self.random_crops - 1, 2) for _ in images]
        examples["labels"] = list(batch[self.label_column])
        return examples


# ----------------------------------------------------------------------------------------------- arguments
@dataclass
class GlanceFocusArguments:
    """What `run_glance_focus.py` adds to the data and loop flags: the stage, the model to start from, and PPO."""

    stage: int = field(metadata={"help": "Training stage: 1 (encoders + classifier, random crops), 2 (policy, PPO), "
                                         "3 (classifier, optionally encoders, with the learned policy)."})  # fmt: skip
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A Glance-and-Focus checkpoint (save_pretrained folder or Hub id): the previous stage's "
                          "output for stages 2 and 3, or a model to continue from in stage 1."},
    )  # fmt: skip
    backbone_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Stage 1 from scratch: a transformers vision backbone checkpoint (ResNet, MobileNet, "
                          "ConvNeXt, DINOv2, timm wrapper) that both encoders start from."},
    )  # fmt: skip
    num_steps: int | None = field(default=None, metadata={"help": "Glance + focus steps T (stage 1 from a backbone)."})
    patch_size: int | None = field(
        default=None, metadata={"help": "Glance / crop size in pixels (stage 1 from a backbone; officially 96 or 128)."}
    )
    image_size: int | None = field(
        default=None, metadata={"help": "Full-resolution input size (default: the model's)."}
    )
    crop_pct: float | None = field(
        default=None,
        metadata={"help": "Build the image processor anew: resize the shorter side to image_size / crop_pct, then "
                          "centre-crop image_size (official ImageNet evaluation 0.875; 1.0 keeps the whole image). "
                          "Default: the saved processor, else 0.875."},
    )  # fmt: skip
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Re-initialize checkpoint weights whose shape differs (other labels)."}
    )
    ppo_clip: float = field(default=0.2, metadata={"help": "PPO ratio clip epsilon (official: 0.2)."})
    ppo_epochs: int = field(default=1, metadata={"help": "PPO epochs (updates) per batch (official: 1)."})
    ppo_gamma: float = field(default=0.7, metadata={"help": "Discount of the per-step rewards (official: 0.7)."})
    ppo_learning_rate: float = field(default=3e-4, metadata={"help": "Stage 2 Adam learning rate (official: 3e-4)."})
    ppo_value_coef: float = field(default=0.5, metadata={"help": "Weight of the critic's MSE (official: 0.5)."})
    ppo_entropy_coef: float = field(default=0.01, metadata={"help": "Weight of the entropy bonus (official: 0.01)."})
    policy_action_std: float | None = field(
        default=None,
        metadata={"help": "Std of the Gaussian over the crop centre (default: the model's, officially 0.1)."},
    )
    train_encoders: bool = field(
        default=False, metadata={"help": "Stage 3: fine-tune the encoders too (default: the classifier only)."}
    )
    freeze_glance_encoder: bool = field(
        default=False,
        metadata={"help": "Stages 1 and 3: keep the glance encoder and its head frozen (the official MobileNet-V3 / "
                          "EfficientNet recipe); default: trained with the rest (official ResNet / RegNet)."},
    )  # fmt: skip
    stage3_sample_crops: bool = field(
        default=True,
        metadata={
            "help": "Stage 3 trains on crops sampled from the policy (official); False: the policy's mean crops."
        },
    )
    calibrate_budget: float | None = field(
        default=None,
        metadata={"help": "After stage 3: fit exit thresholds on the validation split for this mean GFLOPs per image "
                          "(lookwhere_hf.budget.calibrate_budget) and save them in the model's config."},
    )  # fmt: skip

    def ppo_settings(self) -> PPOSettings:
        """The PPO flags as [`PPOSettings`]; a value out of range raises [`ArgumentError`]."""
        try:
            return PPOSettings(
                clip=self.ppo_clip, epochs=self.ppo_epochs, gamma=self.ppo_gamma, value_coef=self.ppo_value_coef,
                entropy_coef=self.ppo_entropy_coef,
            )  # fmt: skip
        except ValueError as error:
            raise ArgumentError(f"{error} (--ppo_* flags)") from None

    def validate(self) -> None:
        """Check the flags that can be checked before loading anything."""
        if self.stage not in STAGES:
            raise ArgumentError(f"--stage must be 1, 2 or 3, got {self.stage}.")
        if bool(self.model_name_or_path) == bool(self.backbone_name_or_path):
            if not self.model_name_or_path:
                raise ArgumentError(
                    "No model given: pass --model_name_or_path <Glance-and-Focus folder> (the previous stage's "
                    "output), or for stage 1 --backbone_name_or_path <vision backbone> to start from scratch."
                )
            raise ArgumentError("Pass either --model_name_or_path or --backbone_name_or_path, not both.")
        if self.backbone_name_or_path and self.stage != 1:
            raise ArgumentError(
                f"--backbone_name_or_path builds an untrained model: only stage 1 starts from it. Stage {self.stage} "
                "needs --model_name_or_path <the previous stage's output>."
            )
        self.ppo_settings()
        if not 0.0 < self.ppo_learning_rate < float("inf"):
            raise ArgumentError(f"--ppo_learning_rate must be a positive number, got {self.ppo_learning_rate}.")
        if self.policy_action_std is not None and not 0.0 < self.policy_action_std <= 1.0:
            raise ArgumentError(
                f"--policy_action_std must be in (0, 1] (a fraction of the crop's free range; official 0.1), got "
                f"{self.policy_action_std}."
            )
        for flag in ("num_steps", "patch_size", "image_size"):
            value = getattr(self, flag)
            if value is not None and value < 1:
                raise ArgumentError(f"--{flag} must be a positive integer, got {value}.")
        if self.crop_pct is not None and not 0.0 < self.crop_pct <= 1.0:
            raise ArgumentError(
                f"--crop_pct must be in (0, 1] (the share of the resized shorter side the centre crop keeps; 1.0 keeps "
                f"the whole image), got {self.crop_pct}."
            )
        budget = self.calibrate_budget
        if budget is not None:
            if self.stage != 3:
                raise ArgumentError("--calibrate_budget fits the exit thresholds after stage 3; drop it here.")
            if not 0.0 < budget < float("inf"):
                raise ArgumentError(f"--calibrate_budget must be a positive number of GFLOPs per image, got {budget}.")


def validate_glance_focus_arguments(gf_args: GlanceFocusArguments, data_args, hub) -> None:
    """Check the script's flags before data or weights are loaded: the stage flags, the data source, the loop flags
    that the stage constrains, and that `--model_name_or_path` is a Glance-and-Focus checkpoint."""
    from .arguments import GLANCE_FOCUS_MODEL_TYPES, load_checkpoint_config, validate_data_source

    gf_args.validate()
    if not 0.0 < data_args.train_val_split < 1.0:
        raise ArgumentError(f"--train_val_split must be in (0, 1), got {data_args.train_val_split}.")
    validate_data_source(data_args)
    if gf_args.model_name_or_path:
        hint = " Stage 1 can start from a vision backbone with --backbone_name_or_path."
        load_checkpoint_config("--model_name_or_path", gf_args.model_name_or_path, GLANCE_FOCUS_MODEL_TYPES, hub, hint)


def stage_training_settings(gf_args: GlanceFocusArguments, args) -> list[str]:
    """Stage 2 trains the policy with the official PPO optimizer: Adam (AdamW without weight decay) at
    `--ppo_learning_rate`, constant. Sets those loop arguments and returns what changed (to print)."""
    if gf_args.stage != 2:
        return []
    wanted = {"learning_rate": gf_args.ppo_learning_rate, "weight_decay": 0.0, "lr_scheduler_type": "constant"}
    changed = [
        f"{name} {getattr(args, name)} -> {value}" for name, value in wanted.items() if getattr(args, name) != value
    ]
    for name, value in wanted.items():
        setattr(args, name, value)
    if gf_args.ppo_epochs > 1 and args.gradient_accumulation_steps != 1:
        raise ArgumentError(
            f"--ppo_epochs {gf_args.ppo_epochs} runs several updates on each batch's rollout; it needs "
            f"--gradient_accumulation_steps 1, got {args.gradient_accumulation_steps}."
        )
    return changed


def describe_stage(stage: GlanceFocusStage, processor, dataset, changed: list[str], print_fn=print) -> None:
    """Print what the stage trains, on what, and with which settings."""
    config = stage.model.config
    trainable = sum(p.numel() for p in stage.parameters() if p.requires_grad)
    total = sum(p.numel() for p in stage.parameters())
    height, width = processor_output_size(processor)
    encoders = "focus encoder (glance encoder frozen)" if stage.freeze_glance_encoder else "encoders"
    what = {
        1: f"{encoders} + classifier, random crops",
        2: "policy (PPO), encoders and classifier frozen",
        3: "classifier" + (f" + {encoders}" if stage.train_encoders else "") + " with the learned policy",
    }
    print_fn(
        f"Glance-and-Focus stage {stage.stage}: {what[stage.stage]}. {config.num_labels} labels, input "
        f"{height}x{width}, {config.num_steps} steps (glance + {config.num_steps - 1} crops of {config.patch_size} "
        "px); "
        f"{trainable:,} of {total:,} parameters trainable."
    )
    if stage.stage == 2:
        ppo = stage.ppo
        print_fn(
            f"PPO: clip {ppo.clip}, {ppo.epochs} epoch(s) per batch, gamma {ppo.gamma}, value weight "
            f"{ppo.value_coef}, entropy weight {ppo.entropy_coef}, action std {config.policy_action_std}"
            + (f"; loop settings for PPO: {', '.join(changed)}" if changed else "")
        )
    sizes = {name: len(split) for name, split in dataset.items()}
    print_fn("Data: " + ", ".join(f"{name} {count} examples" for name, count in sizes.items()))


def build_glance_focus_model(gf_args: GlanceFocusArguments, hub, id2label: dict[int, str]):
    """The model a stage starts from, and its image processor.

    `--model_name_or_path`: a Glance-and-Focus folder (a new classifier for other labels needs
    `--ignore_mismatched_sizes`); its image processor if saved, else the one matching its config.
    `--backbone_name_or_path` (stage 1 from scratch): a config around the backbone's (`--num_steps`, `--patch_size`,
    `--image_size` where given), both encoders loaded with the backbone's weights, the rest freshly initialized.
    `--policy_action_std` and `--image_size` are written into the config. The image processor is built anew from
    the config (centre crop of `--crop_pct`, default 0.875) when there is no saved one or `--image_size` /
    `--crop_pct` is given. A saved budget (`budget_*` fields, e.g.
    the release's thresholds of a converted checkpoint) is dropped: training changes the predictions its exit
    thresholds were fitted on (stage 3's `--calibrate_budget` fits new ones).

    Returns:
        `(GlanceFocusForImageClassification, GlanceFocusImageProcessor)`.
    """
    from transformers import AutoConfig, AutoImageProcessor, AutoModel

    from ..models.glance_focus import GlanceFocusForImageClassification, GlanceFocusImageProcessor

    id2label = dict(enumerate(id2label.values()))
    fields = {"num_labels": len(id2label), "id2label": id2label, "label2id": {n: i for i, n in id2label.items()}}
    for name in ("num_steps", "patch_size", "image_size", "policy_action_std"):
        if getattr(gf_args, name, None) is not None:
            fields[name] = getattr(gf_args, name)
    hub_kwargs = hub.hub_kwargs()
    processor = None
    try:
        if gf_args.backbone_name_or_path:
            source = gf_args.backbone_name_or_path
            backbone = AutoModel.from_pretrained(source, trust_remote_code=hub.trust_remote_code, **hub_kwargs)
            model = GlanceFocusForImageClassification.from_backbone(backbone, **fields)
        else:
            source = gf_args.model_name_or_path
            config = AutoConfig.from_pretrained(source, trust_remote_code=hub.trust_remote_code, **hub_kwargs)
            if gf_args.stage != 1:
                for name in ("num_steps", "patch_size"):
                    if name in fields and fields[name] != getattr(config, name):
                        raise ArgumentError(
                            f"--{name} {fields[name]} differs from the stage-{gf_args.stage - 1} model's "
                            f"{getattr(config, name)}: later stages keep the architecture. Drop --{name}."
                        )
            for name, value in {**fields, **dict.fromkeys(BUDGET_CONFIG_FIELDS)}.items():
                setattr(config, name, value)
            config.validate_glance_focus()
            model = GlanceFocusForImageClassification.from_pretrained(
                source, config=config, ignore_mismatched_sizes=gf_args.ignore_mismatched_sizes, **hub_kwargs
            )
            try:
                processor = AutoImageProcessor.from_pretrained(source, **hub_kwargs)
            except (OSError, ValueError):
                processor = None
    except ArgumentError:
        raise
    except (RuntimeError, ValueError, OSError) as error:
        if "size" in str(error).lower() and "mismatch" in str(error).lower():
            raise ArgumentError(
                f"The checkpoint's weights do not fit {len(id2label)} labels ({str(error).splitlines()[0]}). Pass "
                "--ignore_mismatched_sizes to re-initialize the classifier."
            ) from error
        raise ArgumentError(f"Could not build the model from {source!r}: {type(error).__name__}: {error}") from error
    if not isinstance(processor, GlanceFocusImageProcessor) or gf_args.image_size is not None or gf_args.crop_pct:
        crop = {} if gf_args.crop_pct is None else {"crop_pct": gf_args.crop_pct}
        processor = GlanceFocusImageProcessor.from_model_config(model.config, **crop)
    return model, processor
