"""vsml_runtime: run an exported VSML learner with ONNX Runtime (numpy + onnxruntime only, no torch).

``Learner`` learns online from a stream of labelled examples and predicts;
``LearnerPool`` steps many independent learners in one call.
``vsml_runtime.sklearn`` and ``vsml_runtime.river`` wrap a Learner as a
scikit-learn / River classifier (optional extras ``sklearn`` / ``river``). The model files
come from ``vsml-export model.pt model.onnx``; ``vsml_runtime.format``
describes them.

Errors: ``TypeError`` / ``ValueError`` for bad arguments (the learner's
state is then unchanged), ``FormatError`` (a ``ValueError``) for every
unreadable, corrupt or inconsistent model or state file, and
``FileNotFoundError`` for a missing one (see ``vsml_runtime.learner``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from .format import FormatError

if TYPE_CHECKING:
    from .learner import Learner, LearnerPool

__all__ = ["FormatError", "Learner", "LearnerPool", "__version__"]


def __getattr__(name: str) -> Any:
    # lazy: ``vsml_runtime.format`` must import without onnxruntime (the exporter uses it)
    if name in ("Learner", "LearnerPool"):
        from . import learner

        return getattr(learner, name)
    raise AttributeError(f"module 'vsml_runtime' has no attribute {name!r}")
