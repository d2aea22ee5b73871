"""The attacks of issue 11, re-run: what a hostile or clumsy service feeds the runtime.

For every case the runtime must either work as documented or raise the
documented exception (TypeError / ValueError for arguments, FormatError for
files), and a rejected call must leave the learner's state bit-identical and
the files untouched. Prints, per attack family and in total: cases tried,
handled as documented, state intact.

Usage::

    python bench/hardening.py            # a few minutes on 2 cores
    python bench/hardening.py --quick    # sampled bit flips, fewer kills (about a minute)
    python bench/hardening.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vsml_export.exporter import ExportOptions, export_model
from vsml_runtime import FormatError, Learner, LearnerPool, files
from vsml_runtime import format as fmt
from vsml_train.model.config import VSMLConfig
from vsml_train.model.model_file import ModelFile, save_model
from vsml_train.model.params import init_params

A, B = 6, 3
ARG_ERRORS = (TypeError, ValueError)


class Tally:
    """Per family: [tried, handled as documented, state intact]."""

    def __init__(self) -> None:
        self.rows: dict[str, list[int]] = {}
        self.failures: list[str] = []
        self.outcomes: dict[str, dict[str, int]] = {}  # per family: how the handled cases ended

    def outcome(self, family: str, how: str) -> None:
        counts = self.outcomes.setdefault(family, {})
        counts[how] = counts.get(how, 0) + 1

    def add(self, family: str, handled: bool, intact: bool, what: str = "") -> None:
        row = self.rows.setdefault(family, [0, 0, 0])
        row[0] += 1
        row[1] += handled
        row[2] += intact
        if not (handled and intact):
            self.failures.append(f"{family}: {what} (handled={handled}, intact={intact})")

    def table(self) -> str:
        lines = [f"{'attack':34s} {'tried':>7s} {'handled':>8s} {'intact':>7s}"]
        tot = [0, 0, 0]
        for family, row in self.rows.items():
            lines.append(f"{family:34s} {row[0]:7d} {row[1]:8d} {row[2]:7d}")
            tot = [t + r for t, r in zip(tot, row, strict=True)]
        lines.append(f"{'total':34s} {tot[0]:7d} {tot[1]:8d} {tot[2]:7d}")
        return "\n".join(lines)


def snapshot(learner: Learner | LearnerPool) -> dict[str, np.ndarray]:
    return {k: v for k, v in learner.state_dict().items() if k != "meta"}


def same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def rejected(tally: Tally, family: str, learner: Any, call: Callable[[], Any], errors: Any, what: str) -> None:
    """A call that must raise ``errors`` and leave ``learner`` as it was."""
    before = snapshot(learner) if learner is not None else None
    try:
        call()
        handled = False
    except errors:
        handled = True
    except Exception as exc:  # the wrong type is a failure of the contract
        handled, what = False, f"{what}: {type(exc).__name__}: {exc}"
    intact = before is None or same(before, snapshot(learner))
    tally.add(family, handled, intact, what)


def _rows_of_features(x: Any) -> bool:
    try:
        arr = np.asarray(x)
    except ValueError:
        return False
    return (
        arr.ndim == 2
        and arr.shape[0] > 0
        and arr.shape[1] == A
        and arr.dtype.kind in "fiu"
        and bool(np.isfinite(arr).all())
    )


# ---------------------------------------------------------------------------
# the attack families


def bad_arguments(tally: Tally, model: Path) -> None:
    learner = Learner(model, A, B, standardize="online")
    learner.learn_stream(np.random.default_rng(0).standard_normal((5, A)), [0, 1, 2, 0, 1])
    pool = LearnerPool(model, 3, A, B)
    x = np.ones(A)
    xs = [x[:-1], x[None, None], np.array(["a"] * A), x > 0, x.astype(complex), np.array([None] * A), [x, x]]
    xs += [np.where(np.arange(A) == 2, v, x) for v in (np.nan, np.inf, -np.inf)]
    xs += [np.full(A, np.nan, np.float16), "abc", None, {"x": 1}, np.zeros((0, A))]
    for bad in xs:
        rejected(
            tally, "bad x (learn/predict/stream)", learner, lambda b=bad: learner.learn(b, 0), ARG_ERRORS, repr(bad)
        )
        if not _rows_of_features(bad):  # [n, A] finite rows are what predict takes
            rejected(tally, "bad x (learn/predict/stream)", learner, lambda b=bad: learner.predict(b), ARG_ERRORS, "")
        rejected(
            tally,
            "bad x (learn/predict/stream)",
            learner,
            lambda b=bad: learner.learn_stream(np.array([b, b]), [0, 1]),
            ARG_ERRORS,
            repr(bad),
        )
    ys = [B, -2, 1.0, "1", None, True, np.uint64(2**64 - 1), np.uint8(200), 2**70, np.array([1, 2]), [0]]
    for bad in ys:
        rejected(tally, "bad labels", learner, lambda b=bad: learner.learn(x, b), ARG_ERRORS, repr(bad))
        rejected(
            tally,
            "bad labels",
            pool,
            lambda b=bad: pool.learn(np.ones((3, A)), np.array([b, b, b])),
            ARG_ERRORS,
            repr(bad),
        )
    for rows in ([1, 1], [0, 3], [-1], [], [[0]], [True], [0.0], "0", 1):
        rejected(
            tally,
            "bad learner indices",
            pool,
            lambda r=rows: pool.learn(np.ones((2, A)), [0, 1], learners=r),
            ARG_ERRORS,
            repr(rows),
        )
    for seed in (1.9, "3", True, 2**64, -1, None):
        rejected(tally, "bad seeds", None, lambda s=seed: Learner(model, A, B, seed=s), ARG_ERRORS, repr(seed))
        if seed is not None:  # reset(seed=None) means the constructor's seed
            rejected(tally, "bad seeds", learner, lambda s=seed: learner.reset(seed=s), ARG_ERRORS, repr(seed))
        rejected(tally, "bad seeds", pool, lambda s=seed: pool.reset(seeds=[0, 1, s]), ARG_ERRORS, repr(seed))
    for kwargs in (
        {"threads": 4096},
        {"threads": 0},
        {"threads": 1.5},
        {"n_features": 0},
        {"n_classes": 1},
        {"n_features": 10**7},
        {"examples_per_step": 0},
        {"device": "tpu"},
        {"standardize": "sometimes"},
        {"memory_limit": 1000},
        {"chunk": 0},
    ):
        args = {"n_features": A, "n_classes": B} | kwargs
        cls = LearnerPool if "chunk" in kwargs else Learner
        rest = {k: v for k, v in args.items() if k not in ("n_features", "n_classes")}
        make = (
            (lambda a=args, r=rest: LearnerPool(model, 2, a["n_features"], a["n_classes"], **r))
            if cls is LearnerPool
            else (lambda a=args, r=rest: Learner(model, a["n_features"], a["n_classes"], **r))
        )
        t0 = time.perf_counter()
        rejected(tally, "bad sizes / threads / options", None, make, ValueError, repr(kwargs))
        if time.perf_counter() - t0 > 5:
            tally.add("bad sizes / threads / options", False, True, f"{kwargs}: took > 5 s")


def huge_inputs(tally: Tally, model: Path, folder: Path) -> None:
    """Finite but huge inputs must never poison a standardiser; its own file must load again."""
    values = [np.full(A, 1e200), np.full(A, 1e19, np.float32), np.full(A, np.finfo(np.float64).max), np.full(A, -3e38)]
    for mode in ("online", "online-scalar", False, (0.0, 1e-300)):
        for x in values:
            learner = Learner(model, A, B, standardize=mode)
            try:
                with np.errstate(all="raise"):
                    ok = all(np.isfinite(learner.learn(s * x, 1, return_logits=True)[1]).all() for s in (1, -1, 1))
                ok = ok and np.isfinite(learner.learn(np.ones(A), 0, return_logits=True)[1]).all()
                learner.save(folder / "huge.npz")
                ok = ok and same(snapshot(Learner.load(folder / "huge.npz")), snapshot(learner))
            except Exception as exc:
                ok = False
                print("  huge input:", mode, type(exc).__name__, exc)
            finite = all(np.isfinite(v).all() for v in snapshot(learner).values() if v.dtype.kind == "f")
            tally.add("huge finite inputs", bool(ok), finite, f"{mode} {x[:1]}")


def predict_many(tally: Tally) -> None:
    import resource

    learner = Learner.pretrained(784, 10)
    learner.predict(np.zeros((4, 784), np.float32))
    before = snapshot(learner)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10
    tracemalloc.start()
    t0 = time.perf_counter()
    learner.predict(np.zeros((1000, 784), np.float32))
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10) - rss0
    print(
        f"  predict(x[1000, 784]) at 784x10: {seconds:.2f} s, peak numpy memory {peak / 2**20:.0f} MiB, "
        f"process peak grew by {grew / 2**20:.0f} MiB"
    )
    tally.add("predict(x[n, A]) memory", grew < 256 << 20 and seconds < 30, same(before, snapshot(learner)))


def state_files(tally: Tally, model: Path, folder: Path, quick: bool) -> None:
    learner = Learner(model, A, B, standardize="online", seed=3)
    learner.learn_stream(np.random.default_rng(1).standard_normal((8, A)), [0, 1, 2, 0, 1, 2, 0, 1])
    good = folder / "user.npz"
    learner.save(good)
    saved = snapshot(learner)
    data = good.read_bytes()
    bad = folder / "bad.npz"
    rng = np.random.default_rng(0)
    bits = range(len(data) * 8)
    if quick:
        bits = sorted(rng.choice(len(data) * 8, 1500, replace=False).tolist())
    print(f"  state file: {len(data)} bytes, {len(bits)} single-bit flips, {len(data)} truncations")

    def load(case: bytes, family: str) -> None:
        bad.write_bytes(case)
        try:
            loaded = Learner.load(bad)
            # a flip in bytes nobody reads (zip header dates, attributes): must give the saved state
            handled = same(snapshot(loaded), saved)
            tally.outcome(family, "loaded, same state" if handled else "loaded, OTHER state")
        except FormatError:
            handled = True
            tally.outcome(family, "FormatError")
        except Exception as exc:
            handled = False
            family = f"{family}"
            tally.failures.append(f"{family}: {type(exc).__name__}: {exc}")
        tally.add(family, handled, bad.read_bytes() == case and good.read_bytes() == data)

    for bit in bits:
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        load(bytes(flipped), "state file: single-bit flips")
    for n in range(0, len(data), 1 if not quick else 7):
        load(data[:n], "state file: truncations")
    # claims and payloads
    d = learner.state_dict()
    meta = json.loads(str(d["meta"]))
    for key, value in (
        ("n_features", 10**6),
        ("n_learners", 10**5),
        ("n_classes", 10**9),
        ("examples_per_step", 2**40),
    ):
        np.savez(folder / "liar.npz", **{**d, "meta": np.array(json.dumps({**meta, key: value}))})
        tracemalloc.start()
        rejected(
            tally,
            "state file: crafted sizes / bombs",
            None,
            lambda: Learner.load(folder / "liar.npz"),
            FormatError,
            key,
        )
        if tracemalloc.get_traced_memory()[1] > 16 << 20:
            tally.add("state file: crafted sizes / bombs", False, True, f"{key}: read too much")
        tracemalloc.stop()
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(folder / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            extra = bytes(512 << 20) if info.filename.startswith("state.") else b""
            dst.writestr(info.filename, src.read(info) + extra)
    tracemalloc.start()
    rejected(
        tally, "state file: crafted sizes / bombs", None, lambda: Learner.load(folder / "bomb.npz"), FormatError, "bomb"
    )
    tally.add("state file: crafted sizes / bombs", tracemalloc.get_traced_memory()[1] < 32 << 20, True, "bomb memory")
    tracemalloc.stop()
    marker = folder / "PWNED"
    payload = np.array([_Payload(str(marker))], dtype=object)
    with zipfile.ZipFile(folder / "pickle.npz", "w") as z:
        for k, v in d.items():
            with z.open(f"{k}.npy", "w") as f:
                np.lib.format.write_array(f, payload if k == "steps" else v, allow_pickle=True)
    rejected(
        tally,
        "state file: crafted sizes / bombs",
        None,
        lambda: Learner.load(folder / "pickle.npz"),
        FormatError,
        "pickle",
    )
    tally.add("state file: crafted sizes / bombs", not marker.exists(), True, "pickle payload ran")


class _Payload:
    """Pickled into a state file: creates ``marker`` if ever unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (Path(self.marker),))


def model_files(tally: Tally, model: Path, folder: Path, quick: bool) -> None:
    rng = np.random.default_rng(2)
    step_data, init_data = model.read_bytes(), fmt.init_path_for(model).read_bytes()
    folder = folder / "model-flips"  # only the damaged pair in it (the loader also looks for the recorded name)
    folder.mkdir()
    step, init = folder / "m.onnx", folder / "m.init.onnx"
    n = 150 if quick else 600
    for which, data in ((step, step_data), (init, init_data)):
        other = init if which == step else step
        other.write_bytes(init_data if other == init else step_data)
        cases = [data[: int(k)] for k in rng.integers(0, len(data), n // 10)]
        for pos in rng.integers(0, len(data) * 8, n):
            flipped = bytearray(data)
            flipped[pos // 8] ^= 1 << int(pos % 8)
            cases.append(bytes(flipped))
        for case in cases:
            which.write_bytes(case)
            family = f"model file: {which.name.split('.', 1)[1]} flips/truncations"
            try:
                Learner(step, A, B)
                handled = True
                tally.outcome(family, "loaded")
            except FormatError:
                handled = True
                tally.outcome(family, "FormatError")
            except Exception as exc:
                handled = False
                tally.failures.append(f"model file: {type(exc).__name__}: {exc}")
            tally.add(family, handled, which.read_bytes() == case)


def sigkilled_saves(tally: Tally, model: Path, folder: Path, kills: int) -> None:
    target = folder / "killed.npz"
    Learner(model, A, B).save(target)
    code = textwrap.dedent(
        f"""
        import numpy as np
        from vsml_runtime import Learner
        learner = Learner({str(model)!r}, {A}, {B})
        print("READY", flush=True)
        while True:
            learner.learn(np.ones({A}), 0)
            learner.save({str(target)!r})
        """
    )
    rng = np.random.default_rng(3)
    for _ in range(kills):
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        proc.stdout.readline()
        time.sleep(float(rng.uniform(0.0, 0.3)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        try:
            Learner.load(target)
            ok = True
        except Exception as exc:
            ok = False
            tally.failures.append(f"killed save: {type(exc).__name__}: {exc}")
        tally.add("SIGKILLed saves: file loads", ok, True)
    Learner(model, A, B).save(target)
    left = [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]
    tally.add("SIGKILLed saves: no temp files", not left, True, f"{len(left)} left")


def export_crashes(tally: Tally, folder: Path) -> None:
    out = folder / "crash" / "model.onnx"
    out.parent.mkdir()
    pts = []
    for seed in range(4):
        config = VSMLConfig()
        save_model(folder / f"s{seed}.pt", ModelFile(config, init_params(config, seed), {}))
        pts.append(folder / f"s{seed}.pt")
    export_model(pts[0], out, ExportOptions(verify=False))
    real = os.replace
    for crash_at in (1, 2, 3):
        calls = {"n": 0}

        def replace(src: Any, dst: Any, at: int = crash_at, calls: dict[str, int] = calls) -> None:
            calls["n"] += 1
            if calls["n"] == at:
                raise KeyboardInterrupt
            real(src, dst)

        files.os.replace = replace  # type: ignore[assignment]
        try:
            export_model(pts[crash_at], out, ExportOptions(verify=False))
        except KeyboardInterrupt:
            pass
        finally:
            files.os.replace = real  # type: ignore[assignment]
        try:
            Learner(out, A, B)
            ok = True
        except Exception as exc:
            ok = False
            tally.failures.append(f"export crash {crash_at}: {exc}")
        tally.add("export crash between renames", ok, True, f"crash at rename {crash_at}")


def crafted_metadata(tally: Tally, model: Path, folder: Path) -> None:
    import onnx

    from vsml_export.exporter import seal_step

    def crafted(key: str, value: str) -> Path:
        graph = onnx.load(model)
        kept = [(p.key, p.value) for p in graph.metadata_props if p.key != fmt.K_STEP_SHA256]
        del graph.metadata_props[:]
        for k, v in kept:
            e = graph.metadata_props.add()
            e.key, e.value = k, (value if k == key else v)
        path = folder / "crafted.onnx"
        path.write_bytes(seal_step(graph))
        (folder / "crafted.init.onnx").write_bytes(fmt.init_path_for(model).read_bytes())
        return path

    meta = {p.key: p.value for p in onnx.load(model).metadata_props}
    state, init = json.loads(meta[fmt.K_STATE]), json.loads(meta[fmt.K_INIT])
    cases = [
        (fmt.K_INIT, {**init, "low": 2.0, "high": -2.0}),
        (fmt.K_INIT, {**init, "low": 5.0, "high": 5.0001}),
        (fmt.K_INIT, {**init, "low": 8.0, "high": 9.0}),
        (fmt.K_STATE, {**state, "names": ["h_0", "z_0"]}),
        (fmt.K_STATE, {**state, "dims": {**state["dims"], "N": 64}}),
        (fmt.K_STATE, {**state, "layout": [1]}),
        (fmt.K_STATE, "{"),
        (fmt.K_CLIP, -1),
        (fmt.K_GRAPH, "init"),
        (fmt.K_INPUT_CONTRACT, {"std": 0.0}),
    ]
    for key, value in cases:
        path = crafted(key, value if isinstance(value, str) else json.dumps(value))
        t0 = time.perf_counter()
        rejected(tally, "crafted model metadata", None, lambda p=path: Learner(p, A, B), FormatError, f"{key}={value}")
        if time.perf_counter() - t0 > 5:
            tally.add("crafted model metadata", False, True, f"{key}: took > 5 s (hang?)")


def threads_and_pools(tally: Tally, model: Path) -> None:
    rng = np.random.default_rng(4)
    streams = [(rng.standard_normal((300, A)), rng.integers(0, B, 300)) for _ in range(4)]
    expected = [Learner(model, A, B, seed=s).learn_stream(*streams[s], return_logits=True)[1] for s in range(4)]
    got: dict[int, np.ndarray] = {}

    def work(s: int) -> None:
        learner = Learner(model, A, B, seed=s)
        got[s] = np.stack([learner.learn(x, int(y), return_logits=True)[1] for x, y in zip(*streams[s], strict=True)])

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in range(4):
        tally.add("threaded learners = sequential", np.array_equal(got[s], expected[s]), True, f"stream {s}")
    pool = LearnerPool(model, 4, A, B, seed=0, chunk=1)
    for t in range(300):
        logits = pool.learn(
            np.stack([streams[s][0][t] for s in range(4)]), [streams[s][1][t] for s in range(4)], return_logits=True
        )[1]
        ok = all(np.allclose(logits[s], expected[s][t], atol=1e-6) for s in range(4))
        tally.add("pool = single learners", ok, True, f"step {t}")


def train_cli(tally: Tally, folder: Path) -> None:
    from click.testing import CliRunner

    from vsml_train.cli_train import cli

    run = folder / "run"
    run.mkdir()
    for args, want in (
        (["--resume", "--out", str(run)], "no checkpoint"),
        (["--resume"], "--out"),
    ):
        res = CliRunner().invoke(cli, args)
        tally.add("vsml-train misuse", res.exit_code == 2 and want in res.output, True, " ".join(args))
    (run / "checkpoint.pt").write_bytes(b"x")
    res = CliRunner().invoke(cli, ["--preset", "es-cpu", "--out", str(run)])
    tally.add("vsml-train misuse", res.exit_code == 2 and "add --resume" in res.output, True, "fresh run into a run")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="sampled bit flips and 10 kills")
    ap.add_argument("--kills", type=int, default=None, help="SIGKILLed saves (default 50, 10 with --quick)")
    ap.add_argument("--json", default="", help="also write the figures to this JSON file")
    args = ap.parse_args()
    tally = Tally()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = VSMLConfig()
        save_model(folder / "model.pt", ModelFile(config, init_params(config, 0), {}))
        model = export_model(folder / "model.pt", folder / "model.onnx", ExportOptions(verify=False)).step_path
        steps: list[tuple[str, Callable[[], None]]] = [
            ("bad arguments", lambda: bad_arguments(tally, model)),
            ("huge inputs", lambda: huge_inputs(tally, model, folder)),
            ("predict many rows", lambda: predict_many(tally)),
            ("state files", lambda: state_files(tally, model, folder, args.quick)),
            ("model files", lambda: model_files(tally, model, folder, args.quick)),
            ("crafted metadata", lambda: crafted_metadata(tally, model, folder)),
            ("export crashes", lambda: export_crashes(tally, folder)),
            (
                "SIGKILLed saves",
                lambda: sigkilled_saves(tally, model, folder, args.kills or (10 if args.quick else 50)),
            ),
            ("threads and pools", lambda: threads_and_pools(tally, model)),
            ("vsml-train", lambda: train_cli(tally, folder)),
        ]
        for name, step in steps:
            t1 = time.perf_counter()
            step()
            print(f"{name}: {time.perf_counter() - t1:.1f} s", flush=True)
    print()
    print(tally.table())
    for family, counts in tally.outcomes.items():
        print(f"  {family}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print(f"\n{time.perf_counter() - t0:.0f} s; failures: {len(tally.failures)}")
    for line in tally.failures[:30]:
        print("  FAIL", line)
    if args.json:
        out = {"rows": tally.rows, "outcomes": tally.outcomes, "failures": tally.failures}
        Path(args.json).write_text(json.dumps(out, indent=1))
    sys.exit(1 if tally.failures else 0)


if __name__ == "__main__":
    main()
