"""vsml-serve over HTTP (Starlette's ASGI test client): routes, bad input, auth, limits, metrics."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")

from tests.serve_helpers import examples, reference_digest
from vsml_runtime.serve.app import make_app
from vsml_runtime.serve.service import ServeConfig, Service
from vsml_runtime.serve.stores import open_store

A, B = 20, 4
TOKEN = "s3cret-token-0123456789"


def _client(tmp_path, **kwargs) -> Any:  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():  # starlette 1.x prefers httpx2; httpx is what the extra installs
        warnings.filterwarnings("ignore", message=".*starlette.testclient.*")
        from starlette.testclient import TestClient
    cfg = ServeConfig(n_features=A, n_classes=B, snapshot_every=5)
    svc = Service(cfg, open_store(tmp_path / "s.db"))
    return TestClient(make_app(svc, **kwargs))


def test_learn_predict_info_delete(tmp_path) -> None:
    seen = examples(9, A, B)
    with _client(tmp_path) as c:
        assert c.get("/healthz").json()["status"] == "ok"
        for i, (x, y) in enumerate(seen[:6]):
            r = c.post("/v1/learners/user-1/learn", json={"x": x, "y": y})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["steps"] == i + 1 and 0 <= body["prediction"] < B and len(body["probabilities"]) == B
        r = c.post("/v1/learners/user-1/learn", json={"x": [x for x, _ in seen[6:]], "y": [y for _, y in seen[6:]]})
        assert r.json()["steps"] == 9 and len(r.json()["predictions"]) == 3
        p = c.post("/v1/learners/user-1/predict", json={"x": [seen[0][0], seen[1][0]]}).json()
        assert len(p["predictions"]) == 2 and p["steps"] == 9
        info = c.get("/v1/learners/user-1").json()
        assert info["steps"] == 9 and info["n_features"] == A and info["n_classes"] == B
        assert info["state_sha256"] == reference_digest(seen, A, B)[0]
        assert c.get("/v1/learners/user-2").status_code == 404
        assert c.delete("/v1/learners/user-1").json() == {"key": "user-1", "deleted": True}
        assert c.get("/v1/learners/user-1").status_code == 404
        assert c.post("/v1/learners/user-1/learn", json={"x": seen[0][0], "y": seen[0][1]}).json()["steps"] == 1


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ("{not json", 400, "malformed JSON"),
        ('{"x": [1, 2], "y": 1}', 422, "20 features"),
        ('{"x": [' + ",".join(["1"] * 19) + ', NaN], "y": 1}', 422, "finite"),
        ('{"x": [' + ",".join(["1"] * 20) + '], "y": 4}', 422, "unknown label"),
        ('{"x": [' + ",".join(["1"] * 20) + '], "y": true}', 422, "integer"),
        ('{"x": [' + ",".join(["1"] * 20) + '], "y": 1, "lr": 3}', 422, "Extra"),
        ('{"y": 1}', 422, "Field required"),
        ('{"x": "abc", "y": 1}', 422, "x"),
    ],
)
def test_bad_input_is_a_4xx_and_changes_nothing(tmp_path, body: str, status: int, words: str) -> None:
    x, y = examples(1, A, B)[0]
    with _client(tmp_path) as c:
        c.post("/v1/learners/k/learn", json={"x": x, "y": y})
        before = c.get("/v1/learners/k").json()
        r = c.post("/v1/learners/k/learn", content=body, headers={"content-type": "application/json"})
        assert r.status_code == status and words in r.json()["error"], r.text
        assert c.get("/v1/learners/k").json() == before


def test_key_rules_and_size_limit(tmp_path) -> None:
    x, y = examples(1, A, B)[0]
    with _client(tmp_path, max_body_bytes=2000) as c:
        for key in ["a b", "-lead", "x" * 129, "%2e%2e", "ü"]:
            r = c.post(f"/v1/learners/{key}/learn", json={"x": x, "y": y})
            assert r.status_code in (400, 404), (key, r.status_code)
        assert c.post(f"/v1/learners/{'k' * 128}/learn", json={"x": x, "y": y}).status_code == 200
        big = json.dumps({"x": [x] * 20, "y": [y] * 20})
        r = c.post("/v1/learners/k/learn", content=big)
        assert r.status_code == 413
        r = c.post("/v1/learners/k/learn", content=iter([big.encode()]))  # chunked, no content-length
        assert r.status_code == 413
        assert c.get(f"/v1/learners/{'k' * 128}").json()["steps"] == 1


def test_bearer_token(tmp_path) -> None:
    x, y = examples(1, A, B)[0]
    with _client(tmp_path, token=TOKEN) as c:
        assert c.get("/healthz").status_code == 200  # open for load balancers
        r = c.post("/v1/learners/k/learn", json={"x": x, "y": y})
        assert r.status_code == 401 and TOKEN not in r.text
        assert c.get("/metrics").status_code == 401
        bad = {"authorization": "Bearer wrong"}
        assert c.post("/v1/learners/k/learn", json={"x": x, "y": y}, headers=bad).status_code == 401
        good = {"authorization": f"Bearer {TOKEN}"}
        assert c.post("/v1/learners/k/learn", json={"x": x, "y": y}, headers=good).status_code == 200
        assert TOKEN not in c.get("/metrics", headers=good).text


def test_metrics_in_prometheus_text_format(tmp_path) -> None:
    x, y = examples(1, A, B)[0]
    with _client(tmp_path) as c:
        for _ in range(6):
            c.post("/v1/learners/k/learn", json={"x": x, "y": y})
        c.post("/v1/learners/k/learn", content="{")
        text = c.get("/metrics").text
    assert 'vsml_requests_total{method="POST",route="/v1/learners/{key}/learn",status="200"} 6' in text
    assert 'vsml_requests_total{method="POST",route="/v1/learners/{key}/learn",status="400"} 1' in text
    assert 'vsml_request_duration_seconds_bucket{route="/v1/learners/{key}/learn",le="+Inf"} 7' in text
    assert "vsml_store_writes_total 6" in text and "vsml_snapshots_total 1" in text
    assert "vsml_learners_in_memory 1" in text
    assert "# TYPE vsml_request_duration_seconds histogram" in text
    for line in text.splitlines():  # every sample line: name{labels} value
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            float(value)
            assert name.split("{")[0].startswith("vsml_")


def test_serve_imports_without_torch() -> None:
    code = (
        "import sys; import vsml_runtime.serve.app, vsml_runtime.serve.cli, vsml_runtime.serve.store_sqlite; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_refuses_a_short_token_file(tmp_path) -> None:
    from vsml_runtime.serve import cli

    (tmp_path / "t").write_text("short\n")
    assert (
        cli.main(
            [
                "--features",
                "4",
                "--classes",
                "2",
                "--store",
                str(tmp_path / "s.db"),
                "--token-file",
                str(tmp_path / "t"),
            ]
        )
        == 2
    )
