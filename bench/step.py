"""Benchmark one VSML step on the CPU: the fast step (eager and compiled) against the naive step.

Run as ``python bench/step.py [--threads 2] [--seconds 2] [--clock wall|cpu] [--no-compile]``.
Where the C kernel builds, impl "fused" (``vsml_train.model.visit_fused``) is timed too.

Dimension letters as in ``vsml_train.model.step``: P learners (1 here), E examples
per step, A inputs, B outputs, N state, M message.

For each (A, B, N, E) row the three step functions are built with
``vsml_train.model.episode.make_step_fn`` (exactly as the training code builds
them), warmed up, checked against each other, then timed in interleaved
rounds (one call of each per round) so that load from other processes hits
all of them alike; the table reports medians. The machine's fp32
matrix-multiply rate (``torch.mm`` 1024 x 1024) is measured in the same run
as the yardstick for the GFLOP/s column.

``--clock cpu`` times with ``time.process_time`` (CPU seconds of this process,
summed over its threads) instead of wall time: on a machine shared with other
CPU-heavy jobs it is far less noisy with ``--threads 1``; with more threads it
also counts OpenMP spin-waiting.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vsml_train.model.config import VSMLConfig
from vsml_train.model.episode import make_step_fn
from vsml_train.model.params import init_params
from vsml_train.model.state import init_state
from vsml_train.model.visit_fused import fused_available

# (A, B, N, E, layer_norm)
ROWS: list[tuple[int, int, int, int, bool]] = [
    (784, 10, 16, 1, False),
    (784, 10, 16, 1, True),
    (784, 10, 16, 64, False),
    (784, 10, 32, 1, False),
    (784, 10, 32, 64, False),
    (64, 10, 16, 1, False),
    (64, 10, 16, 64, False),
]

FLOP_MODEL = (
    "FLOPs/step = E*A*B * (ticks*(8N^2 + 13N) + LN*(2NM + 10M)): per cell and micro tick the gate matmul "
    "h @ W_h [N, 4N] (2*N*4N) plus ~13N elementwise (z add 4N, activations 4N, c update 3N, tanh(c) N, "
    "h N); with LayerNorm the forward head and LN on every cell. The message terms (O(A + B)) and the "
    "reductions are left out. The SAME count is used for every implementation (naive executes more: "
    "its gate matmul also multiplies the 2M message inputs), so GFLOP/s is the useful work rate."
)


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or the platform's guess)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def step_flops(config: VSMLConfig, a: int, b: int, e: int) -> float:
    """FLOPs of one step under ``FLOP_MODEL`` (one layer, P = 1)."""
    n, m, t = config.state_size, config.msg_size, config.micro_ticks
    per_cell = t * (8 * n * n + 13 * n) + (2 * n * m + 10 * m) * int(config.layer_norm)
    return float(e * a * b * per_cell)


def mm_rate(clock: Callable[[], float], reps: int = 10, size: int = 1024) -> float:
    """Median fp32 torch.mm rate in GFLOP/s on [size, size] @ [size, size]."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(size, size, generator=gen)
    y = torch.randn(size, size, generator=gen)
    torch.mm(x, y)
    times = []
    for _ in range(reps):
        t0 = clock()
        torch.mm(x, y)
        times.append(clock() - t0)
    return 2 * size**3 / statistics.median(times) / 1e9


@dataclass
class RowResult:
    """Medians (ms) per implementation, compile time (s), and the max logit difference to naive."""

    ms: dict[str, float]
    rounds: int
    compile_s: float | None
    max_diff: float


def bench_row(
    a: int,
    b: int,
    n: int,
    e: int,
    layer_norm: bool,
    seconds: float,
    compile_: bool,
    max_rounds: int,
    clock: Callable[[], float],
) -> tuple[VSMLConfig, RowResult]:
    """Build, warm up, cross-check and time the step functions of one row."""
    config = VSMLConfig(state_size=n, layer_norm=layer_norm)
    params = init_params(config, seed=0)
    gen = torch.Generator().manual_seed(1)
    state = init_state(config, a, b, 1, e, generator=gen)
    x = torch.randn(1, e, a, generator=gen)  # [P, E, A]
    y = F.one_hot(torch.randint(0, b, (1, e), generator=gen), b).float()  # [P, E, B]
    fns: dict[str, Callable] = {"fast": make_step_fn(config, impl="fast")}
    if fused_available():
        fns["fused"] = make_step_fn(config, impl="fused")
    if compile_:
        fns["fast+compile"] = make_step_fn(config, impl="fast", compile=True)
    fns["naive"] = make_step_fn(config, impl="naive")
    compile_s = None
    logits = {}
    with torch.no_grad():
        for name, fn in fns.items():  # one warm-up call each (compiles), kept for the cross-check
            t0 = time.perf_counter()
            _, logits[name] = fn(params, state, x, y)
            if name == "fast+compile":
                compile_s = time.perf_counter() - t0
        max_diff = max(float((v - logits["naive"]).abs().max()) for v in logits.values())
        times: dict[str, list[float]] = {k: [] for k in fns}
        start = time.perf_counter()
        rounds = 0
        while rounds < 3 or (time.perf_counter() - start < seconds and rounds < max_rounds):
            for name, fn in fns.items():
                t0 = clock()
                fn(params, state, x, y)
                times[name].append(clock() - t0)
            rounds += 1
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    return config, RowResult(ms=ms, rounds=rounds, compile_s=compile_s, max_diff=max_diff)


def main() -> None:
    """Parse the flags, print the header, run every row and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--seconds", type=float, default=2.0, help="timing budget per row after warm-up (>= 3 rounds)")
    ap.add_argument("--max-rounds", type=int, default=50, help="at most this many interleaved rounds per row")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="wall time or process CPU time")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd fast step")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    compile_ = not args.no_compile
    if compile_:
        # every make_step_fn closure shares one code object: one dynamo cache entry per row
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 4 * len(ROWS))

    t_start = time.perf_counter()
    print(f"torch {torch.__version__} | threads {torch.get_num_threads()} | CPU {cpu_model()} x {os.cpu_count()}")
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"clock: {args.clock} ({'time.perf_counter' if args.clock == 'wall' else 'time.process_time'})")
    rate = mm_rate(clock)
    print(f"fp32 torch.mm 1024x1024: {rate:.1f} GFLOP/s (median of 10)")
    print(FLOP_MODEL)
    print("defaults: VSMLConfig() (M=8, micro_ticks=2, one layer, batch_average='half', clip 4), P=1, no_grad")
    impls = ["fast", *(["fused"] if fused_available() else []), *(["fast+compile"] if compile_ else []), "naive"]
    head = f"{'A':>4} {'B':>3} {'N':>3} {'E':>3} {'LN':>3} | " + " ".join(f"{k + ' ms':>15}" for k in impls)
    head += " | naive/fast" + (" naive/comp" if compile_ else "")
    head += " | " + " ".join(f"{k + ' GF/s':>17}" for k in impls) + " | rounds compile_s max|d|"
    print(head)
    print("-" * len(head))
    for a, b, n, e, ln in ROWS:
        config, r = bench_row(a, b, n, e, ln, args.seconds, compile_, args.max_rounds, clock)
        flops = step_flops(config, a, b, e)
        line = f"{a:>4} {b:>3} {n:>3} {e:>3} {'yes' if ln else 'no':>3} | "
        line += " ".join(f"{r.ms[k]:>15.2f}" for k in impls)
        line += f" | {r.ms['naive'] / r.ms['fast']:>10.2f}"
        if compile_:
            line += f" {r.ms['naive'] / r.ms['fast+compile']:>10.2f}"
        line += " | " + " ".join(
            f"{flops / r.ms[k] / 1e6:>7.2f} ({100 * flops / r.ms[k] / 1e6 / rate:>4.1f}%)" for k in impls
        )
        comp = f"{r.compile_s:9.1f}" if r.compile_s is not None else f"{'-':>9}"
        line += f" | {r.rounds:>6} {comp} {r.max_diff:.1e}"
        print(line, flush=True)
    wall = time.perf_counter() - t_start
    print(f"(GF/s: useful GFLOP/s, in brackets % of the torch.mm rate; total wall {wall:.0f} s)")
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
