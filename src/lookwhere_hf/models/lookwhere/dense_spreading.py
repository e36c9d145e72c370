"""Dense spreading: fill every high-resolution patch position from the extractor's k selected tokens.

Each grid position takes the inverse-distance weighted mean of the tokens of its K nearest selected positions
(Euclidean distance in grid units, weights `1 / (d + 1e-8)` normalized to sum to one), so a selected position keeps
its own token up to ~1e-8.

Tie rule. Grid distances tie often (at 518 px with k = 136 about a quarter of the positions have two selected patches
at the same distance across the K-th place), so which patch is "the K-th nearest" must be defined: **among selected
positions at the same distance, the one that comes earlier in `indices` wins**. `indices` come from the selector in
order of descending score, so a tie goes to the higher-scored patch. This is the rule the released weights were
pretrained with (the JAX pretraining sorted the distances with a stable sort over the score-ordered selection); the
official PyTorch inference uses an unstable `argsort`, whose choice among ties is implementation-defined.

How it is computed exactly. Grid coordinates are integers, so squared distances `d2` are exact integers, and the key
`d2 * k + rank` (`rank` = position in `indices`) orders the selected positions by distance and then by rank with no
two keys equal. The K smallest keys are therefore the K nearest neighbours under the tie rule, whatever the top-k
kernel does with ties. Keys are float32 while they stay below 2**24 (exact; every grid up to 1036 px with k <= 10%),
int64 beyond. The key of a block of positions is one broadcast add of a per-row and a per-column table.

Memory stays bounded as the resolution grows: the grid is processed in blocks of rows (of columns when one row is too
large) whose `(batch, positions, k)` key tensor stays under a budget, so no `(grid_h * grid_w) x k` tensor is built
for large grids, and the weighted sum is one `embedding_bag` over the `k` tokens, so the `(positions, K, D)` neighbour
tokens are never materialized.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SPREAD_EPS = 1e-8
# Upper bound on the elements of one block's (batch, positions, k) key tensor: 4 MiB of float32 keys, so that a block
# stays in cache between the add that builds it and the top-k that reads it, in few enough blocks that the per-block
# overhead stays small.
_MAX_CHUNK_ELEMENTS = 1 << 20
# Integers below 2**24 are exact in float32.
_FLOAT32_EXACT_LIMIT = 1 << 24


def _check_spread_inputs(
    tokens: torch.Tensor,
    indices: torch.Tensor,
    grid: tuple[int, int],
    num_neighbors: int,
    chunk_elements: int,
    check_indices: bool,
) -> None:
    if tokens.ndim != 3:
        raise ValueError(f"`tokens` must have shape (batch_size, k, hidden_size), got {tuple(tokens.shape)}.")
    if tuple(indices.shape) != tuple(tokens.shape[:2]):
        raise ValueError(
            f"`indices` must have shape (batch_size, k) = {tuple(tokens.shape[:2])} to match `tokens`, got "
            f"{tuple(indices.shape)}. Pass the row-major grid position of every token."
        )
    if indices.dtype.is_floating_point or indices.dtype == torch.bool:
        raise ValueError(f"`indices` must be an integer tensor of grid positions, got dtype {indices.dtype}.")
    if tokens.shape[1] < 1:
        raise ValueError("Dense spreading needs at least one selected token (k >= 1); got k = 0.")
    if len(grid) != 2 or any(not isinstance(n, (int, torch.SymInt)) or n < 1 for n in grid):
        raise ValueError(f"`grid` must be two positive ints (grid_h, grid_w), got {grid!r}.")
    for name, value in (("num_neighbors", num_neighbors), ("chunk_elements", chunk_elements)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    if check_indices and not torch.compiler.is_compiling() and indices.numel() > 0:
        low, high = int(indices.min()), int(indices.max())
        if low < 0 or high >= grid[0] * grid[1]:
            raise ValueError(
                f"`indices` must be row-major positions in [0, {grid[0] * grid[1]}) of the {grid[0]}x{grid[1]} grid, "
                f"got values in [{low}, {high}]. Check that `grid` is the grid the indices were selected on."
            )


def spread_to_grid(
    tokens: torch.Tensor,
    indices: torch.Tensor,
    grid: tuple[int, int],
    num_neighbors: int = 5,
    chunk_elements: int = _MAX_CHUNK_ELEMENTS,
    check_indices: bool = True,
) -> torch.Tensor:
    """Spread `k` tokens at selected grid positions to the full grid by K-nearest inverse-distance weighting.

    Position `p` gets `sum_j w_j * tokens[:, j]` over its K nearest selected positions `j`, with `d_j` the Euclidean
    distance in grid units and `w_j = (1 / (d_j + 1e-8)) / sum_i (1 / (d_i + 1e-8))`.

    Tie rule: selected positions at equal distance are ranked by their order in `indices`; the earlier one is nearer.
    With `indices` sorted by descending selector score (as [`select_top_k`] returns them), a tie at the K-th place
    goes to the higher-scored patch, exactly as a stable sort of the distances over the score-ordered selection (the
    rule of the LookWhere pretraining). The result is deterministic on every device and thread count.

    Args:
        tokens (`torch.Tensor` of shape `(batch_size, k, hidden_size)`): the extractor's output patch tokens.
        indices (`torch.LongTensor` of shape `(batch_size, k)`): their row-major positions on the grid, in rank order
            (descending selector score); the order decides ties.
        grid (`tuple[int, int]`): `(grid_h, grid_w)`.
        num_neighbors (`int`): K, the number of nearest selected positions averaged (capped at k).
        chunk_elements (`int`): bound on the elements of the per-block `(batch_size, positions, k)` key tensor (a
            block holds at least one position).
        check_indices (`bool`): check that every index lies on the grid. The check reads the indices' min and max
            back to the host, a device synchronisation on accelerators; the model passes `False` for the indices its
            own top-k produced, which lie on the grid by construction.

    Returns:
        `torch.Tensor` of shape `(batch_size, grid_h * grid_w, hidden_size)`, row-major, in the dtype of `tokens`.
    """
    _check_spread_inputs(tokens, indices, grid, num_neighbors, chunk_elements, check_indices)
    batch_size, k, hidden = tokens.shape
    grid_h, grid_w = grid
    neighbors = min(num_neighbors, k)
    device = tokens.device

    max_key = ((grid_h - 1) ** 2 + (grid_w - 1) ** 2) * k + k - 1
    key_dtype = torch.float32 if max_key < _FLOAT32_EXACT_LIMIT else torch.int64
    indices = indices.long()
    source_row = torch.div(indices, grid_w, rounding_mode="floor").unsqueeze(1)  # (B, 1, k)
    source_col = (indices % grid_w).unsqueeze(1)
    rank = torch.arange(k, device=device)
    # key(p, j) = d2(p, j) * k + j = row_key[row(p), j] + col_key[col(p), j]; exact integers in `key_dtype`.
    row_key = ((torch.arange(grid_h, device=device).view(1, -1, 1) - source_row) ** 2 * k).to(key_dtype)  # (B, gh, k)
    col_key = ((torch.arange(grid_w, device=device).view(1, -1, 1) - source_col) ** 2 * k + rank).to(key_dtype)

    per_position = batch_size * k
    block_cols = max(1, min(grid_w, chunk_elements // per_position))
    block_rows = max(1, chunk_elements // (per_position * grid_w)) if block_cols == grid_w else 1
    near_key = torch.empty(batch_size, grid_h, grid_w, neighbors, dtype=key_dtype, device=device)
    for row in range(0, grid_h, block_rows):
        row_end = min(row + block_rows, grid_h)
        for col in range(0, grid_w, block_cols):
            col_end = min(col + block_cols, grid_w)
            key = row_key[:, row:row_end, None, :] + col_key[:, None, col:col_end, :]  # (B, rows, cols, k)
            # Sorted, so that the bag sum below adds the neighbours in one defined order (nearest first).
            near_key[:, row:row_end, col:col_end] = torch.topk(key, neighbors, dim=-1, largest=False).values

    near_key = near_key.reshape(batch_size, grid_h * grid_w, neighbors).long()
    near_rank = near_key % k
    weight_dtype = torch.promote_types(tokens.dtype, torch.float32)
    distance = torch.div(near_key, k, rounding_mode="floor").to(weight_dtype).sqrt()
    inverse = 1.0 / (distance + SPREAD_EPS)
    weights = inverse / inverse.sum(dim=-1, keepdim=True)
    bag = near_rank + (torch.arange(batch_size, device=device) * k).view(batch_size, 1, 1)
    # One weighted bag-sum over the flat (B * k, D) token table: no (B, positions, K, D) gather is materialized.
    out = F.embedding_bag(
        bag.reshape(-1, neighbors),
        tokens.reshape(batch_size * k, hidden),
        per_sample_weights=weights.reshape(-1, neighbors).to(tokens.dtype),
        mode="sum",
    )
    return out.reshape(batch_size, grid_h * grid_w, hidden)
