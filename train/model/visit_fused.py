"""The fused inference visit: every cell's micro ticks in one compiled C loop (``fused_ticks.c``).

Dimension letters as in ``cell``: P learners, E examples, A inputs, B outputs,
N state, M message, J = 4N gate pre-activations (order i, g, f, o).

``visit_fused`` has the signature and the numbers of the other visits (held
to the per-cell reference in ``tests/test_step.py``). The message terms are
computed in torch on [A] and [B] (``cell.input_terms``), the ticks of all
G * A * B cells run in C with each cell's h, c and gate vector in registers
and W_h in L1, then the heads run in torch. The kernel is built from the
shipped source with the system C compiler at first use (``cc -O3
-march=native``, cached under ``$VSML_KERNEL_CACHE`` or ~/.cache/vsml) and
loaded with ctypes; wherever it cannot run (no compiler, ``VSML_FUSED=0``,
autograd, tracing, a non-CPU tensor, a dtype other than float32 / float64,
N > 64) the visit falls back to ``visits.visit_fast``, the plain graph with
the same numbers.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from functools import partial
from pathlib import Path

import torch
from torch import Tensor

from .cell import AverageFn, VisitFn, average_and_clip, gate_bias, heads, input_terms, is_tracing, split_rows
from .config import VSMLConfig
from .params import Params, base_ndim
from .visits import visit_fast

SOURCE = Path(__file__).with_name("fused_ticks.c")
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp-simd", "-shared", "-fPIC"]
if platform.machine().lower() in ("x86_64", "amd64"):
    FLAGS.insert(4, "-mprefer-vector-width=512")  # x86 only; gcc otherwise keeps 256-bit vectors on AVX-512
_LIB: ctypes.CDLL | None = None
_TRIED = False


def _cpu_key() -> str:
    """The CPU's feature flags (``-march=native`` builds are only valid on the same kind of CPU)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return line
    except OSError:
        pass
    return platform.processor() + platform.machine()


def build(cache: Path | None = None, extra: tuple[str, ...] = ()) -> Path | None:
    """Compile ``fused_ticks.c`` into a cached shared library; its path, or None without a C compiler.

    ``extra``: more compiler flags (tests build the portable kernel with ``-DVSML_NO_AVX512``).
    """
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    flags = [*FLAGS, *extra]
    key = hashlib.sha256((SOURCE.read_text() + " ".join(flags) + cc + _cpu_key()).encode()).hexdigest()[:16]
    folder = cache or Path(os.environ.get("VSML_KERNEL_CACHE", Path.home() / ".cache" / "vsml"))
    lib = folder / f"fused_ticks-{key}.so"
    if lib.exists():
        return lib
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            out = Path(tmp) / lib.name
            subprocess.run([cc, *flags, "-o", str(out), str(SOURCE), "-lm"], check=True, capture_output=True)
            os.replace(out, lib)  # atomic: concurrent builders leave one complete file
    except (OSError, subprocess.CalledProcessError) as err:  # no compiler, a failed build, a read-only cache
        warnings.warn(f"vsml: fused kernel not built ({err}); using the plain visit", stacklevel=2)
        return None
    return lib


def kernel() -> ctypes.CDLL | None:
    """The loaded kernel (built on first call), or None where it is disabled or cannot be built."""
    global _LIB, _TRIED
    if os.environ.get("VSML_FUSED", "1") == "0":
        return None
    if not _TRIED:
        _TRIED = True
        path = build()
        lib = None
        if path is not None:
            try:
                lib = ctypes.CDLL(str(path))
            except OSError as err:  # e.g. a cache on a noexec mount
                warnings.warn(f"vsml: fused kernel not loaded ({err}); using the plain visit", stacklevel=2)
        if lib is not None:
            _LIB = declare(lib)
    return _LIB


def declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Set the argument and result types of the kernel's entry points; returns ``lib``."""
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    for name in ("vsml_ticks_f32", "vsml_ticks_f64"):
        getattr(lib, name).restype = None
        getattr(lib, name).argtypes = [i64] * 8 + [ctypes.c_double] + [ptr] * 7
    for name in ("vsml_rollout_f32", "vsml_rollout_f64"):  # rollout_fused.py
        getattr(lib, name).restype = i64
        getattr(lib, name).argtypes = [i64] * 3 + [ptr] + [i64] * 3 + [ptr] * 2 + [i64] + [ptr] * 6
    lib.vsml_max_state.restype = i64
    return lib


def fused_available() -> bool:
    """True when ``visit_fused`` runs the C kernel on this machine (else it is ``visit_fast``)."""
    return kernel() is not None


def kernel_applies(lib: ctypes.CDLL | None, p: Params, tensors: list[Tensor | None], n: int) -> bool:
    """Whether the kernel ``lib`` can run on ``tensors`` (the first one sets device and dtype) with state size n.

    Not where it is missing, under tracing, with n above its maximum, or where autograd needs a graph.
    """
    if lib is None or is_tracing() or n > lib.vsml_max_state():
        return False
    grads = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in [*tensors, *p.values()])
    h = tensors[0]
    assert h is not None
    return not grads and h.device.type == "cpu" and h.dtype in (torch.float32, torch.float64)


def visit_fused(
    p: Params,
    h: Tensor,
    c: Tensor,
    fwd_in: Tensor,
    bwd_in: Tensor | None,
    extras: tuple[Tensor | None, Tensor | None],
    config: VSMLConfig,
    want_fwd: bool,
    want_bwd: bool,
    clip: float | None = None,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Micro ticks of one layer in the C kernel, then the heads (same contract as ``visits.visit_blocked``).

    Args:
        p: this layer's V_M (base shapes or [P, *base]).
        h, c: [P, E, A, B, N].
        fwd_in: [P, E, A, M]; bwd_in: [P, E, B, M] or None.
        extras: (row [A, Xr] or None, column [P, E, B, Xc] or None).
        clip: also clamp the new h and c to [-clip, clip] (the step's clipping, fused; see ``fused_schedule``).
    Returns:
        h, c [P, E, A, B, N]; fwd_out [P, E, B, M] or None; bwd_out [P, E, A, M] or None.
    """
    n = config.state_size
    lib = None if is_tracing() else kernel()  # nothing to build or load while torch.compile / export trace
    if not kernel_applies(lib, p, [h, c, fwd_in, bwd_in], n):
        h, c, fwd_out, bwd_out = visit_fast(p, h, c, fwd_in, bwd_in, extras, config, want_fwd, want_bwd)
        if clip is not None:
            h, c = h.clamp(-clip, clip), c.clamp(-clip, clip)
        return h, c, fwd_out, bwd_out
    assert lib is not None
    with torch.no_grad():
        pp, e, a, b = h.shape[:4]
        dt = h.dtype
        w = {k: v.to(dt) for k, v in split_rows(p, config).items()} | {"bias": gate_bias(p, config).to(dt)}
        row, col = input_terms(w, fwd_in.to(dt), None if bwd_in is None else bwd_in.to(dt), extras)
        row = row.expand(pp, e, a, 4 * n).contiguous()  # [P, E, A, J]
        col = col.expand(pp, e, b, 4 * n).contiguous()  # [P, E, B, J]
        per_learner = w["h"].dim() == base_ndim("w_gates") + 1
        wh = w["h"].contiguous()  # [N, J] or [P, N, J]
        h_in, c_in = h.contiguous(), c.to(dt).contiguous()
        h, c = torch.empty_like(h_in), torch.empty_like(c_in)
        fn = lib.vsml_ticks_f32 if dt == torch.float32 else lib.vsml_ticks_f64
        fn(pp * e, a, b, n, config.micro_ticks, e, 4 * n * n if per_learner else 0, int(clip is not None),
           0.0 if clip is None else float(clip), row.data_ptr(), col.data_ptr(), wh.data_ptr(), h_in.data_ptr(),
           c_in.data_ptr(), h.data_ptr(), c.data_ptr())  # fmt: skip
    return (h, c, *heads(p, h, config, want_fwd, want_bwd))


def fused_schedule(config: VSMLConfig, n_examples: int) -> tuple[VisitFn, AverageFn]:
    """The visit for each layer's last visit of a step and the end-of-step stabiliser, for impl "fused".

    Without batch averaging in between (E = 1 or ``batch_average`` "none")
    the step's clipping moves into the kernel of the layer's last visit (one
    pass over the state fewer) and the end-of-step stabiliser does nothing;
    otherwise it is ``visit_fused`` and ``cell.average_and_clip`` as usual.
    """
    if config.batch_average != "none" and n_examples > 1:
        return visit_fused, average_and_clip
    return partial(visit_fused, clip=config.clip), _keep


def _keep(h: Tensor, c: Tensor, config: VSMLConfig) -> tuple[Tensor, Tensor]:
    """No stabiliser: the kernel already clipped h and c [P, E, A, B, N]."""
    return h, c
