"""Benchmark: ms per ``Learner.learn`` of the shipped default against other learners, measured in one run.

Rows (one example per call, one thread, the same random z-scored inputs):

* ``default``: ``Learner.pretrained(A, B)`` (the shipped ``pretrained.onnx``);
* ``baseline``: the same call on ``--baseline FILE.onnx`` (e.g. the previous
  default exported with ``vsml-export``), when given;
* ``vw``: Vowpal Wabbit ``--oaa B`` logistic, ``predict`` then ``learn`` on
  the same example (what a user would deploy instead), when installed.

Each row's cost is the median over ``--rounds`` interleaved rounds of
``--steps`` calls, so machine noise hits every row alike; the ratios to
``default`` are what to compare across machines. Pin one core for per-core
figures::

    taskset -c 0 python bench/learner_cost.py --baseline /tmp/learner3.onnx
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from vsml_runtime import Learner


def _vw_step(a: int, b: int) -> Callable[[np.ndarray, int], None] | None:
    try:
        from vowpalwabbit import Workspace
    except ImportError:
        return None
    vw = Workspace(f"--oaa {b} --loss_function logistic --probabilities --quiet")

    def step(x: np.ndarray, y: int) -> None:
        feats = " ".join(f"{i}:{v:.6g}" for i, v in enumerate(x.tolist()))
        vw.predict(f"| {feats}")
        vw.learn(f"{y + 1} | {feats}")

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--features", type=int, default=784)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--baseline", default=None, help="another model.onnx to time the same way")
    args = ap.parse_args()
    a, b = args.features, args.classes
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.steps, a)).astype(np.float32)
    y = rng.integers(0, b, size=args.steps)

    rows: dict[str, Callable[[np.ndarray, int], object]] = {"default": Learner.pretrained(a, b, seed=0).learn}
    if args.baseline:
        rows["baseline"] = Learner(args.baseline, a, b, seed=0).learn
    vw = _vw_step(a, b)
    if vw is not None:
        rows["vw"] = vw
    for fn in rows.values():  # warm-up
        for i in range(10):
            fn(x[i], int(y[i]))
    times: dict[str, list[float]] = {k: [] for k in rows}
    for _ in range(args.rounds):
        for name, fn in rows.items():
            start = time.perf_counter()
            for i in range(args.steps):
                fn(x[i], int(y[i]))
            times[name].append((time.perf_counter() - start) / args.steps * 1e3)
    ref = statistics.median(times["default"])
    print(f"Learner.learn, {a} x {b}, one example per call, median of {args.rounds} rounds x {args.steps} calls")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:9s} {med:7.3f} ms/example   {med / ref:5.2f}x default")


if __name__ == "__main__":
    main()
