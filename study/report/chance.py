"""The chance level of a study's evaluation split (the expected mAP and rank-1 of a random ranking), and
whether the study's results are near it (``near_chance``)."""

from __future__ import annotations

import functools
import json

import numpy as np
import pandas as pd

from study.errors import UserError
from study.report.loading import Study

# A schedule "learned" only where its metric leaves a random ranking's well behind: under 1.5 x the
# chance level, one seed's luck on the few queries of a small split covers the gap (the demo's 12
# validation identities: chance 9.2 %, runs at 7-21 %), while a ReID model that learned is many times above it
# (this project's CUHK03 runs: 0.22 % chance, 17-20 % after 120 epochs).
NEAR_CHANCE = 1.5


def near_chance(study: Study) -> str | None:
    """A warning for the top of the report where even the best schedule's mean best metric is under
    ``NEAR_CHANCE`` × the chance level; None where it is not, or the chance level is not known."""
    best = study.best_per_schedule()
    try:
        chance = chance_level(study)
    except (UserError, OSError, ValueError, KeyError):  # the caveats say why it is not known
        return None
    if chance is None or best.empty or pd.isna(best.iloc[0]["mAP_mean"]):
        return None
    top, level = best.iloc[0], chance[2]
    if top["mAP_mean"] >= NEAR_CHANCE * level:
        return None
    return (
        "**Results at chance level: no schedule learned enough to compare.** The best, "
        f"`{top['schedule']}`, reaches {top['mAP_mean'] * 100:.2f} % best {study.metric} (mean over seeds), "
        f"under {NEAR_CHANCE:g} × the {level * 100:.2f} % a random ranking of this split scores; the "
        "comparisons below are between "
        "models that did not learn."
    )


def chance_level(study: Study) -> tuple[int, int, float, float] | None:
    """(queries, gallery images, expected mAP, expected rank-1) of a uniformly random ranking.

    Per query with m true matches among the N gallery images it is ranked against (junk removed
    as in the Market-1501 protocol), E[AP] = H_N / N + (m - 1) / (N - 1) · (1 - H_N / N) and
    P(rank-1 is a match) = m / N; both are averaged over the queries that have a match.
    """
    sections = {k: v for k, v in study.saved.items() if k in ("model", "data", "train")}
    return _split_chance_level(json.dumps(sections, sort_keys=True, default=str))


@functools.lru_cache(maxsize=8)  # the report asks three times; reading a real split takes seconds
def _split_chance_level(sections: str) -> tuple[int, int, float, float] | None:
    from study.config import config_from_dict
    from study.data import split_samples

    config = config_from_dict(json.loads(sections))
    _, query, gallery = split_samples(config.data)
    g_pid = np.array([s.pid for s in gallery])
    g_cam = np.array([s.camid for s in gallery])
    aps, tops = [], []
    for sample in query:
        kept = (g_pid != -1) & ~((g_pid == sample.pid) & (g_cam == sample.camid))
        n = int(kept.sum())
        m = int((kept & (g_pid == sample.pid)).sum())
        if m == 0:
            continue
        aps.append(random_ranking_ap(n, m))
        tops.append(m / n)
    if not aps:
        return None
    return len(query), len(gallery), float(np.mean(aps)), float(np.mean(tops))


def random_ranking_ap(n: int, m: int) -> float:
    """Expected AP of a uniformly random ranking of n items, m of them true matches.

    The i-th match at rank r has the other m - 1 spread over the n - 1 other ranks, (r - 1)(m - 1)/(n - 1)
    of them before it in expectation: E[AP] = E[1/r] + (m - 1)/(n - 1) · (1 - E[1/r]), E[1/r] = H_n / n.

    >>> random_ranking_ap(1, 1)
    1.0
    """
    mean_inverse_rank = float(np.sum(1.0 / np.arange(1, n + 1))) / n
    return mean_inverse_rank + ((m - 1) / (n - 1) if n > 1 else 0.0) * (1 - mean_inverse_rank)
