"""The distance and convolution baselines of docs/model.md's UEA table, on each set's archive
split (one run, not the bake-off's 30 resamples): 1-NN Euclidean over the whole recording,
ROCKET (10,000 kernels, seed 0) and 1-NN dependent DTW (aeon).

    python -m benchmarks.uea [--dtw-window 0.1] NAME [NAME ...]   # e.g. fingermovements

``--dtw-window``: a Sakoe-Chiba band as a fraction of the length (the table uses 0.1 on the two
SelfRegulationSCP sets, where full DTW takes about ten minutes each on two cores).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np


def _arrays(recs: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
    r = recs.subset(split)
    return np.stack([v.T for v in r.values]).astype(np.float64), np.array(r.labels)  # [N, F, T]


def baselines(name: str, dtw_window: float | None = None) -> dict[str, float]:
    from aeon.classification.convolution_based import RocketClassifier
    from aeon.classification.distance_based import KNeighborsTimeSeriesClassifier

    from stream_infer.model import datasets

    recs = datasets.uea_neuro(name)
    xtr, ytr = _arrays(recs, "train")
    xte, yte = _arrays(recs, "test")
    a, b = xtr.reshape(len(xtr), -1), xte.reshape(len(xte), -1)
    dist = (b**2).sum(1)[:, None] - 2 * b @ a.T + (a**2).sum(1)[None, :]
    res = {"1nn_euclidean": float((ytr[dist.argmin(1)] == yte).mean())}
    t = time.time()
    rocket = RocketClassifier(n_kernels=10_000, random_state=0).fit(xtr, ytr)
    res["rocket"] = float((rocket.predict(xte) == yte).mean())
    res["rocket_s"] = round(time.time() - t, 1)
    t = time.time()
    params = {"window": dtw_window} if dtw_window else None
    knn = KNeighborsTimeSeriesClassifier(n_neighbors=1, distance="dtw", distance_params=params).fit(xtr, ytr)
    res["1nn_dtw_d"] = float((knn.predict(xte) == yte).mean())
    res["dtw_s"] = round(time.time() - t, 1)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="+")
    p.add_argument("--dtw-window", type=float, default=None)
    a = p.parse_args(argv)
    for name in a.names:
        print(name, baselines(name, a.dtw_window), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
