"""Verification of exported graphs: ONNX Runtime against PyTorch at sizes unlike the trace's.

A size baked into a graph by a tracer, or a wrong number from an exporter,
fails the export here instead of shipping.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from torch import Tensor

from vsml_runtime import format as fmt
from vsml_train.model.config import VSMLConfig
from vsml_train.model.state import init_noise, state_from_noise, state_names

from .module import StepModule
from .options import ExportError
from .trace import step_args

# sizes the exported graph is verified at (different from the trace sizes)
_VERIFY_SIZES = ((1, 1, 4, 2, (3, 4, 5, 3, 4, 5)), (3, 2, 10, 3, (5, 2, 7, 2, 3, 2)))
VERIFY_TOL = 1e-4
# with lda_max_features: a size just above the limit too (the branch without the LDA expert) where small
_ABOVE_LIMIT_UP_TO = 1024


def verify_sizes(config: VSMLConfig) -> tuple[tuple[int, int, int, int, tuple[int, ...]], ...]:
    """(P, E, A, B, hidden) to verify at: ``_VERIFY_SIZES``; with ``lda_max_features``, sizes on both sides of it.

    A = the limit + 1 when no size is above it (and that is small), A = the limit when none is within it.
    """
    limit = config.lda_max_features if config.lda_temperature is not None else None
    sizes = list(_VERIFY_SIZES)
    if limit is None:
        return tuple(sizes)
    if not any(a > limit for _, _, a, _, _ in sizes) and limit < _ABOVE_LIMIT_UP_TO:
        sizes.append((2, 1, limit + 1, 3, (2, 3, 2, 3, 2, 3)))
    if not any(a <= limit for _, _, a, _, _ in sizes) and limit >= 1:
        sizes.append((2, 2, limit, 2, (3, 2, 3, 2, 3, 2)))
    return tuple(sizes)


def _ort_session(graph: onnx.ModelProto):
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ExportError('verification needs ONNX Runtime: pip install "vsml[cpu]" (or pass --no-verify)') from exc
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(graph.SerializeToString(), so, providers=["CPUExecutionProvider"])


def verify(
    step_graph: onnx.ModelProto,
    init_graph: onnx.ModelProto,
    params: dict[str, Tensor],
    config: VSMLConfig,
    n_steps: int = 3,
) -> float:
    """Max |ONNX Runtime - PyTorch| over states and logits at sizes unlike the trace's.

    Runs ``n_steps`` consecutive steps, each from the PyTorch state, and the
    init graph against ``init_from_noise``'s formula via ``init_state``'s
    layout. Raises ``ExportError`` above ``VERIFY_TOL``.
    """
    sess = _ort_session(step_graph)
    init_sess = _ort_session(init_graph)
    names = state_names(config)
    worst = 0.0
    for i, (p, e, a, b, hidden) in enumerate(verify_sizes(config)):
        sizes = [a, *hidden[: len(config.hidden)], b]
        args = step_args(params, config, p, e, sizes, seed=10 + i)
        state = dict(zip(names, args[: len(names)], strict=True))
        gen = torch.Generator().manual_seed(20 + i)
        for t in range(n_steps):
            x = torch.randn(p, e, a, generator=gen) * (3.0 if t == 1 else 1.0)
            y = torch.randint(-1, b, (p, e), generator=gen)
            feed = {n: v.numpy() for n, v in state.items()} | {fmt.X_NAME: x.numpy(), fmt.Y_NAME: y.numpy()}
            got = sess.run(None, feed)
            module = StepModule(params, config)
            with torch.no_grad():
                ref = module(*(state[n] for n in names), x, y)
            for name, g, r in zip([*names, fmt.LOGITS_NAME], got, ref, strict=True):
                if g.shape != tuple(r.shape):
                    raise ExportError(f"verification: {name} has shape {g.shape}, PyTorch gives {tuple(r.shape)}")
                err = float(np.max(np.abs(g - r.numpy()))) if g.size else 0.0
                if not err <= VERIFY_TOL:
                    raise ExportError(
                        f"verification failed: {name} differs from PyTorch by {err:.3g} > {VERIFY_TOL} at "
                        f"P={p} E={e} sizes={sizes} step {t} (exporter bug or a size baked into the graph)"
                    )
                worst = max(worst, err)
            state = dict(zip(names, ref[: len(names)], strict=True))
        worst = max(worst, _verify_init(init_sess, params, config, p, e, sizes, seed=30 + i))
    return worst


def _verify_init(
    sess: object, params: dict[str, Tensor], config: VSMLConfig, p: int, e: int, sizes: list[int], seed: int
) -> float:
    """Init graph vs ``state_from_noise`` on the same ``init_noise`` draws."""
    cfg = config.replace(hidden=tuple(sizes[1:-1]))
    noise = init_noise(cfg, sizes[0], sizes[-1], p, generator=torch.Generator().manual_seed(seed))
    ref = state_from_noise(cfg, params, noise, e).to_dict()
    feed = {f"noise_{k}": z.numpy() for k, z in enumerate(noise)} | {fmt.EXAMPLES_NAME: np.zeros(e, np.float32)}
    got = sess.run(None, feed)  # type: ignore[attr-defined]
    worst = 0.0
    for name, g in zip(state_names(config), got, strict=True):
        r = ref[name].numpy()
        if g.shape != r.shape:
            raise ExportError(f"init verification: {name} has shape {g.shape}, state_from_noise gives {r.shape}")
        err = float(np.max(np.abs(g - r))) if g.size else 0.0
        if not err <= 1e-6:
            raise ExportError(
                f"init verification failed: {name} differs from state_from_noise by {err:.3g} at sizes {sizes}"
            )
        worst = max(worst, err)
    return worst
