"""The periodic meta-test of a training run (docs/model.md §7).

``meta_test_evaluator`` builds the ``evaluate(params) -> metrics`` callback
that ``vsml_train.methods.runner.train`` calls: online (prequential)
accuracy on held-out datasets at their full input size. The methods receive
it as an argument and never import this package.

Dimension letters (docs/model.md §8): T steps, S streams, A inputs, B classes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from ..model.config import VSMLConfig
from ..model.episode import run_episode
from ..model.params import Params
from ..seeds import EVAL, EVAL_STATE, derive_seed
from .harness import EvalProtocol, protocol_streams
from .metrics import summarize


class MetaTestSettings(Protocol):
    """What the meta-test reads of a run's options (``methods.runner.RunOptions`` has these fields)."""

    @property
    def seed(self) -> int: ...

    @property
    def eval_datasets(self) -> Sequence[str]: ...

    @property
    def eval_split(self) -> str: ...

    @property
    def eval_steps(self) -> int: ...

    @property
    def eval_streams(self) -> int: ...


def meta_test_evaluator(
    config: VSMLConfig, run: MetaTestSettings, device: str = "cpu"
) -> Callable[[Params], dict[str, float]]:
    """Online meta-test of a V_M on the held-out datasets of a run (its ``eval_*`` options).

    The streams (``run.eval_streams`` per dataset, ``run.eval_steps`` long,
    batch 1, MNIST scalar standardisation) are drawn once by the evaluation
    core (``EvalProtocol``) from the run's seed, so every evaluation of a run
    sees the same streams; the V_M runs on the training ``device`` and
    ``summarize`` scores it. Reports per dataset: mean online accuracy, first
    100 / last 200 steps, and the online loss.
    """
    seed = run.seed
    sets = []
    for k, name in enumerate(run.eval_datasets):
        proto = EvalProtocol(
            name,
            split=run.eval_split,  # type: ignore[arg-type]
            n_steps=run.eval_steps,
            n_streams=run.eval_streams,
            seed=derive_seed(seed, EVAL, k) % 2**31,
        )
        st = protocol_streams(proto)
        x = torch.from_numpy(st.x).unsqueeze(2).to(device)  # [T, S, 1, A]
        y = torch.from_numpy(st.y).unsqueeze(2).to(device)  # [T, S, 1]
        sets.append((name, x, y, st.y, st.n_classes))

    def evaluate(params: Params) -> dict[str, float]:
        out: dict[str, float] = {}
        p = {k: v.to(device) for k, v in params.items()}
        for name, x, y, labels, n_classes in sets:
            with torch.no_grad():
                res = run_episode(p, config, x, y, n_classes, seed=derive_seed(seed, EVAL, EVAL_STATE))
            s = summarize(res.logits[:, :, 0].cpu().numpy(), labels)
            out[f"{name}/acc"] = s.accuracy.mean
            out[f"{name}/first100"] = s.first_accuracy.mean
            out[f"{name}/last200"] = s.last_accuracy.mean
            out[f"{name}/loss"] = s.loss.mean
        return out

    return evaluate
