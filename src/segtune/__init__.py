"""segtune: fine-tune torchvision detection and instance-segmentation models on your own data.

The Python API the ``segtune`` command is a shell over::

    import segtune
    cfg = segtune.configure(("my settings", {"data.path": "PennFudanPed", "train.epochs": 2}))
    result = segtune.train(cfg)                       # TrainResult: run_dir, best_metrics, history
    report = segtune.evaluate(result.run_dir / "weights" / "best.pt")
    predictor = segtune.Predictor.from_checkpoint(result.run_dir)
    prediction = predictor("street.png")              # boxes, scores, labels, masks, names

The names above are loaded on first use, so ``import segtune.data`` (or ``segtune.models``,
``segtune.evaluation``) does not import the training engine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from segtune.version import __version__

#: Public name -> (module, attribute), imported when first asked for (PEP 562).
_LAZY = {
    "Config": ("segtune.config", "Config"),
    "build_config": ("segtune.config", "build_config"),
    "TrainResult": ("segtune.engine", "TrainResult"),
    "configure": ("segtune.engine", "configure"),
    "train": ("segtune.engine", "train"),
    "EvalReport": ("segtune.evaluation", "EvalReport"),
    "evaluate_checkpoint": ("segtune.evaluation", "evaluate_checkpoint"),
    "evaluate": ("segtune.evaluation", "evaluate_checkpoint"),
    "Prediction": ("segtune.predict", "Prediction"),
    "Predictor": ("segtune.predict", "Predictor"),
    "predict_to_folder": ("segtune.predict", "predict_to_folder"),
}

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ loads them
    from segtune.config import Config, build_config
    from segtune.engine import TrainResult, configure, train
    from segtune.evaluation import EvalReport, evaluate_checkpoint
    from segtune.evaluation import evaluate_checkpoint as evaluate
    from segtune.predict import Prediction, Predictor, predict_to_folder


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'segtune' has no attribute {name!r}")
    module, attribute = _LAZY[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Config", "EvalReport", "Prediction", "Predictor", "TrainResult", "__version__", "build_config", "configure",
    "evaluate", "evaluate_checkpoint", "predict_to_folder", "train",
]
