"""vsml_train: the VSML model in PyTorch and the ways to meta-learn its V_M.

Kirsch & Schmidhuber, "Meta Learning Backpropagation And Improving It"
(NeurIPS 2021). ``docs/model.md`` of this repository states the model and the
protocol in our own words; module docstrings cite its sections (§N).

Layout, each layer using only those before it (``tests/test_layers.py``):
``model`` (the VSML model, the Meta RNN baseline) -> ``data`` (numpy only) ->
``evaluation`` -> ``methods`` (meta-training; the meta-test is passed in) ->
the CLIs (``cli_train``, ``cli_eval``, ``cli_meta_rnn``, ``demo``) and
``clone_check``. Shared, standard library only: ``seeds``, ``options``, ``files``.
"""

from .model import (
    Params,
    VSMLConfig,
    VSMLState,
    flatten,
    init_params,
    init_state,
    n_params,
    state_names,
    step,
    unflatten,
)

__version__ = "0.1.0"

__all__ = [
    "Params",
    "VSMLConfig",
    "VSMLState",
    "__version__",
    "flatten",
    "init_params",
    "init_state",
    "n_params",
    "state_names",
    "step",
    "unflatten",
]
