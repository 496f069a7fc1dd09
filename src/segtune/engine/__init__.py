"""The training engine. Uses ``segtune.data``, ``segtune.models`` and ``segtune.evaluation``."""

from segtune.engine.presets import choose_preset, configure
from segtune.engine.trainer import TrainResult, train

__all__ = ["TrainResult", "choose_preset", "configure", "train"]
