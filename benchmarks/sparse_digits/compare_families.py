#!/usr/bin/env python
"""Sparse Digits, the families side by side, from a finished `run_benchmark.py` run: the families harness
(`benchmarks/families/`) on the Sparse Digits description, reusing that run's data and per-seed teacher, pretrained
and fine-tuned LookWhere.

`--sparse_digits_dir DIR` is the harness's `--recipe_dir DIR` (its `summary.json` gives the recipe); every other flag
is the harness's (`python benchmarks/families/compare_families.py --help`). The same numbers in one command, data and
recipe included: `python benchmarks/families/compare_families.py --dataset sparse_digits`.

Example (the run reported in RESULTS.md):

    python benchmarks/sparse_digits/compare_families.py --sparse_digits_dir outputs/sparse_digits \\
        --output_dir outputs/families --seeds 0,1,2 --num_threads 1 --update_results
"""

from __future__ import annotations

import os
import sys

FAMILIES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "families")
PROGRAM = "python benchmarks/sparse_digits/compare_families.py"


def harness_argv(argv: list[str]) -> list[str]:
    """This script's arguments as the harness's: `--dataset sparse_digits`, `--sparse_digits_dir` as `--recipe_dir`
    (default `outputs/sparse_digits`), `--output_dir` by default `outputs/families`."""
    out, source, output_given = [], "outputs/sparse_digits", False
    items = iter(argv)
    for item in items:
        if item == "--sparse_digits_dir":
            source = next(items, None)
            if source is None:
                raise SystemExit("--sparse_digits_dir needs a folder (a finished run_benchmark.py run).")
        elif item.startswith("--sparse_digits_dir="):
            source = item.split("=", 1)[1]
        else:
            output_given |= item == "--output_dir" or item.startswith("--output_dir=")
            out.append(item)
    return [
        "--dataset",
        "sparse_digits",
        "--recipe_dir",
        source,
        *([] if output_given else ["--output_dir", "outputs/families"]),
        *out,
    ]


def main(argv: list[str] | None = None):
    """Run the harness on Sparse Digits (or, with a worker name first, that worker)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if FAMILIES not in sys.path:
        sys.path.insert(0, FAMILIES)
    import harness

    if argv and argv[0] in harness.WORKERS:
        return harness.main(argv)
    return harness.main(harness_argv(argv), program=PROGRAM, command_argv=argv)


if __name__ == "__main__":
    main()
