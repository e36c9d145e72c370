"""Shared fixtures: tiny random LookWhere configs and real photos. Everything runs offline."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import lookwhere_hf  # noqa: E402,F401  (registers the Auto classes)
from lookwhere_hf import LookWhereConfig  # noqa: E402

TINY_BACKBONE = dict(hidden_size=32, num_attention_heads=2, mlp_ratio=4, patch_size=14, num_register_tokens=4)


def make_tiny_config(
    low_res: int = 56, high_res: int = 112, selector_depth: int = 1, extractor_depth: int = 2, **kwargs
) -> LookWhereConfig:
    """A LookWhere config small enough for CPU tests (hidden 32, 2 heads, patch 14)."""
    backbone = {**TINY_BACKBONE, **kwargs.pop("backbone", {})}
    kwargs.setdefault("selector_pretrain_grid", high_res // backbone["patch_size"])
    return LookWhereConfig(
        selector_config=dict(backbone, num_hidden_layers=selector_depth, image_size=low_res),
        extractor_config=dict(backbone, num_hidden_layers=extractor_depth, image_size=high_res),
        **kwargs,
    )


@pytest.fixture
def tiny_config():
    return make_tiny_config


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def photos():
    """Real photographs shipped with scikit-image, as uint8 HxWx3 arrays."""
    from skimage import data

    return {"astronaut": data.astronaut(), "coffee": data.coffee(), "chelsea": data.chelsea()}
