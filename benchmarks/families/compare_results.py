#!/usr/bin/env python
"""Are two runs' numbers the same? Every number of OLD's `results.json` must be equal in NEW, except timings.

The check that a refactoring left a benchmark's numbers unchanged: run the old code and the new code with the same
flags and seeds, then compare their `results.json` / `glance_focus.json` files pairwise. Latencies, CPU and wall
times, machine descriptions and the recorded arguments are skipped; NEW may hold more entries than OLD (new
measurements). Exit code 1 when a number differs or an entry of OLD is missing.

Example (the old code exported from its commit with `git archive <commit> | tar -x -C /tmp/old`, both run with the
same tiny flags; see benchmarks/families/README.md):

    python benchmarks/families/compare_results.py /tmp/old_out/families/results.json /tmp/new_out/results.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys

SKIPPED = ("latency", "training_cpu_s", "training_wall_s", "_recipe_cpu_s", "machine", "models", "arguments")


def differences(old, new, path: str = "") -> tuple[int, list[str]]:
    """`(numbers compared, differences)` of every leaf of `old` against `new`."""
    if isinstance(old, dict):
        if not isinstance(new, dict):
            return 0, [f"{path}: {type(old).__name__} vs {type(new).__name__}"]
        compared, found = 0, []
        for key, value in old.items():
            if any(word in key for word in SKIPPED) or key.endswith("_s"):
                continue
            if key not in new:
                found.append(f"{path}/{key}: missing")
                continue
            count, more = differences(value, new[key], f"{path}/{key}")
            compared, found = compared + count, found + more
        return compared, found
    if isinstance(old, list):
        if not isinstance(new, list) or len(old) != len(new):
            return 0, [f"{path}: {old!r} vs {new!r}"]
        compared, found = 0, []
        for i, (a, b) in enumerate(zip(old, new)):
            count, more = differences(a, b, f"{path}[{i}]")
            compared, found = compared + count, found + more
        return compared, found
    both_nan = isinstance(old, float) and isinstance(new, float) and math.isnan(old) and math.isnan(new)
    return 1, ([] if old == new or both_nan else [f"{path}: {old!r} vs {new!r}"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", help="results.json of the old code")
    parser.add_argument("new", help="results.json of the new code")
    args = parser.parse_args(argv)
    with open(args.old, encoding="utf-8") as f:
        old = json.load(f)
    with open(args.new, encoding="utf-8") as f:
        new = json.load(f)
    compared, found = differences(old, new)
    print(f"{args.old} vs {args.new}: {compared} numbers compared, {len(found)} differ or are missing")
    for line in found[:30]:
        print(f"    {line}")
    return 1 if found or not compared else 0


if __name__ == "__main__":
    sys.exit(main())
