"""LookupViT (Koner et al., ECCV 2024): heavy layers on a few compressed tokens, cheap layers on the full-resolution
lookup tokens, joined by a bidirectional cross-attention that computes its logits once.

Files: `configuration_lookupvit.py` (config, grid checks) and `modeling_lookupvit.py` (embeddings, block, models,
`from_vit` / `from_dinov2`, the one-view image processor settings). They import each other with single-dot relative
imports only: `save_pretrained` copies them into a model folder for `trust_remote_code=True`.
"""

from .configuration_lookupvit import LookupViTConfig
from .modeling_lookupvit import (
    LookupViTForImageClassification,
    LookupViTForSemanticSegmentation,
    LookupViTImageClassifierOutput,
    LookupViTModel,
    LookupViTModelOutput,
    LookupViTPreTrainedModel,
    LookupViTSemanticSegmenterOutput,
    lookupvit_image_processor,
)
