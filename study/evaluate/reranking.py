"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017), written from the paper's description.

Queries and gallery form one set of N samples. For each sample p:
1. N(p, k): p and its k nearest neighbours. R(p, k) = {g in N(p, k) : p in N(g, k)}, the k-reciprocal set.
2. R*(p) = R(p, k1), enlarged by R(q, k1 // 2) of each q in R(p, k1) that shares at least 2/3 of its
   members with R(p, k1) (so true matches hidden by pose or viewpoint come back).
3. V_p weights every g in R*(p) by exp(-d(p, g)); V_p is L1-normalised (a distribution over the
   neighbourhood, so that crowded and sparse neighbourhoods compare on one scale).
4. Local query expansion: V_p becomes the mean of V_g over p's k2 nearest samples, p included.
5. Jaccard distance d_J(p, g) = 1 - sum_i min(V_pi, V_gi) / sum_i max(V_pi, V_gi), computed through
   an inverted index because every V_p is sparse.
The result is (1 - lambda) d_J + lambda d, where d is the original distance divided by the largest
distance in the query's row over all samples. Ties in the neighbour rankings go to the lower index
(queries first, then gallery).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse

# Rows of the joint N x N distance matrix handled at once when ranking neighbours.
_ROW_CHUNK = 512


def k_reciprocal_rerank(
    q_g_dist: np.ndarray,
    q_q_dist: np.ndarray,
    g_g_dist: np.ndarray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> np.ndarray:
    """Re-ranked query-gallery distances [Q, G] (float32) from the q-g, q-q and g-g distance matrices.

    Distances must be non-negative and symmetric within each set, such as the squared Euclidean
    distances of study.evaluate.metrics.pairwise_distance.

    Use: ``dist = k_reciprocal_rerank(q_g, q_q, g_g)``, then ``rank_metrics(dist, ...)``.
    """
    q_g, q_q, g_g = (np.asarray(d, dtype=np.float32) for d in (q_g_dist, q_q_dist, g_g_dist))
    _check_arguments(q_g, q_q, g_g, k1, k2, lambda_value)
    joint = _JointDistance(q_g, q_q, g_g)
    # Ranking k1 + 1 deep covers N(p, k1) and N(p, k2 - 1); never deeper than the whole set.
    depth = min(max(k1, k2 - 1) + 1, joint.size)
    neighbours = joint.nearest(depth)
    expanded = [_expanded_reciprocal_set(p, neighbours, k1) for p in range(joint.size)]
    weights = _neighbourhood_weights(joint, expanded)
    weights = _query_expansion(neighbours[:, :k2]) @ weights
    jaccard = _jaccard_distance(weights.tocsr(), num_queries=q_g.shape[0])
    original = joint.normalised_query_gallery()
    return ((1 - lambda_value) * jaccard + lambda_value * original).astype(np.float32)


def _check_arguments(q_g, q_q, g_g, k1, k2, lambda_value) -> None:
    num_q, num_g = q_g.shape if q_g.ndim == 2 else (None, None)
    if q_g.ndim != 2 or q_q.shape != (num_q, num_q) or g_g.shape != (num_g, num_g):
        raise ValueError(
            f"expected q_g [Q, G], q_q [Q, Q], g_g [G, G]; got {q_g.shape}, {q_q.shape}, {g_g.shape}"
        )
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    if not 0 <= lambda_value <= 1:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")


class _JointDistance:
    """The (Q + G) x (Q + G) distance matrix of queries then gallery, assembled a block of rows at a time."""

    def __init__(self, q_g: np.ndarray, q_q: np.ndarray, g_g: np.ndarray):
        self.q_g, self.q_q, self.g_g = q_g, q_q, g_g
        self.num_q = q_q.shape[0]
        self.size = self.num_q + g_g.shape[0]
        self.row_max = np.concatenate(
            [
                np.maximum(q_q.max(1, initial=0), q_g.max(1, initial=0)),
                np.maximum(q_g.max(0, initial=0), g_g.max(1, initial=0)),
            ]
        )
        self.row_max[self.row_max == 0] = 1  # a row of zeros stays zeros

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows start..stop-1, each divided by its largest value."""
        nq = self.num_q
        parts = []
        if start < nq:
            parts.append(np.hstack([self.q_q[start : min(stop, nq)], self.q_g[start : min(stop, nq)]]))
        if stop > nq:
            g_rows = slice(max(start - nq, 0), stop - nq)
            parts.append(np.hstack([self.q_g[:, g_rows].T, self.g_g[g_rows]]))
        return np.vstack(parts) / self.row_max[start:stop, None]

    def nearest(self, depth: int) -> np.ndarray:
        """[N, depth] indices of each sample's nearest samples, nearest first (usually itself)."""
        out = np.empty((self.size, depth), dtype=np.int64)
        for start in range(0, self.size, _ROW_CHUNK):
            stop = min(start + _ROW_CHUNK, self.size)
            out[start:stop] = np.argsort(self.rows(start, stop), axis=1, kind="stable")[:, :depth]
        return out

    def normalised_query_gallery(self) -> np.ndarray:
        """The query-gallery block, each query's row divided by its largest distance to any sample."""
        return self.q_g / self.row_max[: self.num_q, None]


def _reciprocal_set(p: int, neighbours: np.ndarray, k: int) -> np.ndarray:
    """R(p, k): members of N(p, k) that have p in their own N(., k)."""
    candidates = neighbours[p, : k + 1]
    return candidates[(neighbours[candidates, : k + 1] == p).any(1)]


def _expanded_reciprocal_set(p: int, neighbours: np.ndarray, k1: int) -> np.ndarray:
    """R*(p): R(p, k1) plus the half-size reciprocal sets that mostly lie inside it."""
    core = _reciprocal_set(p, neighbours, k1)
    members = [core]
    for q in core:
        candidate = _reciprocal_set(q, neighbours, k1 // 2)
        if len(np.intersect1d(candidate, core)) >= 2 / 3 * len(candidate):
            members.append(candidate)
    return np.unique(np.concatenate(members))


def _neighbourhood_weights(joint: _JointDistance, expanded: list[np.ndarray]) -> scipy.sparse.csr_matrix:
    """Sparse [N, N] V: exp(-d(p, g)) over R*(p), each row summing to 1."""
    data, indices, indptr = [], [], [0]
    for start in range(0, joint.size, _ROW_CHUNK):
        stop = min(start + _ROW_CHUNK, joint.size)
        rows = joint.rows(start, stop)
        for p in range(start, stop):
            members = expanded[p]
            weight = np.exp(-rows[p - start, members])
            data.append(weight / weight.sum() if weight.size else weight)
            indices.append(members)
            indptr.append(indptr[-1] + members.size)
    return scipy.sparse.csr_matrix(
        (np.concatenate(data), np.concatenate(indices), np.array(indptr)), shape=(joint.size, joint.size)
    )


def _query_expansion(nearest: np.ndarray) -> scipy.sparse.csr_matrix:
    """Sparse [N, N] averaging operator: row p holds 1/k2 at each of p's k2 nearest samples."""
    size, k2 = nearest.shape
    rows = np.repeat(np.arange(size), k2)
    return scipy.sparse.csr_matrix((np.full(size * k2, 1 / k2), (rows, nearest.ravel())), shape=(size, size))


def _jaccard_distance(weights: scipy.sparse.csr_matrix, num_queries: int) -> np.ndarray:
    """[Q, G] generalised Jaccard distance between query rows and gallery rows of ``weights``."""
    queries = weights[:num_queries]
    # Inverted index: for each neighbourhood member, the gallery samples whose V includes it.
    gallery = weights[num_queries:].tocsc()
    num_g = gallery.shape[0]
    totals = np.asarray(weights.sum(1)).ravel()
    out = np.empty((num_queries, num_g), dtype=np.float32)
    for p in range(num_queries):
        members = queries.indices[queries.indptr[p] : queries.indptr[p + 1]]
        values = queries.data[queries.indptr[p] : queries.indptr[p + 1]]
        starts, stops = gallery.indptr[members], gallery.indptr[members + 1]
        positions = _concatenated_ranges(starts, stops)
        query_values = np.repeat(values, stops - starts)
        overlap = np.bincount(
            gallery.indices[positions],
            weights=np.minimum(query_values, gallery.data[positions]),
            minlength=num_g,
        )
        union = totals[p] + totals[num_queries:] - overlap
        similarity = np.divide(overlap, union, out=np.zeros(num_g), where=union > 0)
        out[p] = 1 - np.minimum(similarity, 1)  # rounding can lift identical neighbourhoods above 1
    return out


def _concatenated_ranges(starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """np.concatenate([np.arange(a, b) for a, b in zip(starts, stops)]), without the Python loop."""
    lengths = stops - starts
    offsets = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
    return np.arange(lengths.sum()) + offsets
