"""Slow: the fault runs of ``bench/serve.py`` in small (SIGKILL under load; SQLite and two PostgreSQL replicas)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("httpx")
pytest.importorskip("psycopg")

from tests.serve_helpers import postgres_url

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_fault_runs_lose_nothing(tmp_path) -> None:
    url = postgres_url()
    from tests.serve_helpers import fresh_database

    db = fresh_database(url, "vsml_bench_faults")
    out = tmp_path / "serve.json"
    cmd = [sys.executable, str(REPO / "bench" / "serve.py"), "--phases", "faults,pg-faults", "--kills", "3"]
    cmd += ["--keys", "60", "--fault-clients", "6", "--threads", "2", "--postgres", db, "--json", str(out)]
    subprocess.run(cmd, check=True, timeout=600)
    res = json.loads(out.read_text())
    for run in (res["faults_sqlite"], res["faults_postgres"]):
        assert run["requests_acknowledged"] > 100
        assert run["lost"] == 0 and run["corrupted"] == 0 and not run["anomalies"], run
    assert res["faults_postgres"]["replicas"] == 2
