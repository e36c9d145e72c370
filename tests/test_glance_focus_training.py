"""Glance-and-Focus training (`lookwhere_hf.training.glance_focus`, `examples/pytorch/glance-focus`).

The PPO pieces are checked against float64 hand computations and on a stand-in model whose "image" is the position of
a target and whose classifier only becomes sure when a crop lands near it, so that the policy has something to learn.
"""

from types import SimpleNamespace

import pytest
import torch
from conftest import FLOAT64_TOLERANCE
from torch import nn

from lookwhere_hf.training.glance_focus import (
    GlanceFocusStage,
    PPOSettings,
    confidence_gains,
    discounted_returns,
    normalize_returns,
    ppo_loss,
    true_class_confidences,
)


# ----------------------------------------------------------------------------------------------- PPO arithmetic
def test_discounted_returns_and_confidence_gains_by_hand():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]], dtype=torch.float64)
    # G_2 = r_2; G_1 = r_1 + g G_2; G_0 = r_0 + g G_1 (g = 0.5)
    expected = torch.tensor([[1 + 0.5 * (2 + 0.5 * 3), 2 + 0.5 * 3, 3.0], [0 + 0.5 * (-1 + 0.5 * 4), -1 + 2.0, 4.0]])
    torch.testing.assert_close(discounted_returns(rewards, 0.5), expected.double(), **FLOAT64_TOLERANCE)
    torch.testing.assert_close(discounted_returns(rewards, 0.0), rewards, rtol=0, atol=0)

    logits = [torch.tensor([[0.0, 0.0], [1.0, 0.0]]), torch.tensor([[2.0, 0.0], [0.0, 3.0]])]
    labels = torch.tensor([0, 1])
    sigmoid = torch.sigmoid(torch.tensor([[0.0, 2.0], [-1.0, 3.0]], dtype=torch.float64))  # p(true) of 2 classes
    confidences = true_class_confidences(logits, labels)
    # one float32 softmax of 2 classes: a few ulps of 1
    torch.testing.assert_close(confidences.double(), sigmoid, rtol=0, atol=1e-6)
    torch.testing.assert_close(confidence_gains(logits, labels), confidences[:, 1:] - confidences[:, :-1])

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


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"clip": 0.0}, "clip must be in \\(0, 1\\)"),
        ({"clip": 1.5}, "clip must be in \\(0, 1\\)"),
        ({"epochs": 0}, "epochs per batch must be an integer >= 1"),
        ({"gamma": 1.2}, "gamma must be in \\[0, 1\\]"),
        ({"value_coef": -1.0}, "value_coef must be a finite number >= 0"),
        ({"entropy_coef": float("nan")}, "entropy_coef must be a finite number >= 0"),
    ],
)
def test_ppo_settings_reject_values_out_of_range(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PPOSettings(**kwargs)


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
            rung_logits=rung_logits,
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
