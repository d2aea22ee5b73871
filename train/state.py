"""The learned variables V_L: per-layer LSTM states and pending messages.

Dimension letters: P independent learners, E examples per step inside one
learner, A_k / B_k the inputs / outputs of layer k, N state, M message.

    h[k], c[k]  [P, E, A_k, B_k, N]  sub-RNN states (the "weights")
    bwd[k]      [P, E, B_k, M]       backward message layer k receives at the
                                     next step (absent with backward_pass)
    t           [P, E]               step count (only with time_input)

The flat names (``h_0``, ``c_0``, ``bwd_0``, ``t``) are the ONNX input and
output names of the exported step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .config import VSMLConfig


@dataclass(frozen=True)
class VSMLState:
    """Immutable container of the state tensors of every layer."""

    h: tuple[Tensor, ...]
    c: tuple[Tensor, ...]
    bwd: tuple[Tensor, ...]
    t: Tensor | None = None

    def to_dict(self) -> dict[str, Tensor]:
        """Flat ``{name: tensor}`` with the ONNX names."""
        d: dict[str, Tensor] = {}
        for k, (h, c) in enumerate(zip(self.h, self.c, strict=True)):
            d[f"h_{k}"] = h
            d[f"c_{k}"] = c
        for k, b in enumerate(self.bwd):
            d[f"bwd_{k}"] = b
        if self.t is not None:
            d["t"] = self.t
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Tensor], config: VSMLConfig) -> VSMLState:
        """Inverse of ``to_dict``; raises ``ValueError`` naming missing keys."""
        names = state_names(config)
        missing = [n for n in names if n not in d]
        extra = [n for n in d if n not in names]
        if missing or extra:
            raise ValueError(f"state tensors: missing {missing}, unexpected {extra}; expected {names}")
        k = config.n_layers
        return cls(
            h=tuple(d[f"h_{i}"] for i in range(k)),
            c=tuple(d[f"c_{i}"] for i in range(k)),
            bwd=tuple(d[f"bwd_{i}"] for i in range(k)) if not config.backward_pass else (),
            t=d["t"] if config.time_input else None,
        )

    def map(self, fn: Callable[[Tensor], Tensor]) -> VSMLState:
        """Apply ``fn`` to every tensor (e.g. ``detach``, ``.to(device)``)."""
        return VSMLState(
            h=tuple(fn(x) for x in self.h),
            c=tuple(fn(x) for x in self.c),
            bwd=tuple(fn(x) for x in self.bwd),
            t=None if self.t is None else fn(self.t),
        )


def state_names(config: VSMLConfig) -> list[str]:
    """The flat state names in a fixed order (ONNX input / output order)."""
    names = []
    for k in range(config.n_layers):
        names += [f"h_{k}", f"c_{k}"]
    if not config.backward_pass:
        names += [f"bwd_{k}" for k in range(config.n_layers)]
    if config.time_input:
        names.append("t")
    return names


def init_state(
    config: VSMLConfig,
    n_features: int,
    n_classes: int,
    n_learners: int,
    n_examples: int = 1,
    *,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> VSMLState:
    """A fresh episode's state (reference section 3, "Initial state").

    h = 0; the first N/2 units of c are drawn from a normal truncated at two
    standard deviations with std ``init_scale / sqrt(A_k)``, one draw per
    learner, shared by its E examples (like one random weight init); the rest
    is 0. Draws happen on the CPU from ``generator`` so that results do not
    depend on the device.
    """
    if n_features < 1 or n_classes < 2:
        raise ValueError(f"need n_features >= 1 and n_classes >= 2, got {n_features}, {n_classes}")
    if n_learners < 1 or n_examples < 1:
        raise ValueError(f"need n_learners >= 1 and n_examples >= 1, got {n_learners}, {n_examples}")
    n, m = config.state_size, config.msg_size
    p, e = n_learners, n_examples
    hs, cs, bwds = [], [], []
    for a, b in config.layer_sizes(n_features, n_classes):
        h = torch.zeros(p, e, a, b, n, dtype=dtype)
        c = torch.zeros(p, e, a, b, n, dtype=dtype)
        if config.init_random:
            std = config.init_scale / math.sqrt(a)
            w = torch.empty(p, 1, a, b, n // 2, dtype=torch.float64)
            torch.nn.init.trunc_normal_(w, 0.0, std, -2 * std, 2 * std, generator=generator)
            c = torch.cat([w.to(dtype).expand(p, e, a, b, n // 2), c[..., n // 2 :]], dim=-1)
        hs.append(h.to(device))
        cs.append(c.to(device))
        bwds.append(torch.zeros(p, e, b, m, dtype=dtype, device=device))
    return VSMLState(
        h=tuple(hs),
        c=tuple(cs),
        bwd=tuple(bwds) if not config.backward_pass else (),
        t=torch.zeros(p, e, dtype=dtype, device=device) if config.time_input else None,
    )
