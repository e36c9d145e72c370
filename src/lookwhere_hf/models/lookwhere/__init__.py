"""LookWhere (Fuller et al., 2025): a low-resolution selector decides where to look, a high-resolution extractor sees
only there.

Files, in the order the data flows: `image_processing_lookwhere.py` (pixel_values + the low-res view),
`input_checks.py` (shape checks of the inputs), `selection.py` (low-res view, selector map layout, top-k),
`modeling_lookwhere.py` (selector, extractor, heads), `cls_only_layer.py` (the extractor's last layer for the CLS
token alone), `anytime_rungs.py` (anytime / budgeted classification: the rung ladder, its FLOPs, the exits),
`dense_spreading.py` (k tokens -> full grid), `model_outputs.py` (the output dataclasses), `dinov2_weights.py`
(building a LookWhere from a DINOv2 checkpoint), `distillation_losses.py` (pretraining targets and losses),
`configuration_lookwhere.py`, and `convert_lookwhere_original_to_hf.py` (official checkpoints -> folders).

The modules import each other with single-dot relative imports only: `save_pretrained` copies them into a model
folder for `trust_remote_code=True`, where they must import as flat siblings.
"""

from .configuration_lookwhere import LookWhereConfig, LookWhereExtractorConfig, LookWhereSelectorConfig
from .dense_spreading import spread_to_grid
from .image_processing_lookwhere import LookWhereImageProcessor
from .modeling_lookwhere import (
    LookWhereForImageClassification,
    LookWhereForPreTraining,
    LookWhereForPreTrainingOutput,
    LookWhereForSemanticSegmentation,
    LookWhereImageClassifierOutput,
    LookWhereModel,
    LookWhereModelOutput,
    LookWherePreTrainedModel,
    LookWhereSemanticSegmenterOutput,
)
from .selection import make_low_res_view, select_top_k, selector_scores_to_map
