"""``vsml-serve``: the online-learning service on uvicorn.

    vsml-serve --features 784 --classes 10                 # shipped learner, ./vsml-serve.db
    vsml-serve --model model.onnx --features 20 --classes 4 --store postgresql://localhost/vsml

Listens on 127.0.0.1 unless told otherwise (``--host 0.0.0.0`` behind a load
balancer); one process = one replica (learners live in its memory), so run
more replicas -- on a shared PostgreSQL store -- rather than more workers.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .auth import read_token
from .metrics import Metrics
from .service import ServeConfig, Service
from .store import StoreError
from .stores import open_store

log = logging.getLogger("vsml_runtime.serve")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see ``vsml-serve --help``)."""
    p = argparse.ArgumentParser(prog="vsml-serve", description="Online learning over HTTP: one VSML learner per key.")
    p.add_argument("--model", default="", help="step graph from vsml-export (default: the shipped pretrained learner)")
    p.add_argument("--features", type=int, required=True, help="A, inputs per example")
    p.add_argument("--classes", type=int, required=True, help="B, number of classes (labels 0..B-1)")
    p.add_argument("--store", default="sqlite:///vsml-serve.db", help="sqlite:///FILE (default) or postgresql://...")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--uds", default=None, help="listen on this unix socket instead of host:port")
    p.add_argument("--cache-mb", type=float, default=1024.0, help="memory for cached learners (MiB; default 1024)")
    p.add_argument("--snapshot-every", type=int, default=64, help="steps between state snapshots (default 64)")
    p.add_argument("--threads", type=int, default=8, help="worker threads stepping learners (default 8)")
    p.add_argument("--max-connections", type=int, default=256, help="open connections before 503s (default 256)")
    p.add_argument("--max-body-bytes", type=int, default=4 * 2**20, help="largest request body (default 4 MiB)")
    p.add_argument("--max-batch", type=int, default=256, help="most examples in one learn request (default 256)")
    p.add_argument("--token-file", default=None, help="require 'Authorization: Bearer <token in this file>'")
    p.add_argument("--seed", type=int, default=0, help="seed of every new learner's initial state (default 0)")
    p.add_argument(
        "--standardize",
        default="none",
        choices=["none", "online", "online-scalar", "model"],
        help="input standardisation of each learner (default none: send standardised inputs)",
    )
    p.add_argument("--lock-timeout", type=float, default=10.0, help="PostgreSQL: seconds to wait for a busy key")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--access-log", action="store_true", help="log every request (paths include the keys)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the service until SIGINT / SIGTERM."""
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvicorn

        from .app import make_app
    except ImportError as exc:
        print(f'vsml-serve needs its extra: pip install "vsml[cpu,serve]" ({exc})', file=sys.stderr)
        return 2
    config = ServeConfig(
        model=args.model,
        n_features=args.features,
        n_classes=args.classes,
        seed=args.seed,
        standardize=False if args.standardize == "none" else args.standardize,
        snapshot_every=args.snapshot_every,
        cache_mb=args.cache_mb,
        max_batch=args.max_batch,
    )
    try:
        token = read_token(args.token_file) if args.token_file else None
        store = open_store(args.store, pool_size=args.threads, lock_timeout_s=args.lock_timeout)
        service = Service(config, store, Metrics())
    except (OSError, ValueError, StoreError) as exc:
        print(f"vsml-serve: {exc}", file=sys.stderr)
        return 2
    log.info("vsml-serve: %s; auth %s", service.describe(), "on" if token else "off")
    app = make_app(service, token=token, max_body_bytes=args.max_body_bytes, threads=args.threads)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        uds=args.uds,
        log_level=args.log_level,
        access_log=args.access_log,
        limit_concurrency=args.max_connections,
        timeout_graceful_shutdown=10,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
