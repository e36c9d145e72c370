"""Dense spreading: fill every high-resolution patch position from the extractor's k selected tokens.

Each grid position takes the inverse-distance weighted mean of the tokens of its K nearest selected positions
(Euclidean distance in grid units, weights `1 / (d + 1e-8)` normalized to sum to one), so a selected position keeps
its own token up to ~1e-8. The grid is processed in chunks of rows so that the extra memory stays bounded as the
resolution grows: no `(grid_h * grid_w) x k` tensor is built for large grids, and the weighted sum is one
`embedding_bag` over the `k` tokens, so the `(grid_h * grid_w) x K x D` neighbour tokens are never materialized.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SPREAD_EPS = 1e-8
# Upper bound on the elements of one chunk's (batch, positions, k) distance tensor.
_MAX_CHUNK_ELEMENTS = 1 << 22


def grid_coordinates(indices: torch.Tensor, grid_w: int) -> torch.Tensor:
    """Row-major patch indices `(...)` -> float `(row, col)` coordinates `(..., 2)`."""
    return torch.stack((torch.div(indices, grid_w, rounding_mode="floor"), indices % grid_w), dim=-1).float()


def spread_to_grid(
    tokens: torch.Tensor,
    indices: torch.Tensor,
    grid: tuple[int, int],
    num_neighbors: int = 5,
    chunk_elements: int = _MAX_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """Spread `k` tokens at selected grid positions to the full grid by K-nearest inverse-distance weighting.

    Args:
        tokens (`torch.Tensor` of shape `(batch_size, k, hidden_size)`): the extractor's output patch tokens.
        indices (`torch.LongTensor` of shape `(batch_size, k)`): their row-major positions on the grid.
        grid (`tuple[int, int]`): `(grid_h, grid_w)`.
        num_neighbors (`int`): K, the number of nearest selected positions averaged (capped at k).
        chunk_elements (`int`): bound on the elements of the per-chunk distance tensor.

    Returns:
        `torch.Tensor` of shape `(batch_size, grid_h * grid_w, hidden_size)`, row-major.
    """
    batch_size, k, hidden = tokens.shape
    grid_h, grid_w = grid
    num_positions = grid_h * grid_w
    neighbors = min(num_neighbors, k)
    source = grid_coordinates(indices, grid_w)  # (B, k, 2)
    flat_tokens = tokens.reshape(batch_size * k, hidden)
    row_offset = (torch.arange(batch_size, device=tokens.device) * k).view(batch_size, 1, 1)

    chunk = max(1, min(num_positions, chunk_elements // max(1, batch_size * k)))
    near_idx = torch.empty(batch_size, num_positions, neighbors, dtype=torch.long, device=tokens.device)
    weights = torch.empty(batch_size, num_positions, neighbors, dtype=torch.float32, device=tokens.device)
    for start in range(0, num_positions, chunk):
        stop = min(start + chunk, num_positions)
        positions = torch.arange(start, stop, device=tokens.device)
        target = grid_coordinates(positions, grid_w)  # (c, 2)
        dist = torch.cdist(
            target.unsqueeze(0).expand(batch_size, -1, -1), source, compute_mode="donot_use_mm_for_euclid_dist"
        )  # (B, c, k), exact for integer coordinates
        near_dist, near = torch.topk(dist, neighbors, dim=-1, largest=False, sorted=False)  # (B, c, K)
        inverse = 1.0 / (near_dist + SPREAD_EPS)
        weights[:, start:stop] = inverse / inverse.sum(dim=-1, keepdim=True)
        near_idx[:, start:stop] = near + row_offset
    # One weighted bag-sum over the flat (B * k, D) token table: no (B, positions, K, D) gather is materialized.
    out = F.embedding_bag(
        near_idx.reshape(-1, neighbors),
        flat_tokens,
        per_sample_weights=weights.reshape(-1, neighbors).to(flat_tokens.dtype),
        mode="sum",
    )
    return out.reshape(batch_size, num_positions, hidden)
