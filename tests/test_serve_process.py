"""The real program: start ``vsml-serve`` on 127.0.0.1, learn, ``kill -9`` it mid-stream, restart, compare.

After each SIGKILL, every key's state must equal a reference learner fed
exactly the acknowledged examples in order -- plus, at most, the one
request that was in flight when the process died (sent, never answered:
the service may have made it durable just before dying).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

import httpx

from tests.serve_helpers import examples, reference_digest

A, B = 20, 4
KEYS = ["alice", "bob", "carol"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_command() -> list[str]:
    exe = Path(sys.executable).parent / "vsml-serve"
    found = str(exe) if exe.exists() else shutil.which("vsml-serve")
    return [found] if found else [sys.executable, "-m", "vsml_runtime.serve.cli"]


def start(store: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [*serve_command(), "--features", str(A), "--classes", str(B), "--store", store]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--snapshot-every", "5", "--threads", "2"]
    proc = subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vsml-serve exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("vsml-serve did not come up in 60 s")


def check(base: str, acked: dict[str, list], inflight: dict[str, tuple]) -> None:  # type: ignore[type-arg]
    """Every key equals the reference of its acknowledged examples (+ the in-flight one if it landed)."""
    for key in KEYS:
        r = httpx.get(f"{base}/v1/learners/{key}", timeout=10)
        if r.status_code == 404:
            assert not acked[key], f"{key}: {len(acked[key])} acknowledged examples lost"
            continue
        info = r.json()
        seen = list(acked[key])
        if info["steps"] == len(seen) + 1 and key in inflight:
            seen.append(inflight[key])
        assert info["steps"] == len(seen), f"{key}: server has {info['steps']} steps, {len(acked[key])} acknowledged"
        assert info["state_sha256"] == reference_digest(seen, A, B)[0], f"{key}: state differs from the replay"
        acked[key] = seen
        inflight.pop(key, None)


def test_kill_9_loses_no_acknowledged_example(tmp_path) -> None:
    store, port = f"sqlite:///{tmp_path}/serve.db", free_port()
    base, log = f"http://127.0.0.1:{port}", tmp_path / "serve.log"
    stream = {k: examples(5000, A, B, seed=i) for i, k in enumerate(KEYS)}
    acked: dict[str, list] = {k: [] for k in KEYS}  # type: ignore[type-arg]
    inflight: dict[str, tuple] = {}  # type: ignore[type-arg]
    failures: list[BaseException] = []
    for _round in range(3):
        proc = start(store, port, log)
        stop = threading.Event()

        def client(stop: threading.Event = stop) -> None:
            try:
                run_client(stop)
            except BaseException as exc:
                failures.append(exc)

        def run_client(stop: threading.Event) -> None:
            with httpx.Client(base_url=base, timeout=10) as c:
                i = 0
                while not stop.is_set():
                    key = KEYS[i % len(KEYS)]
                    i += 1
                    x, y = stream[key][len(acked[key])]
                    inflight[key] = (x, y)
                    try:
                        r = c.post(f"/v1/learners/{key}/learn", json={"x": x, "y": y})
                    except httpx.HTTPError:
                        return  # the server died with this request in flight
                    assert r.status_code == 200, r.text
                    assert r.json()["steps"] == len(acked[key]) + 1
                    acked[key].append((x, y))
                    del inflight[key]

        t = threading.Thread(target=client)
        t.start()
        time.sleep(1.0 + 0.3 * _round)
        os.kill(proc.pid, signal.SIGKILL)  # at whatever moment the client is at
        proc.wait()
        stop.set()
        t.join(30)
        assert not failures, failures
        proc = start(store, port, log)
        try:
            check(base, acked, inflight)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    assert sum(len(v) for v in acked.values()) > 30  # it really learned under the kills
