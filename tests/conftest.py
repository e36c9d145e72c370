"""Shared fixtures: tiny random LookWhere configs and real photos. Everything runs offline."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import random  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

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


def _seed_everything() -> None:
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)


@pytest.fixture(autouse=True, scope="module")
def _seed_module():
    """Module-scoped fixtures start from the same random state too, whichever tests ran before (autouse fixtures are
    set up before the other fixtures of their scope)."""
    _seed_everything()


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same random state (torch, NumPy's legacy global generator, Python's `random`)."""
    _seed_everything()


# ----------------------------------------------------------------------------------------------------- tolerances
# Tolerances come from the arithmetic, never from what one CPU printed. A float rounds each result to within half an
# ulp, u = eps / 2 relative; a sum of n terms computed in any order is off by at most (n - 1) u sum|terms| (Higham,
# "Accuracy and Stability of Numerical Algorithms", 2nd ed., eq. 4.4). The bounds below round that up to n * eps.
EPS32 = torch.finfo(torch.float32).eps  # 2**-23 ~= 1.19e-7
EPS64 = torch.finfo(torch.float64).eps  # 2**-52 ~= 2.22e-16

# Two float64 evaluations of one tiny network (hidden <= 128, sequences <= 150 tokens, <= 4 layers) by a different
# operation order (eager vs SDPA, batched vs single, our modules vs a reference written out by hand) differ by at most
# (reduction length <= 1e3) * EPS64 ~= 2e-13 per layer, times the layers and what LayerNorm / softmax amplify
# (< 1e2 for these random weights): < 1e-10. 1e-9 keeps a 10x margin on that, while float32 rounding anywhere on
# the way (>= 6e-8 relative) or any real difference is far above it.
FLOAT64_TOLERANCE = {"atol": 1e-9, "rtol": 1e-9}


def sum_rtol(num_terms: int, eps: float = EPS32) -> float:
    """Relative error bound of a sum / mean of `num_terms` non-negative values, each computed within a few ulps.

    Each term carries <= 3u (a subtraction and a square, say), the sum (n - 1) u and a mean's division u:
    (n + 3) u <= n * eps for n >= 3.
    """
    return max(num_terms, 3) * eps


def assert_top_k_margin(scores: torch.Tensor, k: int, margin: float, ordered: bool = False) -> None:
    """Fail unless every row's k-th and (k+1)-th largest scores differ by more than `margin`.

    Two computations that each stay within `margin / 2` of `scores` then select the same top-`k` set, so comparing
    their selections cannot depend on a near-tie. With `ordered`, every gap among the top k + 1 must exceed `margin`,
    so the selections also come in the same order.

    Args:
        scores (`torch.Tensor` of shape `(batch_size, num_positions)`): one computation's scores.
        k (`int`): the number selected.
        margin (`float`): twice the largest difference allowed between the computations' scores.
    """
    top = scores.detach().double().topk(min(k + 1, scores.shape[-1]), dim=-1).values
    gaps = top[:, :-1] - top[:, 1:]
    if not ordered:
        gaps = gaps[:, k - 1 :]
    smallest = gaps.min().item() if gaps.numel() else float("inf")
    assert smallest > margin, (
        f"near-tie: top-{k} score gap {smallest:.3g} is not above {margin:.3g}; choose another seed or input"
    )


@pytest.fixture(scope="session")
def photos():
    """Real photographs shipped with scikit-image, as uint8 HxWx3 arrays."""
    from skimage import data

    return {"astronaut": data.astronaut(), "coffee": data.coffee(), "chelsea": data.chelsea()}


# ----------------------------------------------------------------------------------------------- background runs
class BackgroundRuns:
    """Long subprocess runs (one process at one thread each: the families harness end to end) that tests of several
    modules check. `start` launches a run at most once per session and returns at once; `wait` gives its exit code
    and output. The first test that needs one starts the others that later selected tests will check, so that they
    run side by side with it and with the tests in between instead of one after another. A run's results do not
    depend on what else runs (its seeds and thread count are fixed); only its wall-clock time does."""

    def __init__(self, root):
        self.root = root
        self._runs = {}

    def start(self, key: str, command: list[str], **kwargs) -> None:
        if key not in self._runs:
            log = open(self.root / f"{key}.log", "w+", encoding="utf-8")  # a file: a full pipe would block the run
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True, **kwargs
            )
            self._runs[key] = (process, log)

    def wait(self, key: str, timeout: float = 1800.0) -> tuple[int, str]:
        """The run's exit code and output; a run still going after `timeout` seconds is ended (with the stages it
        started) and reported as failed rather than hanging the session."""
        process, log = self._runs[key]
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait()
            log.seek(0)
            return -1, log.read() + f"\n[ended by the test after {timeout:.0f} s]"
        log.seek(0)
        return process.returncode, log.read()

    def close(self) -> None:
        """End the runs no test waited for (a failed or interrupted session), with the stages they started."""
        for process, log in self._runs.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait()
            log.close()


@pytest.fixture(scope="session")
def background_runs(tmp_path_factory):
    runs = BackgroundRuns(tmp_path_factory.mktemp("background_runs"))
    yield runs
    runs.close()


def run_script_in_process(script, argv, cwd, hf_home) -> str:
    """What `python script *argv` in `cwd` at one thread with `HF_HOME=hf_home` does, without a fresh interpreter's
    start-up: the script runs as `__main__` in this process with that `sys.argv` (datasets' cache in `hf_home`); it
    returns what it printed and logged (its own, lookwhere_hf's and transformers' loggers). The working directory,
    thread count, streams and log levels are restored afterwards. An error raises here, with its traceback."""
    import contextlib
    import io
    import logging
    import runpy
    from pathlib import Path

    import datasets

    output = io.StringIO()
    handler = logging.StreamHandler(output)
    loggers = [logging.getLogger(name) for name in ("__main__", "lookwhere_hf", "transformers")]
    levels = [logger.level for logger in loggers]
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        patch.chdir(cwd)
        patch.setattr(sys, "argv", [str(script), *map(str, argv)])
        cache = Path(hf_home) / "datasets"
        for name, folder in (("HF_DATASETS_CACHE", cache), ("DOWNLOADED_DATASETS_PATH", cache / "downloads")):
            patch.setattr(datasets.config, name, folder)
        patch.setattr(datasets.config, "EXTRACTED_DATASETS_PATH", cache / "downloads" / "extracted")
        for logger in loggers:
            logger.addHandler(handler)
        torch.set_num_threads(1)
        try:
            runpy.run_path(str(script), run_name="__main__")
        finally:
            torch.set_num_threads(threads)
            for logger, level in zip(loggers, levels, strict=True):
                logger.removeHandler(handler)
                logger.setLevel(level)
    return output.getvalue()
