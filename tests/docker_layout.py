"""What can be checked of the Dockerfile without a Docker engine.

* every ``COPY`` source exists in the build context and is not excluded by
  ``.dockerignore`` (a small reimplementation of its matching: ``*``, ``**``,
  ``!`` exceptions, last match wins);
* the image, laid out in a folder: each stage's ``WORKDIR`` / ``COPY`` become
  folders under ``ROOT``, the export stage's model step (its last ``RUN``) runs
  with ``MODEL_PT`` as given (``pip install`` lines are skipped: the venv
  running it has the packages), and the image's ``ENTRYPOINT`` + ``CMD`` runs
  with a given venv's python, as ``docker run IMAGE`` would.

    python tests/docker_layout.py --python VENV/bin/python --work DIR   # .ci/clean_installs
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Stage:
    """One ``FROM`` stage: its name, working directory and instructions (keyword, argument text)."""

    name: str
    workdir: str = "/"
    steps: list[tuple[str, str]] = field(default_factory=list)


def parse(dockerfile: Path = REPO / "Dockerfile") -> list[Stage]:
    """The stages of a Dockerfile (continuation lines joined, comments dropped)."""
    text = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in dockerfile.read_text().splitlines() if not line.strip().startswith("#")),
    )
    stages: list[Stage] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        key, _, arg = line.strip().partition(" ")
        key, arg = key.upper(), arg.strip()
        if key == "FROM":
            m = re.search(r"\bAS\s+(\S+)", arg, re.IGNORECASE)
            stages.append(Stage(m.group(1) if m else arg))
        elif stages:
            if key == "WORKDIR":
                stages[-1].workdir = arg
            stages[-1].steps.append((key, arg))
    return stages


def _copy_args(arg: str) -> tuple[dict[str, str], list[str], str]:
    """COPY's (flags, sources, destination)."""
    words = json.loads(arg) if arg.startswith("[") else arg.split()
    flags = {w[2:].split("=", 1)[0]: w.split("=", 1)[-1] for w in words if w.startswith("--")}
    rest = [w for w in words if not w.startswith("--")]
    return flags, rest[:-1], rest[-1]


def ignore_patterns(path: Path = REPO / ".dockerignore") -> list[str]:
    return [p.strip() for p in path.read_text().splitlines() if p.strip() and not p.strip().startswith("#")]


def _match(pattern: str, rel: str) -> bool:
    """Docker's matching of one pattern against a context path (or a folder above it)."""
    regex = re.escape(pattern.strip("/")).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
    regex = regex.replace(r"\?", "[^/]")
    parts = rel.split("/")
    return any(re.fullmatch(regex, "/".join(parts[:i])) for i in range(1, len(parts) + 1))


def ignored(rel: str, patterns: list[str] | None = None) -> bool:
    """Whether the context path ``rel`` is left out of the build context."""
    out = False
    for p in ignore_patterns() if patterns is None else patterns:
        if p.startswith("!"):
            if _match(p[1:], rel):
                out = False
        elif _match(p, rel):
            out = True
    return out


def copy_problems(stages: list[Stage] | None = None) -> list[str]:
    """Each COPY source (from the context) that is missing or excluded by .dockerignore."""
    problems = []
    for stage in stages or parse():
        for key, arg in stage.steps:
            if key != "COPY":
                continue
            flags, sources, _ = _copy_args(arg)
            if "from" in flags:
                continue
            for src in sources:
                matches = list(REPO.glob(src)) if any(c in src for c in "*?[") else [REPO / src]
                if not any(m.exists() for m in matches):
                    problems.append(f"{stage.name}: COPY {src}: not in the build context")
                elif ignored(src.rstrip("/")):
                    problems.append(f"{stage.name}: COPY {src}: excluded by .dockerignore")
    return problems


def _inside(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def lay_out(root: Path, model_pt: str = "") -> list[Stage]:
    """Build the image's files under ``root``: COPYs of every stage and the export stage's model step."""
    stages = parse()
    for stage in stages:
        workdir = _inside(root, stage.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        for key, arg in stage.steps:
            if key == "COPY":
                flags, sources, dest = _copy_args(arg)
                base = _inside(root, "/") if "from" in flags else REPO
                target = _inside(root, dest) if dest.startswith("/") else workdir / dest
                for src in sources:
                    s = base / src.lstrip("/")
                    t = target / s.name if dest.endswith("/") or len(sources) > 1 else target
                    if s.resolve() == t.resolve():  # a stage's folder under the same root
                        continue
                    t.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copytree(s, t, dirs_exist_ok=True) if s.is_dir() else shutil.copy2(s, t)
            elif key == "RUN" and stage.name == "export" and "/models" in arg:
                shell = re.sub(r"--mount=\S+", "", arg).replace("/ctx", str(REPO))
                shell = shell.replace("/models", str(_inside(root, "/models")))
                env = {**os.environ, "MODEL_PT": model_pt}
                subprocess.run(["bash", "-c", f"set -e; {shell}"], cwd=workdir, env=env, check=True)
    return stages


def entry_command(stages: list[Stage], root: Path, python: str) -> tuple[list[str], Path]:
    """The final stage's ENTRYPOINT + CMD with its paths under ``root`` and ``python`` for python."""
    final = stages[-1]
    argv: list[str] = []
    for key in ("ENTRYPOINT", "CMD"):
        args = [json.loads(a) for k, a in final.steps if k == key]
        argv += args[-1] if args else []
    argv = [python if a in ("python", "python3") else a for a in argv]
    argv = [str(_inside(root, a)) if a.startswith("/models") else a for a in argv]
    return argv, _inside(root, final.workdir)


def run_image(root: Path, python: str, model_pt: str = "", extra: list[str] | None = None) -> str:
    """Lay the image out under ``root`` and run its entry command; returns its output."""
    stages = lay_out(root, model_pt)
    argv, cwd = entry_command(stages, root, python)
    done = subprocess.run(argv + (extra or []), cwd=cwd, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"entry command {argv} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", default=sys.executable, help="the venv's python that plays the image's /opt/vsml")
    ap.add_argument("--work", type=Path, required=True, help="folder to lay the image out in (recreated)")
    args = ap.parse_args()
    problems = copy_problems()
    if problems:
        sys.exit("Dockerfile: " + "; ".join(problems))
    shutil.rmtree(args.work, ignore_errors=True)
    out = run_image(args.work, args.python)
    print(out.strip().splitlines()[0])
    print(f"docker layout: every COPY source is in the context; the entry command ran with {args.python}")


if __name__ == "__main__":
    main()
