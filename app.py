"""A Hugging Face Space (Gradio SDK) runs this file unchanged: `python app.py` serves `lookwhere_hf.app`.

Models: the shipped demo checkpoint, or the folders / Hub ids listed in the `LOOKWHERE_APP_MODELS` environment
variable (separated by `os.pathsep`, ':' on Linux), e.g. a Space variable. Locally: `lookwhere-hf app` does the same
with `--model DIR` options.
"""

import os
import sys
from pathlib import Path

try:
    import lookwhere_hf  # noqa: F401  (registers the Auto classes)
except ImportError:  # a copy of the repository without `pip install .`: use its sources
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from lookwhere_hf.app import build_app  # noqa: E402

MODELS = [path for path in os.environ.get("LOOKWHERE_APP_MODELS", "").split(os.pathsep) if path]

demo = build_app(MODELS or None)

if __name__ == "__main__":
    demo.launch()
