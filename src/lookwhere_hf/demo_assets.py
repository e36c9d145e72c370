"""The demo assets shipped in the package: a trained LookWhere checkpoint (`assets/demo_model/`) and its example
images (`assets/demo_images/`). The command line, the export parity check and the deployment benchmark reach them
through this module; an installation without them gets `None` / `[]`."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ASSETS", "IMAGE_SUFFIXES", "default_demo_model_path", "demo_image_paths"]

ASSETS = Path(__file__).resolve().parent / "assets"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def default_demo_model_path(assets: str | os.PathLike | None = None) -> str | None:
    """The trained demo checkpoint shipped in the package (`lookwhere_hf/assets/demo_model/`), or None if absent.
    `assets`: another assets folder to look in (default: the package's)."""
    folder = Path(ASSETS if assets is None else assets) / "demo_model"
    return str(folder) if (folder / "config.json").is_file() else None


def demo_image_paths(assets: str | os.PathLike | None = None) -> list[str]:
    """The example images shipped with the demo checkpoint (`lookwhere_hf/assets/demo_images/`), sorted by name.
    `assets`: another assets folder to look in (default: the package's)."""
    folder = Path(ASSETS if assets is None else assets) / "demo_images"
    if not folder.is_dir():
        return []
    return sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
