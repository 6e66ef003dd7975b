"""Cluster bootstrap: confidence intervals when observations come in dependent clusters.

Utterances of one speaker are not independent draws (the speaker's voice, microphone and
habits are shared), and one test utterance recurs in every seed of its fold. Resampling
utterances one by one then treats a few speakers as hundreds of independent samples and
gives intervals that are too narrow. `cluster_bootstrap` resamples whole clusters
(speakers), with replacement, separately within each stratum (fold), so each resample keeps
every fold's number of speakers.

A resample is given to the statistic as per-item weights: the number of times the item's
cluster was drawn (0, 1, 2, ...), so a statistic is a weighted sum and needs no copies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0
# Resamples computed at once: bounds memory to [CHUNK, N] weights.
CHUNK = 200
# Fewer clusters than this in a stratum: reports say the bootstrap interval is too narrow.
FEW_CLUSTERS = 5


def cluster_weights(
    clusters: Sequence, strata: Sequence | None, samples: int, rng: np.random.Generator
) -> np.ndarray:
    """Draws cluster-bootstrap resamples.

    Args:
        clusters: ``[N]`` the cluster (e.g. speaker) of each item; a cluster name is only
            matched within its stratum.
        strata: ``[N]`` the stratum (e.g. fold) of each item, or None for one stratum.
        samples: number of resamples B.
        rng: the random generator.

    Returns: ``[B, N]`` float weights: in each resample and stratum with K clusters, K
    clusters are drawn with replacement, and every item gets the count of its cluster.
    """
    n = len(clusters)
    strata = [None] * n if strata is None else strata
    if len(strata) != n:
        raise ValueError(f"{len(strata)} strata for {n} items")
    weights = np.zeros((samples, n))
    members: dict = {}
    for i, stratum in enumerate(strata):
        members.setdefault(stratum, []).append(i)
    for stratum in sorted(members, key=str):  # a fixed order: the same draws for one seed
        items = np.array(members[stratum])
        # Cluster index of each item of the stratum, clusters in sorted order.
        _, cluster_of = np.unique([str(clusters[i]) for i in items], return_inverse=True)
        k = int(cluster_of.max()) + 1
        drawn = rng.integers(0, k, size=(samples, k))
        flat = (np.arange(samples)[:, None] * k + drawn).ravel()
        counts = np.bincount(flat, minlength=samples * k).reshape(samples, k).astype(float)
        weights[:, items] = counts[:, cluster_of]
    return weights


def cluster_bootstrap(
    statistic: Callable[[np.ndarray], np.ndarray],
    clusters: Sequence,
    strata: Sequence | None = None,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = 0.95,
) -> dict:
    """A statistic on the data and its percentile confidence interval over cluster-bootstrap
    resamples (`cluster_weights`).

    Args:
        statistic: maps weights ``[B, N]`` to values ``[B]`` (e.g. a weighted accuracy
            ``(w * correct).sum(1) / w.sum(1)``); called with all-ones weights for the
            estimate.
        clusters, strata: ``[N]`` each item's cluster and stratum (see `cluster_weights`).
        samples: number of resamples; seed: of the random generator (same seed, same draws).
        level: coverage of the interval.

    Returns: {"estimate", "ci_low", "ci_high", "samples", "clusters" (number of clusters
    over all strata), "min_clusters" (the fewest in one stratum), "values" ([samples] the
    resampled statistics)}. With K clusters in a stratum the bootstrap variance of a mean
    is (K - 1) / K of the true one: with very few clusters per stratum the interval is too
    narrow (half the variance for K = 2).
    """
    n = len(clusters)
    estimate = float(np.asarray(statistic(np.ones((1, n))))[0])
    rng = np.random.default_rng(seed)
    values = []
    for start in range(0, samples, CHUNK):
        weights = cluster_weights(clusters, strata, min(CHUNK, samples - start), rng)
        values.append(np.asarray(statistic(weights), dtype=float))
    values = np.concatenate(values)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    keys = set(zip([None] * n if strata is None else strata, map(str, clusters), strict=True))
    per_stratum: dict = {}
    for stratum, _ in keys:
        per_stratum[stratum] = per_stratum.get(stratum, 0) + 1
    return {
        "estimate": estimate,
        "ci_low": float(low),
        "ci_high": float(high),
        "samples": samples,
        "clusters": len(keys),
        "min_clusters": min(per_stratum.values()),
        "values": values,
    }
