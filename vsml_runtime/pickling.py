"""Pickling and ``copy.deepcopy`` of ``Learner`` / ``LearnerPool`` through their learned state.

An ONNX Runtime session (and the learner's lock) cannot be pickled; what a
learner has learned is its ``state_dict()``, so that is what travels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class PickleByState:
    """Pickling and ``copy.deepcopy`` through the learned state, never the ONNX Runtime session.

    A subclass sets ``self._ctor`` (its constructor's keyword arguments) in
    ``__init__``; the pickle holds those, the model path (``None`` for the
    shipped pretrained model, so the pickle also loads where the package lives
    elsewhere) and ``state_dict()``. Unpickling builds a fresh learner and
    loads the state (which checks the model's V_M hash).
    """

    _ctor: dict[str, Any]
    _model_path: Path

    def __getstate__(self) -> dict[str, Any]:
        from .shipped import pretrained_path

        path: str | None = str(self._model_path)
        try:
            if path == str(Path(pretrained_path()).resolve()):
                path = None
        except FileNotFoundError:  # a package without its pretrained model: keep the path
            pass
        return {"model_path": path, "ctor": dict(self._ctor), "state": self.state_dict()}  # type: ignore[attr-defined]

    def __setstate__(self, d: dict[str, Any]) -> None:
        from .shipped import pretrained_path

        path = d["model_path"] if d["model_path"] is not None else pretrained_path()
        self.__init__(path, **d["ctor"])  # type: ignore[misc]
        self.load_state_dict(d["state"])  # type: ignore[attr-defined]
