"""Glance-and-Focus networks (GFNet; Wang et al., NeurIPS 2020 / TPAMI 2022): glance at the whole image at low
resolution, focus on a few full-resolution crops chosen by a learned policy, stop when sure.

Files: `configuration_glance_focus.py` (config, checks), `modeling_glance_focus.py` (encoders on any transformers
vision backbone, recurrent classifier, actor-critic policy, anytime / budgeted forward, FLOPs) and
`image_processing_glance_focus.py` (full-resolution view + glance view). They import each other with single-dot
relative imports only: `save_pretrained` copies them into a model folder for `trust_remote_code=True`.
"""

from .configuration_glance_focus import GlanceFocusConfig
from .image_processing_glance_focus import GlanceFocusImageProcessor
from .modeling_glance_focus import (
    GlanceFocusClassifier,
    GlanceFocusEncoder,
    GlanceFocusForImageClassification,
    GlanceFocusGRUCell,
    GlanceFocusImageClassifierOutput,
    GlanceFocusPolicy,
    GlanceFocusPreTrainedModel,
    crop_boxes_from_centers,
    crop_patches,
    make_glance_view,
)
