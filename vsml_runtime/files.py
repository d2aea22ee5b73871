"""The project's one atomic writer: temp file + fsync + rename, stale temp files cleaned (numpy-free, torch-free).

Used by ``LearnerBase.save`` (learner states), the exporter (the two ONNX
graphs of a model) and ``vsml_train`` (model files, checkpoints, datasets).

* ``atomic_write(path, write)``: ``write(f)`` fills a temp file in the same
  folder, which is fsynced and renamed over ``path``: readers see the old
  file or the new one, never a partial one, even after SIGKILL or a power
  cut.
* ``atomic_write_files(files)``: several files that must change together
  (the last is the pointer that records the sha256 of the others, as
  ``model.onnx`` records its init graph's). The dependents are staged as
  ``<name>.next``, the pointer is renamed into place, then the staged files;
  a crash at any point leaves a pair a reader finds (``staged_path``) and
  the next write finishes or drops what the crash left (``recover``).
* Temp files are named ``.<name>.<host>.<pid>.<token>.tmp``; each write
  first removes the temp files of the same target whose writer is gone
  (its process has exited on this host, or the file is older than
  ``STALE_AFTER_S``), so SIGKILLed saves do not fill the disk. (Folders of
  more than ``LARGE_FOLDER`` files are listed at most once a minute.)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "STALE_AFTER_S",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_files",
    "clean_stale_temps",
    "new_file_mode",
    "recover",
    "staged_path",
]

STALE_AFTER_S = 6 * 3600  # a temp file this old is stale whoever wrote it
LARGE_FOLDER = 10_000  # entries: a folder this large is listed for stale temps at most once per interval
CLEAN_INTERVAL_S = 60.0
STAGED_SUFFIX = ".next"

_ACTIVE: set[str] = set()  # temp files this process is writing right now
_ACTIVE_LOCK = threading.Lock()
_LISTED: dict[str, tuple[float, int]] = {}  # folder -> (time of its last listing, entries then)


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def new_file_mode(path: Path) -> int:
    """The mode a plain ``open(path, "w")`` would leave: the existing file's, else 0666 less the umask.

    Temp files are private (0600); renamed into place as they are, model
    files would be unreadable to other users and containers.
    """
    if path.exists():
        return path.stat().st_mode & 0o7777
    mask = os.umask(0o022)  # read the umask by setting and restoring it
    os.umask(mask)
    return 0o666 & ~mask


def staged_path(path: str | os.PathLike[str]) -> Path:
    """Where ``atomic_write_files`` stages a dependent file before the pointer switches: ``<name>.next``."""
    p = Path(path)
    return p.with_name(p.name + STAGED_SUFFIX)


# ---------------------------------------------------------------------------
# temp files


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # exists (another user's), or not a pid we can judge: keep
    return True


def _is_stale(tmp: Path, prefix: str, host: str, now: float) -> bool:
    """Whether ``tmp`` (a temp file of the target named by ``prefix``) was left by a writer that is gone."""
    with _ACTIVE_LOCK:
        if str(tmp) in _ACTIVE:
            return False
    try:
        age = now - tmp.stat().st_mtime
    except OSError:
        return False
    if age > STALE_AFTER_S:
        return True
    parts = tmp.name[len(prefix) : -len(".tmp")].split(".")
    if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
        return False  # another host's, or an older naming: only age decides
    pid = int(parts[1])
    if pid == os.getpid():
        return True  # ours but not active: a thread of this process that died mid-write
    return not _pid_alive(pid)


def clean_stale_temps(path: str | os.PathLike[str], *, force: bool = False) -> list[Path]:
    """Remove the temp files of ``path`` whose writer is gone (see the module doc); returns those removed.

    Finding them lists the folder. A folder that held more than
    ``LARGE_FOLDER`` entries at its last listing (e.g. one state file per
    user) is listed at most once per ``CLEAN_INTERVAL_S`` per process, so
    saves stay cheap; ``force`` lists it anyway.
    """
    target = Path(path)
    folder = target.parent
    key = str(folder.resolve()) if folder.exists() else str(folder)
    now = time.time()
    with _ACTIVE_LOCK:
        last, size = _LISTED.get(key, (0.0, 0))
    if not force and size > LARGE_FOLDER and now - last < CLEAN_INTERVAL_S:
        return []
    prefix = f".{target.name}."
    host = _host_tag()
    removed = []
    count = 0
    try:
        with os.scandir(folder) as it:
            for entry in it:
                count += 1
                name = entry.name
                if not (name.startswith(prefix) and name.endswith(".tmp")):
                    continue
                tmp = folder / name
                if _is_stale(tmp, prefix, host, now):
                    with contextlib.suppress(OSError):
                        tmp.unlink()
                        removed.append(tmp)
    except OSError:
        return removed
    with _ACTIVE_LOCK:
        _LISTED[key] = (now, count)
    return removed


def _new_temp(path: Path) -> tuple[int, Path]:
    """(fd, temp path) of a fresh private file next to ``path``, registered as active."""
    while True:
        tmp = path.with_name(f".{path.name}.{_host_tag()}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        with _ACTIVE_LOCK:  # registered first: a concurrent cleaner must never see it unregistered
            _ACTIVE.add(str(tmp))
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            with _ACTIVE_LOCK:
                _ACTIVE.discard(str(tmp))
            continue
        except BaseException:
            with _ACTIVE_LOCK:
                _ACTIVE.discard(str(tmp))
            raise
        return fd, tmp


def _release(tmp: Path) -> None:
    tmp.unlink(missing_ok=True)
    with _ACTIVE_LOCK:
        _ACTIVE.discard(str(tmp))


def _fsync_dir(folder: Path) -> None:
    """Make the renames in ``folder`` durable (best effort: not every platform opens folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def _check_folder(path: Path) -> None:
    if not path.parent.is_dir():  # Path("name").parent is Path(".")
        raise FileNotFoundError(f"cannot write {path}: folder {path.parent} does not exist")


def _write_temp(path: Path, write: Callable[[BinaryIO], object]) -> Path:
    """A fsynced temp file next to ``path`` holding what ``write`` wrote, with ``path``'s future mode."""
    fd, tmp = _new_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, new_file_mode(path))
    except BaseException:
        _release(tmp)
        raise
    return tmp


# ---------------------------------------------------------------------------
# writers


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> None:
    """Replace ``path`` atomically with what ``write(f)`` writes to a binary file object.

    Raises FileNotFoundError if the folder does not exist; whatever ``write``
    raises leaves ``path`` as it was and no temp file behind.
    """
    target = Path(path)
    _check_folder(target)
    clean_stale_temps(target)
    tmp = _write_temp(target, write)
    try:
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        _release(tmp)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` atomically with ``data``."""
    atomic_write(path, lambda f: f.write(data))


def _sha_hex(data: bytes) -> bytes:
    return hashlib.sha256(data).hexdigest().encode()


def recover(files: list[Path]) -> None:
    """Finish or drop what an interrupted ``atomic_write_files`` of ``files`` (pointer last) left.

    A staged ``<dependent>.next`` whose sha256 the current pointer records is
    the half of the current pair: it is moved into place. Any other staged
    file belongs to no complete pair and is removed.
    """
    pointer = files[-1]
    try:
        pointer_bytes = pointer.read_bytes()
    except OSError:
        pointer_bytes = b""
    for dep in files[:-1]:
        staged = staged_path(dep)
        if not staged.is_file():
            continue
        if pointer_bytes and _sha_hex(staged.read_bytes()) in pointer_bytes:
            os.replace(staged, dep)
        else:
            staged.unlink(missing_ok=True)
        _fsync_dir(dep.parent)


def atomic_write_files(files: list[tuple[Path, bytes]]) -> None:
    """Replace several files so that readers always find a consistent set, even after a crash.

    The LAST file is the pointer: its bytes must hold the sha256 (hex) of
    every other file's new bytes (``model.onnx`` records its init graph's).
    Order: every file is written to a temp file first (nothing changes if
    that fails); the dependents are renamed to ``<name>.next``; the pointer
    is renamed into place (the switch); the staged dependents are renamed
    over the old ones. A reader that finds a dependent whose sha256 is not
    the recorded one reads ``staged_path(dependent)`` instead.
    """
    paths = [Path(p) for p, _ in files]
    for path in paths:
        _check_folder(path)
    pointer, pointer_bytes = paths[-1], files[-1][1]
    for path, data in files[:-1]:
        if _sha_hex(data) not in pointer_bytes:
            raise ValueError(f"the last file ({pointer.name}) must record the sha256 of {Path(path).name}")
    recover(paths)
    for path in paths:
        clean_stale_temps(path)
    temps: list[Path] = []
    try:
        for path, (_, data) in zip(paths, files, strict=True):
            temps.append(_write_temp(path, lambda f, d=data: f.write(d)))
        for tmp, path in zip(temps[:-1], paths[:-1], strict=True):
            os.replace(tmp, staged_path(path))
            _fsync_dir(path.parent)
        os.replace(temps[-1], pointer)  # the switch: from here on the new set is the current one
        _fsync_dir(pointer.parent)
        for path in paths[:-1]:
            os.replace(staged_path(path), path)
            _fsync_dir(path.parent)
    finally:
        for tmp in temps:
            _release(tmp)
