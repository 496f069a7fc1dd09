"""Model builders and weights. Imports only from segtune's bottom layer; never from ``segtune.data``."""

from segtune.models import zoo  # noqa: F401  (registers torchvision's detectors)
from segtune.models import composed  # noqa: F401  (registers the custom-backbone detectors)
from segtune.models.builders import build_from_config, build_model, default_weights, model_from_checkpoint
from segtune.models.heads import replace_heads
from segtune.models.spec import MODELS, ModelSpec
from segtune.models.weights import cache_path, load_pretrained, resolve_weights, weights_available

__all__ = [
    "MODELS", "ModelSpec", "build_from_config", "build_model", "cache_path", "default_weights",
    "model_from_checkpoint", "load_pretrained", "replace_heads", "resolve_weights", "weights_available",
]
