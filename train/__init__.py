"""vsml_train: the VSML model in PyTorch and the ways to meta-learn its V_M.

Kirsch & Schmidhuber, "Meta Learning Backpropagation And Improving It"
(NeurIPS 2021). The specification is ``docs/vsml-reference.md`` of the shared
material; module docstrings cite its sections.
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
