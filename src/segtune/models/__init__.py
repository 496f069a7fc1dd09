"""Model builders, families and weights. Imports only from segtune's bottom layer; never from ``segtune.data``.

A new model plugs in at one place: its family (:class:`ModelFamily`, registered with
:func:`register_family`) says what its models output and how their thresholds and precision are set;
its builder (:class:`ModelSpec`, registered with :func:`register`) says how one is built from the config.
"""

from segtune.models import torchvision_families  # noqa: F401  (registers the R-CNN and dense families)
from segtune.models import zoo  # noqa: F401  (registers torchvision's detectors)
from segtune.models import composed  # noqa: F401  (registers the custom-backbone detectors)
from segtune.models.builders import build_from_config, build_model, default_weights, model_from_checkpoint
from segtune.models.family import FAMILIES, ModelFamily, family_of, register_family
from segtune.models.heads import replace_heads
from segtune.models.spec import MODELS, ModelSpec, register
from segtune.models.weights import cache_path, load_pretrained, resolve_weights, weights_available

__all__ = [
    "FAMILIES", "MODELS", "ModelFamily", "ModelSpec", "build_from_config", "build_model", "cache_path",
    "default_weights", "family_of", "load_pretrained", "model_from_checkpoint", "register", "register_family",
    "replace_heads", "resolve_weights", "weights_available",
]
