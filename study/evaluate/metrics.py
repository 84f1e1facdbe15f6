"""Retrieval metrics for person re-identification: mAP, CMC and mINP (Market-1501 protocol), and distances.

Everything runs in torch on the device of the distance matrix, in chunks of queries, so the same code
serves a CPU test of ten images and a Market-1501 evaluation on a GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from study.errors import UserError, unknown

DISTANCES = ("euclidean", "cosine")
# Bytes of working memory per (query, gallery) element in one chunk of rank_metrics, at worst: two
# boolean masks, and for every image ranked before a query's last true match its flat index, row,
# column, value, key and bin.
_BYTES_PER_ELEMENT = 48
_CHUNK_BUDGET_BYTES = 256 * 2**20
# The counting path packs (row, distance, gallery index) into one int64 key.
_KEY_BITS = 63


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
    if metric not in DISTANCES:
        raise unknown("distance", metric, DISTANCES)
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
    skipped and counted. Ranking is a stable sort by distance, so ties go to the lower gallery index
    (NaN ranks after every number, as in torch.sort).
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
    elif dist.element_size() < 4:
        dist = dist.float()  # exact: float16 and bfloat16 values are float32 values
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
    gallery = _Gallery(g_pids, g_camids)
    for start in range(0, num_q, chunk_size):
        rows = slice(start, start + chunk_size)
        ap, inp, first = _chunk_metrics(dist[rows].contiguous(), q_pids[rows], q_camids[rows], gallery)
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


class _Gallery:
    """Gallery identities and cameras, with the images grouped by identity (ascending index in a group)."""

    def __init__(self, pids: torch.Tensor, camids: torch.Tensor):
        self.pids = pids
        self.camids = camids
        self.sorted_pids, self.by_pid = torch.sort(pids, stable=True)
        self.counted = pids != -1


def _chunk_metrics(
    dist: torch.Tensor, q_pids: torch.Tensor, q_camids: torch.Tensor, gallery: _Gallery
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """AP, INP and first-match rank (1-based) of the valid queries of one chunk."""
    ranked = _match_ranks_by_count(dist, q_pids, q_camids, gallery)
    if ranked is None:
        ranked = _match_ranks_by_sort(dist, q_pids, q_camids, gallery)
    match_rank, counts = ranked
    # The j-th match of a row (in rank order) has precision j / rank.
    ends = counts.cumsum(0)
    starts = ends - counts
    ordinal = torch.arange(match_rank.numel(), device=dist.device) - starts.repeat_interleave(counts) + 1
    precision_sums = _segment_sums(ordinal / match_rank, starts, ends)

    valid = counts > 0
    counts, starts, ends = counts[valid], starts[valid], ends[valid]
    ap = precision_sums[valid] / counts
    inp = counts / match_rank[ends - 1]
    first = match_rank[starts].long()
    return ap, inp, first


def _match_ranks_by_count(
    dist: torch.Tensor, q_pids: torch.Tensor, q_camids: torch.Tensor, gallery: _Gallery
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Ranks of the true matches without sorting rows: (float64 ranks row by row in rank order, counts).

    The rank of a true match m among the kept images is 1 + #{kept g : (d_g, g) < (d_m, m)}: only the
    images up to a query's last match matter, and each of those is placed among its query's few
    matches by a binary search on int64 keys (row, distance, index). None when a match distance is
    NaN or the keys do not fit in 63 bits; the sort then decides.
    """
    num_q, num_g = dist.shape
    rows, cols = _same_identity_pairs(q_pids, gallery)
    same_camera = gallery.camids[cols] == q_camids[rows]
    counted = q_pids[rows] != -1
    match_rows, match_cols = rows[counted & ~same_camera], cols[counted & ~same_camera]
    junk_rows, junk_cols = rows[counted & same_camera], cols[counted & same_camera]
    del rows, cols, same_camera, counted
    counts = torch.bincount(match_rows, minlength=num_q)
    match_dist = dist[match_rows, match_cols]
    if match_dist.numel() == 0:
        return match_dist.double(), counts
    if bool(torch.isnan(match_dist).any()):
        return None
    value_keys, value_bits = _value_keys(match_dist)
    index_bits = max(num_g - 1, 1).bit_length()
    if max(num_q - 1, 1).bit_length() + value_bits + index_bits > _KEY_BITS:
        return None

    def keys(rows: torch.Tensor, values: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        key = value_keys(values)
        key <<= index_bits
        key |= cols
        key |= rows << (value_bits + index_bits)
        return key

    # Kept images up to each query's last match (a query without a match has a NaN limit: none).
    limit = torch.full((num_q,), float("nan"), dtype=dist.dtype, device=dist.device)
    limit.scatter_reduce_(0, match_rows, match_dist, "amax", include_self=False)
    near = dist <= limit[:, None]
    near &= gallery.counted
    flat = near.view(-1).nonzero().squeeze(1)
    del near
    near_rows = flat // num_g
    near_values = dist.view(-1)[flat]
    near_cols = flat.sub_(near_rows * num_g)
    near_keys = keys(near_rows, near_values, near_cols)
    del near_values, near_cols

    # Bin of an image: how many matches of the chunk have a key <= its own, plus its row, so that every
    # row has its own bins: first_bin[q] (before its first match) .. first_bin[q] + counts[q].
    match_keys = torch.sort(keys(match_rows, match_dist, match_cols)).values
    size = match_keys.numel() + num_q
    bins = torch.searchsorted(match_keys, near_keys, right=True).add_(near_rows)
    del near_keys, near_rows
    per_bin = torch.bincount(bins, minlength=size)
    # Same identity and camera: junk, counted above when near, so taken out again.
    junk_dist = dist[junk_rows, junk_cols]
    junk = junk_dist <= limit[junk_rows]
    junk_rows, junk_cols = junk_rows[junk], junk_cols[junk]
    junk_bins = torch.searchsorted(match_keys, keys(junk_rows, junk_dist[junk], junk_cols), right=True)
    per_bin -= torch.bincount(junk_bins.add_(junk_rows), minlength=size)
    before = torch.cat([per_bin.new_zeros(1), per_bin.cumsum(0)])  # before[b]: kept images in bins < b

    ends = counts.cumsum(0)
    first_bin = ends - counts + torch.arange(num_q, device=dist.device)
    row = torch.repeat_interleave(torch.arange(num_q, device=dist.device), counts)
    # The k-th match (sorted) of row q is preceded by bins first_bin[q] .. k + q.
    k = torch.arange(match_keys.numel(), device=dist.device)
    match_rank = before[k + row + 1] - before[first_bin[row]] + 1
    return match_rank.double(), counts


def _value_keys(match_dist: torch.Tensor) -> tuple[Callable[[torch.Tensor], torch.Tensor], int]:
    """(function giving int64 keys >= 0 of distances, key bits): keys order and tie as the distances do,
    at least against the match distances of the chunk (the only comparisons the counting makes)."""
    if match_dist.dtype == torch.float32:

        def float32_keys(values: torch.Tensor) -> torch.Tensor:
            # The bit pattern of a float32 orders like its value once negatives are mirrored (-0.0 -> 0).
            bits = values.view(torch.int32)
            return torch.where(bits < 0, -(bits & 0x7FFFFFFF), bits).long() + (2**31 - 1)

        return float32_keys, 32
    # Other floats: 2i + 1 for the i-th distinct match distance, 2i for the values between it and the
    # previous one; exact against every match distance, which is all the counting compares.
    distinct = torch.unique(match_dist)

    def position_keys(values: torch.Tensor) -> torch.Tensor:
        position = torch.searchsorted(distinct, values)
        equal = distinct[position.clamp(max=distinct.numel() - 1)] == values
        return position.mul_(2).add_(equal)

    return position_keys, (2 * distinct.numel()).bit_length()


def _same_identity_pairs(q_pids: torch.Tensor, gallery: _Gallery) -> tuple[torch.Tensor, torch.Tensor]:
    """(query row, gallery index) of each gallery image with the query's identity, by row then index."""
    low = torch.searchsorted(gallery.sorted_pids, q_pids)
    counts = torch.searchsorted(gallery.sorted_pids, q_pids, right=True) - low
    rows = torch.repeat_interleave(torch.arange(len(q_pids), device=q_pids.device), counts)
    offset = torch.arange(rows.numel(), device=q_pids.device) - (counts.cumsum(0) - counts - low)[rows]
    return rows, gallery.by_pid[offset]


def _match_ranks_by_sort(
    dist: torch.Tensor, q_pids: torch.Tensor, q_camids: torch.Tensor, gallery: _Gallery
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ranks of _match_ranks_by_count from a stable sort of every row (handles NaN, any size)."""
    same_pid = gallery.pids == q_pids[:, None]
    keep = gallery.counted & ~(same_pid & (gallery.camids == q_camids[:, None]))
    # Masks are built in gallery order and only the booleans are permuted: cheaper than gathering ids.
    order = torch.sort(dist, dim=1, stable=True).indices
    match = (same_pid & keep).gather(1, order)
    keep = keep.gather(1, order)
    del same_pid, order
    # Rank of each gallery image among the kept ones (1-based); read only where match is true.
    rank = keep.cumsum(1, dtype=torch.int32)
    rows, cols = match.nonzero(as_tuple=True)
    return rank[rows, cols].double(), match.sum(1)


def _segment_sums(values: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    # Differences of a running sum: deterministic on every device, unlike scatter-add on CUDA.
    running = torch.cat([values.new_zeros(1), values.cumsum(0)])
    return running[ends] - running[starts]
