"""Where the files shipped inside the package live (the pretrained learner).

Standard library only, so every runtime module (the learners, pickling) can use it.
"""

from __future__ import annotations

from pathlib import Path


def pretrained_path() -> str:
    """Path of the shipped pretrained model (``vsml_runtime/assets/pretrained.onnx``)."""
    path = Path(__file__).resolve().parent / "assets" / "pretrained.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"the pretrained model is missing from the installed package (looked for {path})")
    return str(path)
