"""Torch modules that the exporter traces (reference sections 3-4).

Dimension letters: P learners, E examples per step of one learner, A_k / B_k
inputs / outputs of layer k, N state, M message, H = N / 2.

``StepModule`` is ONE call of ``vsml_train.step.step`` with V_M frozen in as
constants; its flat positional signature (state tensors in
``state_names(config)`` order, then ``x``, then ``y``) becomes the ONNX
graph's inputs. Labels arrive as int64 with -1 = "no label" and become one-hot
inside the graph, so the runtime never computes anything about the model.

``InitModule`` maps standard-normal noise truncated at +-2 to a fresh state
(reference section 3, "Initial state"); the runtime only draws the noise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vsml_train.config import VSMLConfig
from vsml_train.params import Params
from vsml_train.state import VSMLState, state_names
from vsml_train.step import Impl, step


def labels_to_onehot_graph(y: Tensor, n_classes: int, dtype: torch.dtype) -> Tensor:
    """[P, E] int64 labels (-1 = none) -> [P, E, B] one-hot, traceable.

    Compares with ``arange(B)``; pass B as a size read from a tensor's shape
    so that it stays a dynamic axis when traced. A label -1 (or any value
    outside [0, B)) gives an all-zero row, i.e. no error, matching
    ``vsml_train.episode.labels_to_onehot`` on valid input.
    """
    classes = torch.arange(n_classes, device=y.device, dtype=y.dtype)
    return (y.unsqueeze(-1) == classes).to(dtype)


class StepModule(torch.nn.Module):
    """One VSML step with V_M as constants.

    forward(*state, x, y) -> (*new_state, logits)
        state: tensors named ``state_names(config)`` (h_k, c_k [P, E, A_k, B_k, N],
            bwd_k [P, E, B_k, M], t [P, E]), float32.
        x: [P, E, A] float32 inputs.
        y: [P, E] int64 labels, -1 = no label.
        returns the new state tensors (same order) and logits [P, E, B] made
        before y was used.
    """

    def __init__(self, params: Params, config: VSMLConfig, impl: Impl = "fast") -> None:
        super().__init__()
        self.config = config
        self.impl: Impl = impl
        self.names = state_names(config)
        # buffers become ONNX initializers; frozen copies so V_M cannot change under the graph
        self._param_names = sorted(params)
        for name in self._param_names:
            self.register_buffer(f"vm_{name}", params[name].detach().to(torch.float32).clone())

    def params(self) -> Params:  # type: ignore[override]
        """V_M as a ``{name: tensor}`` dict (the registered buffers)."""
        return {name: getattr(self, f"vm_{name}") for name in self._param_names}

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        n = len(self.names)
        if len(inputs) != n + 2:
            raise TypeError(f"StepModule expects {n} state tensors, x and y; got {len(inputs)} tensors")
        state = VSMLState.from_dict(dict(zip(self.names, inputs[:n], strict=True)), self.config)
        x, y = inputs[n], inputs[n + 1]
        y1h = labels_to_onehot_graph(y, state.c[-1].shape[3], x.dtype)  # [P, E, B]
        new_state, logits = step(self.params(), state, x, y1h, self.config, self.impl)
        d = new_state.to_dict()
        return (*(d[name] for name in self.names), logits)


def init_from_noise(config: VSMLConfig, noise: list[Tensor], examples: Tensor) -> VSMLState:
    """A fresh state from truncated standard-normal noise (traceable, dynamic sizes).

    Args:
        noise: per layer k, [P, A_k, B_k, H] draws of a standard normal
            truncated at +-2 (values ignored when ``config.init_random`` is
            False).
        examples: [E] tensor whose LENGTH is the number of examples per step
            the state is laid out for (values ignored).
    Returns:
        the state ``vsml_train.state.init_state`` builds from the same draws:
        h = 0; c[..., :H] = noise * init_scale / sqrt(A_k), shared by the E
        examples; c[..., H:] = 0; bwd = 0; t = 0.
    """
    n, m = config.state_size, config.msg_size
    e = examples.shape[0]
    hs, cs, bwds = [], [], []
    for z in noise:  # [P, A, B, H]
        if config.init_random:
            a = torch.ones_like(z[0, :, 0, 0]).sum()  # A as a float scalar (stays a dynamic axis)
            w = z * (config.init_scale * torch.rsqrt(a))
        else:
            w = torch.zeros_like(z)
        c = F.pad(w, (0, n - z.shape[-1]))  # [P, A, B, N]
        cs.append(c.unsqueeze(1).expand(-1, e, -1, -1, -1))
        hs.append(torch.zeros_like(c).unsqueeze(1).expand(-1, e, -1, -1, -1))
        b0 = torch.zeros_like(z[:, 0, :, :1])  # [P, B, 1]
        bwds.append(F.pad(b0, (0, m - 1)).unsqueeze(1).expand(-1, e, -1, -1))
    t = torch.zeros_like(examples, dtype=noise[0].dtype).unsqueeze(0).expand(noise[0].shape[0], -1)
    return VSMLState(
        h=tuple(hs),
        c=tuple(cs),
        bwd=tuple(bwds) if not config.backward_pass else (),
        t=t if config.time_input else None,
    )


class InitModule(torch.nn.Module):
    """forward(*noise, examples) -> fresh state tensors in ``state_names`` order (see ``init_from_noise``)."""

    def __init__(self, config: VSMLConfig) -> None:
        super().__init__()
        self.config = config
        self.names = state_names(config)

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        k = self.config.n_layers
        if len(inputs) != k + 1:
            raise TypeError(f"InitModule expects {k} noise tensors and examples; got {len(inputs)} tensors")
        d = init_from_noise(self.config, list(inputs[:k]), inputs[k]).to_dict()
        return tuple(d[name] for name in self.names)
