"""Benchmark: what the scikit-learn and River wrappers add per example over the plain ``Learner``.

One run measures, on the same stream, interleaved example by example (so
load on a shared machine hits every variant alike), ms per example of

* ``learner``: ``Learner.learn(x, y)`` (x a [A] float64 array, y an int),
* ``sklearn``: ``VSMLClassifier.partial_fit(x[None], [y])`` (one row per call,
  as a stream arrives),
* ``river``: ``VSMLClassifier.learn_one({name: value}, y)`` (a dict of A features),

all with the shipped pretrained learner, timed per call with the calling
thread's CPU time (ONNX Runtime runs one thread in the caller; ``--clock
wall`` for wall time), and prints each wrapper's ratio to ``learner`` (the
issue's bar: under 1.05 at 784 x 10). The per-example cost
of the pure-Python work is printed too (the wrapper time minus the learner
time, median over rounds).

Usage::

    python bench/wrappers.py                      # 784 x 10, 300 examples x 5 rounds
    python bench/wrappers.py --features 64 --classes 10 --examples 500 --rounds 7
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from vsml_runtime import Learner
from vsml_runtime.river import VSMLClassifier as RiverClassifier
from vsml_runtime.sklearn import VSMLClassifier as SklearnClassifier


def _variants(x: np.ndarray, y: np.ndarray, n_classes: int) -> dict[str, Callable[[int], None]]:
    """name -> one learning step on example i (each variant has its own learner, same seed)."""
    a = x.shape[1]
    learner = Learner.pretrained(a, n_classes, device="cpu")
    sk = SklearnClassifier(standardize=False).partial_fit(x[:1], y[:1], classes=np.arange(n_classes))
    names = [f"f{j:03d}" for j in range(a)]
    dicts = [dict(zip(names, row.tolist(), strict=True)) for row in x]
    rv = RiverClassifier(n_classes=n_classes, classes=list(range(n_classes)))
    rv.learn_one(dicts[0], int(y[0]))
    rows = [x[i : i + 1] for i in range(len(x))]
    labels = [y[i : i + 1] for i in range(len(x))]
    ints = y.tolist()
    return {
        "learner": lambda i: learner.learn(x[i], ints[i]),
        "sklearn": lambda i: sk.partial_fit(rows[i], labels[i]),
        "river": lambda i: rv.learn_one(dicts[i], ints[i]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--features", type=int, default=784)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--examples", type=int, default=300, help="examples per round and variant")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="this thread's CPU time (default; robust to load) or wall",
    )
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.examples, args.features))
    y = rng.integers(0, args.classes, args.examples)
    variants = _variants(x, y, args.classes)
    for step in variants.values():  # warm-up: sessions, caches, a learner's first (slower) steps
        for i in range(args.examples):
            step(i)
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    ms: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(args.rounds):
        total = dict.fromkeys(names, 0.0)
        for i in range(args.examples):  # interleaved per example: load hits every variant alike
            for name in names if (i + r) % 2 == 0 else reversed(names):
                t0 = clock()
                variants[name](i)
                total[name] += clock() - t0
        for name in names:
            ms[name].append(total[name] / args.examples * 1e3)
    base = statistics.median(ms["learner"])
    print(
        f"{args.features} x {args.classes}, shipped pretrained learner, CPU, 1 thread, {args.clock} clock; "
        f"{args.examples} examples x {args.rounds} rounds (median)"
    )
    print(f"{'variant':10s} {'ms/example':>11s} {'ratio':>7s} {'added us':>9s}")
    for name, times in ms.items():
        med = statistics.median(times)
        added = statistics.median(t - b for t, b in zip(times, ms["learner"], strict=True)) * 1e3
        print(f"{name:10s} {med:11.3f} {med / base:7.3f} {added:9.1f}")


if __name__ == "__main__":
    main()
