"""The meta variables V_M: the shared sub-RNN parameters (docs/model.md §2).

V_M is a ``dict[str, Tensor]``. Base shapes (U = 2M + X cell inputs):

    w_gates  [U + N, 4N]   one linear map of [u_ab, h_ab] -> gates i, g, f, o
    b_gates  [4N]
    w_fwd    [N, M], b_fwd [M]   forward message head
    w_bwd    [N, M], b_bwd [M]   backward message head
    ln_fwd_g, ln_fwd_b, ln_bwd_g, ln_bwd_b  [M]   (only with layer_norm)
    init_enc_c, init_enc_h  [N]   (only with init_mode "encoded")

With ``shared_params=False`` every tensor gets a leading layer axis [K, ...].
A population of P learners with their own V_M adds a leading [P, ...] axis in
front of everything (``VSMLConfig`` decides how many base dims there are).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .config import VSMLConfig

Params = dict[str, Tensor]


def param_shapes(config: VSMLConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of every V_M tensor, including the layer axis when per-layer."""
    n, m, u = config.state_size, config.msg_size, config.cell_input_size
    shapes: dict[str, tuple[int, ...]] = {
        "w_gates": (u + n, 4 * n),
        "b_gates": (4 * n,),
        "w_fwd": (n, m),
        "b_fwd": (m,),
        "w_bwd": (n, m),
        "b_bwd": (m,),
    }
    if config.layer_norm:
        shapes.update({"ln_fwd_g": (m,), "ln_fwd_b": (m,), "ln_bwd_g": (m,), "ln_bwd_b": (m,)})
    if config.init_mode == "encoded":
        shapes.update({"init_enc_c": (n,), "init_enc_h": (n,)})
    if not config.shared_params:
        shapes = {k: (config.n_layers, *s) for k, s in shapes.items()}
    return shapes


def base_ndim(name: str) -> int:
    """Number of dims of a V_M tensor without layer or population axes."""
    return 2 if name.startswith("w_") else 1


def init_params(config: VSMLConfig, seed: int, dtype: torch.dtype = torch.float32) -> Params:
    """Fresh V_M: fan-in scaled normal weights, zero biases, unit LN gains."""
    gen = torch.Generator().manual_seed(seed)
    out: Params = {}
    for name, shape in param_shapes(config).items():
        if name.startswith("w_"):
            fan_in = shape[-2]
            t = torch.randn(shape, generator=gen, dtype=torch.float64) / math.sqrt(fan_in)
        elif name == "init_enc_c":  # start like "random": the weight sits in unit 0 of c
            t = torch.zeros(shape, dtype=torch.float64)
            t[..., 0] = 1.0
        elif name.endswith("_g"):
            t = torch.ones(shape, dtype=torch.float64)
        else:
            t = torch.zeros(shape, dtype=torch.float64)
        out[name] = t.to(dtype)
    return out


def check_params(params: Params, config: VSMLConfig) -> int | None:
    """Validate names and shapes; return the population size P or None."""
    shapes = param_shapes(config)
    if set(params) != set(shapes):
        raise ValueError(f"V_M has tensors {sorted(params)}, the config expects {sorted(shapes)}")
    pops = set()
    for name, shape in shapes.items():
        t = params[name]
        if tuple(t.shape) == shape:
            pops.add(None)
        elif t.dim() == len(shape) + 1 and tuple(t.shape[1:]) == shape:
            pops.add(int(t.shape[0]))
        else:
            raise ValueError(f"V_M tensor {name!r} has shape {tuple(t.shape)}, expected {shape} or [P, *{shape}]")
    if len(pops) > 1:
        raise ValueError(f"V_M tensors disagree on the population axis: {pops}")
    return pops.pop()


def flatten(params: Params) -> Tensor:
    """Concatenate V_M into one flat vector (sorted by name) for ES / CMA-ES."""
    return torch.cat([params[k].reshape(-1) for k in sorted(params)])


def unflatten(flat: Tensor, config: VSMLConfig) -> Params:
    """Inverse of ``flatten``. ``flat`` is [D] or [P, D] (population)."""
    shapes = param_shapes(config)
    need = sum(math.prod(s) for s in shapes.values())
    if flat.shape[-1] != need:
        raise ValueError(f"flat V_M has {flat.shape[-1]} numbers, the config needs {need}")
    lead = tuple(flat.shape[:-1])
    out: Params = {}
    i = 0
    for k in sorted(shapes):
        size = math.prod(shapes[k])
        out[k] = flat[..., i : i + size].reshape(*lead, *shapes[k])
        i += size
    return out


def n_params(config: VSMLConfig) -> int:
    """Size of V_M (2384 at the reference defaults)."""
    return sum(math.prod(s) for s in param_shapes(config).values())
