"""Issue 12's throughput table, every row as a ratio against a baseline measured in the same run.

    taskset -c 0 env OMP_NUM_THREADS=1 python bench/throughput.py [--steps 100] [--only es,bptt,learner]

Rows and their same-run baselines (one thread, ms per episode-step = per
learner and time step):

* ES, 64 perturbed episodes (population 64, own V_M each), T steps, at 784x10
  and 64x10: ``population_loss`` with impl "fast" (the eager path before
  issue 12: baseline) and impl "fused" (the ES trainers' default now).
* BPTT value+grad, one T-step episode, at 784x10 and 64x10: the loss and its
  gradient with the eager "fast" step (baseline) and with the step
  ``torch.compile``d (``RunOptions(compile=True)``).
* The CPU meta-training presets' model (LayerNorm + backward pass; es-cpu 32
  pairs, bptt-cpu 16 episodes, 32 inputs): the same two columns.
* Learner (``vsml_runtime``, ONNX Runtime, one example per ``learn``) at 784x10
  N16 / N32, 784-32-10 and 64x10, against the floor measured here: the fused C
  kernel's micro ticks alone (``fused``), and the whole torch step with impl
  "fused" (``fused step``).
* Batched learning at 784x10 N16 / N32: a ``LearnerPool`` of 64 and one
  ``Learner`` with 64 examples per step, per learner-step (per example)
  against the single-example ``Learner`` of the same run.

The authors' JAX figures (jit with XLA, one thread, ``taskset -c 0``) and the
vsml figures the issue measured next to them on its machine are recorded in
``ISSUE_MS``; they are NOT from this machine. ``JAX/new (proj.)`` carries the
same-run speed-up over to the issue's machine: JAX / (issue's vsml x new /
baseline), i.e. it assumes the baseline here is the code the issue timed.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from vsml_train.methods.es import population_loss
from vsml_train.methods.tasks import Episodes, member_noise
from vsml_train.model.config import VSMLConfig
from vsml_train.model.episode import make_step_fn, online_loss, run_episode
from vsml_train.model.params import flatten, init_params
from vsml_train.model.state import init_state, state_from_noise
from vsml_train.model.visit_fused import fused_available, kernel

# issue 12, one core each on the issue's machine: (authors' JAX ms, vsml ms then) per episode-step (mid of a range)
ISSUE_MS: dict[str, tuple[float, float]] = {
    "learner-784x10-n16": (2.85, 1.22),
    "learner-784x10-n32": (3.22, 3.12),
    "learner-784-32-10": (5.465, 4.465),
    "learner-64x10": (0.234, 0.151),
    "es-784x10": (3.37, 5.06),
    "es-64x10": (0.265, 0.2985),
    "bptt-784x10": (22.85, 11.5),
    "bptt-64x10": (1.49, 1.83),
}
TARGET = 1.5  # issue 12: ES and BPTT at least 1.5x the authors' JAX per core


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Best of ``repeats`` wall-clock seconds of ``fn`` (one call before, for warm-up)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, inner: int) -> dict[str, float]:
    """Median over ``rounds`` of ms per call (``inner`` calls), the rows interleaved so noise hits all alike."""
    for fn in fns.values():
        fn()
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            out[k].append((time.perf_counter() - t0) / inner * 1e3)
    return {k: statistics.median(v) for k, v in out.items()}


def _episodes(a: int, p: int, steps: int, e: int = 1) -> Episodes:
    g = torch.Generator().manual_seed(0)
    return Episodes(torch.randn(steps, p, e, a, generator=g), torch.randint(0, 10, (steps, p, e), generator=g), 10)


def es_row(cfg: VSMLConfig, a: int, pop: int, steps: int, repeats: int) -> dict[str, float]:
    """ms per episode-step of ``population_loss``: impl fast (baseline) and fused, same members and streams."""
    ep = _episodes(a, pop, steps)
    noise = member_noise(cfg, a, 10, list(range(pop)))
    theta = flatten(init_params(cfg, 0))
    flat = theta + 0.05 * torch.randn(pop, theta.numel(), generator=torch.Generator().manual_seed(1))
    out, fits = {}, {}
    for impl in ("fast", "fused"):
        fn = make_step_fn(cfg, impl)
        fits[impl] = population_loss(flat, cfg, ep, noise, fn)
        out[impl] = 1e3 * timed(lambda fn=fn: population_loss(flat, cfg, ep, noise, fn), repeats) / (pop * steps)
    out["max_diff"] = float((fits["fast"] - fits["fused"]).abs().max())
    return out


def bptt_row(cfg: VSMLConfig, a: int, episodes: int, steps: int, repeats: int) -> dict[str, float]:
    """ms per episode-step of the meta-loss and its gradient: eager fast (baseline) and torch.compile'd."""
    ep = _episodes(a, episodes, steps)
    noise = member_noise(cfg, a, 10, list(range(episodes)))
    vm = {k: v.clone().requires_grad_(True) for k, v in init_params(cfg, 0).items()}
    out, grads = {}, {}
    for label, fn in (("fast", make_step_fn(cfg)), ("compile", make_step_fn(cfg, "blocked", compile=True))):

        def value_grad(fn=fn) -> list[torch.Tensor]:
            state = state_from_noise(cfg, vm, noise, 1)
            res = run_episode(vm, cfg, ep.x, ep.y, 10, state=state, step_fn=fn)
            loss = online_loss(res.logits, ep.y).mean()
            return list(torch.autograd.grad(loss, [vm[k] for k in sorted(vm)], allow_unused=True))

        t0 = time.perf_counter()
        grads[label] = value_grad()
        out[f"{label}_first_s"] = time.perf_counter() - t0
        out[label] = 1e3 * timed(value_grad, repeats) / (episodes * steps)
    pairs = [(x, y) for x, y in zip(grads["fast"], grads["compile"], strict=True) if x is not None]
    scale = max(float(y.abs().max()) for _, y in pairs)  # relative to the largest gradient entry
    out["max_diff"] = max(float((x - y).abs().max()) for x, y in pairs) / scale
    return out


def kernel_ms(a: int, b: int, n: int, groups: int) -> float:
    """ms per group of the fused kernel alone: two micro ticks of an A x B grid (floor of the cell math)."""
    lib = kernel()
    assert lib is not None
    g = torch.Generator().manual_seed(0)
    row, col = 0.1 * torch.randn(groups * a, 4 * n, generator=g), 0.1 * torch.randn(groups, b, 4 * n, generator=g)
    wh, h, c = 0.1 * torch.randn(n, 4 * n, generator=g), torch.zeros(groups * a * b, n), torch.zeros(groups * a * b, n)
    ho, co = torch.empty_like(h), torch.empty_like(c)
    ptrs = [t.data_ptr() for t in (row, col, wh, h, c, ho, co)]
    return interleaved({"k": lambda: lib.vsml_ticks_f32(groups, a, b, n, 2, 1, 0, 1, 4.0, *ptrs)}, 5, 20)["k"] / groups


def learner_rows(tmp: Path, rounds: int) -> list[tuple[str, dict[str, float]]]:
    """Learner.learn (ORT) against the fused floor, and batched learning against single examples, same run."""
    from vsml_export.exporter import ExportOptions, export_model
    from vsml_runtime import Learner, LearnerPool
    from vsml_train.model.model_file import ModelFile, save_model

    rows = []
    rng = np.random.default_rng(0)
    for name, a, n, hidden, batched in (
        ("learner-784x10-n16", 784, 16, (), True),
        ("learner-784x10-n32", 784, 32, (), True),
        ("learner-784-32-10", 784, 16, (32,), False),
        ("learner-64x10", 64, 16, (), False),
    ):
        cfg = VSMLConfig(state_size=n, hidden=hidden)
        params = init_params(cfg, 0)
        save_model(tmp / f"{name}.pt", ModelFile(cfg, params, {}))
        onnx = export_model(tmp / f"{name}.pt", tmp / f"{name}.onnx", ExportOptions()).step_path
        x1, y1 = rng.standard_normal(a).astype(np.float32), 3
        single = Learner(onnx, a, 10, seed=0, device="cpu")
        state = init_state(cfg, a, 10, 1, 1, generator=torch.Generator().manual_seed(0), params=params)
        xt, yt = torch.from_numpy(x1).reshape(1, 1, a), torch.nn.functional.one_hot(torch.tensor([[3]]), 10).float()
        fused_step = make_step_fn(cfg, "fused")
        fns: dict[str, Callable[[], object]] = {
            "learner": lambda single=single, x1=x1, y1=y1: single.learn(x1, y1),
            "fused step": lambda f=fused_step, p=params, s=state, xt=xt, yt=yt: torch.no_grad()(f)(p, s, xt, yt),
        }
        ms = interleaved(fns, rounds, 20)  # single examples apart from the batches (whose state evicts theirs)
        if batched:
            pool = LearnerPool(onnx, 64, a, 10, seed=0, device="cpu")
            xp, yp = rng.standard_normal((64, a)).astype(np.float32), rng.integers(0, 10, 64)
            e64 = Learner(onnx, a, 10, seed=0, device="cpu", examples_per_step=64)
            ms |= interleaved({"pool64": lambda pool=pool, xp=xp, yp=yp: pool.learn(xp, yp),
                               "e64": lambda e64=e64, xp=xp, yp=yp: e64.learn(xp, yp)}, rounds, 1)  # fmt: skip
        ms["fused"] = sum(kernel_ms(ai, bi, n, 1) for ai, bi in cfg.layer_sizes(a, 10))
        for k in ("pool64", "e64"):
            if k in ms:
                ms[k] /= 64
        rows.append((name, ms))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=100, help="episode length T (the issue: 100)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds of the Learner rows")
    ap.add_argument("--only", default="es,bptt,presets,learner")
    args = ap.parse_args()
    torch.set_num_threads(1)
    only = args.only.split(",")
    kern = "on" if fused_available() else "OFF"
    print(f"torch {torch.__version__}, 1 thread, T = {args.steps}, {platform.processor() or platform.machine()}, "
          f"affinity {sorted(os.sched_getaffinity(0))}, fused kernel {kern}")  # fmt: skip
    print(f"{'row':28s} {'base ms':>8s} {'new ms':>8s} {'base/new':>8s} {'JAX ms*':>8s} {'vsml ms*':>8s} "
          f"{'JAX/new (proj.)':>15s} {'target':>6s} {'max|d|':>8s}")  # fmt: skip
    ref = VSMLConfig()

    def line(name: str, base: float, new: float, diff: float, note: str = "") -> None:
        jax, old = ISSUE_MS.get(name, (None, None))
        proj = jax / (old * new / base) if jax and old else None
        hit = "" if proj is None else ("met" if proj >= TARGET else "NOT")
        cols = f"{jax:8.3f} {old:8.3f} {proj:15.2f}" if proj else f"{'-':>8s} {'-':>8s} {'-':>15s}"
        print(f"{name:28s} {base:8.3f} {new:8.3f} {base / new:8.2f} {cols} {hit:>6s} {diff:8.1e} {note}", flush=True)

    if "es" in only:
        for a in (784, 64):
            r = es_row(ref, a, 64, args.steps, args.repeats)
            line(f"es-{a}x10", r["fast"], r["fused"], r["max_diff"], "(base: impl fast, new: impl fused)")
    if "bptt" in only:
        for a in (784, 64):
            r = bptt_row(ref, a, 1, args.steps, args.repeats)
            line(f"bptt-{a}x10", r["fast"], r["compile"], r["max_diff"],
                 f"(base: eager, new: torch.compile, compiled in {r['compile_first_s']:.0f} s)")  # fmt: skip
    if "presets" in only:
        cpu = VSMLConfig(layer_norm=True, backward_pass=True)
        r = es_row(cpu, 32, 64, args.steps, args.repeats)
        line("es-cpu preset (32 pairs)", r["fast"], r["fused"], r["max_diff"], "(LN + backward pass, 32 inputs)")
        r = bptt_row(cpu, 32, 16, args.steps, args.repeats)
        line("bptt-cpu preset (16 ep.)", r["fast"], r["compile"], r["max_diff"], "(LN + backward pass, 32 inputs)")
    if "learner" in only:
        with tempfile.TemporaryDirectory() as tmp:
            rows = learner_rows(Path(tmp), args.rounds)
        print(f"\n{'Learner row':22s} {'learn ms':>9s} {'fused ms':>9s} {'learn/fused':>11s} {'fused step':>10s} "
              f"{'JAX ms*':>8s} {'vsml ms*':>8s} {'pool64/1':>9s} {'e64/1':>7s}")  # fmt: skip
        for name, ms in rows:
            jax, old = ISSUE_MS[name]
            batch = "".join(f" {ms[k] / ms['learner']:{w}.2f}" if k in ms else f" {'-':>{w}s}"
                            for k, w in (("pool64", 9), ("e64", 7)))  # fmt: skip
            print(f"{name:22s} {ms['learner']:9.3f} {ms['fused']:9.3f} {ms['learner'] / ms['fused']:11.2f} "
                  f"{ms['fused step']:10.3f} {jax:8.3f} {old:8.3f}{batch}")  # fmt: skip
        print("pool64/1, e64/1: ms per learner-step (per example) over the single-example learn; target <= 0.7.")
        print("learn/fused: Learner.learn over the fused kernel's micro ticks alone; target <= 2.")
    print("* the issue's machine, not this one (ISSUE_MS); JAX/new (proj.) = JAX / (vsml* x new / base).")


if __name__ == "__main__":
    main()
