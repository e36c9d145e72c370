"""PyTorch Glance-and-Focus networks: glance at the whole image at low resolution, then focus on a few full-resolution
crops chosen by a learned policy, and stop when sure.

Paper: "Glance and Focus: a Dynamic Approach to Reducing Spatial Redundancy in Image Classification" (Wang et al.,
NeurIPS 2020) and its TPAMI extension (arXiv:2201.03014); official code github.com/blackfeather-wang/GFNet-Pytorch.

What the official code does, as we read `network.py`, `utils.py`, `train.py`, `inference.py` and `configs.py` (facts
only; this is our own implementation):

- **Glance** (step 0): the normalized image is resized to the patch size with `F.interpolate(..., align_corners=True)`
  (`get_prime`; bicubic or bilinear per backbone). The global encoder returns its pooled feature and its last feature
  map; the map, detached, is the policy's first state.
- **Focus** (steps `t = 1 .. T-1`): the policy reads the previous step's feature map. It is an actor-critic
  (`ActorCritic`): a state encoder (an MLP on the flattened map for ResNet / DenseNet, a 1x1 conv to 32 channels and a
  linear layer for the others), a GRU whose hidden state starts at zero at step 1 and carries on, an actor
  `Linear(hidden, 2) -> sigmoid` (the mean of a Gaussian with a fixed standard deviation of 0.1 per coordinate) and a
  critic `Linear(hidden, 1)`. At test time the crop is the mean; in PPO training an action is sampled, clipped to
  [0, 1], and its log-probability kept. A crop's top-left corner is `floor(a * (side - patch))` per axis (`get_patch`):
  `a` is the fraction of the free range, so the crop never leaves the image.
- **Classifier** (`Full_layer`): a GRU over the step features with one linear layer after every step (ResNet /
  DenseNet / RegNet), or for MobileNet-V3 / EfficientNet a cascade of linear layers on the concatenated features of
  steps `0..t`. The glance step's logits come from the GRU classifier (ResNet / DenseNet) or from the glance encoder's
  own head (RegNet / MobileNet-V3 / EfficientNet inference).
- **Training loss** (`train.py`, stages 1 and 3): with `CE` the cross-entropy,
  `(sum_t CE(step logits_t) + dsn_ratio * sum_t CE(encoder head logits_t)) / T`, where the "encoder head" is each
  encoder's own linear classifier on its pooled feature (deep supervision; `dsn_ratio` is 1 for ResNet / DenseNet /
  RegNet, 5 for MobileNet-V3 / EfficientNet). The step-0 term is the recurrent classifier's output where it has one
  (ResNet / DenseNet, and RegNet, whose inference reads the glance head instead), the glance head's otherwise
  (MobileNet-V3 / EfficientNet). Stage 2 trains only the policy, with PPO on the reward "increase of the true class's
  softmax probability" (that loop lives in `lookwhere_hf.training.glance_focus`).

Ours differs in presentation only: crop centres are `(x, y)` (the official actions are `(row, column)`), and the two
GRUs are written out with `F.linear` (gate order r, z, n, the layout of `torch.nn.GRUCell`) so that
`torch.utils.flop_counter.FlopCounterMode` sees their matrix products.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel
from transformers import initialization as init
from transformers.modeling_outputs import ModelOutput
from transformers.modeling_utils import PreTrainedModel
from transformers.utils.generic import can_return_tuple

from .configuration_glance_focus import GlanceFocusConfig

POLICY_MODES = ("mean", "sample")
LOSS_KWARGS = ("num_items_in_batch", "ignore_index")  # what transformers' classification loss takes besides labels


# ----------------------------------------------------------------------------------------------------- views
def make_glance_view(pixel_values: torch.Tensor, size: int, interpolation: str = "bicubic") -> torch.Tensor:
    """The glance encoder's input: `(B, C, H, W)` -> `(B, C, size, size)`, resized with `align_corners=True` (the
    official `get_prime`), from the normalized tensor."""
    return F.interpolate(pixel_values, size=(size, size), mode=interpolation, align_corners=True)


def crop_boxes_from_centers(centers: torch.Tensor, height: int, width: int, patch_size: int) -> torch.LongTensor:
    """Pixel boxes `(..., 4)` (x0, y0, x1, y1; x1 and y1 exclusive) of `patch_size` crops.

    `centers (..., 2)` holds the fractional `(x, y)` of each crop centre within the range where the crop fits: the
    top-left corner is `floor(x * (width - patch_size))`, `floor(y * (height - patch_size))` (the official `get_patch`,
    computed in the centres' dtype), so 0 puts the crop at the left / top edge and 1 at the right / bottom edge.
    """
    left = torch.floor(centers[..., 0] * (width - patch_size)).long().clamp(0, width - patch_size)
    top = torch.floor(centers[..., 1] * (height - patch_size)).long().clamp(0, height - patch_size)
    return torch.stack((left, top, left + patch_size, top + patch_size), dim=-1)


def crop_patches(
    pixel_values: torch.Tensor, boxes: torch.LongTensor, patch_size: int, batch_rows: torch.LongTensor | None = None
) -> torch.Tensor:
    """Cut `(n, C, patch_size, patch_size)` crops out of `pixel_values (B, C, H, W)` at `boxes (n, 4)`; row `i` comes
    from image `batch_rows[i]` (default: image `i`)."""
    if batch_rows is None:
        batch_rows = torch.arange(pixel_values.shape[0], device=pixel_values.device)
    offsets = torch.arange(patch_size, device=pixel_values.device)
    rows = (boxes[:, 1:2] + offsets).unsqueeze(2)  # (n, P, 1)
    cols = (boxes[:, 0:1] + offsets).unsqueeze(1)  # (n, 1, P)
    crops = pixel_values[batch_rows.view(-1, 1, 1), :, rows, cols]  # (n, P, P, C): advanced indices first
    return crops.permute(0, 3, 1, 2)


def _confidence(logits: torch.Tensor) -> torch.Tensor:
    """The exit score: max softmax probability `(B, C)` -> `(B,)`, in float32 or better."""
    return logits.softmax(dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32)).amax(dim=-1)


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of a CPU SDPA call (`FlopCounterMode` has formulas for the GPU kernels only): the two matmuls."""
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def count_flops(function, *args) -> int:
    """FLOPs of `function(*args)` by `torch.utils.flop_counter.FlopCounterMode` (a multiply-add is 2 FLOPs; matrix
    products and convolutions counted, biases, norms, activations and resizes not), with CPU SDPA counted too."""
    from torch.utils.flop_counter import FlopCounterMode

    custom = {}
    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_sdpa is not None:
        custom[cpu_sdpa] = _sdpa_flops
    with FlopCounterMode(display=False, custom_mapping=custom) as counter:
        function(*args)
    return int(counter.get_total_flops())


# ----------------------------------------------------------------------------------------------------- outputs
@dataclass
class GlanceFocusImageClassifierOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*):
        With `labels`. When every step runs: the official training loss, `(sum_t loss(rung_logits[:, t]) +
        encoder_loss_weight * sum_t loss(encoder_logits[:, t])) / num_steps`, except that with a GRU classifier and
        `glance_logits="glance_head"` (official RegNet) the first sum takes the GRU's own step-0 logits, as the
        official training does (inference reads the glance head); budgeted: the loss of `logits`.
    logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
        Each image's logits at its exit step (budgeted), else at the last step.
    rung_logits (`torch.FloatTensor` of shape `(batch_size, num_steps, num_labels)`, *optional*):
        When every step runs: the prediction after each step.
    encoder_logits (`torch.FloatTensor` of shape `(batch_size, num_steps, num_labels)`, *optional*):
        With `labels` when every step runs: the encoders' own heads on each step's pooled feature (deep supervision).
    rung_flops (`torch.LongTensor` of shape `(batch_size, num_steps)`):
        Cumulative inference FLOPs per image of stopping after each step (see
        [`GlanceFocusForImageClassification.rung_flops`]); every row is the same.
    exit_rung (`torch.LongTensor` of shape `(batch_size,)`):
        The rung (= the step) at which each image exited, so the step its `logits` come from (the last one when every
        step runs); the field name all model families of `lookwhere_hf` share.
    flops (`torch.LongTensor` of shape `(batch_size,)`):
        FLOPs spent on each image, `rung_flops[i, exit_rung[i]]`.
    crop_boxes (`torch.LongTensor` of shape `(batch_size, num_steps - 1, 4)`):
        Pixel boxes `(x0, y0, x1, y1)` (x1, y1 exclusive) of the focus crops in `pixel_values`; `-1` for steps an
        image did not take (budgeted).
    crop_centers (`torch.FloatTensor` of shape `(batch_size, num_steps - 1, 2)`):
        The fractional `(x, y)` crop centres the boxes come from (see [`crop_boxes_from_centers`]); NaN for steps an
        image did not take.
    policy_states (`torch.FloatTensor` of shape `(batch_size, num_steps - 1, channels, height, width)`, *optional*):
        With `return_policy=True`: what the policy saw before each focus step (the previous step's feature map,
        detached), the states [`GlanceFocusPolicy.evaluate`] takes.
    policy_actions (`torch.FloatTensor` of shape `(batch_size, num_steps - 1, 2)`, *optional*):
        With `return_policy=True`: the crop centres taken (equal to `crop_centers`).
    policy_log_probs (`torch.FloatTensor` of shape `(batch_size, num_steps - 1)`, *optional*):
        With `return_policy=True`: log-probability of each action under the policy's Gaussian.
    state_values (`torch.FloatTensor` of shape `(batch_size, num_steps - 1)`, *optional*):
        With `return_policy=True`: the critic's value of each state.

    Every field holds one row per image along dim 0, so that `pipeline(..., batch_size=N)` can split a batch.
    Fields other than `logits` are left out of the `Trainer`'s predictions (`config.keys_to_ignore_at_inference`).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    rung_logits: torch.FloatTensor | None = None
    encoder_logits: torch.FloatTensor | None = None
    rung_flops: torch.LongTensor | None = None
    exit_rung: torch.LongTensor | None = None
    flops: torch.LongTensor | None = None
    crop_boxes: torch.LongTensor | None = None
    crop_centers: torch.FloatTensor | None = None
    policy_states: torch.FloatTensor | None = None
    policy_actions: torch.FloatTensor | None = None
    policy_log_probs: torch.FloatTensor | None = None
    state_values: torch.FloatTensor | None = None


# ----------------------------------------------------------------------------------------------------- modules
class GlanceFocusGRUCell(nn.Module):
    """One GRU step, `torch.nn.GRUCell`'s parameters and gate order (r, z, n), written with `F.linear`.

    Parameters: `weight_ih (3 * hidden, input)`, `weight_hh (3 * hidden, hidden)`, `bias_ih`, `bias_hh (3 * hidden,)`
    (an official `nn.GRU`'s `*_l0` tensors, renamed).
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(3 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(3 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(3 * hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(3 * hidden_size))

    def forward(self, inputs: torch.Tensor, hidden: torch.Tensor | None = None) -> torch.Tensor:
        """`(B, input)`, `(B, hidden)` or `None` (zeros) -> the new hidden state `(B, hidden)`."""
        if hidden is None:
            hidden = inputs.new_zeros(inputs.shape[0], self.hidden_size)
        input_r, input_z, input_n = F.linear(inputs, self.weight_ih, self.bias_ih).chunk(3, dim=-1)
        hidden_r, hidden_z, hidden_n = F.linear(hidden, self.weight_hh, self.bias_hh).chunk(3, dim=-1)
        reset = torch.sigmoid(input_r + hidden_r)
        update = torch.sigmoid(input_z + hidden_z)
        candidate = torch.tanh(input_n + reset * hidden_n)
        return (1 - update) * candidate + update * hidden


class GlanceFocusEncoder(nn.Module):
    """A transformers vision backbone that returns `(pooled feature (B, D), feature map (B, C, h, w))`.

    Convolutional backbones: `last_hidden_state` is the map and `pooler_output` the pooled feature. ViTs: the patch
    tokens of `last_hidden_state` (after the CLS / register prefix) are reshaped row-major into the map, and
    `pooler_output` (CLS) is the pooled feature.
    """

    def __init__(self, config: GlanceFocusConfig) -> None:
        super().__init__()
        self.backbone = AutoModel.from_config(config.backbone_config)
        backbone_config = config.backbone_config
        self.num_channels = getattr(backbone_config, "num_channels", 3)
        # transformers' ViT resizes its position embeddings for other input sizes only when asked (DINOv2 always does)
        self._backbone_kwargs = {"interpolate_pos_encoding": True} if backbone_config.model_type == "vit" else {}
        timm_model = getattr(self.backbone, "timm_model", None)
        if timm_model is not None:
            self.num_prefix_tokens = int(getattr(timm_model, "num_prefix_tokens", 0))
        else:
            self.num_prefix_tokens = 1 + int(getattr(backbone_config, "num_register_tokens", 0) or 0)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`pixel_values (B, C, H, W)` (the glance view or the focus crops) -> `(pooled (B, D), feature map (B, C',
        h, w))`; the map is what the policy reads before the next step."""
        outputs = self.backbone(pixel_values=pixel_values, **self._backbone_kwargs)
        hidden = outputs.last_hidden_state
        if hidden.ndim == 3:  # a ViT: (B, prefix + h * w, D) -> (B, D, h, w)
            num_patches = hidden.shape[1] - self.num_prefix_tokens
            height, width = pixel_values.shape[-2:]
            patch = math.isqrt(max(height * width // max(num_patches, 1), 1))
            if num_patches < 1 or patch * patch * num_patches != height * width or height % patch or width % patch:
                raise ValueError(
                    f"Cannot lay the backbone's {hidden.shape[1]} output tokens ({self.num_prefix_tokens} prefix "
                    f"tokens) out as a feature map of a {height}x{width} input."
                )
            feature_map = hidden[:, self.num_prefix_tokens :].transpose(1, 2)
            feature_map = feature_map.reshape(hidden.shape[0], hidden.shape[2], height // patch, width // patch)
        elif hidden.ndim == 4:
            feature_map = hidden
        else:
            raise ValueError(
                f"The backbone ({type(self.backbone).__name__}) returned a `last_hidden_state` of shape "
                f"{tuple(hidden.shape)}, not a feature map (batch, channels, height, width) or ViT tokens; "
                "Glance-and-Focus needs a backbone with feature maps."
            )
        pooled = outputs.pooler_output
        if pooled is None:
            pooled = feature_map.mean(dim=(-2, -1))
        return pooled.flatten(1), feature_map


class GlanceFocusClassifier(nn.Module):
    """The recurrent classifier over the step features.

    `classifier_type="gru"`: `rnn` ([`GlanceFocusGRUCell`]) and `fc (hidden -> num_labels)` after every step.
    `classifier_type="concat"`: `fc_{t+1}` (`(t + 1) * feature_size -> num_labels`) on the features of steps `0..t`,
    for `t >= 1` (step 0 has no logits of its own here; the glance encoder's head gives them).
    """

    def __init__(self, config: GlanceFocusConfig, feature_size: int) -> None:
        super().__init__()
        self.type = config.classifier_type
        if self.type == "gru":
            self.rnn = GlanceFocusGRUCell(feature_size, config.classifier_hidden_size)
            self.fc = nn.Linear(config.classifier_hidden_size, config.num_labels)
        else:
            for length in range(2, config.num_steps + 1):
                setattr(self, f"fc_{length}", nn.Linear(feature_size * length, config.num_labels))

    def forward(
        self, features: torch.Tensor, memory: torch.Tensor | None, step: int
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """One step: `features (B, D)` and the memory of the earlier steps (`None` at step 0) -> `(logits (B, C) or
        None, memory)`; the memory is the GRU's hidden state or the concatenated features."""
        if self.type == "gru":
            memory = self.rnn(features, memory)
            return self.fc(memory), memory
        memory = features if memory is None else torch.cat((memory, features), dim=1)
        if step == 0:
            return None, memory
        return getattr(self, f"fc_{step + 1}")(memory), memory


class GlanceFocusPolicy(nn.Module):
    """The patch policy, an actor-critic over the previous step's feature map (what PPO trains).

    - `state_encoder`: `policy_conv=False`: `Linear(C * h * w, policy_mlp_size) -> ReLU -> Linear(., hidden) -> ReLU`
      on the flattened map; `policy_conv=True`: `Conv2d(C, policy_conv_channels, 1, bias=False) -> ReLU -> Flatten ->
      Linear(., hidden) -> ReLU` (the official module indices, so official weights load by name).
    - `gru`: [`GlanceFocusGRUCell`] `(hidden, hidden)`; its state starts at zero at the first focus step.
    - `actor`: `Linear(hidden, 2) -> Sigmoid`, the mean `(x, y)` crop centre in (0, 1); the action is Gaussian with
      standard deviation `policy_action_std` per coordinate.
    - `critic`: `Linear(hidden, 1)`, the state value.

    `state_shape` is `(C, h, w)`, the focus encoder's feature map of a `patch_size` crop.
    """

    def __init__(self, config: GlanceFocusConfig, state_shape: tuple[int, int, int]) -> None:
        super().__init__()
        channels, height, width = state_shape
        self.state_shape = tuple(state_shape)
        self.action_std = float(config.policy_action_std)
        hidden = config.policy_hidden_size
        if config.policy_conv:
            squeeze = config.policy_conv_channels
            self.state_encoder = nn.Sequential(
                nn.Conv2d(channels, squeeze, kernel_size=1, bias=False),
                nn.ReLU(),
                nn.Flatten(),
                nn.Linear(squeeze * height * width, hidden),
                nn.ReLU(),
            )
        else:
            self.state_encoder = nn.Sequential(
                nn.Linear(channels * height * width, config.policy_mlp_size),
                nn.ReLU(),
                nn.Linear(config.policy_mlp_size, hidden),
                nn.ReLU(),
            )
        self.policy_conv = bool(config.policy_conv)
        self.gru = GlanceFocusGRUCell(hidden, hidden)
        self.actor = nn.Sequential(nn.Linear(hidden, 2), nn.Sigmoid())
        self.critic = nn.Sequential(nn.Linear(hidden, 1))

    def _check_states(self, states: torch.Tensor, sequence: bool) -> None:
        expected = (2 if sequence else 1) + len(self.state_shape)
        if states.ndim != expected or tuple(states.shape[-3:]) != self.state_shape:
            layout = "(batch_size, num_focus_steps, C, h, w)" if sequence else "(batch_size, C, h, w)"
            raise ValueError(
                f"Policy states must have shape {layout} with (C, h, w) = {self.state_shape} (the focus encoder's "
                f"feature map of one crop), got {tuple(states.shape)}."
            )

    def step(
        self, state: torch.Tensor, hidden: torch.Tensor | None = None, compute_value: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """One focus step: `state (B, C, h, w)`, GRU `hidden (B, H)` or `None` (zeros, the first focus step) ->
        `(action_mean (B, 2), value (B,) or None, new hidden (B, H))`."""
        encoded = self.state_encoder(state if self.policy_conv else state.flatten(1))
        hidden = self.gru(encoded, hidden)
        value = self.critic(hidden).squeeze(-1) if compute_value else None
        return self.actor(hidden), value, hidden

    def forward(self, states: torch.Tensor, hidden: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`(action_mean, value)`.

        Args:
            states (`torch.FloatTensor`): one state `(B, C, h, w)` (a step from `hidden`, zeros by default: the first
                focus step), or a sequence `(B, S, C, h, w)` of the states of focus steps `1..S`.
            hidden (`torch.FloatTensor` of shape `(B, policy_hidden_size)`, *optional*): the GRU state before the
                first of `states`.

        Returns:
            `action_mean (B, 2)` and `value (B,)` for one state; `(B, S, 2)` and `(B, S)` for a sequence.
        """
        if states.ndim == len(self.state_shape) + 1:
            self._check_states(states, sequence=False)
            action_mean, value, _ = self.step(states, hidden)
            return action_mean, value
        self._check_states(states, sequence=True)
        means, values = [], []
        for index in range(states.shape[1]):
            action_mean, value, hidden = self.step(states[:, index], hidden)
            means.append(action_mean)
            values.append(value)
        return torch.stack(means, dim=1), torch.stack(values, dim=1)

    def distribution(self, action_mean: torch.Tensor) -> torch.distributions.Normal:
        """The Gaussian over crop centres (independent coordinates, standard deviation `policy_action_std`)."""
        return torch.distributions.Normal(action_mean, torch.full_like(action_mean, self.action_std))

    def sample(self, action_mean: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """An action drawn from the Gaussian and clipped to [0, 1] (the official training rollout)."""
        noise = torch.randn(action_mean.shape, generator=generator, device=action_mean.device, dtype=action_mean.dtype)
        return (action_mean + self.action_std * noise).clamp(0.0, 1.0)

    def log_prob(self, action_mean: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Log-density of `actions (..., 2)` under the Gaussian around `action_mean (..., 2)`, summed over x, y."""
        return self.distribution(action_mean).log_prob(actions).sum(dim=-1)

    def evaluate(self, states: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What PPO needs for stored rollouts (the official `ActorCritic.evaluate`).

        Args:
            states (`torch.FloatTensor` of shape `(B, S, C, h, w)`): the states of focus steps `1..S` (the
                `policy_states` of a forward with `return_policy=True`); the GRU runs over them from zeros.
            actions (`torch.FloatTensor` of shape `(B, S, 2)`): the actions taken (`policy_actions`).

        Returns:
            `(log_probs (B, S), values (B, S), entropy (B, S))`.
        """
        self._check_states(states, sequence=True)
        if actions.shape != (*states.shape[:2], 2):
            raise ValueError(
                f"`actions` must have shape {(*states.shape[:2], 2)} (one (x, y) per state), got "
                f"{tuple(actions.shape)}."
            )
        action_mean, values = self(states)
        distribution = self.distribution(action_mean)
        return distribution.log_prob(actions).sum(-1), values, distribution.entropy().sum(-1)


# ----------------------------------------------------------------------------------------------------- models
class GlanceFocusPreTrainedModel(PreTrainedModel):
    config_class = GlanceFocusConfig
    config: GlanceFocusConfig
    base_model_prefix = "glance_focus"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    # Every Auto class of the family and its class in this file (see `save_pretrained`). The family has no headless
    # model (the recurrent classifier is part of the method), so `AutoModel` gives the classifier too.
    _family_auto_classes = {
        "AutoModel": "GlanceFocusForImageClassification",
        "AutoModelForImageClassification": "GlanceFocusForImageClassification",
    }

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, with `config.auto_map` naming every Auto class of the family (transformers
        writes only the class being saved), so that with `trust_remote_code=True` each of them loads from the folder
        of any saved class: e.g. `AutoModelForImageClassification` from a pretrained or converted bare model."""
        if self._auto_class is not None:  # the code is copied next to the weights (`register_for_auto_class`)
            module = type(self).__module__.rsplit(".", 1)[-1]
            family = {auto: f"{module}.{name}" for auto, name in self._family_auto_classes.items()}
            self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **family}
        return super().save_pretrained(save_directory, *args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Heads, classifier and policy (the backbones initialise themselves): truncated normal linear / conv weights,
        zero biases, and the GRUs uniform in `+-1 / sqrt(hidden)` (PyTorch's GRU initialisation)."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            init.trunc_normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, GlanceFocusGRUCell):
            bound = 1.0 / math.sqrt(module.hidden_size)
            for weight in (module.weight_ih, module.weight_hh, module.bias_ih, module.bias_hh):
                init.uniform_(weight, -bound, bound)


def _probe(encoder: GlanceFocusEncoder, side: int) -> tuple[int, tuple[int, int, int]]:
    """`(pooled feature size, feature map shape (C, h, w))` of `encoder` on a `side x side` input (one forward of a
    zero image on the parameters' device: on the meta device while `from_pretrained` builds the model)."""
    parameter = next(encoder.parameters())
    was_training = encoder.training
    encoder.eval()  # batch norm on one 1x1 map cannot run in training mode, and must not update its statistics
    try:
        with torch.no_grad():
            image = torch.zeros(1, encoder.num_channels, side, side, device=parameter.device, dtype=parameter.dtype)
            pooled, feature_map = encoder(image)
    finally:
        encoder.train(was_training)
    return pooled.shape[-1], tuple(feature_map.shape[1:])


class GlanceFocusForImageClassification(GlanceFocusPreTrainedModel):
    """Glance-and-Focus image classifier: glance encoder, focus encoder, patch policy and recurrent classifier.

    Modules: `glance_encoder` and `focus_encoder` ([`GlanceFocusEncoder`], same architecture, own weights),
    `glance_head` / `focus_head` (each encoder's own linear classifier, the official backbones' `fc`: deep supervision
    in training, and the glance step's logits with `glance_logits="glance_head"`), `classifier`
    ([`GlanceFocusClassifier`]) and `policy` ([`GlanceFocusPolicy`]). All are in the state dict, so
    `save_pretrained` / `from_pretrained` keep the policy too.

    Two modes:

    - **every step** (training, `anytime=True`, or eval without saved thresholds): all `num_steps` steps for every
      image; `rung_logits` holds the prediction after each step and `logits` the last one.
    - **budgeted** (`budget=True`, or by default in eval mode when `config.budget_thresholds` is set and
      `config.use_budget`): an image exits at the first step whose max softmax probability is `>=` that step's
      threshold (the last step always exits), the rule of `lookwhere_hf.budget`. Images leave the batch as they exit:
      each step runs on the images still going, as one smaller batch (no padding, no compute for exited images).
      `pipeline("image-classification")` gets this mode when thresholds are saved.

    Crops: by default the policy picks them (`policy_mode="mean"`: the actor's mean, the official inference;
    `"sample"`: drawn from the Gaussian and clipped to [0, 1], the PPO rollout); `crop_centers=` overrides it (stage 1
    of the official training passes uniform random ones).
    """

    accepts_loss_kwargs = False

    def __init__(self, config: GlanceFocusConfig) -> None:
        super().__init__(config)
        if config.num_labels < 1:
            raise ValueError(f"GlanceFocusForImageClassification needs `num_labels >= 1`, got {config.num_labels}.")
        self.num_labels = config.num_labels
        self.glance_encoder = GlanceFocusEncoder(config)
        self.focus_encoder = GlanceFocusEncoder(config)
        feature_size, state_shape = _probe(self.focus_encoder, config.patch_size)
        self.feature_size = feature_size
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.glance_head = nn.Linear(feature_size, config.num_labels)
        self.focus_head = nn.Linear(feature_size, config.num_labels)
        self.classifier = GlanceFocusClassifier(config, feature_size)
        self.policy = GlanceFocusPolicy(config, state_shape)
        self._step_flops_cache: dict = {}
        self.post_init()

    @classmethod
    def from_backbone(cls, backbone, **config_kwargs) -> GlanceFocusForImageClassification:
        """A classifier whose glance and focus encoders both start from the weights of a pretrained backbone (stage 1
        of the training then fine-tunes them apart); the heads, the classifier and the policy are new.

        Args:
            backbone (`PreTrainedModel`, `str` or `os.PathLike`): a transformers vision model (e.g. `ResNetModel`,
                `ConvNextModel`, `Dinov2WithRegistersModel`, `TimmWrapperModel`; a model with a head, such as
                `ResNetForImageClassification`, gives its base model) or a path / Hub id that
                `AutoModel.from_pretrained` loads.
            config_kwargs: the other [`GlanceFocusConfig`] fields (`num_labels`, `patch_size`, `num_steps`, ...).

        Example:

        ```python
        >>> model = GlanceFocusForImageClassification.from_backbone("microsoft/resnet-50", num_labels=10, patch_size=96)
        >>> model.save_pretrained("my-gfnet")  # and the matching processor: `pipeline(model=folder)` needs both
        >>> from lookwhere_hf import image_processor_for  # = GlanceFocusImageProcessor.from_model_config(model.config)
        >>> image_processor_for(model).save_pretrained("my-gfnet")
        ```
        """
        if isinstance(backbone, (str, os.PathLike)):
            backbone = AutoModel.from_pretrained(backbone)
        if not isinstance(backbone, PreTrainedModel):
            raise ValueError(
                f"`backbone` must be a transformers vision model or a path / Hub id of one, got "
                f"{type(backbone).__name__}."
            )
        if "backbone_config" in config_kwargs:
            raise ValueError("`from_backbone` takes the backbone's own config; drop `backbone_config`.")
        model = cls(GlanceFocusConfig(backbone_config=backbone.config, **config_kwargs))
        expected = model.glance_encoder.backbone.state_dict().keys()
        state = backbone.state_dict()
        if state.keys() != expected:  # a model with a head: its base model holds the backbone's weights
            state = backbone.base_model.state_dict()
        if state.keys() != expected:
            raise ValueError(
                f"`backbone` ({type(backbone).__name__}) does not hold the weights of the encoders' architecture "
                f"({type(model.glance_encoder.backbone).__name__}). Pass the bare backbone: "
                "`AutoModel.from_pretrained(<its folder or Hub id>)`, or the folder / Hub id itself."
            )
        for encoder in (model.glance_encoder, model.focus_encoder):
            encoder.backbone.load_state_dict(state)
        return model

    # ------------------------------------------------------------------ FLOPs
    def step_flops(self) -> dict[str, int | list[int]]:
        """Inference FLOPs per image of each part, counted once with `torch.utils.flop_counter.FlopCounterMode`
        (plus CPU SDPA, see [`count_flops`]) on batch-1 zero inputs, and cached.

        The cost of a step depends neither on the image nor on the full-resolution size (the glance view and the
        crops have fixed sizes). Convention of `FlopCounterMode`: a multiply-add is 2 FLOPs (the official checkpoints'
        `flops` count multiply-adds, half of this); biases, norms, activations, the glance resize and the crops are
        not counted.

        Returns:
            `dict` with `glance_encoder` (at `glance_size`), `focus_encoder` (one `patch_size` crop), `policy` (state
            encoder, GRU and actor of one focus step; not the critic, which inference does not need), `classifier`
            (a list, the classifier's cost at each step), and `glance_head` (the glance encoder's head; counted in
            step 0 only with `glance_logits="glance_head"`).
        """
        config = self.config
        key = (config.glance_side, config.patch_size, config.num_steps, config.glance_logits, config.classifier_type)
        if key not in self._step_flops_cache:
            self._step_flops_cache[key] = self._count_step_flops()
        return {
            name: list(value) if isinstance(value, list) else value
            for name, value in self._step_flops_cache[key].items()
        }

    def _count_step_flops(self) -> dict[str, int | list[int]]:
        """[`step_flops`] without the cache."""
        config = self.config
        parameter = next(self.parameters())
        device, dtype = parameter.device, parameter.dtype
        channels = self.glance_encoder.num_channels
        # Batch norm must neither fail on 1x1 maps nor update its statistics: count in eval mode, then give every
        # module back its own mode (a training stage may keep frozen encoders in eval mode inside a training model).
        modes = [(module, module.training) for module in self.modules()]
        self.eval()
        try:
            with torch.no_grad():
                glance = torch.zeros(1, channels, config.glance_side, config.glance_side, device=device, dtype=dtype)
                crop = torch.zeros(1, channels, config.patch_size, config.patch_size, device=device, dtype=dtype)
                features = torch.zeros(1, self.feature_size, device=device, dtype=dtype)
                state = torch.zeros(1, *self.policy.state_shape, device=device, dtype=dtype)
                hidden = torch.zeros(1, config.policy_hidden_size, device=device, dtype=dtype)
                classifier, memory = [], None
                for step in range(config.num_steps):
                    classifier.append(count_flops(self.classifier, features, memory, step))
                    _, memory = self.classifier(features, memory, step)
                parts = {
                    "glance_encoder": count_flops(self.glance_encoder, glance),
                    "focus_encoder": count_flops(self.focus_encoder, crop),
                    "policy": count_flops(lambda: self.policy.step(state, hidden, compute_value=False)),
                    "classifier": classifier,
                    "glance_head": count_flops(self.glance_head, features),
                }
        finally:
            for module, mode in modes:
                module.training = mode
        return parts

    def rung_flops(self) -> list[int]:
        """Cumulative inference FLOPs per image of stopping after each step (`num_steps` values), from
        [`step_flops`]: step 0 is the glance encoder, the classifier's first step and, with
        `glance_logits="glance_head"`, the glance head; step `t >= 1` adds the policy, the focus encoder on one crop
        and the classifier's step `t`. What a forward computes beyond inference (the encoder heads' training logits,
        the critic for PPO) is not counted."""
        parts = self.step_flops()
        cost = parts["glance_encoder"] + parts["classifier"][0]
        if self.config.glance_logits == "glance_head":
            cost += parts["glance_head"]
        cumulative = [cost]
        for step in range(1, self.config.num_steps):
            cost += parts["policy"] + parts["focus_encoder"] + parts["classifier"][step]
            cumulative.append(cost)
        return cumulative

    # ------------------------------------------------------------------ helpers
    def glance_view(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The glance encoder's input made from `pixel_values` exactly as the image processor makes it."""
        return make_glance_view(pixel_values, self.config.glance_side, self.config.glance_interpolation)

    def _policy_state(self, feature_map: torch.Tensor) -> torch.Tensor:
        """The policy's view of a step: the feature map, detached (no policy gradient reaches the encoders), pooled to
        the focus crop's map size when the glance view's map is of another size (`glance_size != patch_size`)."""
        state = feature_map.detach()
        if tuple(state.shape[-2:]) != self.policy.state_shape[1:]:
            state = F.adaptive_avg_pool2d(state, self.policy.state_shape[1:])
        return state

    def _check_inputs(self, pixel_values, glance_pixel_values, crop_centers, policy_mode) -> None:
        """Shape and value checks of the forward's inputs (`ValueError`s that say what to change)."""
        config = self.config
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4 or not pixel_values.is_floating_point():
            got = (
                f"a {pixel_values.dtype} tensor of shape {tuple(pixel_values.shape)}"
                if isinstance(pixel_values, torch.Tensor)
                else type(pixel_values).__name__
            )
            raise ValueError(
                f"`pixel_values` must be a float tensor of normalized images, shape (batch_size, channels, height, "
                f"width), got {got}. Use GlanceFocusImageProcessor to turn images into model inputs."
            )
        if glance_pixel_values is not None and (
            not isinstance(glance_pixel_values, torch.Tensor) or not glance_pixel_values.is_floating_point()
        ):
            raise ValueError(
                "`glance_pixel_values` must be a float tensor (the normalized glance view), got "
                f"{getattr(glance_pixel_values, 'dtype', type(glance_pixel_values).__name__)}. Omit it to let the "
                "model make it from `pixel_values`."
            )
        batch_size, channels, height, width = pixel_values.shape
        if batch_size == 0:
            raise ValueError("`pixel_values` is an empty batch (batch_size 0); pass at least one image.")
        expected = self.glance_encoder.num_channels
        if channels != expected:
            raise ValueError(f"`pixel_values` must have {expected} channels, got shape {tuple(pixel_values.shape)}.")
        if min(height, width) < config.patch_size:
            raise ValueError(
                f"The focus patch size ({config.patch_size}) is larger than the image ({height}x{width}): a crop must "
                f"fit inside the image. Resize the images to at least {config.patch_size} px a side "
                f"(GlanceFocusImageProcessor does) or use a model with a smaller `patch_size`."
            )
        if glance_pixel_values is not None:
            side = config.glance_side
            if tuple(glance_pixel_values.shape) != (batch_size, channels, side, side):
                raise ValueError(
                    f"`glance_pixel_values` must have shape {(batch_size, channels, side, side)} (the batch of "
                    f"`pixel_values` at glance_size {side}), got {tuple(glance_pixel_values.shape)}. Omit it to let "
                    "the model make it from `pixel_values`."
                )
        if policy_mode not in POLICY_MODES:
            raise ValueError(f"`policy_mode` must be one of {POLICY_MODES}, got {policy_mode!r}.")
        if crop_centers is not None:
            shape = (batch_size, config.num_steps - 1, 2)
            if not isinstance(crop_centers, torch.Tensor) or tuple(crop_centers.shape) != shape:
                got = tuple(crop_centers.shape) if isinstance(crop_centers, torch.Tensor) else type(crop_centers)
                raise ValueError(
                    f"`crop_centers` must be a tensor of shape {shape} (batch, focus steps, (x, y)), got {got}."
                )
            if not bool(((crop_centers >= 0) & (crop_centers <= 1)).all()):
                raise ValueError(
                    "`crop_centers` must lie in [0, 1] (the fractional x, y of each crop centre within the range "
                    "where the crop fits); got values outside it or NaN."
                )

    def _resolve_exit_mode(self, anytime: bool, budget: bool | None, exit_thresholds) -> list[float] | None:
        """The exit thresholds of this call (`None`: every step runs for every image)."""
        config = self.config
        if exit_thresholds is not None:
            if budget is False:
                raise ValueError("`exit_thresholds` were given with `budget=False`; drop one of them.")
            budget = True
        if budget is None:
            budget = config.budget_thresholds is not None and config.use_budget and not self.training and not anytime
        if not budget:
            return None
        if anytime:
            raise ValueError("`anytime=True` runs every step for every image; it cannot be combined with `budget`.")
        thresholds = exit_thresholds if exit_thresholds is not None else config.budget_thresholds
        if thresholds is None:
            raise ValueError(
                "Budgeted inference needs exit thresholds: calibrate them with "
                "`lookwhere_hf.budget.calibrate_budget(model, eval_data, target_gflops)` or pass `exit_thresholds=`."
            )
        thresholds = [float(t) for t in thresholds]
        if not all(0.0 <= t < float("inf") for t in thresholds):
            raise ValueError(
                f"Exit thresholds must be finite max-softmax values >= 0 (above 1 disables a step), got {thresholds}."
            )
        if len(thresholds) != config.num_steps - 1:
            raise ValueError(
                f"Expected {config.num_steps - 1} exit thresholds (one per step except the last, num_steps="
                f"{config.num_steps}), got {len(thresholds)}."
            )
        if config.num_labels < 2:
            raise ValueError("Budgeted inference exits on the max softmax probability and needs `num_labels >= 2`.")
        return thresholds

    # ------------------------------------------------------------------ forward
    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        glance_pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        crop_centers: torch.Tensor | None = None,
        policy_mode: str = "mean",
        anytime: bool = False,
        budget: bool | None = None,
        exit_thresholds: list[float] | None = None,
        return_policy: bool = False,
        generator: torch.Generator | None = None,
        **kwargs,
    ) -> GlanceFocusImageClassifierOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
            Normalized full-resolution images, at least `patch_size` a side (the crops come from here).
        glance_pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, glance_size, glance_size)`, *optional*):
            The glance view; made from `pixel_values` ([`make_glance_view`]) if absent.
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Class indices (or what `config.problem_type` asks for). See `loss` in
            [`GlanceFocusImageClassifierOutput`] (the official training loss when every step runs).
        crop_centers (`torch.FloatTensor` of shape `(batch_size, num_steps - 1, 2)`, *optional*):
            Fractional `(x, y)` crop centres in [0, 1] for every focus step, instead of the policy's (stage 1 of the
            training passes uniform random ones).
        policy_mode (`str`, *optional*, defaults to `"mean"`):
            `"mean"`: the actor's mean (deterministic, the official inference); `"sample"`: drawn from the policy's
            Gaussian and clipped to [0, 1] (the PPO rollout; `generator` seeds it).
        anytime (`bool`, *optional*, defaults to `False`):
            Run every step for every image even when exit thresholds are saved (`rung_logits` holds all steps).
        budget (`bool`, *optional*):
            Budgeted mode. `None`: on in eval mode when `config.budget_thresholds` is set, `config.use_budget` is true
            and `anytime` is not. `False`: off.
        exit_thresholds (`list[float]`, *optional*):
            Budgeted mode with these thresholds (one per step except the last) instead of the config's.
        return_policy (`bool`, *optional*, defaults to `False`):
            Also return what PPO needs: `policy_states`, `policy_actions`, `policy_log_probs`, `state_values` (every
            step mode only). With `crop_centers`, the log-probabilities are those of the given centres.
        generator (`torch.Generator`, *optional*):
            Random source of `policy_mode="sample"`.
        kwargs:
            The loss function's `num_items_in_batch` / `ignore_index`. `output_hidden_states` / `output_attentions`
            are refused, and so is any other name (`ValueError`: a misspelt argument would otherwise be ignored).
        """
        config = self.config
        for flag in ("output_hidden_states", "output_attentions"):
            if kwargs.pop(flag, None):
                raise ValueError(
                    f"`{flag}` is not supported by Glance-and-Focus (two encoders over several steps); run "
                    "`model.glance_encoder.backbone` / `model.focus_encoder.backbone` on the views for per-layer "
                    "outputs."
                )
        unknown = sorted(set(kwargs) - set(LOSS_KWARGS))
        if unknown:
            raise ValueError(
                f"GlanceFocusForImageClassification.forward got unexpected arguments {unknown}; it takes pixel_values, "
                "glance_pixel_values, labels, crop_centers, policy_mode, anytime, budget, exit_thresholds, "
                f"return_policy, generator and the loss's {list(LOSS_KWARGS)}."
            )
        self._check_inputs(pixel_values, glance_pixel_values, crop_centers, policy_mode)
        thresholds = self._resolve_exit_mode(anytime, budget, exit_thresholds)
        if return_policy and thresholds is not None:
            raise ValueError("`return_policy=True` needs every step for every image; pass `anytime=True`.")
        if glance_pixel_values is None:
            glance_pixel_values = self.glance_view(pixel_values)
        dtype = self.dtype
        pixel_values, glance_pixel_values = pixel_values.to(dtype), glance_pixel_values.to(dtype)
        batch_size, _, height, width = pixel_values.shape
        device, patch, num_steps = pixel_values.device, config.patch_size, config.num_steps
        want_encoder_logits = labels is not None and thresholds is None and config.encoder_loss_weight > 0

        running = torch.arange(batch_size, device=device)  # images still going, as indices into the batch
        exit_rung = torch.full((batch_size,), num_steps - 1, dtype=torch.long, device=device)
        boxes = torch.full((batch_size, num_steps - 1, 4), -1, dtype=torch.long, device=device)
        centers = torch.full((batch_size, num_steps - 1, 2), float("nan"), dtype=dtype, device=device)
        rung_logits, encoder_logits, loss_logits, logits = [], [], [], None
        policy_states, policy_actions, policy_log_probs, state_values = [], [], [], []
        memory = hidden = state = None
        for step in range(num_steps):
            if step == 0:
                pooled, feature_map = self.glance_encoder(glance_pixel_values)
                head = self.glance_head
            else:
                if crop_centers is not None:
                    action = crop_centers[running, step - 1].to(dtype)
                if crop_centers is None or return_policy:
                    action_mean, value, hidden = self.policy.step(state, hidden, compute_value=return_policy)
                    if crop_centers is None:
                        action = action_mean if policy_mode == "mean" else self.policy.sample(action_mean, generator)
                    if return_policy:
                        policy_states.append(state)
                        policy_actions.append(action)
                        policy_log_probs.append(self.policy.log_prob(action_mean, action))
                        state_values.append(value)
                box = crop_boxes_from_centers(action, height, width, patch)
                boxes[running, step - 1] = box
                centers[running, step - 1] = action.detach()
                pooled, feature_map = self.focus_encoder(crop_patches(pixel_values, box, patch, running))
                head = self.focus_head
            features = self.dropout(pooled)
            step_logits, memory = self.classifier(features, memory, step)
            head_logits = None
            if want_encoder_logits or (step == 0 and config.glance_logits == "glance_head"):
                head_logits = head(features)
            if step == 0 and config.glance_logits == "glance_head":
                # the loss still supervises a GRU classifier's own glance logits (official RegNet training)
                loss_logits.append(step_logits if step_logits is not None else head_logits)
                step_logits = head_logits
            else:
                loss_logits.append(step_logits)
            if step < num_steps - 1:
                state = self._policy_state(feature_map)
            if thresholds is None:
                rung_logits.append(step_logits)
                encoder_logits.append(head_logits)
                continue
            if logits is None:
                logits = step_logits.new_zeros(batch_size, step_logits.shape[-1])
            leaving = (
                torch.ones(len(running), dtype=torch.bool, device=device)
                if step == num_steps - 1
                else _confidence(step_logits) >= thresholds[step]
            )
            logits = logits.index_put((running[leaving],), step_logits[leaving])
            exit_rung[running[leaving]] = step
            staying = ~leaving
            running = running[staying]
            if len(running) == 0:
                break
            memory, state = memory[staying], state[staying]
            hidden = hidden[staying] if hidden is not None else None

        rung_flops = torch.tensor(self.rung_flops(), dtype=torch.long, device=device)
        loss = None
        if thresholds is None:
            logits = rung_logits[-1]
            if labels is not None:
                loss = sum(self.loss_function(labels, out, config, **kwargs) for out in loss_logits)
                if want_encoder_logits:
                    encoder_loss = sum(self.loss_function(labels, out, config, **kwargs) for out in encoder_logits)
                    loss = loss + config.encoder_loss_weight * encoder_loss
                loss = loss / num_steps
        elif labels is not None:
            loss = self.loss_function(labels, logits, config, **kwargs)

        def stacked(values: list, *shape) -> torch.Tensor | None:
            if not return_policy:
                return None
            if not values:
                return torch.zeros(batch_size, 0, *shape, dtype=dtype, device=device)
            return torch.stack(values, dim=1)

        return GlanceFocusImageClassifierOutput(
            loss=loss,
            logits=logits,
            rung_logits=torch.stack(rung_logits, dim=1) if thresholds is None else None,
            encoder_logits=torch.stack(encoder_logits, dim=1) if want_encoder_logits else None,
            rung_flops=rung_flops.expand(batch_size, -1),
            exit_rung=exit_rung,
            flops=rung_flops[exit_rung],
            crop_boxes=boxes,
            crop_centers=centers,
            policy_states=stacked(policy_states, *self.policy.state_shape),
            policy_actions=stacked(policy_actions, 2),
            policy_log_probs=stacked(policy_log_probs),
            state_values=stacked(state_values),
        )


__all__ = [
    "GlanceFocusClassifier",
    "GlanceFocusEncoder",
    "GlanceFocusForImageClassification",
    "GlanceFocusGRUCell",
    "GlanceFocusImageClassifierOutput",
    "GlanceFocusPolicy",
    "GlanceFocusPreTrainedModel",
    "count_flops",
    "crop_boxes_from_centers",
    "crop_patches",
    "make_glance_view",
]
