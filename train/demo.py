"""`vsml-demo`: the default learner learns a dataset online, next to SGD and Adam.

Offline and under a minute on 2 cores: the bundled slice of Fashion-MNIST's
test split (2,000 images, ``vsml_runtime/assets``), 4 streams of 1,000 online
steps (each stream a different draw from the same images), inputs standardised
with the MNIST scalar statistics (docs/model.md §7). The VSML learner is
the pretrained V_M shipped in the package (meta-trained without ever seeing
Fashion-MNIST) or, before one is shipped, a randomly initialised V_M, and the
output says which. Baselines run on the very same streams with the learning
rates the reference table found best for Fashion-MNIST.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .data.sampler import MNIST_MEAN, MNIST_STD, sample_streams
from .evaluation.baselines import online_adam, online_sgd
from .evaluation.harness import EvalResult, evaluate_one
from .evaluation.learners import VSMLLearner
from .evaluation.plots import plot_results
from .model.config import VSMLConfig
from .model.episode import make_step_fn, run_episode
from .model.model_file import load_model
from .model.params import init_params

BUNDLED = ("mnist", "fashion-mnist")
PRETRAINED = "pretrained.pt"
GUIDE = (
    "reading guide: accuracy = share of examples predicted right BEFORE their label was shown (chance {chance:.2f}); "
    "mean = over all steps, lastN / firstN = over the last / first N steps of a stream; +- = 95% interval over streams"
)


class _TickingVSML(VSMLLearner):
    """``VSMLLearner`` whose ``run`` calls ``tick()`` after every online step (for the progress bar)."""

    def __init__(self, inner: VSMLLearner, tick: Callable[[], Any]) -> None:
        super().__init__(inner.params, inner.config, inner.examples_per_step, name=inner.name, impl=inner.impl)
        self._tick = tick

    def run(self, x: np.ndarray, y: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
        if self.examples_per_step != 1:
            return super().run(x, y, n_classes, seed)
        step = make_step_fn(self.config, self.impl)

        def ticking(*args: Any) -> Any:
            out = step(*args)
            self._tick()
            return out

        xt, yt = torch.from_numpy(np.ascontiguousarray(x))[:, :, None], torch.from_numpy(np.ascontiguousarray(y))
        with torch.no_grad():
            out = run_episode(self.params, self.config, xt, yt[:, :, None], n_classes, seed=seed, step_fn=ticking)
        return out.logits[:, :, 0].numpy().astype(np.float32, copy=False)


def bundled_dataset(name: str) -> tuple[np.ndarray, np.ndarray]:
    """The bundled 2,000-image test slice: images uint8 [2000, 28, 28], labels int64 [2000]."""
    if name not in BUNDLED:
        raise ValueError(f"no bundled dataset {name!r}; bundled: {list(BUNDLED)}")
    ref = resources.files("vsml_runtime") / "assets" / f"{name}-t10k-2000.npz"
    with resources.as_file(ref) as path, np.load(path) as z:
        return z["images"].copy(), z["labels"].astype(np.int64)


def default_learner() -> tuple[VSMLLearner, str]:
    """The shipped pretrained learner, or a random V_M with a note saying so."""
    ref = resources.files("vsml_runtime") / "assets" / PRETRAINED
    if ref.is_file():
        with resources.as_file(ref) as path:
            model = load_model(path)
        what = f"shipped pretrained V_M ({model.meta.get('method', '?')}, sha256 {model.params_hash()[:12]})"
        return VSMLLearner(model.params, model.config, name="vsml", impl="fused"), what  # the C kernel; same numbers
    config = VSMLConfig()
    note = "randomly initialised V_M (seed 0): no pretrained learner is shipped yet, so expect chance accuracy"
    return VSMLLearner(init_params(config, 0), config, name="vsml-random"), note


def run_demo(
    dataset: str = "fashion-mnist",
    steps: int = 1000,
    streams: int = 4,
    seed: int = 0,
    out: Path | None = None,
    *,
    threads: int = 1,
    progress: bool = True,
) -> dict[str, EvalResult]:
    """Run the demo and return {learner name: result}; writes JSON + PNG into ``out``.

    ``threads``: torch threads (1 by default: the tensors are small, and a
    second thread mostly competes with other work on a shared machine).
    ``progress``: a progress bar on stderr over the VSML learner's online steps
    (nearly all of the time; the baselines take seconds).
    """
    torch.set_num_threads(max(1, int(threads)))
    images, labels = bundled_dataset(dataset)
    s = sample_streams(images, labels, n_streams=streams, n_steps=steps, seed=seed, mean=MNIST_MEAN, std=MNIST_STD)
    vsml, what = default_learner()
    print(f"vsml-demo: {dataset} (bundled test slice, {len(labels)} images), {streams} streams x {steps} online steps")
    print(f"learner: {what}")
    # the reference table's best rates on Fashion-MNIST (REFERENCE_TABLE)
    # (zero init for the linear models, as the reference figures imply)
    learners = [
        vsml,
        online_sgd(0.001, init="zero"),
        online_sgd(0.003, hidden=(160,)),
        online_adam(3e-4, init="zero"),
        online_adam(3e-4, hidden=(160,)),
    ]
    print(GUIDE.format(chance=1.0 / s.n_classes), flush=True)
    results: dict[str, EvalResult] = {}
    for i, learner in enumerate(learners):
        t0 = time.perf_counter()
        if i == 0:  # the VSML learner takes nearly all the time: a bar over its online steps
            with tqdm(total=steps, unit="step", desc=learner.name, disable=not progress, file=sys.stderr) as bar:
                r = evaluate_one(_TickingVSML(vsml, lambda: bar.update(1)), s, seed=seed)
        else:
            r = evaluate_one(learner, s, seed=seed)
        results[r.name] = r
        print(f"  {r.name:24s} {r.summary.brief()}   ({time.perf_counter() - t0:.1f}s)", flush=True)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        summary = {name: r.to_dict(curves=False) for name, r in results.items()}
        (out / "demo-summary.json").write_text(json.dumps({"learner": what, "results": summary}, indent=1))
        png = plot_results(results, out / "demo-curves.png", title=f"{dataset}: learning online, no gradients for VSML")
        print(f"wrote {out / 'demo-summary.json'} and {png}")
        print("  left: accuracy over the stream; right: accuracy by examples of the same class seen before")
    return results


def main(argv: list[str] | None = None) -> None:
    """Entry point of `vsml-demo`."""
    ap = argparse.ArgumentParser(prog="vsml-demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", choices=BUNDLED, default="fashion-mnist")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("vsml-demo"), help="folder for the JSON summary and the plot")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.streams < 1 or args.threads < 1:
        ap.error("--steps, --streams and --threads must be >= 1")
    run_demo(
        args.dataset, args.steps, args.streams, args.seed, args.out, threads=args.threads, progress=not args.no_progress
    )


if __name__ == "__main__":
    sys.exit(main())
