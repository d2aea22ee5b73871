"""The Meta RNN baseline model: one LSTM fed [x_t, e_{t-1}, y_{t-1}] (docs/model.md §6.6).

What VSML's weight sharing buys is measured against this: a plain LSTM
of 128 units that sees the input, the error of its previous prediction and the
previous label. Its weights are specific to one input size A and one number
of classes B, so it can only be evaluated on tasks of the shape it was built
for; other shapes raise a ``ValueError``. It is meta-trained like VSML's BPTT
learner (``vsml_train.methods.meta_rnn``).

One step for stream s at time t::

    u_t      = [x_t, e_{t-1}, onehot(y_{t-1})]        # [A + 2B]
    h_t, c_t = LSTMCell(u_t, (h_{t-1}, c_{t-1}))      # [U]
    logits_t = W_out h_t + b_out                       # [B], made before y_t is seen
    e_t      = softmax(logits_t) - onehot(y_t)        # the error fed back next step

Dimension letters (docs/model.md §8): T steps, S streams, A inputs, B classes,
U LSTM units.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .model_file import read_torch_file, write_torch_file

FORMAT = "vsml-meta-rnn"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class MetaRNNConfig:
    """The Meta RNN's shape.

    Attributes:
        n_features: A, the input size it is built for.
        n_classes: B.
        hidden: U, LSTM units (the reference's 128).
    """

    n_features: int = 784
    n_classes: int = 10
    hidden: int = 128

    def __post_init__(self) -> None:
        if self.n_features < 1 or self.n_classes < 2 or self.hidden < 1:
            raise ValueError(f"need n_features >= 1, n_classes >= 2, hidden >= 1; got {self}")


class MetaRNN(nn.Module):
    """LSTM 128 fed [x, e_prev, y_prev]; ``forward`` runs S streams online.

    Args:
        config: ``MetaRNNConfig``.
        seed: seeds the initial weights (PyTorch's default LSTM / Linear init).
    """

    def __init__(self, config: MetaRNNConfig, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        a, b, h = config.n_features, config.n_classes, config.hidden
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.cell = nn.LSTMCell(a + 2 * b, h)
            self.head = nn.Linear(h, b)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """x [T, S, A] float, y [T, S] int64 -> logits [T, S, B] (logits[t] never depends on y[t])."""
        t_steps, s, a = x.shape
        b, h = self.config.n_classes, self.config.hidden
        if a != self.config.n_features:
            raise ValueError(f"this Meta RNN was built for {self.config.n_features} inputs, got {a}")
        w_ih = self.cell.weight_ih
        # the input part of the gate pre-activations for all steps at once: [T, S, 4H]
        gx = x @ w_ih[:, :a].T + self.cell.bias_ih + self.cell.bias_hh
        w_fb = w_ih[:, a:]  # [4H, 2B]: weights of [e_prev, y_prev]
        hx = x.new_zeros(s, h)
        cx = x.new_zeros(s, h)
        fb = x.new_zeros(s, 2 * b)
        onehot = torch.nn.functional.one_hot(y, b).to(x.dtype)  # [T, S, B]
        out = []
        for t in range(t_steps):
            gates = gx[t] + fb @ w_fb.T + hx @ self.cell.weight_hh.T  # [S, 4H]
            i, f, g, o = gates.chunk(4, dim=-1)
            cx = torch.sigmoid(f) * cx + torch.sigmoid(i) * torch.tanh(g)
            hx = torch.sigmoid(o) * torch.tanh(cx)
            logits = self.head(hx)  # [S, B]
            out.append(logits)
            fb = torch.cat([torch.softmax(logits, -1) - onehot[t], onehot[t]], -1)
        return torch.stack(out)


def save_meta_rnn(path: str | Path, model: MetaRNN, meta: dict[str, Any]) -> None:
    """Write a Meta RNN file atomically (loads with ``weights_only=True``)."""
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": dataclasses.asdict(model.config),
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "meta": json.loads(json.dumps(meta, default=str)),
    }
    write_torch_file(path, payload)


def load_meta_rnn(path: str | Path) -> tuple[MetaRNN, dict[str, Any]]:
    """Read a Meta RNN file; ``ValueError`` naming the problem if it is not one."""
    payload = read_torch_file(path, fmt=FORMAT, version=FORMAT_VERSION, noun="Meta RNN file", title="Meta RNN file")
    try:
        model = MetaRNN(MetaRNNConfig(**payload["config"]))
        model.load_state_dict(payload["state"])
    except (KeyError, TypeError, RuntimeError, ValueError) as exc:
        raise ValueError(f"{path}: inconsistent Meta RNN file: {exc}") from exc
    return model, dict(payload.get("meta", {}))
