"""Export: a checkpoint's model written by a registered runtime (``segtune.runtimes``) with a sidecar, checked
against the eager model; and ``segtune benchmark``, every runtime side by side."""

from segtune.export.exporter import ExportResult, export_loaded, export_model
from segtune.export.parity import Parity, compare
from segtune.runtimes import export_formats

__all__ = ["ExportResult", "Parity", "compare", "export_formats", "export_loaded", "export_model"]
