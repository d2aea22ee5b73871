"""The sparse-shared view of a VS Meta RNN (docs/model.md "Sparse-shared view"; Theorem 1 of the paper's appendix).

Dimension letters: A first grid index, B second grid index, N state per cell,
D = A * B * N the flattened state. Leading batch dimensions ``...`` are allowed
on every state tensor.

The simplest VS Meta RNN is a sigmoid RNN on states s_abj, a in [A], b in [B],
with two shared N x N matrices, W (self recurrence) and C (interaction), and a
shared bias bhat [N]:

    s_abj <- sigmoid( bhat_j + sum_i s_abi W_ij + sum_{c,i} s_cai C_ij )

The interaction term of cell (a, b) sums over the cells (c, a), c in [A]: the
cells whose SECOND index equals this cell's FIRST index. Cell (c, a) exists only
if a < B, so the construction applies exactly when A <= B (square grids and
"wide" grids such as A = 3, B = 5); for A > B the cells (c, a) with a >= B do
not exist and both functions below raise ``ValueError``.

The same update is one standard RNN step over the flattened state with the
big weight matrix (source cell (c, d), unit i; target cell (a, b), unit j)

    Wtilde[c,d,i, a,b,j] = [d == a] C_ij + [d == b][c == a] W_ij

i.e. C_ij where d = a and not (d = b and c = a); W_ij where d != a, d = b,
c = a; C_ij + W_ij where d = a = b = c; 0 elsewhere. Of its (A B)^2 blocks of
N x N, A^2 B + A B - A are nonzero, all copies of C, W or C + W: a sparse matrix
with shared entries, which is what "VS" (variable sharing) means.
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_grid(a: int, b: int) -> None:
    """Raise ``ValueError`` unless the interaction cells (c, a) exist: 1 <= A <= B."""
    if a < 1 or b < 1:
        raise ValueError(f"grid sizes must be >= 1, got A={a}, B={b}")
    if a > b:
        raise ValueError(
            f"the sparse-shared construction needs A <= B: the interaction term of cell (a, b) "
            f"reads the cells (c, a), which exist only for a < B; got A={a}, B={b}"
        )


def _check_matrices(w: Tensor, c: Tensor) -> int:
    """Check W and C are the same [N, N]; return N."""
    if w.dim() != 2 or w.shape[0] != w.shape[1] or w.shape != c.shape:
        raise ValueError(f"expected W and C of the same shape [N, N], got {tuple(w.shape)} and {tuple(c.shape)}")
    return int(w.shape[0])


def vs_step(s: Tensor, w: Tensor, c: Tensor, bhat: Tensor) -> Tensor:
    """One step of the VS Meta RNN, vectorised over the grid.

    Args:
        s: [..., A, B, N] states s_abj.
        w: [N, N] self recurrence W.
        c: [N, N] interaction C with the cells (c, a).
        bhat: [N] shared bias.
    Returns:
        [..., A, B, N] the next states.
    """
    n = _check_matrices(w, c)
    if s.dim() < 3 or s.shape[-1] != n or bhat.shape != (n,):
        raise ValueError(f"expected s [..., A, B, {n}] and bhat [{n}], got {tuple(s.shape)} and {tuple(bhat.shape)}")
    a, b = s.shape[-3], s.shape[-2]
    check_grid(a, b)
    own = s @ w  # [..., A, B, N]
    # sum over c of s[c, a, :] for every a in [A]: the column slice :A of the grid
    inter = s[..., :a, :].sum(-3) @ c  # [..., A, N], indexed by a
    return torch.sigmoid(bhat + own + inter.unsqueeze(-2))


def dense_matrix(w: Tensor, c: Tensor, a: int, b: int) -> Tensor:
    """The big RNN weight Wtilde over the flattened state (module docstring).

    Args:
        w: [N, N] self recurrence W.
        c: [N, N] interaction C.
        a, b: grid sizes A <= B.
    Returns:
        [D, D] with D = A * B * N; row = source (c, d, i), column = target
        (a, b, j), both flattened in C order like ``s.reshape(..., D)``.
    """
    n = _check_matrices(w, c)
    check_grid(a, b)
    opts = {"dtype": w.dtype, "device": w.device}
    eq_da = torch.eye(b, a, **opts)  # [d, a]: [d == a]
    eq_db = torch.eye(b, **opts)  # [d, b]: [d == b]
    eq_ca = torch.eye(a, **opts)  # [c, a]: [c == a]
    # axes (c, d, i, a, b, j); products with 0 / 1 are exact, so every block is
    # exactly C, W, C + W or 0
    c_term = eq_da[None, :, None, :, None, None] * c[None, None, :, None, None, :]
    sel = eq_ca[:, None, None, :, None, None] * eq_db[None, :, None, None, :, None]
    w_term = sel * w[None, None, :, None, None, :]
    big = c_term + w_term  # broadcasts to [A, B, N, A, B, N]
    d = a * b * n
    return big.reshape(d, d)


def tile_bias(bhat: Tensor, a: int, b: int) -> Tensor:
    """The shared bias repeated for every cell: [N] -> [A * B * N]."""
    return bhat.repeat(a * b)


def dense_step(s_flat: Tensor, w_tilde: Tensor, bhat_tiled: Tensor) -> Tensor:
    """Standard RNN step sigmoid(s_flat @ Wtilde + b): [..., D] x [D, D] x [D] -> [..., D]."""
    return torch.sigmoid(s_flat @ w_tilde + bhat_tiled)
