"""Writing files safely: atomically (temp file + rename) and with the mode a plain ``open`` gives.

No torch here: the data layer and the exporter use it too.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def new_file_mode(path: Path) -> int:
    """The mode a plain ``open(path, "w")`` would leave: the existing file's, else 0666 less the umask.

    Temp files from ``tempfile.mkstemp`` are private (0600); renamed into place
    as they are, model files would be unreadable to other users and containers.
    """
    if path.exists():
        return path.stat().st_mode & 0o7777
    mask = os.umask(0o022)  # read the umask by setting and restoring it
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder and rename."""
    atomic_write_files([(Path(path), data)])


def atomic_write_files(files: list[tuple[Path, bytes]]) -> None:
    """Write each file to a temp file in its folder, then rename them all, in order.

    Nothing is renamed until every temp file is written, so a failure leaves
    no partial or half-updated set of files; temp files never outlive the call.
    """
    for path, _ in files:
        if not path.parent.is_dir():  # Path("name").parent is Path(".")
            raise FileNotFoundError(f"cannot write {path}: folder {path.parent} does not exist")
    temps: list[tuple[str, Path]] = []
    try:
        for path, data in files:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            temps.append((tmp, path))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for tmp, path in temps:
            os.chmod(tmp, new_file_mode(path))
            os.replace(tmp, path)
    finally:
        for tmp, _ in temps:
            Path(tmp).unlink(missing_ok=True)
