"""Input checks and online standardisation for ``Learner`` / ``LearnerPool`` (numpy only).

Dimension letters: p learners of a call, E examples per step, A inputs.

Everything here validates or rescales what the caller passes; the model's
own math stays in the exported graph.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from . import format as fmt

Standardize = bool | Literal["online", "online-scalar", "model"] | tuple[float, float]

# raw inputs are clipped to +-RAW_LIMIT (in float64) before a standardiser sees them: squares and
# sums of squares of such values stay finite for any count below 1e100, so no finite input can
# overflow the running statistics (they are float64 and updated only from clipped values)
RAW_LIMIT = 1e100


# ---------------------------------------------------------------------------
# input checks


def check_x(x: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    """x as an array of exactly ``shape`` with finite real values (not copied); TypeError / ValueError otherwise.

    Any real dtype is accepted (float or int); values are later standardised
    (optionally), clipped to +-1e6 and cast to float32 by the learner.
    """
    arr = x if type(x) is np.ndarray else np.asarray(x)
    kind = arr.dtype.kind
    if kind not in "fiu":
        raise TypeError(f"{what} must be real numbers (float or int), got dtype {arr.dtype}")
    if arr.shape != shape:
        raise ValueError(f"{what} must have shape {shape}, got {arr.shape}")
    # one reduction in the common case: NaN and inf propagate into the sum; a finite but
    # overflowing sum falls through to the exact check
    if kind == "f" and not _finite_sum(arr):
        finite = np.isfinite(arr)
        if not finite.all():
            bad = np.argwhere(~finite)
            raise ValueError(f"{what} holds {len(bad)} NaN/inf values (first at index {tuple(bad[0])})")
    return arr


MAX_SEED = 2**63 - 1


def check_seed(seed: Any, what: str = "seed") -> int:
    """A seed as an int in [0, 2**63 - 1]: TypeError for a non-integer (float, str, bool), ValueError out of range."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise TypeError(f"{what} must be an integer, got {type(seed).__name__} {seed!r}")
    value = int(seed)
    if not 0 <= value <= MAX_SEED:
        raise ValueError(f"{what} must be in [0, 2**63 - 1], got {value}")
    return value


def _finite_sum(arr: np.ndarray) -> bool:
    with np.errstate(over="ignore", invalid="ignore"):  # an overflowing sum just means "check exactly"
        return bool(np.isfinite(arr.sum()))


def check_y(y: Any, shape: tuple[int, ...], n_classes: int) -> np.ndarray | int:
    """Labels in [0, n_classes) or -1 (no label): an int for shape (), else an int64 array."""
    if y is None:
        raise TypeError("y (labels) must be given: class ids in [0, n_classes), -1 = no label")
    if shape == () and (type(y) is int or isinstance(y, np.integer)) and -1 <= int(y) < n_classes:
        return int(y)
    arr = np.asarray(y)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"y (labels) must be integers (class ids; -1 = no label), got dtype {arr.dtype}")
    if arr.shape != shape:
        raise ValueError(f"y (labels) must have shape {shape}, got {arr.shape}")
    # range-checked in the caller's dtype BEFORE the cast: uint64(2**64 - 1) must not wrap to -1
    bad = (arr >= n_classes) if arr.dtype.kind == "u" else ((arr < -1) | (arr >= n_classes))
    if bad.any():
        raise ValueError(
            f"y (labels) must be in [0, {n_classes}) or -1 (no label); got {sorted(set(arr[bad].tolist()))[:10]}"
        )
    return arr.astype(np.int64)


# ---------------------------------------------------------------------------
# online standardisation


class Standardizer:
    """Running mean / variance per learner (Chan et al. parallel update), float64.

    mode "online": per feature; "online-scalar": one scalar over all
    features; "fixed": a given (mean, std); "none": identity.
    """

    def __init__(self, mode: str, n_learners: int, n_features: int, fixed: tuple[float, float] | None = None) -> None:
        self.mode = mode
        self.fixed = fixed
        width = n_features if mode == "online" else 1
        self.count = np.zeros(n_learners)
        self.mean = np.zeros((n_learners, width))
        self.m2 = np.zeros((n_learners, width))

    @property
    def online(self) -> bool:
        return self.mode in ("online", "online-scalar")

    @staticmethod
    def raw(x: np.ndarray) -> np.ndarray:
        """x as float64 clipped to +-RAW_LIMIT: what the statistics and the standardisation use."""
        return np.clip(np.asarray(x, dtype=np.float64), -RAW_LIMIT, RAW_LIMIT)

    def updated(self, x: np.ndarray, rows: np.ndarray | slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(count, mean, m2) of ``rows`` after seeing x [p, E, A] (not stored); finite for every finite x."""
        x = self.raw(x)
        count, mean, m2 = self.count[rows], self.mean[rows], self.m2[rows]
        # per feature: x [p, E, A]; one scalar: [p, E*A, 1]
        xs = x if self.mode == "online" else x.reshape(x.shape[0], -1, 1)
        n_b = xs.shape[1]
        mean_b = xs.mean(1)
        m2_b = ((xs - mean_b[:, None, :]) ** 2).sum(1)
        tot = count + n_b
        delta = mean_b - mean
        new_mean = mean + delta * (n_b / tot)[:, None]
        new_m2 = m2 + m2_b + delta**2 * (count * n_b / tot)[:, None]
        if not (np.isfinite(new_mean).all() and np.isfinite(new_m2).all()):  # pragma: no cover - bounded above
            raise ValueError("x: the running statistics would overflow; the state is unchanged")
        return tot, new_mean, new_m2

    def apply(self, x: np.ndarray, stats: tuple[np.ndarray, np.ndarray, np.ndarray] | None, rows: Any) -> np.ndarray:
        """Standardise x [p, E, A] with ``stats`` (or the stored ones); float64."""
        if self.mode == "none":
            return x
        x = self.raw(x)
        with np.errstate(over="ignore"):  # an overflow to +-inf is clipped to +-INPUT_LIMIT next
            if self.mode == "fixed":
                assert self.fixed is not None
                return (x - self.fixed[0]) / self.fixed[1]
            count, mean, m2 = stats if stats is not None else (self.count[rows], self.mean[rows], self.m2[rows])
            var = m2 / np.maximum(count, 1.0)[:, None]
            return (x - mean[:, None, :]) / np.sqrt(var + 1e-6)[:, None, :]

    def commit(self, stats: tuple[np.ndarray, np.ndarray, np.ndarray], rows: Any) -> None:
        self.count[rows], self.mean[rows], self.m2[rows] = stats

    def reset(self, rows: Any) -> None:
        self.count[rows] = 0.0
        self.mean[rows] = 0.0
        self.m2[rows] = 0.0


def standardize_mode(standardize: Standardize, info: fmt.ModelInfo) -> tuple[str, tuple[float, float] | None]:
    if standardize is False or standardize is None:
        return "none", None
    if standardize is True or standardize == "online":
        return "online", None
    if standardize == "online-scalar":
        return "online-scalar", None
    if standardize == "model":
        c = info.input_contract
        if c.mean is None or c.std is None:
            raise ValueError(
                "standardize='model': this model file records no input mean/std (its model.pt had no "
                "input_mean/input_std); pass the statistics it was meta-trained with as standardize=(mean, std), "
                "or standardize='online-scalar' to estimate them from the stream"
            )
        return "fixed", (float(c.mean), float(c.std))
    if isinstance(standardize, tuple) and len(standardize) == 2:
        mean, std = float(standardize[0]), float(standardize[1])
        if not (np.isfinite(mean) and np.isfinite(std) and std > 0):
            raise ValueError(f"standardize=(mean, std) needs a finite mean and std > 0, got {standardize}")
        return "fixed", (mean, std)
    raise ValueError(
        "standardize must be False, 'online' (per feature), 'online-scalar', 'model' or a (mean, std) tuple; "
        f"got {standardize!r}"
    )
