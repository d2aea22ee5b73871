"""Torch modules that the exporter traces (docs/model.md §3-4).

Dimension letters: P learners, E examples per step of one learner, A_k / B_k
inputs / outputs of layer k, N state, M message (docs/model.md §8).

``StepModule`` is ONE call of ``vsml_train.model.step.step`` with V_M frozen in as
constants; its flat positional signature (state tensors in
``state_names(config)`` order, then ``x``, then ``y``) becomes the ONNX
graph's inputs. Labels arrive as int64 with -1 = "no label" and become one-hot
inside the graph, so the runtime never computes anything about the model.

``InitModule`` maps standard normal noise truncated at +-2 to a fresh state
by tracing ``vsml_train.model.state.state_from_noise`` itself (docs/model.md §3,
"Initial state"; every size stays symbolic there); the runtime only draws the
noise.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vsml_train.model.config import VSMLConfig
from vsml_train.model.params import Params
from vsml_train.model.state import VSMLState, state_from_noise, state_names
from vsml_train.model.step import Impl, step


def labels_to_onehot_graph(y: Tensor, n_classes: int, dtype: torch.dtype) -> Tensor:
    """[P, E] int64 labels (-1 = none) -> [P, E, B] one-hot, traceable.

    Compares with ``arange(B)``; pass B as a size read from a tensor's shape
    so that it stays a dynamic axis when traced. A label -1 (or any value
    outside [0, B)) gives an all-zero row, i.e. no error, matching
    ``vsml_train.model.episode.labels_to_onehot`` on valid input.
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


class InitModule(torch.nn.Module):
    """forward(*noise, examples) -> fresh state tensors in ``state_names`` order.

    ``state_from_noise`` with V_M frozen in: noise_k [P, A_k, B_k, N/2] standard
    normal truncated at +-2, examples [E] (only its length is used: every
    example starts from the same state).
    """

    def __init__(self, params: Params, config: VSMLConfig) -> None:
        super().__init__()
        self.config = config
        self.names = state_names(config)
        self._param_names = sorted(params)
        for name in self._param_names:
            self.register_buffer(f"vm_{name}", params[name].detach().to(torch.float32).clone())

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        k = self.config.n_layers
        if len(inputs) != k + 1:
            raise TypeError(f"InitModule expects {k} noise tensors and examples; got {len(inputs)} tensors")
        params = {name: getattr(self, f"vm_{name}") for name in self._param_names}
        # E read from the examples tensor's shape, so that it stays a dynamic axis when traced
        d = state_from_noise(self.config, params, list(inputs[:k]), inputs[k].shape[0]).to_dict()
        return tuple(d[name] for name in self.names)
