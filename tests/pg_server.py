"""A throwaway PostgreSQL cluster for the serve tests and CI (loopback / unix socket only).

``start(folder)`` runs the machine's ``initdb`` into ``folder`` and
``pg_ctl start`` with a unix socket in ``folder`` and TCP on 127.0.0.1 only,
trust auth (nobody else can reach it), and returns the URL of a fresh
database. As root it runs the server as the ``postgres`` user (initdb
refuses root). ``python -m tests.pg_server start DIR`` prints the URL (CI
exports it as ``VSML_TEST_POSTGRES_URL``); ``stop DIR`` ends it and deletes DIR.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path


def find_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/*/bin`` with initdb and pg_ctl (or the ones on PATH), or None."""
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True):
        if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists():
            return Path(d)
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_server_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


def start(folder: str | os.PathLike[str], timeout_s: float = 60.0) -> str:
    """Start a cluster in ``folder`` (created; must not hold one); returns its ``postgresql://`` URL."""
    bindir = find_bin()
    if bindir is None:
        raise RuntimeError("no PostgreSQL server binaries (initdb, pg_ctl) on this machine")
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "data"
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
        folder.chmod(0o755)
    port = _free_port()
    subprocess.run(
        _as_server_user([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=timeout_s,
    )
    opts = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={folder} -c fsync=on"
    subprocess.run(
        _as_server_user(
            [str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(folder / "log"), "-w", "start"]
        ),
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=timeout_s,
    )
    (folder / "port").write_text(str(port))
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    deadline = time.monotonic() + timeout_s
    while subprocess.run(
        [str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL
    ).returncode:
        if time.monotonic() > deadline:
            raise RuntimeError(f"PostgreSQL in {folder} did not come up (see {folder / 'log'})")
        time.sleep(0.2)
    return url


def stop(folder: str | os.PathLike[str], remove: bool = True) -> None:
    """Stop the cluster started in ``folder`` (fast shutdown) and, with ``remove``, delete the folder."""
    bindir = find_bin()
    data = Path(folder).resolve() / "data"
    if bindir is not None and data.exists():
        subprocess.run(
            _as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
    if remove:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("start", "stop"):
        raise SystemExit("usage: python -m tests.pg_server start|stop DIR")
    if sys.argv[1] == "start":
        print(start(sys.argv[2]))
    else:
        stop(sys.argv[2])
