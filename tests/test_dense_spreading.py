"""Dense spreading: exact agreement with the official formula under the pretraining's stable tie rule, everywhere.

The reference below is written independently of the package, straight from the definition: the full float64 distance
matrix from every grid position to every selected one (columns in `indices` order, i.e. descending selector score), a
STABLE argsort (so among equal distances the earlier column wins, as in the JAX pretraining), the K nearest, weights
`1 / (d + 1e-8)` normalized to sum one.

Tolerance. `spread_to_grid` works in float32: each weight carries a few roundings (sqrt, add, reciprocal, a sum of
K <= 5 terms, a division: <= 9 u, u = 2**-24) and the bag sum of K products another K + 1 u, so every output element
is within ~16 u ~= 1e-6 of `sum_j w_j |t_j|`, the spread of the absolute tokens. `rel_error` divides by exactly that,
and the bound asserted is 1e-5 (10x margin, any CPU, any thread count). A single tie broken the other way swaps a
neighbour and gives an error of order 1.
"""

from __future__ import annotations

import pytest
import torch

from lookwhere_hf.models.lookwhere.dense_spreading import spread_to_grid
from lookwhere_hf.models.lookwhere.selection import select_top_k, selector_scores_to_map

REL_TOL = 1e-5


def reference_spread(tokens, indices, grid, num_neighbors=5, positions=None, later_wins=False):
    """The official formula in float64 with a stable sort over the score-ordered selection.

    With `later_wins`, ties go to the LATER selected patch instead (the columns are reversed before the stable sort):
    the other deterministic rule, used to show that the rule changes the output.

    Returns:
        `(spread tokens, spread |tokens|)`, both float64 of shape `(batch_size, positions, hidden_size)`.
    """
    grid_h, grid_w = grid
    positions = torch.arange(grid_h * grid_w) if positions is None else positions
    target = torch.stack((positions // grid_w, positions % grid_w), -1).double()
    values, magnitudes = [], []
    for b in range(tokens.shape[0]):
        order_of_columns = torch.arange(indices.shape[1])
        if later_wins:
            order_of_columns = order_of_columns.flip(0)
        columns = indices[b][order_of_columns]
        source = torch.stack((columns // grid_w, columns % grid_w), -1).double()
        dist = ((target[:, None, :] - source[None, :, :]) ** 2).sum(-1).sqrt()  # (positions, k)
        nearest = torch.argsort(dist, dim=1, stable=True)[:, :num_neighbors]
        weights = 1.0 / (dist.gather(1, nearest) + 1e-8)
        weights = weights / weights.sum(1, keepdim=True)
        chosen = tokens[b].double()[order_of_columns][nearest]  # (positions, K, D)
        values.append((weights[..., None] * chosen).sum(1))
        magnitudes.append((weights[..., None] * chosen.abs()).sum(1))
    return torch.stack(values), torch.stack(magnitudes)


def rel_error(got, tokens, indices, grid, num_neighbors=5, positions=None):
    """Largest `|got - reference| / reference(|tokens|)` over every position and channel."""
    expected, scale = reference_spread(tokens, indices, grid, num_neighbors, positions)
    return ((got.double() - expected).abs() / scale).max().item()


def fifth_nearest_ties(indices, grid, num_neighbors=5):
    """Boolean `(batch_size, positions)`: the K-th and (K+1)-th nearest selected patches are at the same distance."""
    grid_h, grid_w = grid
    positions = torch.arange(grid_h * grid_w)
    target = torch.stack((positions // grid_w, positions % grid_w), -1)
    ties = []
    for b in range(indices.shape[0]):
        source = torch.stack((indices[b] // grid_w, indices[b] % grid_w), -1)
        d2 = ((target[:, None, :] - source[None, :, :]) ** 2).sum(-1).sort(dim=1).values
        ties.append(d2[:, num_neighbors - 1] == d2[:, num_neighbors])
    return torch.stack(ties)


def random_selection(batch_size, grid, k, hidden, seed):
    gen = torch.Generator().manual_seed(seed)
    num = grid[0] * grid[1]
    indices = torch.stack([torch.randperm(num, generator=gen)[:k] for _ in range(batch_size)])
    tokens = torch.randn(batch_size, k, hidden, generator=gen)
    return tokens, indices


def release_selection(batch_size, grid, k, hidden, seed):
    """The released geometry: an 11x11 selector with r = 4 -> a 44x44 score map resized to `grid`, top-k by score."""
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch_size, 11 * 11, 4 * 4, generator=gen)
    indices = select_top_k(selector_scores_to_map(scores, (11, 11), grid), k)
    tokens = torch.randn(batch_size, k, hidden, generator=gen)
    return tokens, indices


# ---------------------------------------------------------------------------------------------- tiny grids
@pytest.mark.parametrize(
    "grid, k, num_neighbors",
    [
        ((6, 6), 8, 5),
        ((5, 9), 7, 5),
        ((9, 4), 3, 5),
        ((12, 12), 20, 5),
        ((1, 10), 4, 3),
        ((7, 1), 3, 2),
        ((8, 8), 64, 5),
    ],
    ids=["square", "wide", "K>k", "larger", "one-row", "one-column", "all-selected"],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_tiny_grids_match_the_stable_reference_everywhere(grid, k, num_neighbors, seed, batch_size):
    tokens, indices = random_selection(batch_size, grid, k, 6, seed)
    for chunk_elements in (1, 7 * k * batch_size, 1 << 18):  # single positions, column blocks / row blocks, one block
        got = spread_to_grid(tokens, indices, grid, num_neighbors, chunk_elements=chunk_elements)
        assert got.shape == (batch_size, grid[0] * grid[1], 6)
        assert rel_error(got, tokens, indices, grid, num_neighbors) <= REL_TOL


def test_tiny_grids_have_many_ties():
    """The tiny cases above do exercise the tie rule: a good share of positions tie at the K-th place."""
    _, indices = random_selection(3, (12, 12), 20, 6, seed=0)
    assert fifth_nearest_ties(indices, (12, 12)).float().mean() > 0.2


def test_chunking_does_not_change_a_bit():
    tokens, indices = random_selection(2, (11, 13), 30, 8, seed=4)
    full = spread_to_grid(tokens, indices, (11, 13))
    for chunk_elements in (1, 59, 60 * 13, 1000):
        assert torch.equal(spread_to_grid(tokens, indices, (11, 13), chunk_elements=chunk_elements), full)


# ---------------------------------------------------------------------------------------------- the tie rule
def test_constructed_tie_goes_to_the_higher_scored_patch():
    """Position 5 of a 1x11 grid, not selected: selected 4, 6 (distance 1), 3, 7 (distance 2), then 2 and 8, both at
    distance 3. K = 5 takes one of the last two: the one earlier in `indices` (the higher selector score).
    """
    grid = (1, 11)
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(1, 6, 4, generator=gen, dtype=torch.float64)  # tokens of patches 4, 6, 3, 7, 2, 8
    two_first = torch.tensor([[4, 6, 3, 7, 2, 8]])
    eight_first = torch.tensor([[4, 6, 3, 7, 8, 2]])
    got_two = spread_to_grid(base, two_first, grid)[0, 5]
    got_eight = spread_to_grid(base[:, [0, 1, 2, 3, 5, 4]], eight_first, grid)[0, 5]  # each patch keeps its token

    inverse = 1.0 / (torch.tensor([1.0, 1, 2, 2, 3], dtype=torch.float64) + 1e-8)
    weights = inverse / inverse.sum()
    with_two = (weights[:, None] * base[0, [0, 1, 2, 3, 4]]).sum(0)
    with_eight = (weights[:, None] * base[0, [0, 1, 2, 3, 5]]).sum(0)
    torch.testing.assert_close(got_two, with_two, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_eight, with_eight, rtol=1e-12, atol=1e-12)
    # The two rules give different outputs here, and ours is the stable one.
    stable, _ = reference_spread(base, two_first, grid)
    later, _ = reference_spread(base, two_first, grid, later_wins=True)
    assert (stable[0, 5] - later[0, 5]).abs().max() > 0.05
    torch.testing.assert_close(got_two, stable[0, 5], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(later[0, 5], with_eight, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------- release geometry
@pytest.mark.parametrize("batch_size", [1, 2])
def test_release_geometry_518(batch_size):
    """518 px: 37x37 = 1369 patches, k = 136, hidden 768; every position compared, ties included."""
    grid, k = (37, 37), 136
    tokens, indices = release_selection(batch_size, grid, k, 768, seed=batch_size)
    got = spread_to_grid(tokens, indices, grid)
    assert rel_error(got, tokens, indices, grid) <= REL_TOL

    ties = fifth_nearest_ties(indices, grid)
    assert 0.15 < ties.float().mean() < 0.35  # measured: 0.234 (seed 1), 0.234 and 0.252 (seed 2)
    # The other tie rule changes the output at every tie position that is not itself selected (a selected position
    # weighs its own token by 1 - O(1e-8)), and nowhere else: the comparison above is not vacuous.
    later, _ = reference_spread(tokens, indices, grid, later_wins=True)
    differs = (got.double() - later).norm(dim=-1) > REL_TOL * later.norm(dim=-1)
    selected = torch.zeros_like(ties).scatter_(1, indices, True)
    assert torch.equal(differs, ties & ~selected)


@pytest.mark.slow
def test_release_geometry_1036():
    """1036 px: 74x74 = 5476 patches, k = 547 (10%)."""
    grid, k = (74, 74), 547
    tokens, indices = release_selection(1, grid, k, 64, seed=7)
    got = spread_to_grid(tokens, indices, grid)
    assert rel_error(got, tokens, indices, grid) <= REL_TOL
    assert fifth_nearest_ties(indices, grid).float().mean() > 0.1


def test_int64_keys_for_large_grids_and_bounded_memory(monkeypatch):
    """Keys beyond 2**24 switch to int64 (still exact), and no block's key tensor exceeds the budget.

    A 300x2 grid with k = 200 has squared distances up to 299**2 + 1, so keys up to ~1.8e7 > 2**24.
    """
    grid, k = (300, 2), 200
    tokens, indices = random_selection(2, grid, k, 5, seed=5)
    seen = []
    original_topk = torch.topk

    def recording_topk(input, *args, **kwargs):
        seen.append((input.numel(), input.dtype))
        return original_topk(input, *args, **kwargs)

    monkeypatch.setattr(torch, "topk", recording_topk)
    budget = 4 * 2 * k  # four positions per block
    got = spread_to_grid(tokens, indices, grid, chunk_elements=budget)
    monkeypatch.undo()
    assert seen and all(dtype == torch.int64 for _, dtype in seen)
    assert max(numel for numel, _ in seen) <= budget < grid[0] * grid[1] * 2 * k
    assert rel_error(got, tokens, indices, grid) <= REL_TOL


def test_memory_is_bounded_on_large_grids(monkeypatch):
    """A 148x148 grid with k = 2190 would need a 48M-element distance matrix; the blocks stay within the budget."""
    grid, k = (148, 148), 2190
    tokens, indices = random_selection(1, grid, k, 16, seed=6)
    largest = []
    original_topk = torch.topk

    def recording_topk(input, *args, **kwargs):
        largest.append(input.numel())
        return original_topk(input, *args, **kwargs)

    monkeypatch.setattr(torch, "topk", recording_topk)
    budget = 1 << 18
    out = spread_to_grid(tokens, indices, grid, chunk_elements=budget)
    monkeypatch.undo()
    assert max(largest) <= budget < grid[0] * grid[1] * k
    positions = torch.tensor([0, 5000, 12345, 21903])
    assert rel_error(out[:, positions], tokens, indices, grid, positions=positions) <= REL_TOL


# ---------------------------------------------------------------------------------------------- gradients, errors
def test_gradient_matches_finite_differences():
    tokens, indices = random_selection(2, (5, 6), 7, 3, seed=8)
    tokens = tokens.double().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: spread_to_grid(t, indices, (5, 6)), (tokens,))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda t, i: spread_to_grid(t[0], i, (4, 4)), "tokens` must have shape"),
        (lambda t, i: spread_to_grid(t, i[:, :2], (4, 4)), "indices` must have shape"),
        (lambda t, i: spread_to_grid(t, i.float(), (4, 4)), "integer tensor"),
        (lambda t, i: spread_to_grid(t[:, :0], i[:, :0], (4, 4)), "at least one selected token"),
        (lambda t, i: spread_to_grid(t, i, (4, 0)), "two positive ints"),
        (lambda t, i: spread_to_grid(t, i, (4,)), "two positive ints"),
        (lambda t, i: spread_to_grid(t, i, (4, 4), num_neighbors=0), "num_neighbors` must be a positive int"),
        (lambda t, i: spread_to_grid(t, i, (4, 4), chunk_elements=0), "chunk_elements` must be a positive int"),
        (lambda t, i: spread_to_grid(t, i, (2, 2)), "row-major positions in \\[0, 4\\)"),
        (lambda t, i: spread_to_grid(t, -i - 1, (4, 4)), "row-major positions in \\[0, 16\\)"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, message):
    tokens = torch.randn(2, 3, 4)
    indices = torch.tensor([[0, 5, 15], [3, 9, 12]])
    with pytest.raises(ValueError, match=message):
        call(tokens, indices)


def test_the_model_skips_the_host_side_index_check_for_its_own_top_k(monkeypatch):
    """The range check reads min/max back to the host (a device sync); the forward's own top-k indices skip it, while
    the public function and `LookWhereModel.spread` keep it by default."""
    from conftest import make_tiny_config

    from lookwhere_hf import LookWhereModel
    from lookwhere_hf.models.lookwhere import dense_spreading, modeling_lookwhere

    seen = []

    def recording_spread(*args, **kwargs):
        seen.append(kwargs.get("check_indices", True))
        return dense_spreading.spread_to_grid(*args, **kwargs)

    monkeypatch.setattr(modeling_lookwhere, "spread_to_grid", recording_spread)
    model = LookWhereModel(make_tiny_config()).eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 112, 112), output_dense_features=True)
    assert seen == [False]
    with pytest.raises(ValueError, match="row-major positions"):
        model.spread(torch.randn(1, 2, 32), torch.tensor([[0, 64]]), (8, 8))
