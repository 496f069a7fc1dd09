"""segtune: fine-tune torchvision detection and instance-segmentation models on your own data.

The Python API the ``segtune`` command is a shell over::

    import segtune
    cfg = segtune.configure(("my settings", {"data.path": "PennFudanPed", "train.epochs": 2}))
    result = segtune.train(cfg)                       # TrainResult: run_dir, best_metrics, history
    report = segtune.evaluate(result.run_dir / "weights" / "best.pt")
    predictor = segtune.Predictor.from_checkpoint(result.run_dir)
    prediction = predictor("street.png")              # boxes, scores, labels, masks, names
"""

__version__ = "0.1.0"

from segtune.config import Config, build_config  # noqa: E402
from segtune.engine import TrainResult, configure, train  # noqa: E402
from segtune.evaluation import EvalReport, evaluate_checkpoint  # noqa: E402
from segtune.predict import Prediction, Predictor, predict_to_folder  # noqa: E402

evaluate = evaluate_checkpoint

__all__ = [
    "Config", "EvalReport", "Prediction", "Predictor", "TrainResult", "__version__", "build_config", "configure",
    "evaluate", "evaluate_checkpoint", "predict_to_folder", "train",
]
