"""Learn online with an exported VSML model: numpy + ONNX Runtime only, no torch, no gradients.

    python examples/runtime_example.py --model model.onnx [--device auto|cpu|cuda] [--steps 2000]

A stream of labelled examples arrives one at a time; for each one the
learner predicts (before seeing the label), then learns from the label. The
data here is a synthetic 10-class problem with raw, unscaled features
(shifted and scaled per feature), so the learner standardises online.
Prints the online accuracy as it goes, the device and the time per step,
then saves the learned state, reloads it and checks that nothing was lost.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from vsml_runtime import Learner, LearnerPool


def synthetic_stream(n_steps: int, n_features: int, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian classes in raw units: x [T, A] float64 (not standardised), y [T] int64."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_classes, n_features)) * 1.5
    y = rng.integers(0, n_classes, n_steps)
    x = centers[y] + rng.standard_normal((n_steps, n_features))
    offset, scale = rng.uniform(-50, 50, n_features), rng.uniform(0.1, 20, n_features)
    return x * scale + offset, y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="the step graph written by vsml-export (model.onnx)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--features", type=int, default=64)
    ap.add_argument("--classes", type=int, default=10)
    args = ap.parse_args()

    x, y = synthetic_stream(args.steps, args.features, args.classes, seed=0)
    learner = Learner(args.model, args.features, args.classes, device=args.device, standardize="online")
    info = learner.info
    print(f"model {args.model}: V_M sha256 {info.params_sha256[:12]}..., N={info.state_size}, layers {info.n_layers}")
    print(f"running on {learner.device} ({', '.join(learner.providers)})")

    correct = 0
    t0 = time.perf_counter()
    for t in range(args.steps):
        guess = learner.learn(x[t], int(y[t]))  # predicted before the label is revealed
        correct += guess == y[t]
        if (t + 1) % max(1, args.steps // 10) == 0:
            print(f"step {t + 1:6d}: online accuracy {correct / (t + 1):.3f}")
    ms = (time.perf_counter() - t0) / args.steps * 1e3
    print(f"{ms:.3f} ms per learn step; chance level {1 / args.classes:.3f}")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "learner.npz"
        learner.save(path)
        again = Learner.load(path, args.model, device=args.device)
        same = again.predict(x[:5]).tolist() == learner.predict(x[:5]).tolist()
        print(f"saved and reloaded the learned state ({path.stat().st_size} bytes): predictions identical: {same}")

    pool = LearnerPool(args.model, 8, args.features, args.classes, device=args.device, standardize="online")
    preds = pool.learn(x[:8], y[:8])
    print(f"a pool of 8 independent learners, one call: predictions {preds.tolist()}")


if __name__ == "__main__":
    main()
