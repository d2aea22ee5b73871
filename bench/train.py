"""Meta-training throughput of ES and BPTT on the CPU, and where the time goes.

    python bench/train.py [--threads 1] [--steps 100] [--repeats 3]

For each case it times whole trainer iterations (``trainer.step``: sampling
the episodes from MNIST through the data layer, initial states, the batched
rollout, the update) and the model alone (the same rollout on pre-sampled
tensors, plus the backward pass for BPTT). "rest" is everything but the
model: sampling, noise, bookkeeping, the optimizer. Throughput is in
cell-steps/s = learners x A x B x micro ticks per second (the backward-pass
option counts its second tick), next to the authors' JAX figures of issue 12
(jit with XLA, one thread, ``taskset -c 0``, on the issue's machine, not this
one: ES with 64 perturbed episodes, N = 16: 0.265 ms per episode-step at 64
inputs, 3.37 ms at 784; BPTT value+grad through a 100-step episode: 1.49 ms
per step at 64 inputs, 18.8-26.9 ms at 784). For same-run ratios against a
baseline (the pre-issue-12 eager path) see ``bench/throughput.py``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch

from vsml_train.methods.bptt import BpttOptions, BpttTrainer
from vsml_train.methods.es import EsOptions, EsTrainer, cell_steps, population_loss
from vsml_train.methods.runner import limit_numpy_threads
from vsml_train.methods.tasks import TaskOptions, member_noise
from vsml_train.model.config import VSMLConfig
from vsml_train.model.episode import online_loss, run_episode
from vsml_train.model.params import flatten
from vsml_train.model.state import state_from_noise
from vsml_train.seeds import derive_seed

# issue 12's table (the authors' JAX, one core of the machine); 784 BPTT: the middle of 18.8-26.9
JAX_MS = {("es", 64): 0.265, ("es", 784): 3.37, ("bptt", 64): 1.49, ("bptt", 784): 22.85}


@dataclass(frozen=True)
class Case:
    method: str
    inputs: int
    learners: int  # ES: population (2 x pairs); BPTT: episodes per update
    config: VSMLConfig
    label: str


def _tasks(inputs: int, steps: int) -> TaskOptions:
    return TaskOptions(datasets=("mnist",), steps=steps, project_dim=None if inputs == 784 else inputs, block=16)


def _time(fn, repeats: int) -> float:
    fn()  # warm-up (allocator, caches)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_case(case: Case, steps: int, repeats: int, compile: bool = False) -> dict[str, float]:
    """Seconds per iteration (whole trainer step and model alone) and derived rates."""
    cfg = case.config
    if case.method == "es":
        opts = EsOptions(pairs=case.learners // 2, tasks=_tasks(case.inputs, steps))
        tr = EsTrainer(cfg, opts, seed=0, compile=compile)
        ep = tr.tasks.sample(0, 0, case.learners // 2)
        both = ep.__class__(torch.cat([ep.x, ep.x], 1), torch.cat([ep.y, ep.y], 1), ep.n_classes)
        flat = flatten(tr.params()).unsqueeze(0).repeat(case.learners, 1)
        noise = member_noise(cfg, ep.x.shape[-1], ep.n_classes, list(range(case.learners)))

        def model() -> None:
            population_loss(flat, cfg, both, noise, tr.step_fn)

        it = iter(range(1, 1 << 30))
        whole = _time(lambda: tr.step(next(it)), repeats)
    else:
        opts = BpttOptions(episodes=case.learners, tasks=_tasks(case.inputs, steps))
        tr = BpttTrainer(cfg, opts, seed=0, compile=compile)
        ep = tr.tasks.sample(0, 0, case.learners)
        both = ep
        noise = member_noise(cfg, ep.x.shape[-1], ep.n_classes, [derive_seed(0, i) for i in range(case.learners)])

        def model() -> None:
            state = state_from_noise(cfg, tr.vm, noise, 1)
            res = run_episode(tr.vm, cfg, ep.x, ep.y, ep.n_classes, state=state, step_fn=tr.step_fn)
            online_loss(res.logits, ep.y).mean().backward()

        it = iter(range(1, 1 << 30))
        whole = _time(lambda: tr.step(next(it)), repeats)
    alone = _time(model, repeats)
    work = cell_steps(cfg, both, case.learners)
    return {
        "whole_s": whole,
        "model_s": alone,
        "rest_share": max(whole - alone, 0.0) / whole,
        "cell_steps_per_s": work / whole,
        "ms_per_episode_step": 1e3 * whole / (case.learners * steps),
        "ms_per_step": 1e3 * whole / steps,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=100, help="episode length T")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", choices=["es", "bptt"], default=None)
    ap.add_argument("--inputs", type=int, nargs="*", default=[64, 784])
    ap.add_argument("--compile", action="store_true", help="torch.compile the step")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    limit_numpy_threads(1)
    ref = VSMLConfig()  # the reference defaults the JAX figures used
    cpu = VSMLConfig(layer_norm=True, backward_pass=True)  # the CPU presets' model
    cases = []
    for a in args.inputs:
        cases += [
            Case("es", a, 64, ref, "ES, 64 perturbed episodes, reference model"),
            Case("bptt", a, 1, ref, "BPTT, 1 episode, reference model"),
        ]
    cases += [
        Case("es", 32, 64, cpu, "es-cpu preset: 32 pairs, LN + backward pass"),
        Case("bptt", 32, 16, cpu, "bptt-cpu preset: 16 episodes, LN + backward pass"),
    ]
    cases = [c for c in cases if args.only in (None, c.method)]
    mode = "compiled" if args.compile else "eager"
    print(f"torch {torch.__version__}, {mode}, {args.threads} thread(s), T = {args.steps}, best of {args.repeats}")
    hdr = (
        f"{'case':52s} {'A':>4s} {'Mcell-steps/s':>13s} {'ms/ep-step':>10s} {'ms/step':>8s} {'rest':>6s} {'JAX ms':>7s}"
    )
    print(hdr)
    for c in cases:
        r = bench_case(c, args.steps, args.repeats, args.compile)
        jax = JAX_MS.get((c.method, c.inputs)) if c.config == ref else None
        jax_s = f"{jax:7.3f}" if jax else "      -"
        print(
            f"{c.label:52s} {c.inputs:4d} {r['cell_steps_per_s'] / 1e6:13.2f} {r['ms_per_episode_step']:10.3f} "
            f"{r['ms_per_step']:8.2f} {100 * r['rest_share']:5.1f}% {jax_s}",
            flush=True,
        )
    print("JAX ms: ES per episode-step, BPTT per step of one 100-step episode (issue 12, one core of its machine).")


if __name__ == "__main__":
    main()
