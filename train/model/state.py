"""The learned variables V_L: per-layer LSTM states and pending messages.

Dimension letters: P independent learners, E examples per step inside one
learner, A_k / B_k the inputs / outputs of layer k, N state, M message.

    h[k], c[k]  [P, E, A_k, B_k, N]  sub-RNN states (the "weights")
    bwd[k]      [P, E, B_k, M]       backward message layer k receives at the
                                     next step (absent with backward_pass)
    t           [P, E]               step count (only with ``config.counts_steps``)
    x_mean      [P, E, A]            running mean of each input feature (only with
    x_sq        [P, E, A]            online_norm) and its running second moment
    ncm_sum     [P, E, B, A]         the output mixture's class sums of the raw features,
    ncm_count   [P, E, B]            class counts and log weights of its Z experts
    mix_logw    [P, E, Z]            (only with ``ncm_temperature``; ``mixture``)
    ncm_within  [P, E, A]            pooled within-class sum of squares (only with
                                     ``gnb_temperature``, the third expert)
    lda_scatter [P, A, A]            pooled within-class scatter and the discriminant
    lda_dir     [P, A, B]            directions, one per learner (only with
                                     ``lda_temperature``, the fourth expert)

The flat names (``h_0``, ``c_0``, ``bwd_0``, ``t``, ``x_mean``, ``x_sq``, ``ncm_sum``,
``ncm_count``, ``mix_logw``, ``ncm_within``, ``lda_scatter``, ``lda_dir``) are
the ONNX input and output names of the exported step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .config import VSMLConfig
from .mixture import NCMState, initial_ncm
from .params import Params

NCM_NAMES = ("ncm_sum", "ncm_count", "mix_logw")
GNB_NAMES = ("ncm_within",)
LDA_NAMES = ("lda_scatter", "lda_dir")


def ncm_names(config: VSMLConfig) -> tuple[str, ...]:
    """The mixture's state names for ``config`` (none without ``ncm_temperature``)."""
    if config.ncm_temperature is None:
        return ()
    gnb = GNB_NAMES if config.gnb_temperature is not None else ()
    return NCM_NAMES + gnb + (LDA_NAMES if config.lda_temperature is not None else ())


@dataclass(frozen=True)
class VSMLState:
    """Immutable container of the state tensors of every layer."""

    h: tuple[Tensor, ...]
    c: tuple[Tensor, ...]
    bwd: tuple[Tensor, ...]
    t: Tensor | None = None
    norm: tuple[Tensor, Tensor] | None = None  # (x_mean, x_sq) [P, E, A] with online_norm
    ncm: NCMState | None = None  # (ncm_sum, ncm_count, mix_logw[, ncm_within[, lda_scatter, lda_dir]])

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
        if self.norm is not None:
            d["x_mean"], d["x_sq"] = self.norm
        if self.ncm is not None:
            d.update(zip((NCM_NAMES + GNB_NAMES + LDA_NAMES)[: len(self.ncm)], self.ncm, strict=True))
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
            t=d["t"] if config.counts_steps else None,
            norm=(d["x_mean"], d["x_sq"]) if config.online_norm else None,
            ncm=tuple(d[n] for n in ncm_names(config)) if config.ncm_temperature is not None else None,
        )

    def map(self, fn: Callable[[Tensor], Tensor]) -> VSMLState:
        """Apply ``fn`` to every tensor (e.g. ``detach``, ``.to(device)``)."""
        return VSMLState(
            h=tuple(fn(x) for x in self.h),
            c=tuple(fn(x) for x in self.c),
            bwd=tuple(fn(x) for x in self.bwd),
            t=None if self.t is None else fn(self.t),
            norm=None if self.norm is None else (fn(self.norm[0]), fn(self.norm[1])),
            ncm=None if self.ncm is None else tuple(fn(v) for v in self.ncm),
        )


def state_names(config: VSMLConfig) -> list[str]:
    """The flat state names in a fixed order (ONNX input / output order)."""
    names = []
    for k in range(config.n_layers):
        names += [f"h_{k}", f"c_{k}"]
    if not config.backward_pass:
        names += [f"bwd_{k}" for k in range(config.n_layers)]
    if config.counts_steps:
        names.append("t")
    if config.online_norm:
        names += ["x_mean", "x_sq"]
    names += list(ncm_names(config))
    return names


def init_noise(
    config: VSMLConfig,
    n_features: int,
    n_classes: int,
    n_learners: int,
    *,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
) -> list[Tensor]:
    """Standard normal draws truncated at +-2, one [P, A_k, B_k, N/2] tensor per layer.

    Drawn on the CPU in float64 from ``generator`` (device independent); zero
    when ``init_random`` is off. This is the only randomness of a new episode:
    ``state_from_noise`` turns it into the state.
    """
    if n_features < 1 or n_classes < 2:
        raise ValueError(f"need n_features >= 1 and n_classes >= 2, got {n_features}, {n_classes}")
    if n_learners < 1:
        raise ValueError(f"need n_learners >= 1, got {n_learners}")
    out = []
    for a, b in config.layer_sizes(n_features, n_classes):
        z = torch.zeros(n_learners, a, b, config.state_size // 2, dtype=torch.float64)
        if config.init_random:
            torch.nn.init.trunc_normal_(z, 0.0, 1.0, -2.0, 2.0, generator=generator)
        out.append(z.to(dtype))
    return out


def state_from_noise(config: VSMLConfig, params: Params | None, noise: list[Tensor], n_examples: int = 1) -> VSMLState:
    """A fresh episode's state from ``init_noise`` (docs/model.md §3.3).

    Args:
        params: V_M, needed only by init_mode "encoded" (base or [P, *base]).
        noise: per layer [P, A_k, B_k, N/2] standard truncated normal draws.
        n_examples: E; every example of a learner starts from the same state
            (a size read from a tensor's shape when traced, e.g. by the exporter).
    Returns:
        "random": h = 0, c[..., :N/2] = noise * init_scale / sqrt(A_k), rest 0.
        "encoded": w = noise[..., 0] * init_scale / sqrt(A_k) (one random weight
        per cell), c = w * init_enc_c, h = w * init_enc_h.
    """
    if n_examples < 1:
        raise ValueError(f"need n_examples >= 1, got {n_examples}")
    n, m = config.state_size, config.msg_size
    hs, cs, bwds = [], [], []
    for k, z in enumerate(noise):
        # A_k read as a float64 tensor, not a Python int, so that a tracer keeps it symbolic; float64 sqrt
        # and division then rounding to z's dtype give the numbers of init_scale / math.sqrt(A_k)
        a = torch.ones_like(z[0, :, 0, 0], dtype=torch.float64).sum()
        std = (config.init_scale / torch.sqrt(a)).to(z.dtype)
        if config.init_mode == "random":
            c = torch.cat([z * std, torch.zeros_like(z)], dim=-1)  # [P, A, B, N]
            h = torch.zeros_like(c)
        else:
            if params is None:
                raise ValueError("init_mode 'encoded' needs V_M to build the initial state")
            enc_c, enc_h = _layer_vec(params, "init_enc_c", k, config), _layer_vec(params, "init_enc_h", k, config)
            w = (z[..., :1] * std).to(enc_c.dtype)  # [P, A, B, 1]
            c, h = w * enc_c, w * enc_h
        # -1 keeps P, A, B symbolic when traced (E is n_examples)
        hs.append(h.unsqueeze(1).expand(-1, n_examples, -1, -1, n))  # [P, E, A, B, N]
        cs.append(c.unsqueeze(1).expand(-1, n_examples, -1, -1, n))
        bwds.append(torch.zeros_like(c[:, :1, :, :1]).expand(-1, n_examples, -1, m))  # [P, 1, B, 1] -> [P, E, B, M]
    t = torch.zeros_like(cs[0][:, :, 0, 0, 0])  # [P, E]
    norm = None
    if config.online_norm:
        x_mean = torch.zeros_like(cs[0][:, :, :, 0, 0])  # [P, E, A_1]; A_1 counts the bias input
        if config.n_bias_inputs:
            x_mean = x_mean[:, :, : -config.n_bias_inputs]
        norm = (x_mean, torch.ones_like(x_mean))  # the prior: mean 0, second moment 1
    ncm = None
    if config.ncm_temperature is not None:
        assert norm is not None, "ncm_temperature needs online_norm (checked by VSMLConfig)"
        ncm = initial_ncm(norm[0], bwds[-1][..., 0], config)  # bwds[-1][..., 0]: [P, E, B]
    return VSMLState(
        h=tuple(hs),
        c=tuple(cs),
        bwd=tuple(bwds) if not config.backward_pass else (),
        t=t if config.counts_steps else None,
        norm=norm,
        ncm=ncm,
    )


def _layer_vec(params: Params, name: str, k: int, config: VSMLConfig) -> Tensor:
    """A [N] V_M vector of layer k, shaped [N] or [P, 1, 1, N] to broadcast over [P, A, B, N]."""
    v = params[name]
    has_pop = v.dim() == (1 if config.shared_params else 2) + 1
    if not config.shared_params:
        v = v[:, k] if has_pop else v[k]
    return v.reshape(v.shape[0], 1, 1, -1) if has_pop else v


def init_state(
    config: VSMLConfig,
    n_features: int,
    n_classes: int,
    n_learners: int,
    n_examples: int = 1,
    *,
    generator: torch.Generator,
    params: Params | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> VSMLState:
    """A fresh episode's state: ``init_noise`` then ``state_from_noise``.

    Each learner gets its own draw, shared by its E examples (one random
    weight init per learner). Shapes as in the module docstring.
    """
    noise = init_noise(config, n_features, n_classes, n_learners, generator=generator, dtype=dtype)
    return state_from_noise(config, params, [z.to(device) for z in noise], n_examples)
