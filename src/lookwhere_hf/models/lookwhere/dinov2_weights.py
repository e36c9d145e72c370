"""What LookWhere takes from a DINOv2(-with-registers) checkpoint: the model ([`load_dinov2`]), the architecture
([`config_from_dinov2`]), the weights ([`copy_dinov2_weights`]) and its patch position embeddings at another grid
([`resize_position_embeddings`], as the official LookWhere code resizes them).

A sibling of `modeling_lookwhere.py`: saved model folders copy it for `trust_remote_code`, so it imports only torch,
transformers and its siblings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_utils import PreTrainedModel

from .configuration_lookwhere import LookWhereConfig, to_pair

__all__ = ["config_from_dinov2", "copy_dinov2_weights", "load_dinov2", "resize_position_embeddings"]


def resize_position_embeddings(
    position_embeddings: torch.Tensor, source_grid: int, grid: tuple[int, int]
) -> torch.Tensor:
    """Resize patch-only position embeddings `(1, source_grid**2, D)` to `(1, grid_h * grid_w, D)`.

    Bicubic, `align_corners=False`, **no antialiasing**, computed in float32 (the official LookWhere code; note that
    transformers' DINOv2 `interpolate_pos_encoding` antialiases and gives other numbers).
    """
    if (source_grid, source_grid) == tuple(grid):
        return position_embeddings
    dim = position_embeddings.shape[-1]
    grid_2d = position_embeddings.reshape(1, source_grid, source_grid, dim).permute(0, 3, 1, 2)
    resized = F.interpolate(grid_2d.float(), size=tuple(grid), mode="bicubic", align_corners=False, antialias=False)
    return resized.to(position_embeddings.dtype).permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim)


def load_dinov2(dinov2) -> PreTrainedModel:
    """A DINOv2(-with-registers) backbone from a model instance (bare or with a task head) or a path / Hub id."""
    from transformers import AutoModel

    if isinstance(dinov2, (str, bytes)) or hasattr(dinov2, "__fspath__"):
        dinov2 = AutoModel.from_pretrained(dinov2)
    if hasattr(dinov2, "embeddings") and hasattr(dinov2, "encoder"):
        backbone = dinov2
    else:
        backbone = getattr(dinov2, "dinov2_with_registers", None) or getattr(dinov2, "dinov2", None)
    model_type = getattr(getattr(backbone, "config", None), "model_type", None)
    if model_type not in ("dinov2_with_registers", "dinov2"):
        raise ValueError(
            "Expected a DINOv2-with-registers or DINOv2 model (transformers `Dinov2WithRegistersModel` / "
            f"`Dinov2Model`, or a path to one), got {type(dinov2).__name__} (model_type={model_type!r})."
        )
    return backbone


def config_from_dinov2(
    teacher_config,
    selector_depth: int = 3,
    low_res_size: int = 154,
    high_res_size: int | None = None,
    k_ratio: float = 0.1,
    **config_kwargs,
) -> LookWhereConfig:
    """The [`LookWhereConfig`] of a LookWhere built from a DINOv2(-with-registers) with config `teacher_config`: both
    parts take its architecture, the extractor all its layers at `high_res_size` (default: its `image_size`), the
    selector its first `selector_depth` at `low_res_size` ([`LookWherePreTrainedModel.from_dinov2`])."""
    tcfg = teacher_config
    if not 1 <= selector_depth <= tcfg.num_hidden_layers:
        raise ValueError(
            f"`selector_depth` must be between 1 and the teacher's depth {tcfg.num_hidden_layers}, "
            f"got {selector_depth}."
        )
    patch = to_pair(tcfg.patch_size)[0]
    high_res_size = high_res_size if high_res_size is not None else to_pair(tcfg.image_size)[0]
    backbone = {
        key: getattr(tcfg, key)
        for key in (
            "hidden_size",
            "num_attention_heads",
            "mlp_ratio",
            "hidden_act",
            "layer_norm_eps",
            "patch_size",
            "num_channels",
            "qkv_bias",
            "layerscale_value",
            "use_swiglu_ffn",
        )
    }
    backbone["num_register_tokens"] = getattr(tcfg, "num_register_tokens", 0)
    return LookWhereConfig(
        selector_config={**backbone, "num_hidden_layers": selector_depth, "image_size": low_res_size},
        extractor_config={**backbone, "num_hidden_layers": tcfg.num_hidden_layers, "image_size": high_res_size},
        k_ratio=k_ratio,
        selector_pretrain_grid=config_kwargs.pop("selector_pretrain_grid", high_res_size // patch),
        **config_kwargs,
    )


def copy_dinov2_weights(body: nn.Module, teacher: PreTrainedModel) -> None:
    """Copy a DINOv2(-with-registers) `teacher`'s weights into a LookWhere body (`LookWhereModel`) built with
    [`config_from_dinov2`]: the extractor is an exact copy, the selector takes the patch embedding, CLS / register
    tokens, first layers and final norm; position embeddings are resized to each part's grid (bicubic, no
    antialias) and the CLS position embedding is folded into the CLS token (LookWhere gives CLS none)."""
    state = teacher.state_dict()
    teacher_grid = to_pair(teacher.config.image_size)[0] // to_pair(teacher.config.patch_size)[0]
    for part in (body.selector, body.extractor):
        emb = part.embeddings
        with torch.no_grad():
            # DINOv2 adds its first position embedding to CLS; LookWhere's CLS gets none, so fold it in.
            emb.cls_token.copy_(state["embeddings.cls_token"] + state["embeddings.position_embeddings"][:, :1])
            if emb.register_tokens.numel():
                emb.register_tokens.copy_(state["embeddings.register_tokens"])
            emb.patch_embeddings.projection.load_state_dict(
                {
                    n.split(".")[-1]: t
                    for n, t in state.items()
                    if n.startswith("embeddings.patch_embeddings.projection.")
                }
            )
            patch_pos = state["embeddings.position_embeddings"][:, 1:]  # drop the CLS slot
            emb.position_embeddings.copy_(resize_position_embeddings(patch_pos, teacher_grid, (emb.grid, emb.grid)))
        depth = len(part.encoder.layer)
        part.encoder.layer.load_state_dict(
            {
                n[len("encoder.layer.") :]: t
                for n, t in state.items()
                if n.startswith("encoder.layer.") and int(n.split(".")[2]) < depth
            }
        )
        part.layernorm.load_state_dict({n.split(".")[-1]: t for n, t in state.items() if n.startswith("layernorm.")})
