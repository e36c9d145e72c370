"""torch.compile: whole-graph capture (no graph breaks), one compile per input shape and k, parity with eager; bf16
autocast on CPU and its effect on the selection.

The compile tests use the "eager" / "aot_eager" backends (Dynamo's capture and AOTAutograd's decompositions, without
code generation), so they stay fast; one inductor test (generated C++ code) is marked slow.
"""

import pytest
import torch
from conftest import EPS32, FLOAT64_TOLERANCE, assert_top_k_margin, make_tiny_config
from test_lookupvit import tiny as tiny_lookupvit

from lookwhere_hf import (
    LookupViTForImageClassification,
    LookupViTForSemanticSegmentation,
    LookupViTModel,
    LookWhereForImageClassification,
    LookWhereForSemanticSegmentation,
    LookWhereImageProcessor,
    LookWhereModel,
)

LOOKWHERE_CLASSES = [LookWhereModel, LookWhereForImageClassification, LookWhereForSemanticSegmentation]
LOOKUPVIT_CLASSES = [LookupViTModel, LookupViTForImageClassification, LookupViTForSemanticSegmentation]


def tiny_lookwhere(cls):
    return cls(make_tiny_config(num_labels=3)).eval()


def call_kwargs(cls, k: int) -> dict:
    """Fixed-k inputs; the bare model also returns dense features, so that the spreading is compiled too."""
    return {"k": k, "output_dense_features": True} if cls is LookWhereModel else {"k": k}


class CountingBackend:
    """A torch.compile backend that counts the graphs Dynamo hands it (one per compile) and runs them as they are."""

    def __init__(self) -> None:
        self.compiles = 0

    def __call__(self, graph_module, example_inputs):
        self.compiles += 1
        return graph_module.forward


# ----------------------------------------------------------------------------------------------------- graph breaks
@pytest.mark.parametrize("size", [112, 140], ids=["trained-grid", "resized-position-embeddings"])
@pytest.mark.parametrize("cls", LOOKWHERE_CLASSES)
def test_lookwhere_compiles_to_one_graph(cls, size):
    """At a fixed k the whole forward (selector, top-k, gather, extractor, head, dense spreading) is one graph, also
    at a resolution whose position embeddings are resized (the eval-mode cache of resized embeddings is skipped under
    tracing, it would break the graph)."""
    model = tiny_lookwhere(cls)
    pixel_values = torch.randn(2, 3, size, size)
    with torch.no_grad():
        explanation = torch._dynamo.explain(model)(pixel_values, **call_kwargs(cls, 10))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.parametrize("cls", LOOKUPVIT_CLASSES)
def test_lookupvit_compiles_to_one_graph(cls):
    model = tiny_lookupvit(cls, attn_implementation="sdpa", **({} if cls is LookupViTModel else {"num_labels": 3}))
    with torch.no_grad():
        explanation = torch._dynamo.explain(model)(torch.randn(2, 3, 112, 112))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


# ----------------------------------------------------------------------------------------------------- recompiles
# (image size, k): three sizes (the trained grid, two resized ones) and three values of k, with repeats.
CALLS = [(112, 10), (112, 10), (112, 12), (112, 12), (112, 14), (112, 10), (140, 10), (140, 10), (168, 20), (112, 12)]


@pytest.mark.parametrize("cls", [LookWhereForImageClassification, LookWhereForSemanticSegmentation])
def test_recompiles_once_per_shape_and_k(cls):
    """`dynamic=False` (static shapes, the fastest code at a fixed k): a new (resolution, k) compiles once; calling it
    again, or going back to an earlier one, compiles nothing. The outputs stay the eager ones."""
    torch._dynamo.reset()
    model = tiny_lookwhere(cls)
    backend = CountingBackend()
    compiled = torch.compile(model, backend=backend, fullgraph=True, dynamic=False)
    seen = set()
    with torch.no_grad():
        for size, k in CALLS:
            pixel_values = torch.randn(1, 3, size, size)
            got, expected = compiled(pixel_values, k=k), model(pixel_values, k=k)
            seen.add((size, k))
            assert backend.compiles == len(seen), f"recompiled at size {size}, k {k}"
            assert torch.equal(got.selected_indices, expected.selected_indices)
            torch.testing.assert_close(got.logits, expected.logits, rtol=0, atol=0)


def test_automatic_dynamic_shapes_never_compile_more_than_once_per_shape():
    """The default (`dynamic=None`): after the first change Dynamo may compile a graph generic in k and the image size,
    so there are at most as many compiles as distinct (resolution, k), and a repeated call never compiles."""
    torch._dynamo.reset()
    model = tiny_lookwhere(LookWhereForImageClassification)
    backend = CountingBackend()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    seen = set()
    with torch.no_grad():
        for size, k in CALLS:
            before = backend.compiles
            pixel_values = torch.randn(1, 3, size, size)
            torch.testing.assert_close(compiled(pixel_values, k=k).logits, model(pixel_values, k=k).logits)
            if (size, k) in seen:
                assert backend.compiles == before, f"recompiled a seen shape: size {size}, k {k}"
            seen.add((size, k))
    assert 1 <= backend.compiles <= len(seen)


# ----------------------------------------------------------------------------------------------------- parity
def assert_outputs_close(got, expected, k: int, tolerance: dict) -> None:
    """Same selection, same tensors: every tensor field of the eager output within `tolerance` (float64 on both sides;
    the top-k margin makes the same selection certain)."""
    scale = 1 + expected.selector_map.abs().max().item()
    assert_top_k_margin(expected.selector_map, k, margin=2 * tolerance["atol"] * scale, ordered=True)
    assert torch.equal(got.selected_indices, expected.selected_indices)
    compared = [name for name, value in expected.items() if isinstance(value, torch.Tensor)]
    assert "logits" in compared or "dense_features" in compared
    for name in compared:
        torch.testing.assert_close(got[name], expected[name], **tolerance, msg=name)


@pytest.mark.parametrize("cls", LOOKWHERE_CLASSES)
def test_compiled_matches_eager(cls):
    """AOTAutograd's decomposed graph (the graph inductor would generate code for) gives the eager outputs, float64 on
    both sides so that the two operation orders agree to FLOAT64_TOLERANCE. At the trained grid: at other grids the
    model resizes the position embeddings and the selector map in float32 on purpose (the official numbers), and the
    decomposed and the native resize kernels round differently there (the recompile test above covers other grids with
    the capture-only backend, which runs the native kernels)."""
    torch._dynamo.reset()
    model = tiny_lookwhere(cls).double()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    pixel_values = torch.randn(2, 3, 112, 112, dtype=torch.float64)
    with torch.no_grad():
        expected, got = model(pixel_values, **call_kwargs(cls, 12)), compiled(pixel_values, **call_kwargs(cls, 12))
    assert type(got) is type(expected)
    assert_outputs_close(got, expected, 12, FLOAT64_TOLERANCE)


@pytest.mark.slow
@pytest.mark.parametrize("cls", [LookWhereForImageClassification, LookWhereForSemanticSegmentation])
def test_inductor_matches_eager(cls):
    """The default backend (inductor, generated C++ on CPU), float64: the eager outputs within FLOAT64_TOLERANCE (at
    the trained grid, as above)."""
    torch._dynamo.reset()
    model = tiny_lookwhere(cls).double()
    compiled = torch.compile(model, fullgraph=True)
    pixel_values = torch.randn(2, 3, 112, 112, dtype=torch.float64)
    with torch.no_grad():
        expected, got = model(pixel_values, k=12), compiled(pixel_values, k=12)
    assert_outputs_close(got, expected, 12, FLOAT64_TOLERANCE)


# ----------------------------------------------------------------------------------------------------- bf16 on CPU
BF16_EPS = torch.finfo(torch.bfloat16).eps  # 2**-7: bf16 keeps 8 significant bits


def test_bf16_autocast_on_a_real_image(photos):
    """CPU bf16 autocast runs all three classes; on a real photo its selector map stays within the bf16 error bound of
    the fp32 map, and every fp32 top-k patch whose score clears the k-th/(k+1)-th boundary by more than twice that bound
    is selected under bf16 too (only near-ties may swap).

    Error bound of the bf16 map: autocast runs the linear layers and attention matmuls in bf16 (8-bit significands,
    relative rounding u = 2**-8 per input and per output; fp32 accumulation), LayerNorm / softmax / GELU / the
    resizes in fp32. Each bf16 matmul perturbs its output by <= 3u times the magnitude of |x||W| products; through
    the selector (1 block here: q/k/v/o, two attention matmuls, two MLP matmuls, two head matmuls) that is at most
    ~10 bf16 roundings in series, each amplified by at most the network's Lipschitz factor on this input. We do not
    rely on a tight value: the bound is measured as the largest |bf16 - fp32| map difference and must be below
    64 * BF16_EPS * scale (~8 roundings at full scale, the crude sum above); the agreement rule is then checked with
    that measured bound, which is the sound one for this input.
    """
    processor = LookWhereImageProcessor.from_model_config(make_tiny_config())
    pixel_values = processor(photos["astronaut"], return_tensors="pt")["pixel_values"]
    k = 16
    for cls in LOOKWHERE_CLASSES:
        model = tiny_lookwhere(cls)
        with torch.no_grad():
            fp32 = model(pixel_values, k=k)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                bf16 = model(pixel_values, k=k)
        scale = fp32.selector_map.abs().max().item()
        error = (bf16.selector_map.float() - fp32.selector_map).abs().max().item()
        assert error <= 64 * BF16_EPS * scale, f"{cls.__name__}: bf16 map error {error:.3g}, scale {scale:.3g}"
        assert error > 16 * EPS32 * scale, "autocast did not run in bf16 (map equal to fp32 up to fp32 rounding)"

        # A patch more than 2 * error above the (k+1)-th fp32 score stays above every patch outside the fp32 top-k
        # under bf16 (each moves by <= error), so at most k - 1 patches can outrank it: it must be selected.
        runner_up = fp32.selector_map.topk(k + 1, dim=-1).values[:, k]
        clear = fp32.selector_map > runner_up[:, None] + 2 * error
        must_keep = clear.nonzero()
        selected = torch.zeros_like(clear)
        selected.scatter_(1, bf16.selected_indices, True)
        assert selected[must_keep[:, 0], must_keep[:, 1]].all(), f"{cls.__name__}: a clear top-k patch was dropped"
        assert len(must_keep) >= k // 2, "too few patches clear the bound to test anything; the map is too flat"
