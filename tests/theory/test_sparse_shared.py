"""The sparse-shared view (docs/model.md §5): VS Meta RNN == one dense RNN with a sparse shared matrix."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from tests.theory.sparse_shared import check_grid, dense_matrix, dense_step, tile_bias, vs_step

# (A, B, N): square, wide (A < B), single-cell, single-row and N = 1 grids
SIZES = [(1, 1, 3), (2, 2, 3), (3, 3, 2), (2, 5, 3), (3, 4, 4), (1, 6, 2), (4, 7, 1)]


def _random(a: int, b: int, n: int, seed: int, batch: tuple[int, ...] = ()) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Random s [*batch, A, B, N] in (0, 1), W, C [N, N] and bhat [N], float64."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, n, generator=gen, dtype=torch.float64)
    c = torch.randn(n, n, generator=gen, dtype=torch.float64)
    bhat = torch.randn(n, generator=gen, dtype=torch.float64)
    s = torch.rand(*batch, a, b, n, generator=gen, dtype=torch.float64)
    return s, w, c, bhat


def _loop_step(s: Tensor, w: Tensor, c: Tensor, bhat: Tensor) -> Tensor:
    """Per-cell reference written straight from the formula: s [A, B, N] -> [A, B, N]."""
    a, b, _ = s.shape
    out = torch.empty_like(s)
    for i in range(a):
        for j in range(b):
            inter = sum(s[k, i] for k in range(a))
            out[i, j] = torch.sigmoid(bhat + s[i, j] @ w + inter @ c)
    return out


@pytest.mark.parametrize(("a", "b", "n"), SIZES)
def test_vs_step_matches_per_cell_formula(a: int, b: int, n: int) -> None:
    s, w, c, bhat = _random(a, b, n, seed=1)
    torch.testing.assert_close(vs_step(s, w, c, bhat), _loop_step(s, w, c, bhat), rtol=0, atol=1e-14)


@pytest.mark.parametrize(("a", "b", "n"), SIZES)
def test_one_and_several_steps_agree(a: int, b: int, n: int) -> None:
    s, w, c, bhat = _random(a, b, n, seed=2, batch=(2,))
    wt = dense_matrix(w, c, a, b)
    bt = tile_bias(bhat, a, b)
    d = a * b * n
    assert wt.shape == (d, d)
    s_vs, s_dense = s, s.reshape(2, d)
    for t in range(5):
        s_vs = vs_step(s_vs, w, c, bhat)
        s_dense = dense_step(s_dense, wt, bt)
        err = (s_vs.reshape(2, d) - s_dense).abs().max().item()
        assert err <= 1e-12, f"step {t}: max |vs - dense| = {err}"


def _expected_block(c_idx: int, d_idx: int, a_idx: int, b_idx: int, w: Tensor, c: Tensor) -> tuple[str, Tensor]:
    """The block of Wtilde from source cell (c, d) to target cell (a, b), by the spec's case list."""
    if d_idx == a_idx == b_idx == c_idx:
        return "C+W", c + w
    if d_idx == a_idx:
        return "C", c
    if d_idx == b_idx and c_idx == a_idx:
        return "W", w
    return "0", torch.zeros_like(w)


@pytest.mark.parametrize(("a", "b", "n"), SIZES)
def test_zero_and_sharing_pattern(a: int, b: int, n: int) -> None:
    _, w, c, _ = _random(a, b, n, seed=3)
    blocks = dense_matrix(w, c, a, b).reshape(a, b, n, a, b, n).permute(0, 1, 3, 4, 2, 5)  # [c, d, a, b, i, j]
    counts = {"C": 0, "W": 0, "C+W": 0, "0": 0}
    nonzero = 0
    for ci in range(a):
        for di in range(b):
            for ai in range(a):
                for bi in range(b):
                    kind, want = _expected_block(ci, di, ai, bi, w, c)
                    got = blocks[ci, di, ai, bi]
                    assert torch.equal(got, want), f"block (c,d)=({ci},{di}) -> (a,b)=({ai},{bi}) is not {kind}"
                    counts[kind] += 1
                    nonzero += bool(got.any())
    assert counts["C"] == a * a * b - a
    assert counts["W"] == a * b - a
    assert counts["C+W"] == a
    assert nonzero == a * a * b + a * b - a
    assert counts["0"] == (a * b) ** 2 - nonzero


@pytest.mark.parametrize(("a", "b"), [(2, 1), (5, 3), (0, 2), (2, 0)])
def test_rejects_grids_without_interaction_cells(a: int, b: int) -> None:
    w = torch.eye(2, dtype=torch.float64)
    with pytest.raises(ValueError, match="A="):
        check_grid(a, b)
    with pytest.raises(ValueError, match="A="):
        dense_matrix(w, w, a, b)
    if a > 0 and b > 0:
        with pytest.raises(ValueError, match="A <= B"):
            vs_step(torch.zeros(a, b, 2, dtype=torch.float64), w, w, torch.zeros(2, dtype=torch.float64))


def test_rejects_bad_matrix_shapes() -> None:
    w = torch.zeros(3, 3)
    with pytest.raises(ValueError, match=r"\[N, N\]"):
        dense_matrix(w, torch.zeros(3, 2), 2, 2)
    with pytest.raises(ValueError, match="bhat"):
        vs_step(torch.zeros(2, 2, 3), w, w, torch.zeros(4))
