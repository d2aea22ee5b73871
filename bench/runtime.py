"""Benchmark: ms per learning step of ``vsml_runtime.Learner`` (ONNX Runtime) vs the PyTorch step.

One run prints, for every case, ms per step of

* ``ort``: ``Learner.learn`` / ``LearnerPool.learn`` (the whole call: input
  checks, the exported step, predictions) on ONNX Runtime,
* ``eager``: ``vsml_train.model.step.step`` in PyTorch eager mode,
* ``compile``: the same step ``torch.compile``d (``make_step_fn(compile=True)``),

and the ratios eager/ort and compile/ort, next to the authors' jit-compiled
JAX figures of issue 12 (one core of the issue's machine, not this one: 2.85
ms at 784-10 N16, 3.22 ms at N32, 5.42-5.51 ms for 784-32-10, 0.234 ms at
64-10 N16, all one example per step). ``bench/throughput.py`` puts these rows
against the fused kernel's floor measured in the same run.

Cases: (784 inputs, 10 classes) with N = 16 and 32 at 1 and 64 examples per
step and as a pool of 64 learners; 784 -> 32 -> 10; (64, 10, N16); and the
LayerNorm + backward-pass variant that meta-training needs.

Usage::

    python bench/runtime.py                 # CPU, one thread everywhere (the default deployment)
    python bench/runtime.py --no-compile    # skip torch.compile (slow to compile on 2 cores)
    python bench/runtime.py --device cuda   # ONNX Runtime CUDA provider vs PyTorch on the GPU
    python bench/runtime.py --cases 784-10-n16-e1,64-10-n16-e1 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from vsml_export.exporter import ExportOptions, export_model
from vsml_runtime import Learner, LearnerPool
from vsml_train.model.config import VSMLConfig
from vsml_train.model.episode import make_step_fn
from vsml_train.model.model_file import ModelFile, save_model
from vsml_train.model.params import init_params
from vsml_train.model.state import init_state


@dataclass(frozen=True)
class Case:
    """One benchmark row: sizes, examples per step (E), learners per call (P)."""

    name: str
    a: int
    b: int
    n: int = 16
    hidden: tuple[int, ...] = ()
    e: int = 1
    p: int = 1
    extra: dict = field(default_factory=dict)
    jax_ms: float | None = None

    def config(self) -> VSMLConfig:
        return VSMLConfig(state_size=self.n, hidden=self.hidden, **self.extra)


CASES = [
    Case("784-10-n16-e1", 784, 10, 16, jax_ms=2.85),
    Case("784-10-n16-e64", 784, 10, 16, e=64),
    Case("784-10-n16-pool64", 784, 10, 16, p=64),
    Case("784-10-n32-e1", 784, 10, 32, jax_ms=3.22),
    Case("784-10-n32-e64", 784, 10, 32, e=64),
    Case("784-10-n32-pool64", 784, 10, 32, p=64),
    Case("784-32-10-n16-e1", 784, 10, 16, hidden=(32,), jax_ms=5.465),
    Case("64-10-n16-e1", 64, 10, 16, jax_ms=0.234),
    Case("784-10-n16-ln-bp-e1", 784, 10, 16, extra={"layer_norm": True, "backward_pass": True}),
]
# device-sized pools, run only when named in --cases (bench/gpu_check.sh): 1,024 learners in one call
LARGE_CASES = [
    Case("784-10-n16-pool1024", 784, 10, 16, p=1024),
    Case("64-10-n16-pool1024", 64, 10, 16, p=1024),
]


CLOCK = time.perf_counter  # set to time.process_time on CPU runs (see main)


def _time(fn: Callable[[], object], budget_s: float, min_reps: int = 3) -> float:
    """Median over repeats of the mean ms per call; about ``budget_s`` seconds in all."""
    clock = CLOCK
    fn()
    t0 = clock()
    fn()
    once = max(clock() - t0, 1e-6)
    inner = max(1, int(0.2 / once))
    reps = max(min_reps, int(budget_s / (once * inner + 1e-9)))
    reps = min(reps, 15)
    out = []
    for _ in range(reps):
        t0 = clock()
        for _ in range(inner):
            fn()
        out.append((clock() - t0) / inner * 1e3)
    return statistics.median(out)


def bench_case(
    case: Case, folder: Path, device: str, compile_: bool, budget_s: float, cuda_graph: bool = False
) -> dict:
    """ms per step of ORT / eager / compile for one case."""
    config = case.config()
    params = init_params(config, 0)
    save_model(folder / f"{case.name}.pt", ModelFile(config, params, {}))
    onnx_path = export_model(folder / f"{case.name}.pt", folder / f"{case.name}.onnx", ExportOptions()).step_path
    rng = np.random.default_rng(0)
    tdev = torch.device("cuda" if device == "cuda" else "cpu")

    # ONNX Runtime through the public API
    if case.p == 1:
        learner = Learner(onnx_path, case.a, case.b, device=device, examples_per_step=case.e)
        xs = rng.standard_normal((case.a,) if case.e == 1 else (case.e, case.a)).astype(np.float32)
        ys = rng.integers(0, case.b) if case.e == 1 else rng.integers(0, case.b, case.e)
        ort_fn: Callable[[], object] = lambda: learner.learn(xs, ys)  # noqa: E731
        ort_device = learner.device
    else:
        pool = LearnerPool(onnx_path, case.p, case.a, case.b, device=device, examples_per_step=case.e)
        xs = rng.standard_normal((case.p, case.a)).astype(np.float32)
        ys = rng.integers(0, case.b, case.p)
        ort_fn = lambda: pool.learn(xs, ys)  # noqa: E731
        ort_device = pool.device

    # PyTorch: the step the graph was exported from
    gen = torch.Generator().manual_seed(0)
    state = init_state(config, case.a, case.b, case.p, case.e, generator=gen, params=params).map(lambda t: t.to(tdev))
    x = torch.randn(case.p, case.e, case.a, generator=gen).to(tdev)
    y = torch.nn.functional.one_hot(torch.randint(0, case.b, (case.p, case.e)), case.b).float().to(tdev)
    p_dev = {k: v.to(tdev) for k, v in params.items()}
    sync = torch.cuda.synchronize if tdev.type == "cuda" else (lambda: None)

    def torch_runner(step: Callable) -> Callable[[], object]:
        def run() -> object:
            with torch.no_grad():
                out = step(p_dev, state, x, y)
            sync()
            return out

        return run

    row: dict = {"case": case.name, "ort_device": ort_device, "jax_ms": case.jax_ms}
    row["ort_ms"] = _time(ort_fn, budget_s)
    row["ort_graph_ms"] = None
    if cuda_graph and ort_device == "cuda":  # the same call with the step replayed as a CUDA graph
        if case.p == 1:
            g = Learner(onnx_path, case.a, case.b, device=device, examples_per_step=case.e, cuda_graph=True)
            row["ort_graph_ms"] = _time(lambda: g.learn(xs, ys), budget_s)
        else:
            gp = LearnerPool(onnx_path, case.p, case.a, case.b, device=device, cuda_graph=True)
            row["ort_graph_ms"] = _time(lambda: gp.learn(xs, ys), budget_s)
    row["eager_ms"] = _time(torch_runner(make_step_fn(config)), budget_s)
    if compile_:
        torch._dynamo.reset()  # a fresh cache per case: past 8 recompiles dynamo silently falls back to eager
        compiled = torch_runner(make_step_fn(config, compile=True))
        compiled()  # compile outside the timing
        row["compile_ms"] = _time(compiled, budget_s)
    else:
        row["compile_ms"] = None
    row["eager_over_ort"] = row["eager_ms"] / row["ort_ms"]
    row["compile_over_ort"] = row["compile_ms"] / row["ort_ms"] if row["compile_ms"] else None
    return row


def _fmt(v: float | None, spec: str = "8.3f") -> str:
    return format(v, spec) if v is not None else " " * (int(spec.split(".")[0]) - 1) + "-"


def print_table(rows: list[dict]) -> None:
    graph = any(r.get("ort_graph_ms") is not None for r in rows)
    head = f"{'case':24} {'ort ms':>8} {'eager ms':>9} {'compile':>8} {'eager/ort':>9} {'comp/ort':>8} {'JAX ms':>7}"
    print(head + (f" {'ort+cudagraph':>13}" if graph else ""))
    for r in rows:
        line = (
            f"{r['case']:24} {_fmt(r['ort_ms'])} {_fmt(r['eager_ms'], '9.3f')} {_fmt(r['compile_ms'])} "
            f"{_fmt(r['eager_over_ort'], '9.2f')} {_fmt(r['compile_over_ort'], '8.2f')} {_fmt(r['jax_ms'], '7.2f')}"
        )
        print(line + (f" {_fmt(r.get('ort_graph_ms'), '13.3f')}" if graph else ""))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (minutes on 2 cores)")
    ap.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    ap.add_argument("--budget", type=float, default=1.5, help="seconds of timing per measurement")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (ORT uses the Learner default, 1)")
    ap.add_argument("--json", default="", help="also write the rows to this JSON file")
    ap.add_argument("--cuda-graph", action="store_true", help="on CUDA, also time Learner(cuda_graph=True)")
    ap.add_argument(
        "--clock",
        default="auto",
        choices=["auto", "wall", "cpu"],
        help="cpu = process CPU time (robust on a shared machine; the default on CPU), wall = elapsed time",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    global CLOCK
    use_cpu_clock = args.clock == "cpu" or (args.clock == "auto" and args.device == "cpu")
    CLOCK = time.process_time if use_cpu_clock else time.perf_counter
    names = args.cases.split(",") if args.cases else None
    wanted = [c for c in CASES + LARGE_CASES if c.name in names] if names else list(CASES)
    if not wanted:
        print(f"no such case; known: {', '.join(c.name for c in CASES + LARGE_CASES)}", file=sys.stderr)
        return 2
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"onnxruntime {__import__('onnxruntime').__version__}, {platform.processor() or platform.machine()}, "
        f"torch threads {torch.get_num_threads()}, device {args.device}, "
        f"clock {'process CPU time' if use_cpu_clock else 'wall time'}"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in wanted:
            rows.append(bench_case(case, Path(tmp), args.device, not args.no_compile, args.budget, args.cuda_graph))
            r = rows[-1]
            line = f"  {case.name}: ort {r['ort_ms']:.3f} ms ({r['ort_device']}), eager {r['eager_ms']:.3f} ms"
            if r["ort_graph_ms"] is not None:
                line += f", ort with CUDA graph {r['ort_graph_ms']:.3f} ms"
            print(line, flush=True)
    print()
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "cases": [asdict(c) for c in wanted]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
