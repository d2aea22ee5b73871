"""vsml_train.model: the VSML model itself (docs/model.md §2-5).

The layer every other part of ``vsml_train`` builds on (model -> data ->
evaluation -> methods -> CLIs); it imports nothing else of the package.

- ``config``: ``VSMLConfig``, every switch of the model;
- ``params``: the meta variables V_M (shared LSTM parameters);
- ``state``: the learned variables V_L (per-layer LSTM states, messages);
- ``cell``: the shared cell algebra (gate blocks, message heads, boundary
  messages, stabilisers);
- ``visits``: the layer visits (blocked, chunked, fast, naive);
- ``visit_onnx``: the visit arranged for ONNX Runtime (what the exporter traces);
- ``step``: one time step, the schedule of layer visits;
- ``episode``: the shared rollout over a stream;
- ``model_file``: the ``model.pt`` file;
- ``meta_rnn``: the Meta RNN baseline model (one LSTM, no weight sharing).
"""

from .config import VSMLConfig
from .params import Params, flatten, init_params, n_params, unflatten
from .state import VSMLState, init_state, state_names
from .step import step

__all__ = [
    "Params",
    "VSMLConfig",
    "VSMLState",
    "flatten",
    "init_params",
    "init_state",
    "n_params",
    "state_names",
    "step",
    "unflatten",
]
