"""Resource limits of the runtime: memory a learner or pool may need, ONNX Runtime threads.

Checked up front, before any buffer is allocated or any state file entry is
read, so no size a caller or a file claims can exhaust the machine.

* Memory: ``estimate_bytes`` gives the host memory a learner / pool needs
  from its sizes (the two state buffers, the initial-state noise and ONNX
  Runtime's working memory of one call, measured at about 14x the state of
  the learners one call steps). A construction or load that would need more
  than the limit raises ``ValueError`` naming the estimate. The limit is
  ``DEFAULT_MEMORY_LIMIT`` (8 GiB), or the environment variable
  ``VSML_MEMORY_LIMIT`` (bytes, or a number with K / M / G / T), or the
  ``memory_limit=`` argument of ``Learner`` / ``LearnerPool`` and their
  ``load``.
* Threads: ``threads`` must be an integer in [1, ``max_threads()``]
  (``MAX_THREADS`` = 64, or the CPU count when larger).
"""

from __future__ import annotations

import operator
import os
import re

DEFAULT_MEMORY_LIMIT = 8 << 30
MAX_THREADS = 64
ENV_MEMORY_LIMIT = "VSML_MEMORY_LIMIT"
WORKING_FACTOR = 14  # ONNX Runtime's peak working memory per call, in units of that call's state bytes
STATE_FILE_META_BYTES = 1 << 20  # a state file's meta entry is a small JSON string

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_bytes(text: str) -> int:
    """'8G' -> 8 GiB, '123' -> 123 bytes; ValueError otherwise."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise ValueError(f"a memory size must be bytes or a number with K/M/G/T, got {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def memory_limit(override: int | None = None) -> int:
    """The limit in bytes: ``override``, else ``$VSML_MEMORY_LIMIT``, else ``DEFAULT_MEMORY_LIMIT``."""
    if override is not None:
        value = _as_int(override)
        if value is None or value < 1:
            raise ValueError(f"memory_limit must be a positive number of bytes, got {override!r}")
        return value
    env = os.environ.get(ENV_MEMORY_LIMIT)
    if env:
        try:
            return parse_bytes(env)
        except ValueError as exc:
            raise ValueError(f"${ENV_MEMORY_LIMIT}: {exc}") from exc
    return DEFAULT_MEMORY_LIMIT


def estimate_bytes(state_numbers: int, call_state_numbers: int) -> int:
    """Host bytes a learner / pool needs: ``state_numbers`` float32 in all, ``call_state_numbers`` per call."""
    state = 4 * int(state_numbers)
    call = 4 * int(call_state_numbers)
    # two ping-pong buffers + the init graph's output and noise (or the new state of a subset call)
    # + a copy of one call's state + ONNX Runtime's working memory per call
    return 3 * state + (1 + WORKING_FACTOR) * call + (64 << 20)


def check_memory(needed: int, override: int | None, what: str) -> None:
    """ValueError if ``needed`` bytes exceed the limit (saying how to raise it)."""
    limit = memory_limit(override)
    if needed > limit:
        raise ValueError(
            f"{what} would need about {needed / 2**30:.2f} GiB, more than the memory limit of "
            f"{limit / 2**30:.2f} GiB; pass memory_limit=... (bytes) or set ${ENV_MEMORY_LIMIT} to allow it"
        )


def max_threads() -> int:
    """The most ONNX Runtime threads a learner may ask for."""
    return max(MAX_THREADS, os.cpu_count() or 1)


def check_threads(threads: object) -> int:
    """``threads`` as an int in [1, max_threads()]; ValueError otherwise."""
    hi = max_threads()
    value = _as_int(threads)
    if value is None or not 1 <= value <= hi:
        raise ValueError(f"threads must be an integer in [1, {hi}], got {threads!r}")
    return value


def _as_int(v: object) -> int | None:
    """An integer (Python or numpy, not bool) as int; None for anything else."""
    if isinstance(v, bool):
        return None
    try:
        return operator.index(v)  # type: ignore[arg-type]
    except TypeError:
        return None
