"""A cloned backprop online next to the SGD it imitates (docs/model.md §6.1).

``compare_with_sgd`` runs the clone as one full A x B layer (``VSMLLearner``,
the deployed rollout) and the online SGD it imitates (``ImitatedSGD``) through
the evaluation harness, on the same streams, from the same initial weights,
with the learning rate the clone's config implies. It joins the clone's
scaling (``methods.clone``) with the evaluation, so it sits above both, beside
the CLIs.

Dimension letters (docs/model.md §8): T steps, S streams (independent learners),
E examples per step, A inputs, B classes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .data.sampler import MNIST_MEAN, MNIST_STD, Streams
from .evaluation.harness import evaluate
from .evaluation.imitated_sgd import ImitatedSGD, summary_dict, to_streams
from .evaluation.learners import VSMLLearner
from .evaluation.metrics import FIRST_STEPS, LAST_STEPS
from .methods.clone_options import CloneOptions, implied_sgd_lr, weight_factor
from .model.config import VSMLConfig
from .model.params import Params
from .model.state import init_noise
from .seeds import CLONE_COMPARE_OFFSET


def draw_steps(
    features: Tensor, labels: Tensor, steps: int, streams: int, examples: int, gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Streams of distinct examples, standardised with the MNIST scalar statistics.

    The draw the recorded clone figures (the model card's) were made with: one
    ``torch.randperm`` per stream. The data layer's ``sample_streams`` draws
    with numpy; this one is kept so that those figures reproduce exactly.

    Args:
        features: [N, A] in [0, 1]; labels: [N] ints.
    Returns:
        x [T, S, E, A] and y [T, S, E].
    """
    n = features.shape[0]
    need = steps * examples
    if need > n:
        raise ValueError(f"a stream needs {need} distinct examples, the data has {n}")
    idx = torch.stack([torch.randperm(n, generator=gen)[:need] for _ in range(streams)], dim=1)  # [T * E, S]
    idx = idx.reshape(steps, examples, streams).transpose(1, 2)  # [T, S, E]
    x = (features[idx].float() - MNIST_MEAN) / MNIST_STD
    return x, labels[idx].long()


@torch.no_grad()
def compare_with_sgd(
    params: Params,
    config: VSMLConfig,
    dataset_features: Tensor,
    labels: Tensor,
    steps: int = 2000,
    streams: int = 8,
    seed: int = 0,
    *,
    examples: int = 1,
    options: CloneOptions | None = None,
    n_classes: int | None = None,
) -> dict[str, Any]:
    """The cloned learner online next to the SGD it imitates, on the same streams (through the harness).

    The clone runs as one full A x B layer (E examples per step share one
    state, averaged as the config says). SGD starts from the clone's effective
    initial weights (the same initial-state draw) and uses the implied
    learning rate.

    Args:
        dataset_features: [N, A] floats in [0, 1] (or uint8 [N, 28, 28]).
        labels: [N] ints in [0, B).
        options: the cloning options the model was made with (defaults if None).
    Returns:
        {"clone": summary, "sgd": summary, "sgd_lr": lr, "steps", "streams", "examples"}
        with summaries as ``evaluation.imitated_sgd.summary_dict`` (windows in steps).
    """
    o = options or CloneOptions()
    feats = torch.as_tensor(dataset_features)
    if feats.dtype == torch.uint8:
        feats = feats.float() / 255.0
    feats = feats.reshape(feats.shape[0], -1)
    labels = torch.as_tensor(labels).long()
    b = int(labels.max()) + 1 if n_classes is None else n_classes
    a = feats.shape[1]
    gen = torch.Generator().manual_seed(seed + CLONE_COMPARE_OFFSET)
    x, y = draw_steps(feats, labels, steps, streams, examples, gen)
    dtype = params["w_gates"].dtype
    # the initial draw the clone's rollout makes from `seed`: w~_0 = z * init_scale / sqrt(A), W_0 = factor * w~_0
    noise = init_noise(config, a, b, streams, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    w0 = noise[0][..., 0] * config.init_scale / math.sqrt(a) * weight_factor(config, o, a)
    lr = implied_sgd_lr(config, o, a)
    data = Streams(to_streams(x.to(dtype)).numpy(), to_streams(y).numpy(), b)
    learners = [VSMLLearner(params, config, examples, name="clone"), ImitatedSGD(w0, lr, examples, name="sgd")]
    results = evaluate(learners, data, seed=seed, first_steps=FIRST_STEPS * examples, last_steps=LAST_STEPS * examples)
    return {
        "clone": summary_dict(results["clone"].summary),
        "sgd": summary_dict(results["sgd"].summary),
        "sgd_lr": lr,
        "steps": steps,
        "streams": streams,
        "examples": examples,
    }
