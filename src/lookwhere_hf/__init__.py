"""LookWhere for Hugging Face transformers.

Importing this package registers the LookWhere config, models and image processor with the transformers Auto
classes, and marks them for `save_pretrained` to copy their code, so that saved folders also load with
`trust_remote_code=True` where `lookwhere_hf` is not installed.
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
    AutoModelForSemanticSegmentation,
    AutoVideoProcessor,
    BeitImageProcessor,
)

from .image_processing import image_processor_for
from .models.glance_focus import (
    GlanceFocusConfig,
    GlanceFocusForImageClassification,
    GlanceFocusImageClassifierOutput,
    GlanceFocusImageProcessor,
    GlanceFocusPolicy,
    GlanceFocusPreTrainedModel,
)
from .models.lookupvit import (
    LookupViTConfig,
    LookupViTForImageClassification,
    LookupViTForSemanticSegmentation,
    LookupViTImageClassifierOutput,
    LookupViTModel,
    LookupViTModelOutput,
    LookupViTPreTrainedModel,
    LookupViTSemanticSegmenterOutput,
    lookupvit_image_processor,
)
from .models.lookwhere import (
    LookWhereConfig,
    LookWhereExtractorConfig,
    LookWhereForImageClassification,
    LookWhereForPreTraining,
    LookWhereForPreTrainingOutput,
    LookWhereForSemanticSegmentation,
    LookWhereImageClassifierOutput,
    LookWhereImageProcessor,
    LookWhereModel,
    LookWhereModelOutput,
    LookWherePreTrainedModel,
    LookWhereSelectorConfig,
    LookWhereSemanticSegmenterOutput,
    make_low_res_view,
    select_top_k,
    selector_scores_to_map,
    spread_to_grid,
)
from .packed_linear import PackedLinear, pack_linear_weights, unpack_linear_weights

__version__ = "0.1.0"

AutoConfig.register("lookwhere", LookWhereConfig, exist_ok=True)
AutoConfig.register("lookwhere_selector", LookWhereSelectorConfig, exist_ok=True)
AutoModel.register(LookWhereConfig, LookWhereModel, exist_ok=True)
AutoModelForImageClassification.register(LookWhereConfig, LookWhereForImageClassification, exist_ok=True)
AutoModelForPreTraining.register(LookWhereConfig, LookWhereForPreTraining, exist_ok=True)
AutoModelForSemanticSegmentation.register(LookWhereConfig, LookWhereForSemanticSegmentation, exist_ok=True)
AutoImageProcessor.register(
    LookWhereConfig, image_processor_classes={"torchvision": LookWhereImageProcessor}, exist_ok=True
)
# LookWhere has no video processor, and says so. Without this, pipelines (which also try `AutoVideoProcessor`) take
# the processor's `auto_map` entry "...LookWhereImageProcessor" for a remote "...LookWhereVideoProcessor" and, as
# no video processor is known locally for this config, prompt for `trust_remote_code` although lookwhere_hf is here.
AutoVideoProcessor.register(LookWhereConfig, video_processor_classes={"torchvision": None}, exist_ok=True)

LookWhereConfig.register_for_auto_class()
LookWhereModel.register_for_auto_class("AutoModel")
LookWhereForImageClassification.register_for_auto_class("AutoModelForImageClassification")
LookWhereForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")
LookWhereImageProcessor.register_for_auto_class("AutoImageProcessor")

# LookupViT: a second model family (models/lookupvit); its one-view image processor is transformers' BeitImageProcessor.
AutoConfig.register("lookupvit", LookupViTConfig, exist_ok=True)
AutoModel.register(LookupViTConfig, LookupViTModel, exist_ok=True)
AutoModelForImageClassification.register(LookupViTConfig, LookupViTForImageClassification, exist_ok=True)
AutoModelForSemanticSegmentation.register(LookupViTConfig, LookupViTForSemanticSegmentation, exist_ok=True)
AutoImageProcessor.register(LookupViTConfig, image_processor_classes={"torchvision": BeitImageProcessor}, exist_ok=True)
LookupViTConfig.register_for_auto_class()
LookupViTModel.register_for_auto_class("AutoModel")
LookupViTForImageClassification.register_for_auto_class("AutoModelForImageClassification")
LookupViTForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")

# Glance-and-Focus (GFNet): a third family (models/glance_focus), with its two-view image processor.
AutoConfig.register("glance_focus", GlanceFocusConfig, exist_ok=True)
# The family has no headless model (the recurrent classifier is part of the method): AutoModel gives the classifier.
AutoModel.register(GlanceFocusConfig, GlanceFocusForImageClassification, exist_ok=True)
AutoModelForImageClassification.register(GlanceFocusConfig, GlanceFocusForImageClassification, exist_ok=True)
AutoImageProcessor.register(
    GlanceFocusConfig, image_processor_classes={"torchvision": GlanceFocusImageProcessor}, exist_ok=True
)
AutoVideoProcessor.register(GlanceFocusConfig, video_processor_classes={"torchvision": None}, exist_ok=True)
GlanceFocusConfig.register_for_auto_class()
GlanceFocusForImageClassification.register_for_auto_class("AutoModelForImageClassification")
GlanceFocusImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = [
    "GlanceFocusConfig",
    "GlanceFocusForImageClassification",
    "GlanceFocusImageClassifierOutput",
    "GlanceFocusImageProcessor",
    "GlanceFocusPolicy",
    "GlanceFocusPreTrainedModel",
    "LookWhereConfig",
    "LookWhereSelectorConfig",
    "LookWhereExtractorConfig",
    "LookWhereImageProcessor",
    "LookWherePreTrainedModel",
    "LookWhereModel",
    "LookWhereForImageClassification",
    "LookWhereForSemanticSegmentation",
    "LookWhereForPreTraining",
    "LookWhereForPreTrainingOutput",
    "LookWhereModelOutput",
    "LookWhereImageClassifierOutput",
    "LookWhereSemanticSegmenterOutput",
    "make_low_res_view",
    "select_top_k",
    "selector_scores_to_map",
    "spread_to_grid",
    "LookupViTConfig",
    "LookupViTPreTrainedModel",
    "LookupViTModel",
    "LookupViTForImageClassification",
    "LookupViTForSemanticSegmentation",
    "LookupViTModelOutput",
    "LookupViTImageClassifierOutput",
    "LookupViTSemanticSegmenterOutput",
    "lookupvit_image_processor",
    "image_processor_for",
    "PackedLinear",
    "pack_linear_weights",
    "unpack_linear_weights",
]
