"""An independent Glance-and-Focus forward and official-format checkpoints with random weights (test helper).

Written from the official architecture (github.com/blackfeather-wang/GFNet-Pytorch: `network.py`, `utils.py`,
`inference.py`, `configs.py`, `models/resnet.py`, `models/mobilenetv3.py`) with torchvision / timm modules and plain
torch, never with `lookwhere_hf`'s classes, so that the converter's tests compare two separate implementations.

What the official inference does (`inference.py: generate_logits`), as we read it:

- **Glance** (step 0): the normalized image `x` (B, 3, H, H), square, is resized to the patch size `p` with
  `F.interpolate(x, (p, p), mode=<prime_interpolation>, align_corners=True)` (`utils.get_prime`; bicubic for ResNet
  and MobileNet-V3, bilinear for DenseNet and RegNet). The global encoder returns a pooled feature `f_0` and its last
  feature map `s_0`, flattened channel-major `(B, C * h * w)` (the policy's state).
- **Focus** (steps t = 1 .. T-1): the policy reads `s_{t-1}` and returns the actor's mean (no sampling at test time):
  state encoder -> GRU (hidden state zeroed at t = 1 and carried on) -> `Linear(hidden, 2)` -> sigmoid, a pair
  `a` in (0, 1)^2. The crop's top-left corner is `floor(a * (H - p))` computed in the input's float dtype
  (`utils.get_patch`; `a[:, 0]` is the row, `a[:, 1]` the column), the crop `x[:, :, r:r+p, c:c+p]` is taken from the
  full-resolution image; it never leaves the image, so there is no padding. The local encoder (same architecture, own
  weights) returns `f_t` and `s_t`.
- **Classifier** (`network.Full_layer`): ResNet / DenseNet / RegNet: a GRU over `f_0, f_1, ...` (hidden zeroed at
  step 0) and one `Linear(hidden, classes)` after every step. MobileNet-V3 / EfficientNet: a cascade, `fc_{t+1}` on the
  concatenation `[f_0, ..., f_t]` for t >= 1.
- **Step-0 logits**: ResNet / DenseNet: the GRU classifier's; MobileNet-V3 / EfficientNet: the global encoder's own
  `classifier`; RegNet: the global encoder's own `fc`.
- **Policy state encoder** (`network.ActorCritic`): ResNet / DenseNet: `Linear(C*h*w, 2048) -> ReLU ->
  Linear(2048, hidden) -> ReLU`; MobileNet-V3 / EfficientNet / RegNet: `Conv2d(C, 32, 1, bias=False) -> ReLU ->
  Flatten -> Linear(32*h*w, hidden) -> ReLU`, where `h = w = ceil(p / 32)`.

Checkpoint layout (the release's `*.pth.tar`, read by `inference.py`): `model_name`, `patch_size`,
`model_prime_state_dict` (global encoder), `model_state_dict` (local encoder), both saved through `nn.DataParallel`
(keys prefixed `module.`), `fc`, `policy`, `flops` (cumulative Multiply-Adds per sequence length; its length is T),
`model_flops`, `policy_flops`, `fc_flops`, `anytime_classification` (top-1 % per step), `dynamic_threshold`
(39 x T confidence thresholds, one row per exit profile p = k / 20, the last column -1e8) and
`budgeted_batch_classification` (`[flops per profile, accuracy per profile]`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# The facts of the official `configs.py` that the forward needs, for the two backbones we convert.
ARCHITECTURES = {
    "resnet50": {
        "feature_num": 2048,
        "feature_map_channels": 2048,
        "policy_conv": False,
        "policy_hidden_dim": 1024,
        "fc_rnn": True,
        "fc_hidden_dim": 1024,
        "image_size": 224,
        "prime_interpolation": "bicubic",
    },
    "mobilenetv3_large_100": {
        "feature_num": 1280,
        "feature_map_channels": 960,
        "policy_conv": True,
        "policy_hidden_dim": 256,
        "fc_rnn": False,
        "fc_hidden_dim": None,
        "image_size": 224,
        "prime_interpolation": "bicubic",
    },
}
POLICY_LINEAR_WIDTH = 2048  # the first Linear of the linear state encoder (ResNet / DenseNet), fixed in network.py
POLICY_CONV_CHANNELS = 32  # the 1x1 convolution of the convolutional state encoder, fixed in network.py
MAX_CASCADE_STEPS = 5  # Full_layer's cascade has fc_2 ... fc_5


# ---------------------------------------------------------------------------------------------------- modules
class ReferencePolicy(nn.Module):
    """The actor-critic of the official `network.ActorCritic` (same parameter names), forward = actor mean."""

    def __init__(self, channels: int, grid: int, hidden: int, conv: bool, linear_width: int = POLICY_LINEAR_WIDTH):
        super().__init__()
        self.channels, self.grid, self.hidden, self.conv = channels, grid, hidden, conv
        if conv:
            self.state_encoder = nn.Sequential(
                nn.Conv2d(channels, POLICY_CONV_CHANNELS, kernel_size=1, bias=False),
                nn.ReLU(),
                nn.Flatten(),
                nn.Linear(POLICY_CONV_CHANNELS * grid * grid, hidden),
                nn.ReLU(),
            )
        else:
            self.state_encoder = nn.Sequential(
                nn.Linear(channels * grid * grid, linear_width),
                nn.ReLU(),
                nn.Linear(linear_width, hidden),
                nn.ReLU(),
            )
        self.gru = nn.GRU(hidden, hidden, batch_first=False)
        self.actor = nn.Sequential(nn.Linear(hidden, 2), nn.Sigmoid())
        self.critic = nn.Sequential(nn.Linear(hidden, 1))

    def forward(self, state: torch.Tensor, hidden: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """`state` (B, C*h*w) flattened channel-major; `hidden` (1, B, hidden) or None (zeros). Returns the action
        mean (B, 2) and the new hidden state."""
        if self.conv:
            encoded = self.state_encoder(state.view(-1, self.channels, self.grid, self.grid))
        else:
            encoded = self.state_encoder(state)
        if hidden is None:
            hidden = encoded.new_zeros(1, encoded.shape[0], self.hidden)
        output, hidden = self.gru(encoded.unsqueeze(0), hidden)
        return self.actor(output[0]), hidden


class ReferenceClassifier(nn.Module):
    """The official `network.Full_layer` (same parameter names): a GRU + Linear, or the cascade `fc_2 .. fc_5`."""

    def __init__(self, feature_num: int, hidden: int | None, num_classes: int, rnn: bool):
        super().__init__()
        self.feature_num, self.hidden, self.rnn_mode = feature_num, hidden, rnn
        if rnn:
            self.rnn = nn.GRU(feature_num, hidden)
            self.fc = nn.Linear(hidden, num_classes)
        else:
            for length in range(2, MAX_CASCADE_STEPS + 1):
                setattr(self, f"fc_{length}", nn.Linear(feature_num * length, num_classes))

    def step(self, features: list[torch.Tensor], hidden: torch.Tensor | None):
        """Logits after the step whose feature is `features[-1]` (None for the cascade's first step)."""
        if self.rnn_mode:
            if hidden is None:
                hidden = features[-1].new_zeros(1, features[-1].shape[0], self.hidden)
            output, hidden = self.rnn(features[-1].unsqueeze(0), hidden)
            return self.fc(output[0]), hidden
        if len(features) == 1:
            return None, None
        return getattr(self, f"fc_{len(features)}")(torch.cat(features, dim=1)), None


def make_resnet(depths=(3, 4, 6, 3), num_classes: int = 1000) -> nn.Module:
    """The official `models/resnet.py` ResNet-50 layout (torchvision's `Bottleneck` ResNet, same keys)."""
    from torchvision.models.resnet import Bottleneck, ResNet

    return ResNet(Bottleneck, list(depths), num_classes=num_classes)


def make_mobilenetv3(num_classes: int = 1000) -> nn.Module:
    """The official `models/mobilenetv3.py` `mobilenetv3_large_100` layout (timm's, same keys)."""
    import timm

    return timm.create_model("mobilenetv3_large_100", pretrained=False, num_classes=num_classes)


def encoder_forward(arch: str, encoder: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The official encoders' `forward`: the pooled feature (B, feature_num) and the last feature map flattened
    channel-major (B, C*h*w). Written out module by module, no wrapper's forward."""
    if arch == "resnet50":
        x = encoder.maxpool(encoder.relu(encoder.bn1(encoder.conv1(images))))
        x = encoder.layer4(encoder.layer3(encoder.layer2(encoder.layer1(x))))
        return x.mean(dim=(2, 3)), x.flatten(1)
    if arch == "mobilenetv3_large_100":
        x = encoder.blocks(encoder.bn1(encoder.conv_stem(images)))  # timm's bn1 holds the stem's activation
        pooled = F.hardswish(encoder.conv_head(x.mean(dim=(2, 3), keepdim=True)))
        return pooled.flatten(1), x.flatten(1)
    raise ValueError(f"No reference for {arch!r}; known: {sorted(ARCHITECTURES)}.")


def glance_logits_from_backbone(arch: str) -> bool:
    """Whether step 0's logits come from the global encoder's own `classifier` (MobileNet-V3's cascade has no
    one-step head) instead of the recurrent classifier (ResNet)."""
    return not ARCHITECTURES[arch]["fc_rnn"]


# ---------------------------------------------------------------------------------------------------- model
@dataclass
class ReferenceOutput:
    """`step_logits` (T, B, classes); `actions` (B, T-1, 2) the policy's means; `crop_boxes` (B, T-1, 4) as
    `(top, left, bottom, right)` pixel rows / columns, bottom / right exclusive."""

    step_logits: torch.Tensor
    actions: torch.Tensor
    crop_boxes: torch.Tensor


class ReferenceGFNet(nn.Module):
    """Global encoder, local encoder, policy and classifier of one official checkpoint, and its inference forward."""

    def __init__(
        self,
        arch: str,
        patch_size: int,
        num_steps: int,
        num_classes: int = 1000,
        resnet_depths=(3, 4, 6, 3),
        policy_hidden: int | None = None,
        fc_hidden: int | None = None,
        policy_linear_width: int = POLICY_LINEAR_WIDTH,
    ):
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError(f"No reference for {arch!r}; known: {sorted(ARCHITECTURES)}.")
        facts = ARCHITECTURES[arch]
        self.arch, self.patch_size, self.num_steps = arch, patch_size, num_steps
        self.image_size = facts["image_size"]
        self.interpolation = facts["prime_interpolation"]
        build = (
            (lambda: make_resnet(resnet_depths, num_classes))
            if arch == "resnet50"
            else (lambda: make_mobilenetv3(num_classes))
        )
        self.model_prime, self.model = build(), build()
        grid = math.ceil(patch_size / 32)
        self.policy = ReferencePolicy(
            facts["feature_map_channels"],
            grid,
            policy_hidden or facts["policy_hidden_dim"],
            facts["policy_conv"],
            policy_linear_width,
        )
        self.fc = ReferenceClassifier(
            facts["feature_num"], fc_hidden or facts["fc_hidden_dim"], num_classes, facts["fc_rnn"]
        )

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> ReferenceOutput:
        size, p = images.shape[2], self.patch_size
        glance = F.interpolate(images, size=[p, p], mode=self.interpolation, align_corners=True)
        feature, state = encoder_forward(self.arch, self.model_prime, glance)
        features = [feature]
        logits, fc_hidden = self.fc.step(features, None)
        if glance_logits_from_backbone(self.arch):
            logits = self.model_prime.classifier(feature)
        step_logits, actions, boxes, policy_hidden = [logits], [], [], None
        for _ in range(1, self.num_steps):
            action, policy_hidden = self.policy(state, policy_hidden)
            corner = torch.floor(action * (size - p)).int()
            crops = torch.stack([images[i, :, r : r + p, c : c + p] for i, (r, c) in enumerate(corner.tolist())])
            feature, state = encoder_forward(self.arch, self.model, crops)
            features.append(feature)
            logits, fc_hidden = self.fc.step(features, fc_hidden)
            step_logits.append(logits)
            actions.append(action)
            boxes.append(torch.cat([corner, corner + p], dim=1).long())
        return ReferenceOutput(torch.stack(step_logits), torch.stack(actions, 1), torch.stack(boxes, 1))


# ---------------------------------------------------------------------------------------------------- checkpoints
def randomize_(module: nn.Module, generator: torch.Generator, actor_gain: float = 2.0) -> None:
    """Seeded random weights: uniform(+-sqrt(6 / fan_in)) weights (He), small biases, BatchNorm affines and
    statistics away from the identity. The actor's last Linear is scaled by `actor_gain` so that the policy's means
    spread over (0, 1) instead of sitting near 0.5 (crops all over the image)."""
    for name, tensor in module.state_dict().items():
        if not tensor.is_floating_point():
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "running_var":
            values = torch.rand(tensor.shape, generator=generator) + 0.5
        elif leaf == "running_mean":
            values = 0.1 * torch.randn(tensor.shape, generator=generator)
        elif tensor.dim() == 1 and leaf == "weight":  # BatchNorm scale
            values = torch.rand(tensor.shape, generator=generator) + 0.5
        elif tensor.dim() == 1:  # biases
            values = 0.1 * torch.randn(tensor.shape, generator=generator)
        else:
            fan_in = tensor[0].numel()
            values = (torch.rand(tensor.shape, generator=generator) * 2 - 1) * math.sqrt(6.0 / fan_in)
            if name.startswith("policy.actor"):
                values = values * actor_gain
        tensor.copy_(values.to(tensor.dtype))


@torch.no_grad()
def calibrate_batchnorm_(arch: str, encoder: nn.Module, images: torch.Tensor) -> None:
    """Set every BatchNorm's running statistics to those of `images` (one train-mode pass with momentum 1), so that
    random weights give O(1) activations through deep stacks (MobileNet-V3 has no residual across its stages), then
    perturb them by a few percent so that they are not exactly the batch's."""
    norms = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.momentum = 1.0
    encoder.train()
    encoder_forward(arch, encoder, images)
    encoder.eval()
    generator = torch.Generator().manual_seed(int(images.shape[-1]))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
        norm.running_var.mul_(torch.rand(norm.running_var.shape, generator=generator) * 0.2 + 0.9)
        norm.running_mean.add_(0.05 * torch.randn(norm.running_mean.shape, generator=generator))


def make_official_checkpoint(
    arch: str,
    patch_size: int,
    num_steps: int,
    seed: int = 0,
    num_classes: int = 1000,
    data_parallel_prefix: bool = True,
    with_results: bool = True,
    **sizes,
) -> dict:
    """A checkpoint in the release's layout with random weights, and the [`ReferenceGFNet`] holding them.

    `sizes` (`resnet_depths`, `policy_hidden`, `fc_hidden`, `policy_linear_width`) shrink the model for fast tests;
    the defaults are the release's. Returns `(checkpoint, reference)`; the reference is in eval mode.
    """
    reference = ReferenceGFNet(arch, patch_size, num_steps, num_classes, **sizes).eval()
    generator = torch.Generator().manual_seed(seed)
    randomize_(reference, generator)
    for encoder in (reference.model_prime, reference.model):
        calibrate_batchnorm_(arch, encoder, torch.randn(8, 3, patch_size, patch_size, generator=generator))
    prefix = "module." if data_parallel_prefix else ""
    checkpoint = {
        "model_name": arch,
        "patch_size": patch_size,
        "model_prime_state_dict": {prefix + k: v.clone() for k, v in reference.model_prime.state_dict().items()},
        "model_state_dict": {prefix + k: v.clone() for k, v in reference.model.state_dict().items()},
        "fc": {k: v.clone() for k, v in reference.fc.state_dict().items()},
        "policy": {k: v.clone() for k, v in reference.policy.state_dict().items()},
    }
    if with_results:
        # Plausible numbers in the release's units (Multiply-Adds, top-1 %); only the converter's bookkeeping uses them.
        model_flops, policy_flops, fc_flops = 7.6e8, 4.0e7, 1.3e7
        checkpoint.update(
            flops=[model_flops * (t + 1) + policy_flops * t + fc_flops * (t + 1) for t in range(num_steps)],
            model_flops=model_flops,
            policy_flops=policy_flops,
            fc_flops=fc_flops,
            anytime_classification=[60.0 + 3.0 * t for t in range(num_steps)],
            dynamic_threshold=_thresholds(num_steps, seed),
            budgeted_batch_classification=[
                [model_flops * (1.0 + 0.1 * k) for k in range(39)],
                [60.0 + 0.2 * k for k in range(39)],
            ],
        )
    return checkpoint, reference


def _thresholds(num_steps: int, seed: int) -> torch.Tensor:
    """39 x T thresholds shaped like `inference.py: dynamic_find_threshold`'s: confidences in (0, 1), 1e8 where a
    profile lets no image exit at a step, -1e8 in the last column."""
    generator = torch.Generator().manual_seed(seed + 1)
    table = torch.rand(39, num_steps, generator=generator) * 0.6 + 0.3
    table[0, 1:-1] = 1e8
    table[:, -1] = -1e8
    return table
