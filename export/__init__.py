"""vsml_export: `vsml-export model.pt model.onnx` — one VSML step (and the initial state) as ONNX.

``export_model`` writes the step graph and its init graph (``model.init.onnx``)
with self-describing metadata (``vsml_runtime.format``) after checking the
ONNX Runtime result against the PyTorch step; ``vsml_runtime.Learner`` runs them.
"""

from .exporter import ExportError, ExportOptions, ExportResult, export_graphs, export_model

__all__ = ["ExportError", "ExportOptions", "ExportResult", "export_graphs", "export_model"]
