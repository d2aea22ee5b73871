"""Benchmark and fault run of ``vsml-serve`` on loopback (127.0.0.1 only, bounded clients).

Phases (``--phases``, default all):

* ``load``: throughput and p50/p99 latency of ``POST .../learn`` for 1, 8
  and 64 concurrent clients over 1,000 keys, at 784 x 10 and 20 x 4 (SQLite
  store, the server's default cache). Every request is one example.
* ``soak``: 8 clients at 784 x 10 for ``--soak-seconds`` (default 600), the
  server's resident memory sampled every few seconds (the cache bound is
  ``--cache-mb``).
* ``faults``: clients learn over 1,000 keys (one request in flight per key)
  while the server is SIGKILLed ``--kills`` times and restarted; every key
  is then checked against a reference learner replaying exactly the
  acknowledged examples (plus the one in flight at a kill, when the server
  says it landed): acknowledged, lost, corrupted.
* ``pg-faults``: the same with two replicas on one PostgreSQL (a throwaway
  local cluster, or ``--postgres URL``), requests spread over both, one
  replica SIGKILLed and restarted each time.

Usage::

    python bench/serve.py                                   # everything, 10-minute soak
    python bench/serve.py --soak-seconds 60 --json bench/results/serve.json
    python bench/serve.py --phases faults,pg-faults --kills 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vsml_runtime import Learner  # noqa: E402
from vsml_runtime.serve import wal  # noqa: E402

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Server:
    """One ``vsml-serve`` process on 127.0.0.1."""

    def __init__(self, store: str, a: int, b: int, log: Path, extra: list[str] | None = None) -> None:
        self.store, self.a, self.b, self.log, self.extra = store, a, b, log, extra or []
        self.port = free_port()
        self.base = f"http://{HOST}:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = Path(sys.executable).parent / "vsml-serve"
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "vsml_runtime.serve.cli"]
        cmd += ["--features", str(self.a), "--classes", str(self.b), "--store", self.store]
        cmd += ["--host", HOST, "--port", str(self.port), "--log-level", "warning", *self.extra]
        self.proc = subprocess.Popen(cmd, stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vsml-serve exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("vsml-serve did not start")

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def rss_mib(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def metric(self, name: str) -> float:
        text = httpx.get(f"{self.base}/metrics", timeout=10).text
        return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith(name + " "))


# ---------------------------------------------------------------------------
# load and soak


def bodies(a: int, b: int, n: int = 256) -> list[bytes]:
    rng = np.random.default_rng(0)
    return [
        json.dumps({"x": rng.standard_normal(a).astype(np.float32).tolist(), "y": int(rng.integers(b))}).encode()
        for _ in range(n)
    ]


class RawClient:
    """A minimal HTTP/1.1 keep-alive client on one connection (httpx's pool is the bottleneck at 64 clients)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
        self.writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        await self.writer.drain()
        lines = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = next(int(v.split(":", 1)[1]) for v in lines[1:] if v.lower().startswith("content-length:"))
        return status, await self.reader.readexactly(length)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def load(base: str, a: int, b: int, keys: int, clients: int, seconds: float, rss: Any = None) -> dict[str, Any]:
    """``clients`` concurrent loops (one connection each) of learn requests on random keys for ``seconds``."""
    payloads = bodies(a, b)
    port = int(base.rsplit(":", 1)[1])
    lat: list[float] = []
    status: dict[int, int] = {}
    samples: list[tuple[float, float]] = []
    end = time.perf_counter() + seconds

    async def worker(i: int) -> None:
        rng, c = random.Random(i), RawClient(HOST, port)
        try:
            while time.perf_counter() < end:
                key = f"user{rng.randrange(keys)}"
                t0 = time.perf_counter()
                code, _ = await c.post(f"/v1/learners/{key}/learn", payloads[rng.randrange(len(payloads))])
                lat.append(time.perf_counter() - t0)
                status[code] = status.get(code, 0) + 1
        finally:
            await c.close()

    async def sampler() -> None:
        t0 = time.perf_counter()
        while rss is not None and time.perf_counter() < end:
            samples.append((round(time.perf_counter() - t0, 1), round(rss(), 1)))
            await asyncio.sleep(5)

    t0 = time.perf_counter()
    await asyncio.gather(sampler(), *(worker(i) for i in range(clients)))
    elapsed = time.perf_counter() - t0
    ms = np.asarray(lat) * 1e3
    out = {
        "clients": clients,
        "requests": len(lat),
        "seconds": round(elapsed, 1),
        "throughput_rps": round(len(lat) / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "status": status,
    }
    if rss is not None:
        out["rss_mib"] = samples
    return out


def run_load(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    rows = []
    for size in args.sizes.split(","):
        a, b = (int(v) for v in size.split("x"))
        extra = ["--threads", str(args.threads), "--cache-mb", str(args.cache_mb)]
        srv = Server(f"sqlite:///{tmp}/load-{size}.db", a, b, tmp / "load.log", extra)
        srv.start()
        try:
            asyncio.run(load(srv.base, a, b, args.keys, 8, args.warmup))  # touch the keys, fill the cache
            for clients in (int(c) for c in args.clients.split(",")):
                hits0, miss0 = srv.metric("vsml_cache_hits_total"), srv.metric("vsml_cache_misses_total")
                row = asyncio.run(load(srv.base, a, b, args.keys, clients, args.seconds))
                hits, miss = srv.metric("vsml_cache_hits_total") - hits0, srv.metric("vsml_cache_misses_total") - miss0
                row.update(size=size, keys=args.keys, cache_mb=args.cache_mb)
                row.update(
                    cache_capacity=srv.metric("vsml_cache_capacity"),
                    cache_hit_rate=round(hits / max(1, hits + miss), 3),
                )
                row["rss_mib_after"] = round(srv.rss_mib(), 1)
                print(json.dumps(row), flush=True)
                rows.append(row)
        finally:
            srv.stop()
    return rows


def run_soak(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    a, b = 784, 10
    extra = ["--threads", str(args.threads), "--cache-mb", str(args.cache_mb)]
    srv = Server(f"sqlite:///{tmp}/soak.db", a, b, tmp / "soak.log", extra)
    srv.start()
    try:
        row = asyncio.run(load(srv.base, a, b, args.keys, 8, args.soak_seconds, rss=srv.rss_mib))
        row["rss_mib_end"] = round(srv.rss_mib(), 1)
        row["cache_capacity"] = srv.metric("vsml_cache_capacity")
    finally:
        srv.stop()
    rss = [v for _, v in row["rss_mib"]]
    row.update(size=f"{a}x{b}", rss_mib_max=max(rss), rss_mib_first=rss[0])
    print(json.dumps({k: v for k, v in row.items() if k != "rss_mib"}), flush=True)
    return row


# ---------------------------------------------------------------------------
# faults


def example(key: int, j: int, a: int, b: int) -> tuple[list[float], int]:
    """Example j of key i: the same on every call (the reference replays it)."""
    rng = np.random.default_rng([key, j])
    return rng.standard_normal(a).astype(np.float32).tolist(), int(rng.integers(b))


@dataclass
class Ledger:
    """What the clients know: per key, examples acknowledged (a count: example j is ``example(key, j)``)."""

    acked: list[int]
    requests_acked: int = 0
    landed_unacked: int = 0  # in flight at a kill, found applied afterwards
    anomalies: list[str] = field(default_factory=list)


async def fault_clients(bases: list[str], a: int, b: int, ledger: Ledger, clients: int, stop: asyncio.Event) -> None:
    """Each client owns keys i = w mod clients; one request per key in flight; a failure is resolved by asking."""
    keys = len(ledger.acked)
    limits = httpx.Limits(max_connections=clients * len(bases))
    async with httpx.AsyncClient(limits=limits, timeout=30) as c:

        async def steps_of(key: int) -> int:
            while True:  # until some replica answers
                for base in random.sample(bases, len(bases)):
                    try:
                        r = await c.get(f"{base}/v1/learners/k{key}")
                        if r.status_code == 404:
                            return 0
                        if r.status_code == 200:
                            return int(r.json()["steps"])
                    except httpx.HTTPError:
                        pass
                await asyncio.sleep(0.1)

        async def worker(w: int) -> None:
            rng = random.Random(w)
            mine = list(range(w, keys, clients))
            while not stop.is_set():
                key = rng.choice(mine)
                n = ledger.acked[key]
                x, y = example(key, n, a, b)
                try:
                    r = await c.post(f"{rng.choice(bases)}/v1/learners/k{key}/learn", json={"x": x, "y": y})
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                    r = None
                if ok:
                    assert r is not None
                    if r.json()["steps"] != n + 1:
                        ledger.anomalies.append(f"k{key}: acked as step {r.json()['steps']}, expected {n + 1}")
                    ledger.acked[key] = n + 1
                    ledger.requests_acked += 1
                    continue
                steps = await steps_of(key)  # died in flight (or 5xx): did it land?
                if steps == n + 1:
                    ledger.acked[key] = n + 1
                    ledger.landed_unacked += 1
                elif steps != n:
                    ledger.anomalies.append(f"k{key}: server has {steps} steps, client {n} acknowledged")
                    ledger.acked[key] = max(n, steps)

        await asyncio.gather(*(worker(w) for w in range(clients)))


def verify(base: str, a: int, b: int, ledger: Ledger) -> dict[str, int]:
    """Every key vs a reference learner fed exactly its acknowledged examples."""
    lost = corrupted = checked = 0
    ref = Learner.pretrained(a, b, device="cpu", threads=1)
    with httpx.Client(base_url=base, timeout=60) as c:
        for key, n in enumerate(ledger.acked):
            r = c.get(f"/v1/learners/k{key}")
            steps = 0 if r.status_code == 404 else int(r.json()["steps"])
            if steps < n:
                lost += n - steps
            if n == 0:
                continue
            ref.reset()
            for j in range(n):
                x, y = example(key, j, a, b)
                ref.learn(np.asarray(x, np.float32), y)
            checked += 1
            if steps != n or r.json()["state_sha256"] != wal.state_digest(ref):
                corrupted += 1
    return {"keys_checked": checked, "lost": lost, "corrupted": corrupted}


async def kill_loop(servers: list[Server], kills: int, rng: random.Random, stop: asyncio.Event) -> list[float]:
    downtimes = []
    for _ in range(kills):
        await asyncio.sleep(rng.uniform(1.5, 4.0))
        victim = rng.choice(servers)
        victim.kill9()
        t0 = time.perf_counter()
        await asyncio.to_thread(victim.start)
        downtimes.append(round(time.perf_counter() - t0, 2))
    await asyncio.sleep(1.0)
    stop.set()
    return downtimes


def run_faults(args: argparse.Namespace, tmp: Path, store: str, replicas: int) -> dict[str, Any]:
    a, b = (int(v) for v in args.fault_size.split("x"))
    extra = ["--threads", str(args.threads), "--snapshot-every", "16", "--cache-mb", str(args.fault_cache_mb)]
    servers = [Server(store, a, b, tmp / f"faults-{replicas}-{i}.log", extra) for i in range(replicas)]
    for s in servers:
        s.start()
    ledger = Ledger(acked=[0] * args.keys)

    async def main() -> list[float]:
        stop = asyncio.Event()
        rng = random.Random(replicas)
        killer = asyncio.create_task(kill_loop(servers, args.kills, rng, stop))
        await fault_clients([s.base for s in servers], a, b, ledger, args.fault_clients, stop)
        return await killer

    t0 = time.perf_counter()
    try:
        downtimes = asyncio.run(main())
        elapsed = time.perf_counter() - t0
        per_replica = [verify(s.base, a, b, ledger) for s in servers]  # every replica must agree
        checks = {k: max(c[k] for c in per_replica) for k in per_replica[0]}
    finally:
        for s in servers:
            s.stop()
    row = {
        "store": store.split("://")[0],
        "replicas": replicas,
        "size": args.fault_size,
        "keys": args.keys,
        "clients": args.fault_clients,
        "kills": args.kills,
        "seconds": round(elapsed, 1),
        "restart_seconds": downtimes,
        "requests_acknowledged": ledger.requests_acked,
        "in_flight_landed": ledger.landed_unacked,
        "examples_in_state": sum(ledger.acked),
        **checks,
        "anomalies": ledger.anomalies[:10],
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--phases", default="load,soak,faults,pg-faults")
    p.add_argument("--sizes", default="784x10,20x4")
    p.add_argument("--clients", default="1,8,64")
    p.add_argument("--keys", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=10.0, help="per load measurement")
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--soak-seconds", type=float, default=600.0)
    p.add_argument("--kills", type=int, default=5)
    p.add_argument("--fault-size", default="20x4")
    p.add_argument("--fault-clients", type=int, default=16)
    p.add_argument("--fault-cache-mb", type=float, default=16.0, help="small: the fault run also exercises eviction")
    p.add_argument("--threads", type=int, default=4, help="server worker threads")
    p.add_argument("--cache-mb", type=float, default=1024.0, help="server --cache-mb for load and soak (its default)")
    p.add_argument("--postgres", default=None, help="PostgreSQL URL (default: start a throwaway local cluster)")
    p.add_argument("--json", default=None, help="write all results here")
    args = p.parse_args()
    phases = args.phases.split(",")
    out: dict[str, Any] = {
        "machine": f"{platform.node()} {os.cpu_count()} CPUs (shared with other jobs: figures are noisy)",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "args": vars(args),
    }
    with tempfile.TemporaryDirectory(prefix="vsml-serve-bench-") as d:
        tmp = Path(d)
        if "load" in phases:
            out["load"] = run_load(args, tmp)
        if "soak" in phases:
            out["soak"] = run_soak(args, tmp)
        if "faults" in phases:
            out["faults_sqlite"] = run_faults(args, tmp, f"sqlite:///{tmp}/faults.db", 1)
        if "pg-faults" in phases:
            from tests import pg_server

            url, pg_dir = args.postgres, None
            if url is None:
                pg_dir = tempfile.mkdtemp(prefix="vsml-bench-pg-")
                url = pg_server.start(pg_dir)
            try:
                out["faults_postgres"] = run_faults(args, tmp, url, 2)
            finally:
                if pg_dir:
                    pg_server.stop(pg_dir)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
