"""Small helpers shared by the command line, the training scripts and the benchmarks (not by the model files, which
must stay importable on their own for `trust_remote_code`)."""

from __future__ import annotations

import argparse
import os


def hub_offline() -> bool:
    """Whether `HF_HUB_OFFLINE` / `TRANSFORMERS_OFFLINE` forbid reaching the Hub."""
    return any(
        os.environ.get(name, "").lower() in ("1", "true", "yes", "on")
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def looks_like_local_path(path: str | os.PathLike) -> bool:
    """Whether `path` names something on disk rather than a Hub id (`name` or `org/name`).

    Anything that exists, starts with `.`, `/` or `~`, or has more than one `/` is a path; a missing path of that kind
    is a typo to report, not a Hub id to try.
    """
    path = os.fspath(path)
    return path.startswith((".", "/", "~")) or path.count("/") > 1 or os.path.exists(path)


def k_ratio_argument(value: str) -> float:
    """`argparse` type of a `--k-ratio` flag: a float in (0, 1], the fraction of high-res patches the extractor sees."""
    try:
        ratio = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {value!r}") from None
    if not 0.0 < ratio <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1] (the fraction of high-res patches kept), got {value}")
    return ratio


def positive_int_argument(value: str) -> int:
    """`argparse` type of a count flag (`--repeats`, `--threads`, `--batch-sizes`, ...): an integer >= 1."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return number
