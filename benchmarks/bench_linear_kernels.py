"""The matrix products of ViT-B layers on the CPU: `F.linear` (torch's BLAS, MKL on x86) against oneDNN's linear on
packed weights (what `lookwhere_hf.pack_linear_weights` uses), at the row counts of LookWhere's selector (126 tokens
at 154 px), extractor (141 tokens at 518 px, k = 136) and the full model (1374 tokens at 518 px).

Each measurement runs the six products of a layer (q, k, v, o: 768 -> 768; MLP: 768 -> 3072 -> 768) for 12 layers
with distinct random weights, so the weights come from memory as in a forward; kernels and row counts are
interleaved round by round, and the median of the rounds is reported in GFLOP/s of wall and of process CPU time.

    python benchmarks/bench_linear_kernels.py --threads 1 --rounds 7
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

HIDDEN, LAYERS = 768, 12
SHAPES = [(HIDDEN, HIDDEN)] * 4 + [(HIDDEN, 4 * HIDDEN), (4 * HIDDEN, HIDDEN)]  # (in, out) of a layer's products


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--rows", type=int, nargs="+", default=[126, 141, 1374])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    weights = [[(torch.randn(o, i) * 0.02, torch.randn(o) * 0.02) for i, o in SHAPES] for _ in range(LAYERS)]
    packed = [[(torch.ops.mkldnn._reorder_linear_weight(w), b) for w, b in layer] for layer in weights]

    def runner(rows: int, kernel: str):
        inputs = {size: torch.randn(rows, size) for size in (HIDDEN, 4 * HIDDEN)}
        if kernel == "F.linear (MKL)":
            return lambda: [F.linear(inputs[w.shape[1]], w, b) for layer in weights for w, b in layer]
        return lambda: [
            torch.ops.mkldnn._linear_pointwise(inputs[w.shape[1]], p, b, "none", [], "")
            for layer, packed_layer in zip(weights, packed)
            for (w, _), (p, b) in zip(layer, packed_layer)
        ]

    kernels = ("F.linear (MKL)", "oneDNN packed")
    calls = {(rows, kernel): runner(rows, kernel) for rows in args.rows for kernel in kernels}
    times = {key: [] for key in calls}
    with torch.inference_mode():
        for fn in calls.values():  # warm-up
            fn()
        for _ in range(args.rounds):
            for key, fn in calls.items():
                wall, cpu = time.perf_counter(), time.process_time()
                fn()
                times[key].append((time.perf_counter() - wall, time.process_time() - cpu))
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.rounds} rounds, {LAYERS} ViT-B layers' products")
    print("| rows | kernel | ms (wall) | GFLOP/s (wall) | GFLOP/s (CPU time) |")
    print("|---|---|---|---|---|")
    for (rows, kernel), samples in times.items():
        flops = LAYERS * sum(2 * rows * i * o for i, o in SHAPES)
        wall = statistics.median(s[0] for s in samples)
        cpu = statistics.median(s[1] for s in samples)
        print(f"| {rows} | {kernel} | {wall * 1e3:.1f} | {flops / wall / 1e9:.1f} | {flops / cpu / 1e9:.1f} |")


if __name__ == "__main__":
    main()
