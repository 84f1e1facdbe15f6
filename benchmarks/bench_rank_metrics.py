"""Time study.evaluate.metrics.rank_metrics against a per-query NumPy loop on a Market-1501-sized problem.

    python -m benchmarks.bench_rank_metrics            # 3,368 queries x 15,913 gallery, 2,048-d
    python -m benchmarks.bench_rank_metrics --small    # 500 x 2,000, for a quick run

The features are random identity centres plus noise, L2-normalised, so the metrics are neither 0 nor 1.
Both implementations rank the same float32 distance matrix; the script checks that they agree to 1e-6.
rank_metrics is also timed on the same distances as float64 (its other exact key path) and with every
chunk forced through its row-sort fallback (NaN match distances, keys over 63 bits).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from study.evaluate import metrics
from study.evaluate.metrics import pairwise_distance, rank_metrics

MARKET = {"queries": 3368, "gallery": 15913, "dim": 2048, "identities": 751, "cameras": 6}
SMALL = {"queries": 500, "gallery": 2000, "dim": 256, "identities": 100, "cameras": 6}
MAX_RANK = 50


def make_problem(queries, gallery, dim, identities, cameras, seed, device):
    """Random features and ids: 17% of the gallery are distractors (pid 0), 5% junk (pid -1)."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(identities + 1, dim, generator=gen)
    q_pids = torch.randint(1, identities + 1, (queries,), generator=gen)
    g_pids = torch.randint(1, identities + 1, (gallery,), generator=gen)
    kind = torch.rand(gallery, generator=gen)
    g_pids[kind < 0.22] = 0
    g_pids[kind < 0.05] = -1
    q_cams = torch.randint(1, cameras + 1, (queries,), generator=gen)
    g_cams = torch.randint(1, cameras + 1, (gallery,), generator=gen)
    # Noise of scale dim**0.25 keeps same-identity similarity near the noise level (mAP well below 1).
    # Distractors and junk are noise alone.
    noise = 0.6 * dim**0.25
    qf = centres[q_pids] + noise * torch.randn(queries, dim, generator=gen)
    g_centres = centres[g_pids.clamp(min=0)] * (g_pids > 0)[:, None]
    gf = g_centres + noise * torch.randn(gallery, dim, generator=gen)
    return [t.to(device) for t in (qf, gf, q_pids, g_pids, q_cams, g_cams)]


def numpy_rank_metrics(dist, q_pids, g_pids, q_camids, g_camids, max_rank):
    """The per-query loop of the common toolkits: argsort, drop junk, cumsum the matches."""
    cmc_sum = np.zeros(max_rank)
    aps, inps = [], []
    for i in range(dist.shape[0]):
        order = np.argsort(dist[i], kind="stable")
        pids, cams = g_pids[order], g_camids[order]
        junk = ((pids == q_pids[i]) & (cams == q_camids[i])) | (pids == -1)
        matches = (pids[~junk] == q_pids[i]).astype(np.int64)
        if not matches.any():
            continue
        hits = matches.cumsum()
        cmc = np.minimum(hits, 1)
        cmc = np.pad(cmc, (0, max(0, max_rank - len(cmc))), mode="edge")
        cmc_sum += cmc[:max_rank]
        hit_ranks = np.flatnonzero(matches) + 1
        aps.append((hits[hit_ranks - 1] / hit_ranks).mean())
        inps.append(len(hit_ranks) / hit_ranks[-1])
    return {"mAP": float(np.mean(aps)), "cmc": cmc_sum / len(aps), "mINP": float(np.mean(inps))}


def timed(fn, device):
    """(result, seconds) of fn(), synchronising CUDA around it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="500 queries x 2,000 gallery, 256-d")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--chunk-size", type=int, default=None, help="queries per chunk (default: by memory)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the torch version (best kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    size = SMALL if args.small else MARKET

    print(f"device: {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print("problem: " + ", ".join(f"{k}={v:,}" for k, v in size.items()))
    qf, gf, q_pids, g_pids, q_cams, g_cams = make_problem(**size, seed=args.seed, device=device)

    pairwise_distance(qf[:8], gf[:8])  # warm-up (CUDA context, kernels)
    dist, dist_s = timed(lambda: pairwise_distance(qf, gf), device)
    print(f"pairwise_distance: {dist_s:.3f} s")

    def ours(distances=dist):
        ids = (q_pids, g_pids, q_cams, g_cams)
        return rank_metrics(distances, *ids, max_rank=MAX_RANK, chunk_size=args.chunk_size)

    def best(fn):
        fn()  # warm-up (CUDA kernels, allocator)
        return min((timed(fn, device) for _ in range(args.repeats)), key=lambda run: run[1])

    result, ours_s = best(ours)
    print(f"rank_metrics (torch, {device.type}): {ours_s:.3f} s (best of {args.repeats})")
    as_float64, float64_s = best(lambda: ours(dist.double()))
    print(f"rank_metrics, the distances as float64: {float64_s:.3f} s")
    key_bits = metrics._KEY_BITS
    metrics._KEY_BITS = 0  # no key fits: every chunk takes the row-sort fallback
    try:
        by_sort, sort_s = best(ours)
    finally:
        metrics._KEY_BITS = key_bits
    print(f"rank_metrics, row-sort fallback only: {sort_s:.3f} s")

    arrays = [t.cpu().numpy() for t in (dist, q_pids, g_pids, q_cams, g_cams)]
    reference, ref_s = timed(lambda: numpy_rank_metrics(*arrays, MAX_RANK), torch.device("cpu"))
    print(f"per-query numpy loop: {ref_s:.3f} s")
    print(f"speed ratio (numpy loop / rank_metrics): {ref_s / ours_s:.1f}x")
    print(f"  float64 distances: {ref_s / float64_s:.1f}x, row-sort fallback: {ref_s / sort_s:.1f}x")

    diffs = {
        "mAP": abs(result["mAP"] - reference["mAP"]),
        "cmc": float(np.abs(result["cmc"] - reference["cmc"]).max()),
        "mINP": abs(result["mINP"] - reference["mINP"]),
    }
    print(
        f"mAP {result['mAP']:.6f}  rank-1 {result['cmc'][0]:.6f}  rank-5 {result['cmc'][4]:.6f}"
        f"  rank-10 {result['cmc'][9]:.6f}  mINP {result['mINP']:.6f}"
        f"  valid {result['num_valid_queries']}  skipped {result['num_skipped_queries']}"
    )
    print("max |difference| vs numpy: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    if max(diffs.values()) > 1e-6:
        raise SystemExit("MISMATCH: rank_metrics and the numpy reference disagree by more than 1e-6")
    for name, other in (("float64", as_float64), ("row-sort fallback", by_sort)):
        if abs(other["mAP"] - result["mAP"]) > 1e-12 or (other["cmc"] != result["cmc"]).any():
            raise SystemExit(f"MISMATCH: rank_metrics on the {name} path disagrees with the float32 path")
    print("agree to 1e-6: yes (and the float64 and row-sort paths to 1e-12)")


if __name__ == "__main__":
    main()
