"""Retrieval metrics for person re-identification: mAP, CMC and mINP (Market-1501 protocol), and distances.

Everything runs in torch on the device of the distance matrix, in chunks of queries, so the same code
serves a CPU test of ten images and a Market-1501 evaluation on a GPU.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from study.errors import UserError, unknown

METRICS = ("euclidean", "cosine")
# Bytes of working memory per (query, gallery) element in one chunk of rank_metrics: the sort's values
# and int64 indices, the int32 ranks and a few boolean masks.
_BYTES_PER_ELEMENT = 24
_CHUNK_BUDGET_BYTES = 256 * 2**20


def pairwise_distance(
    query_features: torch.Tensor, gallery_features: torch.Tensor, metric: str = "euclidean"
) -> torch.Tensor:
    """Distances [Q, G] between L2-normalised features, float32 on the features' device; smaller = closer.

    The features are L2-normalised here (a no-op for extract_features output). "euclidean" is the
    squared Euclidean distance ``2 - 2 q.g`` of the normalised features, "cosine" is ``1 - q.g``:
    the same ranking, the Euclidean one on the scale k-reciprocal re-ranking expects.

    >>> pairwise_distance(torch.eye(2), torch.tensor([[1.0, 0.0]])).tolist()
    [[0.0], [2.0]]
    """
    if metric not in METRICS:
        raise unknown("distance", metric, METRICS)
    if query_features.ndim != 2 or gallery_features.ndim != 2:
        shapes = f"{tuple(query_features.shape)} and {tuple(gallery_features.shape)}"
        raise ValueError(f"features must be 2-D [N, D], got {shapes}")
    if query_features.shape[1] != gallery_features.shape[1]:
        sizes = f"{query_features.shape[1]} vs {gallery_features.shape[1]}"
        raise ValueError(f"query and gallery feature sizes differ: {sizes}")
    query = F.normalize(query_features.float(), dim=1)
    gallery = F.normalize(gallery_features.float().to(query.device), dim=1)
    # One [Q, G] output, updated in place: no second matrix of that size.
    dist = query @ gallery.T
    if metric == "euclidean":
        return dist.mul_(-2).add_(2).clamp_(min=0)
    return dist.neg_().add_(1).clamp_(min=0)


def rank_metrics(
    dist: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    max_rank: int = 50,
    chunk_size: int | None = None,
) -> dict[str, Any]:
    """mAP, CMC[max_rank], mINP under the Market-1501 protocol; inputs are numpy arrays or torch tensors.

    For each query, gallery images with the query's pid and camid ("junk") and gallery images with
    pid -1 are removed; pid 0 (distractors) stays as a negative. Queries with no true match left are
    skipped and counted. Ranking is a stable sort by distance, so ties go to the lower gallery index.
    AP is the mean precision at each true match; CMC[k-1] is the fraction of valid queries with a
    true match in the top k; INP is (number of true matches) / (rank of the last one). CMC has
    ``max_rank`` entries even when the gallery is smaller: later entries repeat the last rank's value.

    >>> m = rank_metrics([[0.1, 0.2, 0.3]], [1], [1, 2, 1], [0], [1, 1, 1], max_rank=3)
    >>> round(m["mAP"], 4), m["cmc"].tolist(), round(m["mINP"], 4)
    (0.8333, [1.0, 1.0, 1.0], 0.6667)
    """
    dist = torch.as_tensor(dist)
    if not dist.is_floating_point():
        dist = dist.double()
    device = dist.device
    q_pids, g_pids, q_camids, g_camids = (
        torch.as_tensor(x).to(device=device, dtype=torch.int64) for x in (q_pids, g_pids, q_camids, g_camids)
    )
    _check_shapes(dist, q_pids, g_pids, q_camids, g_camids)
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    num_q, num_g = dist.shape
    if chunk_size is None:
        chunk_size = max(1, _CHUNK_BUDGET_BYTES // (_BYTES_PER_ELEMENT * max(num_g, 1)))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    ap_sum = torch.zeros((), dtype=torch.float64, device=device)
    inp_sum = torch.zeros((), dtype=torch.float64, device=device)
    # first_hits[r] counts valid queries whose first true match is at rank r+1; the last slot is "later".
    first_hits = torch.zeros(max_rank + 1, dtype=torch.int64, device=device)
    valid = 0
    for start in range(0, num_q, chunk_size):
        rows = slice(start, start + chunk_size)
        ap, inp, first = _chunk_metrics(dist[rows], q_pids[rows], q_camids[rows], g_pids, g_camids)
        ap_sum += ap.sum()
        inp_sum += inp.sum()
        first_hits += torch.bincount((first - 1).clamp(max=max_rank), minlength=max_rank + 1)
        valid += first.numel()

    if valid == 0:
        raise UserError(
            f"no query has a true match in the gallery once junk (same identity and camera, or identity -1)"
            f" is removed: all {num_q} queries skipped"
        )
    cmc = first_hits[:max_rank].cumsum(0).double() / valid
    return {
        "mAP": float(ap_sum) / valid,
        "cmc": cmc.cpu().numpy(),
        "mINP": float(inp_sum) / valid,
        "num_valid_queries": valid,
        "num_skipped_queries": num_q - valid,
    }


def _check_shapes(dist, q_pids, g_pids, q_camids, g_camids) -> None:
    if dist.ndim != 2:
        raise ValueError(f"dist must be a 2-D [queries, gallery] matrix, got shape {tuple(dist.shape)}")
    num_q, num_g = dist.shape
    for name, ids, size in (
        ("q_pids", q_pids, num_q),
        ("q_camids", q_camids, num_q),
        ("g_pids", g_pids, num_g),
        ("g_camids", g_camids, num_g),
    ):
        if ids.shape != (size,):
            raise ValueError(
                f"{name} must have shape ({size},) to match dist {tuple(dist.shape)}, got {tuple(ids.shape)}"
            )


def _chunk_metrics(
    dist: torch.Tensor,
    q_pids: torch.Tensor,
    q_camids: torch.Tensor,
    g_pids: torch.Tensor,
    g_camids: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """AP, INP and first-match rank (1-based) of the valid queries of one chunk."""
    same_pid = g_pids == q_pids[:, None]
    keep = (g_pids != -1) & ~(same_pid & (g_camids == q_camids[:, None]))
    # Masks are built in gallery order and only the booleans are permuted: cheaper than gathering ids.
    order = torch.sort(dist, dim=1, stable=True).indices
    match = (same_pid & keep).gather(1, order)
    keep = keep.gather(1, order)
    del same_pid, order
    # Rank of each gallery image among the kept ones (1-based); read only where match is true.
    rank = keep.cumsum(1, dtype=torch.int32)
    counts = match.sum(1)
    rows, cols = match.nonzero(as_tuple=True)
    match_rank = rank[rows, cols].double()
    # The matches come out row by row in rank order: the j-th match of a row has precision j / rank.
    ends = counts.cumsum(0)
    starts = ends - counts
    ordinal = torch.arange(rows.numel(), device=dist.device) - starts.repeat_interleave(counts) + 1
    precision_sums = _segment_sums(ordinal / match_rank, starts, ends)

    valid = counts > 0
    counts, starts, ends = counts[valid], starts[valid], ends[valid]
    ap = precision_sums[valid] / counts
    inp = counts / match_rank[ends - 1]
    first = match_rank[starts].long()
    return ap, inp, first


def _segment_sums(values: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    # Differences of a running sum: deterministic on every device, unlike scatter-add on CUDA.
    running = torch.cat([values.new_zeros(1), values.cumsum(0)])
    return running[ends] - running[starts]
