"""Glance-and-Focus training (`lookwhere_hf.training.glance_focus`, `examples/pytorch/glance-focus`).

The PPO pieces are checked against float64 hand computations and on a stand-in model whose "image" is the position of
a target and whose classifier only becomes sure when a crop lands near it, so that the policy has something to learn.
"""

import copy
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import FLOAT64_TOLERANCE, run_script_in_process
from torch import nn
from transformers import ResNetConfig

from lookwhere_hf import GlanceFocusConfig, GlanceFocusForImageClassification
from lookwhere_hf.training.glance_focus import (
    GlanceFocusStage,
    PPOSettings,
    confidence_gains,
    discounted_returns,
    normalize_returns,
    ppo_loss,
    true_class_confidences,
)

# Stripes: 46 x 46 dark noise with one bright 12 x 12 patch of stripes of period 3 at a random place, horizontal
# (class 0) or vertical (class 1). The glance (16 x 16, bicubic with align_corners=True) samples the image exactly at
# the pixels (3i, 3j): the cubic kernel is 1 at 0 and 0 at the other integers. Within the patch every sample then
# has the same stripe phase, so the glance shows a flat bright square, 250 or 120 with the same odds for both
# classes: it sees where the patch is but not its class. A 16 px focus crop on the patch sees the stripes.
SIZE, PATCH, GLANCE, BLOB = 46, 16, 16, 12
STRIPES = np.tile(np.array([250.0, 120.0, 120.0]), BLOB // 3)


def stripes_images(rng: np.random.Generator, labels) -> np.ndarray:
    """`(N, SIZE, SIZE)` uint8 grey images of the given classes."""
    images = np.clip(rng.normal(20, 6, size=(len(labels), SIZE, SIZE)), 0, 255)
    for image, label in zip(images, labels):
        y, x = rng.integers(0, SIZE - BLOB + 1, size=2)
        pattern = np.tile(STRIPES[:, None], (1, BLOB)) if label == 0 else np.tile(STRIPES[None, :], (BLOB, 1))
        image[y : y + BLOB, x : x + BLOB] = pattern
    return images.astype(np.uint8)


def stripes_tensors(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`(pixel_values (N, 3, SIZE, SIZE), labels (N,))`, normalized as an image processor would (a linear map)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=count)
    grey = torch.from_numpy(stripes_images(rng, labels)).float() / 255
    return ((grey - 0.45) / 0.25).unsqueeze(1).expand(-1, 3, -1, -1).contiguous(), torch.from_numpy(labels)


def tiny_config(**kwargs) -> GlanceFocusConfig:
    """Two-stage basic-block ResNet encoders (8 / 16 channels); a 16 x (2 x 2) policy state."""
    backbone = ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", downsample_in_first_stage=False
    )
    fields = dict(
        backbone_config=backbone, image_size=SIZE, patch_size=PATCH, glance_size=GLANCE, num_steps=3, num_labels=2,
        classifier_hidden_size=32, policy_hidden_size=32, policy_mlp_size=64,
    )  # fmt: skip
    return GlanceFocusConfig(**{**fields, **kwargs})


# ----------------------------------------------------------------------------------------------- PPO arithmetic
def test_discounted_returns_and_confidence_gains_by_hand():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]], dtype=torch.float64)
    # G_2 = r_2; G_1 = r_1 + g G_2; G_0 = r_0 + g G_1 (g = 0.5)
    expected = torch.tensor([[1 + 0.5 * (2 + 0.5 * 3), 2 + 0.5 * 3, 3.0], [0 + 0.5 * (-1 + 0.5 * 4), -1 + 2.0, 4.0]])
    torch.testing.assert_close(discounted_returns(rewards, 0.5), expected.double(), **FLOAT64_TOLERANCE)
    torch.testing.assert_close(discounted_returns(rewards, 0.0), rewards, rtol=0, atol=0)

    steps = [torch.tensor([[0.0, 0.0], [1.0, 0.0]]), torch.tensor([[2.0, 0.0], [0.0, 3.0]])]
    logits = torch.stack(steps, dim=1)  # (batch 2, steps 2, classes 2), as the model's `rung_logits`
    labels = torch.tensor([0, 1])
    sigmoid = torch.sigmoid(torch.tensor([[0.0, 2.0], [-1.0, 3.0]], dtype=torch.float64))  # p(true) of 2 classes
    confidences = true_class_confidences(logits, labels)
    # one float32 softmax of 2 classes: a few ulps of 1
    torch.testing.assert_close(confidences.double(), sigmoid, rtol=0, atol=1e-6)
    torch.testing.assert_close(confidence_gains(logits, labels), confidences[:, 1:] - confidences[:, :-1])
    with pytest.raises(ValueError, match=r"class indices in \[0, 2\)"):
        confidence_gains(logits, torch.tensor([0, 2]))

    returns = torch.tensor([[1.0, 3.0], [5.0, 7.0]], dtype=torch.float64)
    std = returns.flatten().std()  # the sample std (n - 1), as torch.std and the official code use
    expected = (returns - 4.0) / (std + 1e-5)
    torch.testing.assert_close(normalize_returns(returns), expected, **FLOAT64_TOLERANCE)


def _reference_ppo_loss(log_probs, old_log_probs, values, returns, entropy, settings):
    """The clipped PPO objective written out element by element (float64)."""
    terms, n = 0.0, log_probs.numel()
    for lp, old, v, g in zip(log_probs.flatten(), old_log_probs.flatten(), values.flatten(), returns.flatten()):
        ratio, advantage = torch.exp(lp - old), g - v
        clipped = min(max(ratio.item(), 1 - settings.clip), 1 + settings.clip)
        terms += -min(ratio.item() * advantage.item(), clipped * advantage.item())
    value = sum((v - g).item() ** 2 for v, g in zip(values.flatten(), returns.flatten())) / n
    return terms / n + settings.value_coef * value - settings.entropy_coef * entropy.mean().item()


def test_ppo_loss_matches_the_clipped_objective_written_out():
    generator = torch.Generator().manual_seed(0)
    shape = (6, 3)
    log_probs = torch.randn(shape, generator=generator, dtype=torch.float64)
    old = log_probs + 0.5 * torch.randn(shape, generator=generator, dtype=torch.float64)  # ratios in and out of clip
    values, returns = (torch.randn(shape, generator=generator, dtype=torch.float64) for _ in range(2))
    entropy = torch.rand(shape, generator=generator, dtype=torch.float64)
    settings = PPOSettings(clip=0.2, value_coef=0.5, entropy_coef=0.01)
    parts = ppo_loss(log_probs, old, values, returns, entropy, settings)
    expected = _reference_ppo_loss(log_probs, old, values, returns, entropy, settings)
    assert 0 < parts.clip_fraction.item() < 1  # both branches of the clip were exercised
    assert parts.loss.item() == pytest.approx(expected, rel=1e-12, abs=1e-12)  # float64, 18 terms
    assert parts.value_loss.item() == pytest.approx(((values - returns) ** 2).mean().item(), rel=1e-12)


def test_ppo_loss_gradient_is_zero_where_the_ratio_is_clipped():
    """A ratio above 1 + eps with a positive advantage (or below 1 - eps with a negative one) gets no policy
    gradient; inside the clip range the gradient is -advantage * ratio / n."""
    old = torch.zeros(1, 4, dtype=torch.float64)
    log_probs = torch.log(torch.tensor([[1.5, 0.5, 1.1, 0.9]], dtype=torch.float64)).requires_grad_(True)
    values = torch.zeros(1, 4, dtype=torch.float64)
    returns = torch.tensor([[1.0, -1.0, 1.0, -1.0]], dtype=torch.float64)  # advantages = returns (values are 0)
    settings = PPOSettings(clip=0.2, value_coef=0.0, entropy_coef=0.0)
    ppo_loss(log_probs, old, values, returns, torch.zeros_like(values), settings).loss.backward()
    expected = torch.tensor([[0.0, 0.0, -1.0 * 1.1 / 4, 1.0 * 0.9 / 4]], dtype=torch.float64)
    torch.testing.assert_close(log_probs.grad, expected, **FLOAT64_TOLERANCE)


def test_ppo_critic_gradient_comes_from_the_value_loss_alone():
    """The advantage uses the values detached (the official `rewards - state_values.detach()`): the critic learns
    only from `value_coef * mean((values - returns) ** 2)`, whose gradient is `2 * value_coef * (values - returns) /
    n`, whatever the ratios and advantages are."""
    generator = torch.Generator().manual_seed(1)
    log_probs, old, returns = (torch.randn(3, 2, generator=generator, dtype=torch.float64) for _ in range(3))
    values = torch.randn(3, 2, generator=generator, dtype=torch.float64).requires_grad_(True)
    settings = PPOSettings(value_coef=0.5)
    ppo_loss(log_probs, old, values, returns, torch.zeros_like(returns), settings).loss.backward()
    expected = 2 * 0.5 * (values.detach() - returns) / values.numel()
    torch.testing.assert_close(values.grad, expected, **FLOAT64_TOLERANCE)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"clip": 0.0}, "clip must be in \\(0, 1\\)"),
        ({"clip": 1.5}, "clip must be in \\(0, 1\\)"),
        ({"epochs": 0}, "epochs per batch must be an integer >= 1"),
        ({"gamma": 1.2}, "gamma must be in \\[0, 1\\]"),
        ({"value_coef": -1.0}, "value_coef must be a finite number >= 0"),
        ({"entropy_coef": float("nan")}, "entropy_coef must be a finite number >= 0"),
        ({"clip": "0.2"}, "clip must be a number"),
        ({"gamma": None}, "gamma must be a number"),
    ],
)
def test_ppo_settings_reject_values_out_of_range(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PPOSettings(**kwargs)


def test_stage_wrapper_rejects_bad_input():
    model = GlanceFocusForImageClassification(tiny_config())
    with pytest.raises(ValueError, match="stage must be 1, 2 or 3"):
        GlanceFocusStage(model, stage=4)
    with pytest.raises(ValueError, match="stage must be 1, 2 or 3"):
        GlanceFocusStage(model, stage=True)
    with pytest.raises(ValueError, match="`ppo` must be a PPOSettings"):
        GlanceFocusStage(model, stage=2, ppo={"clip": 0.1})
    with pytest.raises(ValueError, match="needs a Glance-and-Focus model with a `policy`"):
        GlanceFocusStage(nn.Linear(2, 2), stage=1)
    with pytest.raises(ValueError, match="needs `labels`"):
        GlanceFocusStage(model, stage=2).train()(torch.zeros(2, 3, SIZE, SIZE))
    with pytest.raises(ValueError, match="no focus step"):
        GlanceFocusStage(GlanceFocusForImageClassification(tiny_config(num_steps=1)), stage=2)


# ----------------------------------------------------------------------------------------------- a stand-in model
class StandInPolicy(nn.Module):
    """An actor-critic with the agreed interface: a Gaussian (std `std`) over the crop centre in [0, 1]^2, its mean a
    sigmoid of an MLP of the state."""

    def __init__(self, std: float = 0.1) -> None:
        super().__init__()
        self.actor = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 2))
        self.critic = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 1))
        self.std = std

    def distribution(self, states: torch.Tensor) -> torch.distributions.Normal:
        return torch.distributions.Normal(torch.sigmoid(self.actor(states)), self.std)

    def forward(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.sigmoid(self.actor(state)), self.critic(state).squeeze(-1)

    def evaluate(self, states, actions):
        distribution = self.distribution(states)
        log_probs = distribution.log_prob(actions).sum(-1)
        return log_probs, self.critic(states).squeeze(-1), distribution.entropy().sum(-1)


class StandInGlanceFocus(nn.Module):
    """ "Images" are target positions `(B, 2)` in [0, 1]^2; the class is whether the target is in the left half.
    The glance predicts 50 / 50; a focus step sees the target with visibility `exp(-|crop - target|^2 / 0.02)`, and
    the classifier's margin is 6 x the best visibility so far. So only crops near the target raise the true class's
    confidence, and the policy's state (the glance's "feature": the target position) tells where that is."""

    def __init__(self, num_steps: int = 3) -> None:
        super().__init__()
        self.config = SimpleNamespace(num_steps=num_steps)
        self.policy = StandInPolicy()
        self.classifier = nn.Linear(1, 1)  # a trainable scale of the margin (stages 1 / 3)
        nn.init.constant_(self.classifier.weight, 6.0)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, pixel_values, crop_centers=None, policy_mode="mean", anytime=False, return_policy=False):
        targets = pixel_values
        batch, steps = targets.shape[0], self.config.num_steps - 1
        states = targets.unsqueeze(1).expand(batch, steps, 2)
        distribution = self.policy.distribution(states)
        if crop_centers is None:
            crop_centers = distribution.mean if policy_mode == "mean" else distribution.sample().clamp(0, 1)
        log_probs = distribution.log_prob(crop_centers).sum(-1)
        sign = (targets[:, 0] < 0.5).float() * 2 - 1  # +1: class 1 (left half), -1: class 0
        visibility = torch.exp(-((crop_centers - targets.unsqueeze(1)) ** 2).sum(-1) / 0.02).cummax(dim=1).values
        rung_logits = [torch.zeros(batch, 2)]
        for step in range(steps):
            margin = self.classifier(visibility[:, step : step + 1]).squeeze(-1) * sign
            rung_logits.append(torch.stack([-margin / 2, margin / 2], dim=-1))
        return SimpleNamespace(
            logits=rung_logits[-1],
            rung_logits=torch.stack(rung_logits, dim=1),  # (B, T, C), as the model returns them
            policy_states=states,
            policy_actions=crop_centers,
            policy_log_probs=log_probs,
        )


def _targets(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    targets = torch.rand(count, 2, generator=torch.Generator().manual_seed(seed))
    return targets, (targets[:, 0] < 0.5).long()


def _mean_reward(model, targets, labels, crop_centers=None) -> float:
    with torch.no_grad():
        outputs = model(targets, crop_centers=crop_centers)
    return confidence_gains(outputs.rung_logits, labels).mean().item()


@pytest.mark.parametrize("epochs", [1, 2])
def test_ppo_stage_learns_where_to_look_on_a_stand_in_model(epochs):
    """Stage 2 on the stand-in: after 150 PPO batches the policy's mean crops earn far more reward (confidence gain)
    than random crops, the classifier did not move (frozen), and with 2 PPO epochs per batch the rollout is collected
    once per batch and dropped after its last epoch."""
    torch.manual_seed(0)
    model = StandInGlanceFocus()
    stage = GlanceFocusStage(model, stage=2, ppo=PPOSettings(epochs=epochs)).train()
    assert [n for n, p in stage.named_parameters() if p.requires_grad] == [
        n for n, _ in stage.named_parameters() if n.startswith("model.policy.")
    ]
    classifier_before = model.classifier.weight.detach().clone()
    optimizer = torch.optim.Adam([p for p in stage.parameters() if p.requires_grad], lr=3e-3)
    eval_targets, eval_labels = _targets(512, seed=1)
    random_crops = torch.rand(512, 2, 2, generator=torch.Generator().manual_seed(2))
    before = _mean_reward(model, eval_targets, eval_labels)
    rewards = []
    for step in range(150):
        targets, labels = _targets(64, seed=100 + step)
        for ppo_epoch in range(epochs):
            outputs = stage(targets, labels=labels, ppo_epoch=ppo_epoch)
            optimizer.zero_grad()
            outputs.loss.backward()
            optimizer.step()
            if ppo_epoch == 0 and epochs > 1:
                assert stage._rollout is not None and outputs.approx_kl.abs().item() < 1e-12  # same policy
            if ppo_epoch == 1:
                assert outputs.approx_kl.abs().item() > 0  # the second epoch sees the updated policy
        assert stage._rollout is None
        rewards.append(outputs.reward.item())
    random = _mean_reward(model, eval_targets, eval_labels, crop_centers=random_crops)
    learned = _mean_reward(model, eval_targets, eval_labels)
    # The best possible mean gain per focus step is (sigmoid(6) - 0.5) / 2 = 0.249; random crops in [0, 1]^2 see a
    # target within ~0.14 about 6% of the time. Learned: crops at the target.
    assert random < 0.06 and before < 0.1, (random, before)
    assert learned > 0.2, (learned, random)
    torch.testing.assert_close(model.classifier.weight, classifier_before, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------- the three stages
def _train(stage: GlanceFocusStage, data, steps: int, lr: float, seed: int) -> list[float]:
    """`steps` optimizer steps on random batches of 32 (AdamW; for stage 2, weight decay 0 = Adam); the losses."""
    images, labels = data
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the policy's samples (stages 2 and 3)
    parameters = [p for p in stage.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0 if stage.stage == 2 else 0.01)
    stage.train()
    losses = []
    for _ in range(steps):
        index = torch.randint(0, len(images), (32,), generator=generator)
        crops = torch.rand(32, stage.num_steps - 1, 2, generator=generator) if stage.stage == 1 else None
        outputs = stage(images[index], labels=labels[index], crop_centers=crops)
        optimizer.zero_grad()
        outputs.loss.backward()
        optimizer.step()
        losses.append(outputs.reward.item() if stage.stage == 2 else outputs.loss.item())
    return losses


def _anytime(model, data, crop_centers=None) -> tuple[list[float], float]:
    """Accuracy after every step and the mean reward (true-class confidence gain per focus step), eval mode."""
    images, labels = data
    model.eval()
    with torch.no_grad():
        outputs = model(images, crop_centers=crop_centers, anytime=True)
    accuracy = [(logits.argmax(-1) == labels).double().mean().item() for logits in outputs.rung_logits.unbind(1)]
    return accuracy, confidence_gains(outputs.rung_logits, labels).mean().item()


@pytest.fixture(scope="module")
def stripes():
    return {"train": stripes_tensors(1024, seed=0), "eval": stripes_tensors(256, seed=1)}


@pytest.fixture(scope="module")
def random_crops():
    return torch.rand(256, 2, 2, generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def stage1(stripes):
    torch.manual_seed(0)
    model = GlanceFocusForImageClassification(tiny_config())
    policy = copy.deepcopy(model.policy.state_dict())
    losses = _train(GlanceFocusStage(model, stage=1), stripes["train"], steps=300, lr=3e-3, seed=0)
    return {"model": model, "losses": losses, "policy": policy}


@pytest.fixture(scope="module")
def stage2(stage1, stripes, tmp_path_factory):
    folder = tmp_path_factory.mktemp("stage1")
    stage1["model"].save_pretrained(folder)
    before = _anytime(GlanceFocusForImageClassification.from_pretrained(folder), stripes["eval"])
    model = GlanceFocusForImageClassification.from_pretrained(folder)  # as the script loads it (no forward yet)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("policy.")}
    rewards = _train(GlanceFocusStage(model, stage=2), stripes["train"], steps=300, lr=2e-3, seed=1)
    return {"model": model, "frozen": frozen, "before": before, "rewards": rewards}


def test_stage1_trains_encoders_and_classifier_on_random_crops(stage1, stripes, random_crops):
    """The official loss, (sum of the step losses + the encoder heads' losses) / T, starts at 2 ln 2 (two classes,
    small logits) and falls; the glance alone stays at chance (it cannot see the stripes), random crops beat it;
    the policy did not move."""
    losses = stage1["losses"]
    assert np.mean(losses[:5]) == pytest.approx(2 * np.log(2), abs=0.05)
    assert np.mean(losses[-30:]) < 0.8 * np.mean(losses[:30]), (np.mean(losses[:30]), np.mean(losses[-30:]))
    accuracy, _ = _anytime(stage1["model"], stripes["eval"], random_crops)
    assert abs(accuracy[0] - 0.5) < 0.1 and accuracy[-1] > 0.7, accuracy
    for name, tensor in stage1["model"].policy.state_dict().items():
        torch.testing.assert_close(tensor, stage1["policy"][name], rtol=0, atol=0)


def test_stage2_policy_earns_more_reward_than_random_crops(stage2, stripes, random_crops):
    """After 300 PPO batches (lr 2e-3, the official settings otherwise) the policy's mean crops earn a clearly higher
    mean reward than the same model with random crops, and than the policy before PPO; encoders, heads and
    classifier (batch-norm statistics included: frozen modules run in eval mode) are bit for bit unchanged.

    Measured here (256 held-out images): reward 0.209 (PPO seeds 2, 3: 0.224, 0.239) against 0.161 for random crops
    and 0.123 before PPO; last-step accuracy 0.90 against 0.82 with random crops. The bounds keep half of the gaps."""
    model = stage2["model"]
    random_accuracy, random_reward = _anytime(model, stripes["eval"], random_crops)
    accuracy, learned = _anytime(model, stripes["eval"])
    _, before = stage2["before"]
    assert learned > random_reward + 0.02 and learned > before + 0.04, (learned, random_reward, before)
    assert accuracy[-1] > random_accuracy[-1] + 0.04, (accuracy, random_accuracy)
    assert np.mean(stage2["rewards"][-50:]) > np.mean(stage2["rewards"][:50])  # the rollouts' reward rose too
    for name, tensor in model.state_dict().items():
        if not name.startswith("policy."):
            torch.testing.assert_close(tensor, stage2["frozen"][name], rtol=0, atol=0)


@pytest.mark.parametrize("stage", [1, 3])
def test_a_frozen_glance_encoder_does_not_change(stripes, stage):
    """`freeze_glance_encoder` (the official MobileNet-V3 / EfficientNet recipe): stage 1, or stage 3 with the
    encoders, trains the focus encoder and the classifier, and leaves the glance encoder (batch-norm statistics
    included) and its head bit for bit as they were."""
    torch.manual_seed(0)
    model = GlanceFocusForImageClassification(tiny_config())
    start = {k: v.clone() for k, v in model.state_dict().items()}
    stage_ = GlanceFocusStage(model, stage=stage, train_encoders=True, freeze_glance_encoder=True)
    _train(stage_, stripes["train"], steps=3, lr=1e-2, seed=0)
    moved = {name.split(".")[0] for name, tensor in model.state_dict().items() if not torch.equal(tensor, start[name])}
    assert moved == {"focus_encoder", "focus_head", "classifier"}, moved


def _last_step_loss(model, data) -> float:
    """Cross-entropy of the last step on held-out data, with the policy's mean crops (eval mode)."""
    images, labels = data
    model.eval()
    with torch.no_grad():
        logits = model(images, anytime=True).rung_logits[:, -1]
    return torch.nn.functional.cross_entropy(logits, labels).item()


@pytest.mark.parametrize("train_encoders", [False, True])
def test_stage3_fine_tunes_the_classifier_with_the_learned_policy(stage2, stripes, train_encoders):
    """Stage 3 trains the classifier (and with `train_encoders` the encoders and their heads) on policy-sampled
    crops; on held-out images the last step's loss with the policy's crops falls (measured: 0.166 -> 0.145, and
    0.128 with the encoders), and the policy stays as stage 2 left it."""
    model = copy.deepcopy(stage2["model"])
    start = {k: v.clone() for k, v in model.state_dict().items()}
    before = _last_step_loss(model, stripes["eval"])
    _train(GlanceFocusStage(model, stage=3, train_encoders=train_encoders), stripes["train"], steps=60, lr=1e-3, seed=2)
    after = _last_step_loss(model, stripes["eval"])
    assert after < before - 0.01, (before, after)
    moved = {name.split(".")[0] for name, tensor in model.state_dict().items() if not torch.equal(tensor, start[name])}
    trained = {"classifier", "glance_encoder", "focus_encoder", "glance_head", "focus_head"}
    assert moved == (trained if train_encoders else {"classifier"}), moved


def test_stage1_trains_on_the_given_random_crops_or_draws_uniform_ones():
    """Stage 1's loss is the model's official loss on the crop centres the data transform drew (not the untrained
    policy's crops); without them the stage draws uniform centres from the global RNG."""
    torch.manual_seed(0)
    model = GlanceFocusForImageClassification(tiny_config())
    with torch.no_grad():  # a classifier and policy far from their near-zero start: crops change the loss
        for name, param in model.named_parameters():
            if "backbone" not in name and param.ndim > 1:
                param.add_(torch.randn_like(param))
    images, labels = stripes_tensors(4, seed=3)
    centers = torch.rand(4, 2, 2, generator=torch.Generator().manual_seed(4))
    stage = GlanceFocusStage(model, stage=1).eval()  # the same numbers as training, without batch-norm updates
    stage.training = True  # the stage's training branch; its modules stay in eval mode
    loss = stage(images, labels=labels, crop_centers=centers).loss
    expected = model(images, labels=labels, crop_centers=centers, anytime=True).loss
    assert loss.item() == expected.item()
    policy_loss = model(images, labels=labels, anytime=True).loss  # the policy's mean crops
    assert abs(loss.item() - policy_loss.item()) > 0.01
    torch.manual_seed(5)
    drawn = torch.rand(4, 2, 2)
    torch.manual_seed(5)
    assert stage(images, labels=labels).loss.item() == model(images, labels=labels, crop_centers=drawn).loss.item()


def test_stage3_trains_with_the_classifier_dropout_and_stage2_without():
    """`classifier_dropout` (the official MobileNet-V3's drop_rate 0.2) feeds the classifier: stage 3 trains the
    classifier with it on (the official stage 3 runs its encoders in training mode), so two forwards on the same mean
    crops differ; stage 2, whose classifier is frozen, runs without it, so the rollout's rewards are deterministic."""
    torch.manual_seed(0)
    model = GlanceFocusForImageClassification(tiny_config(classifier_dropout=0.5))
    images, labels = stripes_tensors(8, seed=3)
    stage = GlanceFocusStage(model, stage=3, sample_crops=False).train()  # mean crops: no other random draw
    assert model.dropout.training and not model.focus_encoder.training
    first, second = (stage(images, labels=labels).logits for _ in range(2))
    assert not torch.equal(first, second)
    GlanceFocusStage(model, stage=2).train()
    assert not model.dropout.training and model.policy.training


# ----------------------------------------------------------------------------------------------- the script
ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples/pytorch/glance-focus/run_glance_focus.py"
COMMON = ["--dataset_name", "stripes", "--no_augment", "--per_device_train_batch_size", "32", "--seed", "0"]


def _script_main():
    return runpy.run_path(str(SCRIPT), run_name="glance_focus_script")["main"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A saved `DatasetDict` of stripes images (train 256, validation 128), a tiny random Glance-and-Focus model
    whose image processor keeps the images at 46 px (no resize: the glance's exact sampling needs the pixels as
    drawn), a tiny ResNet backbone, and the environment of the script runs."""
    import datasets
    from PIL import Image

    from lookwhere_hf import GlanceFocusImageProcessor

    root = tmp_path_factory.mktemp("glance_focus")
    rng = np.random.default_rng(0)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["horizontal", "vertical"])}
    )
    splits = {}
    for split, count in (("train", 256), ("validation", 128)):
        labels = rng.integers(0, 2, size=count).tolist()
        images = [Image.fromarray(np.repeat(grey[..., None], 3, -1)) for grey in stripes_images(rng, labels)]
        splits[split] = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
    datasets.DatasetDict(splits).save_to_disk(root / "stripes")
    torch.manual_seed(0)
    config = tiny_config()
    GlanceFocusForImageClassification(config).save_pretrained(root / "tiny")
    GlanceFocusImageProcessor.from_model_config(config, size={"shortest_edge": SIZE}).save_pretrained(root / "tiny")
    from transformers import ResNetModel

    ResNetModel(config.backbone_config).save_pretrained(root / "resnet")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(root / "hf_home"),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    return {"root": root, "env": env}


def _run(workspace, args, launcher=None) -> str:
    command = (launcher or [sys.executable]) + [str(SCRIPT)] + [str(a) for a in args]
    done = subprocess.run(
        command, check=False, env=workspace["env"], capture_output=True, text=True, timeout=600, cwd=workspace["root"]
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{output[-6000:]}"
    return output


def _run_here(workspace, args) -> str:
    """`_run` without a launcher, in this process (no fresh interpreter's start-up): the same script, arguments,
    working directory, thread count and caches; its printed output."""
    return run_script_in_process(SCRIPT, args, workspace["root"], workspace["env"]["HF_HOME"])


def _logged(output: str) -> list[dict]:
    """The JSON lines the training loop printed."""
    return [json.loads(line[line.index('{"step"') :]) for line in output.splitlines() if '{"step"' in line]


def _results(folder: Path) -> dict:
    return json.loads((folder / "all_results.json").read_text())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--stage", "1"], "No model given"),
        (["--stage", "1", "--model_name_or_path", "tiny", "--backbone_name_or_path", "resnet"], "not both"),
        (["--stage", "2", "--backbone_name_or_path", "resnet"], "only stage 1 starts from it"),
        (["--stage", "4", "--model_name_or_path", "tiny"], "--stage must be 1, 2 or 3"),
        (["--stage", "1", "--model_name_or_path", "tiny", "--calibrate_budget", "1"], "after stage 3"),
        (["--stage", "3", "--model_name_or_path", "tiny", "--calibrate_budget", "-1"], "positive number of GFLOPs"),
        (["--stage", "2", "--model_name_or_path", "tiny", "--ppo_clip", "1.5"], "clip must be in \\(0, 1\\)"),
        (["--stage", "2", "--model_name_or_path", "tiny", "--ppo_gamma", "2"], "gamma must be in \\[0, 1\\]"),
        (["--stage", "2", "--model_name_or_path", "tiny", "--ppo_learning_rate", "0"], "--ppo_learning_rate must be"),
        (["--stage", "2", "--model_name_or_path", "tiny", "--policy_action_std", "0"], "--policy_action_std must be"),
        (["--stage", "2", "--model_name_or_path", "tiny", "--policy_action_std", "1.5"], r"must be in \(0, 1\]"),
        (["--stage", "1", "--model_name_or_path", "tiny", "--crop_pct", "1.2"], r"--crop_pct must be in \(0, 1\]"),
        (["--stage", "1", "--model_name_or_path", "resnet"], "is a 'resnet' model; it needs"),
        (["--stage", "1", "--model_name_or_path", "missing/folder/x"], "no such folder"),
        (
            ["--stage", "2", "--model_name_or_path", "tiny", "--ppo_epochs", "2", "--gradient_accumulation_steps", "2"],
            "needs --gradient_accumulation_steps 1",
        ),
    ],
)
def test_script_rejects_bad_arguments_before_training(workspace, monkeypatch, args, message):
    from lookwhere_hf.training import ArgumentError

    monkeypatch.chdir(workspace["root"])
    with pytest.raises(ArgumentError, match=message):
        _script_main()([*args, "--dataset_name", "stripes", "--output_dir", str(workspace["root"] / "unused")])
    assert not (workspace["root"] / "unused").exists()


def test_stage1_from_a_backbone_loads_it_into_both_encoders(workspace):
    from transformers import ResNetModel

    from lookwhere_hf.image_processing import processor_output_size
    from lookwhere_hf.training.arguments import HubArguments
    from lookwhere_hf.training.glance_focus import GlanceFocusArguments, build_glance_focus_model

    root = workspace["root"]
    args = GlanceFocusArguments(stage=1, backbone_name_or_path=str(root / "resnet"), num_steps=3, patch_size=16,
                                image_size=SIZE)  # fmt: skip
    model, processor = build_glance_focus_model(args, HubArguments(), {0: "horizontal", 1: "vertical"})
    expected = ResNetModel.from_pretrained(root / "resnet").state_dict()
    for encoder in (model.glance_encoder, model.focus_encoder):
        for name, tensor in encoder.backbone.state_dict().items():
            torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0)
    assert (model.config.num_steps, model.config.patch_size, model.config.num_labels) == (3, 16, 2)
    assert model.config.id2label == {0: "horizontal", 1: "vertical"}
    assert processor_output_size(processor) == (SIZE, SIZE)


@pytest.mark.parametrize(("crop_pct", "shortest_edge"), [(None, int(SIZE / 0.875)), (1.0, SIZE), (0.5, 2 * SIZE)])
def test_crop_pct_sets_how_much_of_the_image_the_processor_keeps(workspace, crop_pct, shortest_edge):
    """`--crop_pct 1.0` keeps the whole (square) image: the shorter side is resized to the crop size itself, so a
    marker in the image's corner survives preprocessing; the official 0.875 default cuts it off."""
    from PIL import Image

    from lookwhere_hf.training.arguments import HubArguments
    from lookwhere_hf.training.glance_focus import GlanceFocusArguments, build_glance_focus_model

    args = GlanceFocusArguments(stage=1, backbone_name_or_path=str(workspace["root"] / "resnet"), num_steps=2,
                                patch_size=16, image_size=SIZE, crop_pct=crop_pct)  # fmt: skip
    _, processor = build_glance_focus_model(args, HubArguments(), {0: "horizontal", 1: "vertical"})
    assert processor.size["shortest_edge"] == shortest_edge
    assert (processor.crop_size["height"], processor.crop_size["width"]) == (SIZE, SIZE)
    image = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    image[: SIZE // 16, : SIZE // 16] = 255  # a white corner, 1/16 of the side
    pixels = processor(Image.fromarray(image), return_tensors="pt")["pixel_values"][0]
    corner_kept = bool(pixels[:, 0, 0].mean() > pixels[:, SIZE // 2, SIZE // 2].mean())
    assert corner_kept == (crop_pct == 1.0)
    with pytest.raises(ValueError, match="crop_pct"):
        processor.from_model_config(type("C", (), {"image_size": SIZE})(), crop_pct=0.0)


@pytest.mark.parametrize("stage", [1, 3])
def test_a_saved_budget_is_dropped_when_training_starts(tmp_path, stage):
    """Exit thresholds fitted on a model's predictions do not hold once a stage changes them: the model a stage starts
    from has no budget (and its evaluation during training runs every step), whatever its folder saved."""
    from lookwhere_hf.budget import BUDGET_CONFIG_FIELDS
    from lookwhere_hf.training.arguments import HubArguments
    from lookwhere_hf.training.glance_focus import GlanceFocusArguments, build_glance_focus_model

    budget = dict(budget_thresholds=[0.6, 0.7], budget_rung_gflops=[0.1, 0.2, 0.3], budget_image_size=[SIZE, SIZE],
                  budget_target_gflops=0.2, budget_expected_gflops=0.19, budget_calibration_accuracy=0.8)  # fmt: skip
    assert set(budget) == set(BUDGET_CONFIG_FIELDS)
    GlanceFocusForImageClassification(tiny_config(**budget)).save_pretrained(tmp_path)
    args = GlanceFocusArguments(stage=stage, model_name_or_path=str(tmp_path))
    model, _ = build_glance_focus_model(args, HubArguments(), {0: "horizontal", 1: "vertical"})
    assert all(getattr(model.config, name) is None for name in BUDGET_CONFIG_FIELDS)


@pytest.mark.slow
def test_script_runs_the_three_stages_and_saves_a_budgeted_pipeline_folder(workspace):
    """Stage 1 from the tiny model, stage 2 from stage 1's folder, stage 3 from stage 2's with `--calibrate_budget`:
    each folder holds a model and processor; stage 2 changed only the policy; stage 3's config has the exit
    thresholds, and `pipeline("image-classification")` on it gives the budgeted forward's probabilities."""
    from PIL import Image
    from safetensors.torch import load_file
    from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

    root = workspace["root"]
    one, two, three = root / "stage1", root / "stage2", root / "stage3"
    output = _run_here(workspace, ["--stage", "1", "--model_name_or_path", "tiny", "--output_dir", one,
                                   "--learning_rate", "3e-3", "--max_train_steps", "24", *COMMON])  # fmt: skip
    assert "Glance-and-Focus stage 1: encoders + classifier, random crops" in output and str(one) in output
    assert _results(one)["train_steps"] == 24 and _results(one)["stage"] == 1
    output = _run_here(workspace, ["--stage", "2", "--model_name_or_path", one, "--output_dir", two,
                                   "--max_train_steps", "8", "--ppo_epochs", "2", *COMMON])  # fmt: skip
    assert "PPO: clip 0.2, 2 epoch(s) per batch, gamma 0.7" in output and "learning_rate 5e-05 -> 0.0003" in output
    logs = _logged(output)
    assert (
        len(logs) == 1 and logs[0]["step"] == 8 and {"reward", "policy_loss", "value_loss", "entropy"} <= set(logs[0])
    )
    # the loop ran 2 updates per batch: the second one's ratios are off 1 (with 1 update approx_kl is exactly 0)
    assert logs[0]["approx_kl"] != 0
    before, after = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    changed = {name.split(".")[0] for name in before if not torch.equal(before[name], after[name])}
    assert changed == {"policy"}, changed
    budget = 0.5 * sum(GlanceFocusForImageClassification.from_pretrained(two).rung_flops()[:2]) / 1e9
    output = _run_here(workspace, ["--stage", "3", "--model_name_or_path", two, "--output_dir", three,
                                   "--learning_rate", "1e-3", "--max_train_steps", "8", "--calibrate_budget", budget,
                                   *COMMON])  # fmt: skip
    assert "Budget calibration on 128 validation images" in output
    config = json.loads((three / "config.json").read_text())
    assert len(config["budget_thresholds"]) == 2 and config["budget_expected_gflops"] <= budget
    assert _results(three)["budget_expected_gflops"] == config["budget_expected_gflops"]

    image = Image.fromarray(np.repeat(stripes_images(np.random.default_rng(5), [1])[0][..., None], 3, -1))
    model = AutoModelForImageClassification.from_pretrained(three).eval()
    with torch.no_grad():
        probabilities = model(**AutoImageProcessor.from_pretrained(three)(image, return_tensors="pt")).logits.softmax(
            -1
        )
    predictions = pipeline("image-classification", model=str(three))(image, top_k=2)
    for prediction in predictions:  # the same logits; a float32 softmax of 2 classes: a few ulps of 1
        assert prediction["score"] == pytest.approx(
            probabilities[0, model.config.label2id[prediction["label"]]].item(), abs=1e-6
        )


@pytest.mark.slow
def test_stage2_resumed_mid_epoch_ends_at_the_uninterrupted_weights(workspace):
    """PPO draws its crops from the global torch RNG, which the checkpoint keeps: an 8-step stage-2 run (8 batches
    of 32 = one epoch of 256 images) that saves `step_3`, and a second run resumed from `step_3`, end at bit-identical
    policy weights (constant learning rate, as stage 2 uses)."""
    from safetensors.torch import load_file

    root = workspace["root"]
    full, resumed = root / "ppo_full", root / "ppo_resumed"
    args = ["--stage", "2", "--model_name_or_path", "tiny", "--max_train_steps", "8", *COMMON]
    _run_here(workspace, [*args, "--output_dir", full, "--checkpointing_steps", "3"])
    assert sorted(p.name for p in full.glob("step_*")) == ["step_3", "step_6"]
    output = _run_here(workspace, [*args, "--output_dir", resumed, "--resume_from_checkpoint", full / "step_3"])
    assert "Resuming from" in output
    assert [log["approx_kl"] for log in _logged(output)] == [0.0]  # one PPO update per batch: the rollout's policy
    final, again = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    halfway = load_file(full / "step_3" / "model.safetensors")  # the training state: the stage wrapper's `model.*`
    assert set(halfway) == {f"model.{name}" for name in final}
    moved = max((final[k].double() - halfway[f"model.{k}"].double()).abs().max().item() for k in final)
    assert moved > 1e-5  # the last 5 steps moved the policy ...
    for name in final:  # ... and the resumed run made exactly the same changes
        torch.testing.assert_close(again[name], final[name], rtol=0, atol=0)
    assert _results(resumed)["eval_accuracy"] == _results(full)["eval_accuracy"]


@pytest.mark.slow
def test_stages_1_and_2_under_accelerate_launch_two_processes(workspace):
    """2 CPU processes (gloo, `--multi_gpu` as accelerate needs for several CPU processes): stage 1 (DDP finds a
    gradient for every trained parameter: the policy is frozen) and stage 2 (only the policy is trained)."""
    import socket

    from safetensors.torch import load_file

    def launcher():
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
                str(port)]  # fmt: skip

    root = workspace["root"]
    one, two = root / "ddp_stage1", root / "ddp_stage2"
    output = _run(workspace, ["--stage", "1", "--model_name_or_path", "tiny", "--output_dir", one,
                              "--max_train_steps", "4", "--learning_rate", "3e-3", *COMMON], launcher())  # fmt: skip
    assert "(2 processes x 32 x 1 accumulation)" in output and _results(one)["train_steps"] == 4
    _run(workspace, ["--stage", "2", "--model_name_or_path", one, "--output_dir", two, "--max_train_steps", "4",
                     *COMMON], launcher())  # fmt: skip
    before, after = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert {name.split(".")[0] for name in before if not torch.equal(before[name], after[name])} == {"policy"}
