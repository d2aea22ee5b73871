"""Meta-training on the device: ES with a large population and BPTT value+grad, timed and checked against the CPU.

    python bench/gpu_es.py --device cuda [--pop 1024] [--steps 100] [--json out.json]

For each grid (784x10, 64x10; the reference model, N = 16):

* ES: ``population_loss`` of ``--pop`` learners, each with its own V_M (theta
  + sigma * eps_i), all on the device in one batched rollout of ``--steps``
  steps; ms per rollout and per episode-step; parity: the fitness of the
  first ``--check`` members recomputed on the CPU (float32, impl "fused"
  where built, else "fast") must agree to 1e-4 relative.
* BPTT: the meta-loss of one episode and its gradient on the device, against
  the same on the CPU (relative to the largest gradient entry, 1e-3).

The CPU side of this script is exercised by ``tests/test_bench_gpu.py`` with
``--device cpu`` and tiny sizes; the device run is ``bench/gpu_check.sh``.
Exits 1 when a parity check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from vsml_train.methods.es import population_loss
from vsml_train.methods.tasks import Episodes, member_noise
from vsml_train.model.config import VSMLConfig
from vsml_train.model.episode import make_step_fn, online_loss, run_episode
from vsml_train.model.params import flatten, init_params
from vsml_train.model.state import state_from_noise
from vsml_train.model.visit_fused import fused_available


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def es_case(a: int, pop: int, steps: int, device: torch.device, check: int, compile_: bool) -> dict:
    """One ES population rollout on ``device``; the first ``check`` members again on the CPU."""
    cfg = VSMLConfig()
    g = torch.Generator().manual_seed(0)
    ep = Episodes(torch.randn(steps, pop, 1, a, generator=g), torch.randint(0, 10, (steps, pop, 1), generator=g), 10)
    theta = flatten(init_params(cfg, 0))
    flat = theta + 0.05 * torch.randn(pop, theta.numel(), generator=g)
    noise = member_noise(cfg, a, 10, list(range(pop)))
    fn = make_step_fn(cfg, "blocked" if compile_ else "fast", compile=compile_)
    dev_ep = ep.to(device)
    run = lambda: population_loss(flat.to(device), cfg, dev_ep, noise, fn)  # noqa: E731
    run()  # warm-up (and compilation)
    _sync(device)
    t0 = time.perf_counter()
    fit = run()
    _sync(device)
    dt = time.perf_counter() - t0
    k = min(check, pop)
    sub = Episodes(ep.x[:, :k], ep.y[:, :k], 10)
    cpu_impl = "fused" if fused_available() else "fast"
    ref = population_loss(flat[:k], cfg, sub, [z[:k] for z in noise], make_step_fn(cfg, cpu_impl))
    diff = float(((fit[:k].cpu() - ref).abs() / ref.abs().clamp_min(1e-6)).max())
    return {"case": f"es-{a}x10-pop{pop}", "ms": 1e3 * dt, "ms_per_episode_step": 1e3 * dt / (pop * steps),
            "parity_rel": diff, "ok": diff < 1e-4, "cpu_impl": cpu_impl}  # fmt: skip


def bptt_case(a: int, steps: int, device: torch.device, compile_: bool) -> dict:
    """Meta-loss and gradient of one episode on ``device`` against the CPU."""
    cfg = VSMLConfig()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(steps, 1, 1, a, generator=g), torch.randint(0, 10, (steps, 1, 1), generator=g)
    noise = member_noise(cfg, a, 10, [0])
    base = init_params(cfg, 0)

    def value_grad(dev: torch.device, fn: object) -> tuple[float, list[torch.Tensor]]:
        vm = {k: v.to(dev).requires_grad_(True) for k, v in base.items()}
        state = state_from_noise(cfg, vm, [z.to(dev) for z in noise], 1)
        res = run_episode(vm, cfg, x.to(dev), y.to(dev), 10, state=state, step_fn=fn)
        loss = online_loss(res.logits, y.to(dev)).mean()
        grads = torch.autograd.grad(loss, [vm[k] for k in sorted(vm)], allow_unused=True)
        return float(loss.detach()), [gr.cpu() for gr in grads if gr is not None]

    fn = make_step_fn(cfg, "blocked" if compile_ else "fast", compile=compile_)
    value_grad(device, fn)
    _sync(device)
    t0 = time.perf_counter()
    loss, grads = value_grad(device, fn)
    _sync(device)
    dt = time.perf_counter() - t0
    ref_loss, ref = value_grad(torch.device("cpu"), make_step_fn(cfg))
    scale = max(float(r.abs().max()) for r in ref)
    diff = max(float((gr - r).abs().max()) for gr, r in zip(grads, ref, strict=True)) / scale
    ok = diff < 1e-3 and abs(loss - ref_loss) < 1e-4 * abs(ref_loss)
    return {"case": f"bptt-{a}x10-T{steps}", "ms": 1e3 * dt, "ms_per_step": 1e3 * dt / steps, "parity_rel": diff,
            "ok": ok}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--pop", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--grids", default="784,64")
    ap.add_argument("--check", type=int, default=4, help="members recomputed on the CPU")
    ap.add_argument("--compile", action="store_true", help="torch.compile the device step")
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    rows = []
    for a in (int(v) for v in args.grids.split(",")):
        rows.append(es_case(a, args.pop, args.steps, device, args.check, args.compile))
        print(json.dumps(rows[-1]), flush=True)
        rows.append(bptt_case(a, args.steps, device, args.compile))
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": str(device), "rows": rows}, indent=1))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
