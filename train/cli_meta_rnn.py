"""`vsml-meta-rnn`: meta-train the Meta RNN baseline (docs/model.md §6.6).

    vsml-meta-rnn --out DIR [--iterations N --episodes S --lr LR --hidden U] [--resume]

Writes ``DIR/meta_rnn.pt``; ``vsml-eval MODEL --meta-rnn DIR/meta_rnn.pt`` puts
it in the table. Runs resume bit-exactly from ``DIR/checkpoint.pt``. A thin
layer: parse, build ``MetaRNNOptions``, call ``methods.meta_rnn.train_meta_rnn``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from .methods.meta_rnn import MetaRNNOptions, train_meta_rnn


def main(argv: list[str] | None = None) -> int:
    """`vsml-meta-rnn`: meta-train the Meta RNN baseline."""
    ap = argparse.ArgumentParser(prog="vsml-meta-rnn", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--iterations", type=int, default=MetaRNNOptions.iterations)
    ap.add_argument("--episodes", type=int, default=MetaRNNOptions.episodes)
    ap.add_argument("--lr", type=float, default=MetaRNNOptions.lr)
    ap.add_argument("--hidden", type=int, default=MetaRNNOptions.hidden)
    ap.add_argument("--threads", type=int, default=MetaRNNOptions.threads)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument(
        "--keep-labels",
        action="store_true",
        help="do not permute labels per episode (it can then memorise MNIST instead of learning online)",
    )
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args(argv)
    tasks = dataclasses.replace(MetaRNNOptions().tasks, data_dir=args.data_dir, permute_labels=not args.keep_labels)
    options = MetaRNNOptions(
        hidden=args.hidden,
        iterations=args.iterations,
        episodes=args.episodes,
        lr=args.lr,
        tasks=tasks,
        threads=args.threads,
    )
    path = train_meta_rnn(options, args.seed, args.out, resume=args.resume)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
