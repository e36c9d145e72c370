#!/usr/bin/env python
"""Inference benchmark: LookWhere against a full-resolution DINOv2-with-registers (latency, FLOPs, peak memory).

The benchmark lives in the package (`lookwhere_hf.benchmarking`, also `lookwhere-hf benchmark`); this script is its
entry point in the repository. Arguments and output are described there:

```bash
python benchmarks/bench_inference.py --output benchmarks/RESULTS.md     # full grid (~15-20 min on 2 cores)
python benchmarks/bench_inference.py --quick                            # k = 10%, batch 1 (~2-3 min)
python benchmarks/bench_inference.py --help
```
"""

import sys

from lookwhere_hf.benchmarking import main

if __name__ == "__main__":
    sys.exit(main(prog="python benchmarks/bench_inference.py"))
