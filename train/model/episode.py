"""The shared rollout: run the VSML step over a stream (docs/model.md §3).

Every training method and the evaluation call ``run_episode``; nothing else
loops over time. Dimension letters: T steps, P learners, E examples per step,
A inputs, B classes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import VSMLConfig
from .params import Params
from .rollout_fused import rollout_fused
from .state import VSMLState, init_state
from .step import Impl, step

StepFn = Callable[[Params, VSMLState, Tensor, Tensor], tuple[VSMLState, Tensor]]


@dataclass(frozen=True)
class EpisodeResult:
    """Logits at every step [T, P, E, B] (made before seeing y_t) and the final state."""

    logits: Tensor
    state: VSMLState


def make_step_fn(config: VSMLConfig, impl: Impl = "fast", compile: bool = False) -> StepFn:
    """``step`` bound to a config; optionally ``torch.compile``d (training speed)."""

    def fn(params: Params, state: VSMLState, x: Tensor, y: Tensor) -> tuple[VSMLState, Tensor]:
        return step(params, state, x, y, config, impl)

    if compile:
        return torch.compile(fn, dynamic=False)  # type: ignore[return-value]
    fn.vsml_impl = impl  # type: ignore[attr-defined]  # run_episode: impl "fused" may run the whole episode in C
    fn.vsml_config = config  # type: ignore[attr-defined]
    return fn


def run_episode(
    params: Params,
    config: VSMLConfig,
    x: Tensor,
    y: Tensor,
    n_classes: int,
    *,
    seed: int | None = None,
    state: VSMLState | None = None,
    step_fn: StepFn | None = None,
    keep_grad_every: int | None = None,
) -> EpisodeResult:
    """Run one episode of T steps with test-then-train timing.

    Args:
        params: V_M (base shapes, or [P, *base] for a population).
        x: [T, P, E, A] inputs (standardised).
        y: [T, P, E] integer labels in [0, n_classes); -1 marks "no label".
        n_classes: B.
        seed: seed of the initial state (required when ``state`` is None).
        state: start from this state instead of a fresh one.
        step_fn: a prepared step (``make_step_fn``); default eager fast step. With impl "fused"
            the whole episode runs in C where ``rollout_fused`` covers the config (same numbers).
        keep_grad_every: truncated BPTT: detach the state every this many steps.
    Returns:
        ``EpisodeResult`` with logits [T, P, E, B] and the state after step T.
    """
    if x.dim() != 4 or y.shape != x.shape[:3]:
        raise ValueError(f"expected x [T, P, E, A] and y [T, P, E], got {tuple(x.shape)} and {tuple(y.shape)}")
    t_steps, p, e, a = x.shape
    if state is None:
        if seed is None:
            raise ValueError("run_episode needs a seed for the initial state (or an explicit state)")
        gen = torch.Generator().manual_seed(seed)
        state = init_state(config, a, n_classes, p, e, generator=gen, params=params, dtype=x.dtype, device=x.device)
    fn = step_fn or make_step_fn(config)
    y1h = labels_to_onehot(y, n_classes, x.dtype)
    if getattr(fn, "vsml_impl", None) == "fused" and getattr(fn, "vsml_config", None) == config:
        done = rollout_fused(params, config, x, y1h, state)  # None where the C rollout does not apply
        if done is not None:
            return EpisodeResult(logits=done[0], state=done[1])
    outs = []
    for t in range(t_steps):
        if keep_grad_every and t and t % keep_grad_every == 0:
            state = state.map(torch.Tensor.detach)
        state, logits = fn(params, state, x[t], y1h[t])
        outs.append(logits)
    return EpisodeResult(logits=torch.stack(outs), state=state)


def labels_to_onehot(y: Tensor, n_classes: int, dtype: torch.dtype) -> Tensor:
    """[...] int labels (-1 = none) -> [..., B] one-hot (all-zero for -1)."""
    if y.numel() and (int(y.max()) >= n_classes or int(y.min()) < -1):
        raise ValueError(f"labels must be in [0, {n_classes}) or -1, got range [{int(y.min())}, {int(y.max())}]")
    return F.one_hot((y + 1).long(), n_classes + 1)[..., 1:].to(dtype)


def online_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Per-step cross-entropy of predictions made before seeing y: [T, P, E, B] -> [T, P, E]."""
    return F.cross_entropy(logits.flatten(0, -2), y.flatten().long(), reduction="none", ignore_index=-1).reshape(
        y.shape
    )
