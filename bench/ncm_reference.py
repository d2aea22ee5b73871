"""Online nearest-class-mean (NCM): the few-shot reference the model card compares the first examples with.

    python bench/ncm_reference.py                 # the --screen sets of select_front_ends.py (MNIST-train)
    python bench/ncm_reference.py --test          # also MNIST / Fashion-MNIST test, 100 steps x 8 streams, seed 0

Online NCM predicts, for x_t, the class whose running mean of the examples seen so far is nearest
(Euclidean; no prediction counts as wrong before the first example), then adds (x_t, y_t) to its class.
It has no parameter to tune. Prints the mean accuracy over the first 100 steps of each set.
The ``--test`` rows read evaluation streams: they are a reference, like a baseline's row, and choose nothing.
"""

from __future__ import annotations

import argparse

import numpy as np
from select_front_ends import screen_set

from vsml_train.evaluation.harness import EvalProtocol, protocol_streams


def online_ncm(x: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """bool [T, S]: x [T, S, A], y [T, S] -> whether NCM's prediction for step t was right."""
    steps, streams, a = x.shape
    hits = np.zeros((steps, streams), dtype=bool)
    for s in range(streams):
        sums, counts = np.zeros((n_classes, a)), np.zeros(n_classes)
        for t in range(steps):
            if counts.any():
                means = sums / np.maximum(counts, 1)[:, None]
                dist = ((means - x[t, s]) ** 2).sum(1)
                dist[counts == 0] = np.inf
                hits[t, s] = dist.argmin() == y[t, s]
            sums[y[t, s]] += x[t, s]
            counts[y[t, s]] += 1
    return hits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--test", action="store_true", help="also the MNIST and Fashion-MNIST test streams (first 100)")
    args = ap.parse_args()
    sets = {f"mnist-train {k}": v for k, v in screen_set().items()}
    if args.test:
        for name in ("mnist", "fashion-mnist"):
            st = protocol_streams(EvalProtocol(dataset=name, split="test", n_steps=100, n_streams=8, seed=0))
            sets[f"{name} test"] = (st.x, st.y)
    for name, (x, y) in sets.items():
        hits = online_ncm(x.astype(np.float64), y, 10)
        print(f"{name:24s} NCM first 100 {hits[:100].mean():.3f}")


if __name__ == "__main__":
    main()
