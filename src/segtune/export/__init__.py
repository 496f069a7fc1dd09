"""Export: a checkpoint's model as an ONNX or TorchScript file with a sidecar, checked against eager.
Uses ``segtune.models`` (and ``segtune.models.exported`` to load the file back)."""

from segtune.export.exporter import FORMATS, ExportResult, export_model
from segtune.export.parity import Parity, compare

__all__ = ["FORMATS", "ExportResult", "Parity", "compare", "export_model"]
