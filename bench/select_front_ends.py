"""Score learner configurations on the selection sets that chose learner 5 (model card, "How the values were chosen").

    python bench/select_front_ends.py vsml_runtime/assets/learners/size-free.pt \
        "online_norm=true,online_norm_prior=100,output_gain=40,error_decay_steps=300" "output_gain=14"

Each argument after the model is one set of config changes (``key=value``,
comma-separated, the keys and values ``vsml-model set`` takes; "" keeps the
file's config). For each, it prints online
accuracy / first-k on the three selection sets, none of which is an
evaluation set:

* MNIST's training split at 784 inputs, 2,000 steps x 4 streams, seed 7 (first 100);
* the 8 dev tables of ``vsml_train.data.tabular.DEV_TABLES``, 1,000 x 4, seed 99 (first 50);
* a synthetic family of sparse, imbalanced tables (``sparse_table``), 3 tables, 1,000 x 4 (first 50);

and the mean of the six numbers (the selection score). ``--screen`` adds the
screening set that chose learner 7's prior: MNIST's training split, 300 steps
x 16 streams, seed 11 (first 100 / steps 100-300; 16 streams estimate the
first 100 better than the selection set's 4), and the same streams with
inverted pixels (1 - p), which with it chose learner 8's centring prior.
Vowpal Wabbit's defaults and linear SGD / Adam run on the same streams for
scale (``--baselines``).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from vsml_train.cli_model import parse_changes
from vsml_train.data.augment import ClassContrast
from vsml_train.data.sampler import MNIST_MEAN, MNIST_STD
from vsml_train.data.tabular import DEV_TABLES, load_table
from vsml_train.evaluation.baselines import online_adam, online_sgd
from vsml_train.evaluation.harness import EvalProtocol, protocol_streams
from vsml_train.evaluation.learners import VSMLLearner
from vsml_train.model.model_file import load_model


def sparse_table(seed: int, n: int = 5000, a: int = 85, n_rare: int = 17) -> tuple[np.ndarray, np.ndarray]:
    """x [n, a] float32 z-scored over the table, y [n] int64.

    Student-t(3) features, ``n_rare`` of them replaced by rare 0/1 indicators; about 6% positives.
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_t(3, size=(n, a))
    rare = rng.choice(a, n_rare, replace=False)
    x[:, rare] = (rng.random((n, n_rare)) < rng.uniform(0.01, 0.1, n_rare)).astype(float)
    w = rng.normal(size=a) * (rng.random(a) < 0.3)
    s = x @ w
    y = (s > np.quantile(s, 0.94)).astype(np.int64)
    x = (x - x.mean(0)) / (x.std(0) + 1e-12)
    return x.astype(np.float32), y


def table_streams(x: np.ndarray, y: np.ndarray, seed: int, steps: int = 1000, streams: int = 4) -> tuple:
    """[T, S, A] / [T, S] streams of distinct rows (one permutation per stream)."""
    rng = np.random.default_rng(seed)
    idx = np.stack([rng.permutation(len(y))[:steps] for _ in range(streams)], 1)
    return x[idx], y[idx]


def selection_sets() -> dict[str, list[tuple[np.ndarray, np.ndarray, int, int]]]:
    """name -> [(x [T, S, A], y [T, S], n_classes, first_k)] for the three sets."""
    mnist = protocol_streams(EvalProtocol(dataset="mnist", split="train", n_steps=2000, n_streams=4, seed=7))
    dev = []
    for spec in DEV_TABLES:
        table = load_table(spec)
        st = table.streams(1000, 4, seed=99)
        dev.append((st.x, st.y, table.n_classes, 50))
    sparse = [(*table_streams(*sparse_table(i), 100 + i), 2, 50) for i in range(3)]
    return {"mnist-train": [(mnist.x, mnist.y, 10, 100)], "dev tables": dev, "sparse family": sparse}


def screen_set() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (x [300, 16, 784], y [300, 16]): MNIST-train streams that estimate the first 100 (``--screen``).

    "screen" is the streams as they are; "inverted" the same streams with every pixel p -> 1 - p
    (standardised with the same scalars), a proxy with a large offset on every feature that asks
    whether the online standardisation centres fast enough (learner 8's centring prior);
    "contrast" the same streams with the pixels of class y scaled by f_y, log-uniform in [1/3, 3]
    per stream and class: classes that differ in brightness, where online nearest-class-mean gains
    (0.554 -> 0.619) and learners 7 and 8 do not (model card, "Learner 8").
    """
    st = protocol_streams(EvalProtocol(dataset="mnist", split="train", n_steps=300, n_streams=16, seed=11))
    inverted = ((1.0 - 2.0 * MNIST_MEAN) / MNIST_STD - st.x).astype(np.float32)
    # each stream's classes with their own contrast: the training augmentation, one draw per stream (seed 5)
    spec, rng = ClassContrast(3.0, pivot=-MNIST_MEAN / MNIST_STD), np.random.default_rng(5)
    contrast = np.stack([spec.draw(rng, 784, 10).apply_x(st.x[:, s], st.y[:, s]) for s in range(st.x.shape[1])], 1)
    return {"screen": (st.x, st.y), "inverted": (inverted, st.y), "contrast": (contrast, st.y)}


def score(run, sets: dict) -> dict[str, tuple[float, float]]:
    """set name -> (mean online accuracy, first-k accuracy), averaged over the set's tasks."""
    out = {}
    for name, tasks in sets.items():
        hits = [(run(x, y, b).argmax(-1) == y, k) for x, y, b, k in tasks]
        out[name] = (float(np.mean([h.mean() for h, _ in hits])), float(np.mean([h[:k].mean() for h, k in hits])))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a model.pt file")
    ap.add_argument("changes", nargs="*", default=[""], help="config changes, e.g. output_gain=40,online_norm=true")
    ap.add_argument("--baselines", action="store_true", help="also score VW defaults, SGD lr 0.1 / 0.003, Adam 0.03")
    ap.add_argument("--screen", action="store_true", help="also the MNIST-train screen (300 x 16, seed 11)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_model(args.model)
    sets = selection_sets()
    screen = screen_set() if args.screen else None
    rows: dict[str, dict] = {}
    for text in args.changes or [""]:
        name = text or "(file's config)"
        cfg = model.config.replace(**parse_changes([kv for kv in text.split(",") if kv]))
        learner = VSMLLearner(model.params, cfg, impl="fused")
        rows[name] = score(lambda x, y, b, lr=learner: lr.run(x, y, b, seed=0), sets)
        for set_name, (x, y) in (screen or {}).items():
            hits = learner.run(x, y, 10, seed=0).argmax(-1) == y
            print(f"{name}: {set_name} first 100 {hits[:100].mean():.3f}, 100-300 {hits[100:].mean():.3f}")
    if args.baselines:
        from vsml_train.evaluation.external import VowpalWabbitOAA

        for name, base in {
            "vw defaults": VowpalWabbitOAA(0.5),
            "sgd lr 0.1": online_sgd(0.1, init="zero"),
            "sgd lr 0.003": online_sgd(0.003, init="zero"),
            "adam lr 0.03": online_adam(0.03, init="zero"),
        }.items():
            rows[name] = score(lambda x, y, b, bl=base: bl.run(x, y, b, seed=0), sets)
    print("online accuracy / first 100 (MNIST) or first 50 (tables); score = mean of the six")
    for name, r in rows.items():
        cells = "  ".join(f"{k} {m:.4f} / {f:.3f}" for k, (m, f) in r.items())
        total = np.mean([v for pair in r.values() for v in pair])
        print(f"{name}\n    {cells}  score {total:.4f}")


if __name__ == "__main__":
    main()
