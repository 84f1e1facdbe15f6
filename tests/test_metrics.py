"""rank_metrics against hand-computed values and a plain per-query reference; pairwise_distance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from study.errors import UserError
from study.evaluate import metrics
from study.evaluate.metrics import pairwise_distance, rank_metrics


def reference_metrics(dist, q_pids, g_pids, q_camids, g_camids, max_rank):
    """Market-1501 protocol, one query at a time, written for reading rather than speed."""
    aps, inps, first_ranks = [], [], []
    for i in range(len(q_pids)):
        order = sorted(range(len(g_pids)), key=lambda j: (dist[i][j], j))
        ranked = [
            g_pids[j] == q_pids[i]
            for j in order
            if g_pids[j] != -1 and not (g_pids[j] == q_pids[i] and g_camids[j] == q_camids[i])
        ]
        match_ranks = [r + 1 for r, is_match in enumerate(ranked) if is_match]
        if not match_ranks:
            continue
        aps.append(np.mean([(n + 1) / r for n, r in enumerate(match_ranks)]))
        inps.append(len(match_ranks) / match_ranks[-1])
        first_ranks.append(match_ranks[0])
    cmc = np.array([np.mean([f <= k for f in first_ranks]) for k in range(1, max_rank + 1)])
    return {"mAP": np.mean(aps), "cmc": cmc, "mINP": np.mean(inps), "skipped": len(q_pids) - len(aps)}


def random_problem(seed, num_q=23, num_g=61, ids=6, cams=3, ties=False):
    rng = np.random.default_rng(seed)
    q_pids = rng.integers(1, ids + 1, num_q)
    g_pids = rng.integers(-1, ids + 1, num_g)  # -1 (junk) and 0 (distractors) included
    q_cams = rng.integers(0, cams, num_q)
    g_cams = rng.integers(0, cams, num_g)
    dist = rng.integers(0, 5, (num_q, num_g)).astype(np.float64) if ties else rng.random((num_q, num_g))
    return dist, q_pids, g_pids, q_cams, g_cams


def one_query(dist_row, g_pids, g_cams, q_pid=1, q_cam=0, max_rank=5):
    return rank_metrics([dist_row], [q_pid], g_pids, [q_cam], g_cams, max_rank=max_rank)


def assert_same_metrics(got, expected):
    assert got["mAP"] == pytest.approx(expected["mAP"], abs=1e-12)
    assert got["mINP"] == pytest.approx(expected["mINP"], abs=1e-12)
    np.testing.assert_allclose(got["cmc"], expected["cmc"], atol=1e-12)
    skipped = expected["skipped"] if "skipped" in expected else expected["num_skipped_queries"]
    assert got["num_skipped_queries"] == skipped


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("num_g", [61, 9])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])  # two key paths of the counting method
def test_matches_per_query_reference_on_random_problems(seed, ties, num_g, dtype):
    problem = random_problem(seed, num_g=num_g, ties=ties)
    problem = (problem[0].astype(dtype), *problem[1:])
    expected = reference_metrics(*problem, max_rank=20)
    got = rank_metrics(*problem, max_rank=20)
    assert got["mAP"] == pytest.approx(expected["mAP"], abs=1e-12)
    assert got["mINP"] == pytest.approx(expected["mINP"], abs=1e-12)
    np.testing.assert_allclose(got["cmc"], expected["cmc"], atol=1e-12)
    assert got["num_skipped_queries"] == expected["skipped"]
    assert got["num_valid_queries"] + got["num_skipped_queries"] == len(problem[1])


def test_small_random_galleries_do_skip_queries():
    # Guards the test above: its 9-image galleries really exercise skipped queries.
    assert all(
        0 < reference_metrics(*random_problem(s, num_g=9), max_rank=5)["skipped"] < 23 for s in range(6)
    )


def test_match_non_match_match():
    m = one_query([0.1, 0.2, 0.3], g_pids=[1, 2, 1], g_cams=[1, 1, 1], max_rank=3)
    assert m["mAP"] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert m["mINP"] == pytest.approx(2 / 3)
    assert m["cmc"].tolist() == [1.0, 1.0, 1.0]


def test_first_match_at_rank_three():
    # Ranked: non, non, match, non, match -> AP = (1/3 + 2/5) / 2, INP = 2/5, CMC starts at rank 3.
    m = one_query([0.3, 0.1, 0.5, 0.2, 0.4], g_pids=[1, 2, 1, 3, 4], g_cams=[1, 1, 1, 1, 1])
    assert m["mAP"] == pytest.approx((1 / 3 + 2 / 5) / 2)
    assert m["mINP"] == pytest.approx(2 / 5)
    assert m["cmc"].tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]


def test_ties_break_by_gallery_index():
    # All distances equal: the order is the gallery order, [non, match, match].
    m = one_query([0.3, 0.3, 0.3], g_pids=[2, 1, 1], g_cams=[1, 1, 1], max_rank=3)
    assert m["mAP"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert m["cmc"].tolist() == [0.0, 1.0, 1.0]
    # Same distances with the match first in the gallery: a perfect ranking.
    assert one_query([0.3, 0.3, 0.3], g_pids=[1, 2, 1], g_cams=[1, 1, 1])["mAP"] == pytest.approx(5 / 6)
    assert one_query([0.3, 0.3, 0.3], g_pids=[1, 1, 2], g_cams=[1, 1, 1])["mAP"] == pytest.approx(1.0)


def test_same_camera_matches_are_junk_and_removed_from_the_ranking():
    # Ranked: same-camera match (junk), non, match -> after removal: non, match.
    m = one_query([0.1, 0.2, 0.3], g_pids=[1, 2, 1], g_cams=[0, 1, 1], q_cam=0, max_rank=3)
    assert m["mAP"] == pytest.approx(1 / 2)
    assert m["cmc"].tolist() == [0.0, 1.0, 1.0]
    # A non-matching identity from the query's camera is NOT junk.
    m = one_query([0.1, 0.2], g_pids=[2, 1], g_cams=[0, 1], q_cam=0, max_rank=2)
    assert m["mAP"] == pytest.approx(1 / 2)


def test_query_with_only_same_camera_matches_is_skipped_and_counted():
    dist = np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]])
    # Query 0 (pid 1, camera 0) has its only match in camera 0; query 1 (pid 2, camera 0) is normal.
    m = rank_metrics(dist, [1, 2], [1, 2, 3], [0, 0], [0, 1, 1], max_rank=3)
    assert m["num_skipped_queries"] == 1
    assert m["num_valid_queries"] == 1
    # Only query 1 counts: ranked 3, 2(match) -> AP 1/2.
    assert m["mAP"] == pytest.approx(1 / 2)
    assert m["cmc"].tolist() == [0.0, 1.0, 1.0]


def test_all_junk_gallery_is_an_error_naming_the_skipped_count():
    dist = np.zeros((2, 3))
    with pytest.raises(UserError, match="all 2 queries skipped"):
        rank_metrics(dist, [1, 1], [1, -1, -1], [0, 0], [0, 0, 1])


def test_distractors_are_negatives_and_pid_minus_one_is_ignored():
    # pid 0 (distractor) ranked first counts as a miss; pid -1 ranked first is dropped.
    m = one_query([0.1, 0.2], g_pids=[0, 1], g_cams=[1, 1], max_rank=2)
    assert m["mAP"] == pytest.approx(1 / 2)
    assert m["cmc"].tolist() == [0.0, 1.0]
    m = one_query([0.1, 0.2], g_pids=[-1, 1], g_cams=[1, 1], max_rank=2)
    assert m["mAP"] == pytest.approx(1.0)
    assert m["cmc"].tolist() == [1.0, 1.0]


def test_query_with_pid_zero_matches_other_distractors():
    # Documented behaviour: pid 0 is an ordinary identity for a query that has it.
    m = one_query([0.1, 0.2], g_pids=[2, 0], g_cams=[1, 1], q_pid=0, max_rank=2)
    assert m["mAP"] == pytest.approx(1 / 2)


def test_cmc_and_minp_over_several_queries():
    # Query A: match at rank 1 and 3 of 4; query B: first match at rank 2, last at rank 4; query C: rank 4.
    dist = np.tile(np.array([0.1, 0.2, 0.3, 0.4]), (3, 1))
    g_pids = [1, 2, 1, 3]
    m = rank_metrics(dist, [1, 2, 3], g_pids, [0, 0, 0], [1, 1, 1, 1], max_rank=4)
    assert m["cmc"].tolist() == pytest.approx([1 / 3, 2 / 3, 2 / 3, 1.0])
    assert m["mINP"] == pytest.approx((2 / 3 + 1 / 2 + 1 / 4) / 3)
    assert m["mAP"] == pytest.approx(((1 + 2 / 3) / 2 + 1 / 2 + 1 / 4) / 3)


def test_cmc_is_padded_with_its_last_value_beyond_the_gallery_size():
    m = one_query([0.2, 0.1], g_pids=[1, 2], g_cams=[1, 1], max_rank=6)
    assert m["cmc"].shape == (6,)
    assert m["cmc"].dtype == np.float64
    assert m["cmc"].tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("chunk_size", [1, 2, 5, 7, 1000])
def test_chunked_equals_unchunked(chunk_size):
    problem = random_problem(3, num_q=17)
    whole = rank_metrics(*problem, chunk_size=len(problem[1]))
    chunked = rank_metrics(*problem, chunk_size=chunk_size)
    assert chunked["mAP"] == pytest.approx(whole["mAP"], abs=1e-14)
    assert chunked["mINP"] == pytest.approx(whole["mINP"], abs=1e-14)
    np.testing.assert_array_equal(chunked["cmc"], whole["cmc"])
    assert chunked["num_skipped_queries"] == whole["num_skipped_queries"]


def test_numpy_and_torch_inputs_agree():
    dist, *ids = random_problem(4)
    from_numpy = rank_metrics(dist, *ids)
    from_torch = rank_metrics(torch.from_numpy(dist), *(torch.from_numpy(x) for x in ids))
    mixed = rank_metrics(torch.from_numpy(dist).float(), *(x.tolist() for x in ids))
    tied, *tied_ids = random_problem(4, ties=True)
    integer = rank_metrics(tied.astype(np.int64), *tied_ids)
    assert integer["mAP"] == pytest.approx(rank_metrics(tied, *tied_ids)["mAP"], abs=1e-15)
    for other in (from_torch, mixed):
        assert other["mAP"] == pytest.approx(from_numpy["mAP"], abs=1e-12)
        np.testing.assert_array_equal(other["cmc"], from_numpy["cmc"])
        assert other["mINP"] == pytest.approx(from_numpy["mINP"], abs=1e-12)


def special_values_problem(seed):
    """Ties among negative, zero (both signs), infinite and ordinary distances."""
    dist, *ids = random_problem(seed, num_q=19, num_g=47)
    rng = np.random.default_rng(seed)
    values = np.array([-np.inf, -2.5, -1.0, -0.0, 0.0, 0.0, 1e-30, 0.25, 0.25, 3.0, np.inf, np.inf])
    return rng.choice(values, size=dist.shape), *ids


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_negative_signed_zero_and_infinite_distances_rank_like_a_stable_sort(seed, dtype):
    # -0.0 == 0.0 ties (lower gallery index first), as in torch.sort and the Python reference.
    dist, *ids = special_values_problem(seed)
    dist = dist.astype(dtype)
    assert_same_metrics(rank_metrics(dist, *ids, max_rank=20), reference_metrics(dist, *ids, max_rank=20))


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("chunk_size", [1, None])
def test_nan_distances_rank_after_every_number(seed, dtype, chunk_size):
    # A NaN match distance sends its chunk to the sort path; other NaNs (either sign bit, junk
    # included) stay with the counting path of one-query chunks and must rank last there too.
    dist, *ids = random_problem(seed, num_q=60)
    rng = np.random.default_rng(seed)
    nan = rng.random(dist.shape) < 0.1
    with_nan = torch.from_numpy(np.where(nan, np.copysign(np.nan, rng.random(dist.shape) - 0.5), dist))
    with_nan = with_nan.to(dtype)
    as_inf = np.where(nan, np.inf, with_nan.double().numpy())  # no other inf: the same order
    expected = reference_metrics(as_inf, *ids, max_rank=20)
    assert_same_metrics(rank_metrics(with_nan, *ids, max_rank=20, chunk_size=chunk_size), expected)


def test_float64_distances_closer_than_float32_resolution_stay_distinct():
    # 1 + 1e-12 and 1 are one float32 value: float32 keys would tie them and rank the match second.
    m = rank_metrics(np.array([[1.0 + 1e-12, 1.0, 2.0]]), [1], [2, 1, 1], [0], [1, 1, 1], max_rank=3)
    assert m["cmc"].tolist() == [1.0, 1.0, 1.0]
    assert m["mAP"] == pytest.approx((1 / 1 + 2 / 3) / 2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_distances_rank_as_their_float32_values(dtype):
    dist, *ids = random_problem(8)
    half = torch.from_numpy(dist).to(dtype)
    assert_same_metrics(rank_metrics(half, *ids), rank_metrics(half.float(), *ids))
    assert_same_metrics(rank_metrics(half, *ids), reference_metrics(half.double().numpy(), *ids, max_rank=50))


@pytest.mark.parametrize("ties", [False, True])
def test_sort_path_used_when_keys_do_not_fit_gives_the_same_numbers(monkeypatch, ties):
    problem = random_problem(9, ties=ties)
    counted = rank_metrics(*problem, max_rank=20)
    monkeypatch.setattr(metrics, "_KEY_BITS", 0)  # no (row, distance, index) key fits: every chunk sorts
    sorted_ = rank_metrics(*problem, max_rank=20)
    assert sorted_["mAP"] == pytest.approx(counted["mAP"], abs=1e-14)
    assert sorted_["mINP"] == pytest.approx(counted["mINP"], abs=1e-14)
    np.testing.assert_array_equal(sorted_["cmc"], counted["cmc"])
    assert_same_metrics(sorted_, reference_metrics(*problem, max_rank=20))


def test_unknown_and_distractor_query_identities():
    # A pid -1 query has no true match (skipped); a pid 0 query matches distractors in other cameras.
    dist, q_pids, g_pids, q_cams, g_cams = random_problem(10, ties=True)
    q_pids[:4] = [-1, 0, -1, 0]
    problem = (dist, q_pids, g_pids, q_cams, g_cams)
    expected = reference_metrics(*problem, max_rank=20)
    assert expected["skipped"] >= 2
    assert_same_metrics(rank_metrics(*problem, max_rank=20), expected)


def test_non_contiguous_distance_matrix():
    dist, *ids = random_problem(11, ties=True)
    transposed = torch.from_numpy(np.ascontiguousarray(dist.T)).T
    assert not transposed.is_contiguous()
    assert_same_metrics(rank_metrics(transposed, *ids), reference_metrics(dist, *ids, max_rank=50))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_matches_cpu(dtype):
    dist, *ids = random_problem(5, num_q=300, num_g=900, ties=True)
    dist = torch.from_numpy(dist).to(dtype)
    cpu = rank_metrics(dist, *ids, chunk_size=64)
    cuda = rank_metrics(dist.cuda(), *ids, chunk_size=64)
    assert cuda["mAP"] == pytest.approx(cpu["mAP"], abs=1e-12)
    np.testing.assert_array_equal(cuda["cmc"], cpu["cmc"])


def test_bad_shapes_and_arguments_are_rejected():
    dist, *ids = random_problem(0)
    with pytest.raises(ValueError, match=r"g_pids must have shape \(61,\)"):
        rank_metrics(dist, ids[0], ids[1][:-1], ids[2], ids[3])
    with pytest.raises(ValueError, match="max_rank must be >= 1, got 0"):
        rank_metrics(dist, *ids, max_rank=0)
    with pytest.raises(ValueError, match="chunk_size must be >= 1, got 0"):
        rank_metrics(dist, *ids, chunk_size=0)
    with pytest.raises(ValueError, match="2-D"):
        rank_metrics(dist[0], *ids)


def test_pairwise_distance_euclidean_is_squared_distance_of_normalised_features():
    gen = torch.Generator().manual_seed(0)
    q, g = torch.randn(5, 8, generator=gen), torch.randn(7, 8, generator=gen)
    expected = torch.cdist(torch.nn.functional.normalize(q), torch.nn.functional.normalize(g)) ** 2
    got = pairwise_distance(q, g)
    assert got.dtype == torch.float32 and got.shape == (5, 7)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(pairwise_distance(q, g, "cosine"), expected / 2, atol=1e-5, rtol=0)
    assert (pairwise_distance(q, q) >= 0).all()  # clamped: rounding never makes a distance negative


def test_pairwise_distance_rejects_unknown_metric_and_mismatched_sizes():
    with pytest.raises(UserError, match=r"unknown distance 'cosin' \(did you mean 'cosine'\?\)"):
        pairwise_distance(torch.ones(1, 2), torch.ones(1, 2), "cosin")
    with pytest.raises(ValueError, match="feature sizes differ: 2 vs 3"):
        pairwise_distance(torch.ones(1, 2), torch.ones(1, 3))
