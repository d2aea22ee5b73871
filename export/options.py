"""Options, result and error types of ``vsml-export`` (see ``vsml_export.exporter``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vsml_train.model.config import BatchAverage, VSMLConfig

Exporter = Literal["dynamo", "legacy"]
OPSETS = (18, 19, 20)
_UNSET = object()


class ExportError(RuntimeError):
    """The export failed (bad model file, unwritable path, failed verification...)."""


@dataclass(frozen=True)
class ExportOptions:
    """Knobs of ``export_model``.

    Attributes:
        opset: ONNX opset of the default domain (18..20).
        exporter: "legacy" (TorchScript tracer, default) or "dynamo" (torch.export).
        clip: override of the state clip bound (None disables); default: the model's.
        batch_average: override of the averaging mode; default: the model's.
        tuned: trace ``step(..., impl="onnx")`` (``vsml_train.model.visit_onnx``), with
            ``impl="onnx-rows"`` for large grids (``vsml_export.switch``; legacy exporter only);
            False traces ``impl="blocked"`` (slower graph, same numbers).
        verify: compare ONNX Runtime with PyTorch before writing.
    """

    opset: int = 18
    exporter: Exporter = "legacy"
    clip: float | object | None = _UNSET
    batch_average: BatchAverage | object = _UNSET
    tuned: bool = True
    verify: bool = True


@dataclass(frozen=True)
class ExportResult:
    """What ``export_model`` wrote."""

    step_path: Path
    init_path: Path
    params_sha256: str
    config: VSMLConfig
    max_verify_error: float | None


def apply_overrides(config: VSMLConfig, options: ExportOptions) -> VSMLConfig:
    """The config with the export-time clip / batch averaging overrides applied."""
    changes: dict[str, object] = {}
    if options.clip is not _UNSET:
        changes["clip"] = options.clip
    if options.batch_average is not _UNSET:
        changes["batch_average"] = options.batch_average
    try:
        return config.replace(**changes) if changes else config
    except ValueError as exc:
        raise ExportError(str(exc)) from exc
