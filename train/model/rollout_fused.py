"""Whole episodes in the fused C kernel, learner after learner (``vsml_rollout_*`` in ``fused_ticks.c``).

Dimension letters as in ``cell``: T steps, P learners, E examples per step,
A inputs, B classes, K layers, N state, M message, J = 4N, S the packed V_M
of one layer.

``run_episode`` with a step of impl "fused" calls ``rollout_fused`` first: for
the configs it covers it runs all T steps of one learner before the next, so
that one learner's state (1 MiB at 784x10, N = 16) stays in the core's cache
for the whole episode instead of streaming the population's state (64 MiB for
64 learners) through memory at every step, and no torch op runs between the
steps. The numbers are those of ``step`` with impl "fused" / "fast" (held to
them in ``tests/test_rollout_fused.py``): the same cell math, message terms,
heads (on the unclipped h, clip after), logits and error message.

It returns None (and ``run_episode`` steps in torch as before) wherever it
does not apply: no kernel (``visit_fused.kernel``), autograd or tracing, a
non-CPU tensor, a dtype other than float32 / float64, E > 1, N > 64, or a
config with LayerNorm, the backward pass, extra cell inputs, online input
standardisation or an annealed error.
"""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor

from .cell import gate_bias, layer_params, split_rows
from .config import VSMLConfig
from .params import Params, base_ndim
from .state import VSMLState
from .visit_fused import kernel, kernel_applies

REDUCTIONS = {"mean": 0, "sum": 1, "sqrt": 2}


def covers(config: VSMLConfig) -> bool:
    """True when the C rollout implements every option of ``config`` (else the torch step runs)."""
    return not (
        config.layer_norm
        or config.backward_pass
        or config.online_norm
        or config.n_extra_inputs
        or config.error_decay_steps is not None
    )


def pack_params(params: Params, config: VSMLConfig, dtype: torch.dtype) -> Tensor:
    """V_M as the kernel reads it: [P | 1, K, S] (W_f, W_b, W_h, gate bias, w_fwd, b_fwd, w_bwd, b_bwd)."""
    layers = []
    for k in range(config.n_layers):
        p = layer_params(params, k, config)
        rows = split_rows(p, config)
        pieces = [rows["f"], rows["b"], rows["h"], gate_bias(p, config), p["w_fwd"], p["b_fwd"], p["w_bwd"], p["b_bwd"]]
        names = ["w_gates"] * 3 + ["b_gates", "w_fwd", "b_fwd", "w_bwd", "b_bwd"]
        flat = [
            t.reshape(t.shape[0] if t.dim() > base_ndim(nm) else 1, -1) for t, nm in zip(pieces, names, strict=True)
        ]
        lead = max(t.shape[0] for t in flat)
        layers.append(torch.cat([t.expand(lead, -1) for t in flat], dim=1))
    return torch.stack(layers, dim=1).to(dtype).contiguous()


def _usable(params: Params, config: VSMLConfig, x: Tensor, y1h: Tensor, state: VSMLState) -> bool:
    if not covers(config) or x.shape[2] != 1:
        return False
    tensors: list[Tensor | None] = [x, y1h, *state.h, *state.c, *state.bwd]
    if not kernel_applies(kernel(), params, tensors, config.state_size):
        return False
    return all(t is not None and t.device.type == "cpu" for t in [*tensors, *params.values()])


def rollout_fused(
    params: Params, config: VSMLConfig, x: Tensor, y1h: Tensor, state: VSMLState
) -> tuple[Tensor, VSMLState] | None:
    """All T steps of P learners in C, or None where the C rollout does not apply (see the module docstring).

    Args:
        params: V_M (base shapes, or [P, *base] for a population).
        x: [T, P, 1, A] inputs; y1h: [T, P, 1, B] one-hot labels (all-zero rows: no label).
        state: the state before step 0 (not modified).
    Returns:
        (logits [T, P, 1, B], the state after step T) as ``run_episode`` would give them, or None.
    """
    if not _usable(params, config, x, y1h, state):
        return None
    lib = kernel()
    assert lib is not None
    with torch.no_grad():
        t_steps, pop, _, a = x.shape
        b = y1h.shape[-1]
        dt = x.dtype
        vm = pack_params(params, config, dt)
        dims = [a + config.n_bias_inputs, *config.hidden, b]
        if vm.shape[0] not in (1, pop) or any(hk.shape[0] != pop for hk in state.h):
            return None
        hs = [hk.to(dt).clone(memory_format=torch.contiguous_format) for hk in state.h]
        cs = [ck.to(dt).clone(memory_format=torch.contiguous_format) for ck in state.c]
        bwds = [bk.to(dt).clone(memory_format=torch.contiguous_format) for bk in state.bwd]
        xc, yc = x.to(dt).contiguous(), y1h.to(dt).contiguous()
        logits = torch.empty(t_steps, pop, 1, b, dtype=dt)
        opt = [
            float(config.clip is not None),
            0.0 if config.clip is None else float(config.clip),
            float(config.bias_input is not None),
            0.0 if config.bias_input is None else float(config.bias_input),
            float(config.tanh_bound),
            float(config.output_gain),
            float(config.error_scale),
            float(config.feed_label),
            float(config.output_channel),
            float(REDUCTIONS[config.reduction]),
        ]
        k = config.n_layers

        def ptrs(ts: list[Tensor]) -> ctypes.Array[ctypes.c_void_p]:
            return (ctypes.c_void_p * k)(*[t.data_ptr() for t in ts])

        fn = lib.vsml_rollout_f32 if dt == torch.float32 else lib.vsml_rollout_f64
        rc = fn(pop, t_steps, k, (ctypes.c_int64 * (k + 1))(*dims), config.state_size, config.msg_size,
                config.micro_ticks, (ctypes.c_double * len(opt))(*opt), vm.data_ptr(),
                0 if vm.shape[0] == 1 else vm[0].numel(), xc.data_ptr(), yc.data_ptr(), ptrs(hs), ptrs(cs),
                ptrs(bwds), logits.data_ptr())  # fmt: skip
        if rc != 0:
            raise MemoryError("vsml: the fused rollout could not allocate its scratch memory")
    t = None if state.t is None else state.t + t_steps
    return logits, VSMLState(h=tuple(hs), c=tuple(cs), bwd=tuple(bwds), t=t, norm=state.norm)
