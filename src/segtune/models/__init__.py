"""Model builders and weights. Imports only from segtune's bottom layer; never from ``segtune.data``."""

from segtune.models.builders import MODELS, build_from_config, build_model, model_from_checkpoint, replace_heads
from segtune.models.weights import cache_path, load_pretrained, resolve_weights, weights_available

__all__ = [
    "MODELS", "build_from_config", "build_model", "cache_path", "model_from_checkpoint", "load_pretrained", "replace_heads",
    "resolve_weights", "weights_available",
]
