"""Owns segtune's packaged named configs: YAML files shipped inside the package, found by name.

``segtune train --config NAME`` loads ``NAME.yaml`` from here when ``NAME`` is not a file. Each is
a config file like a run's ``config.yaml`` (``version`` plus the sections it sets).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from segtune.errors import ConfigError

_SUFFIX = ".yaml"


def named_configs() -> list[str]:
    """Names of the packaged configs, sorted."""
    return sorted(entry.name.removesuffix(_SUFFIX) for entry in resources.files(__name__).iterdir()
                  if entry.name.endswith(_SUFFIX))


def named_config(name: str) -> Path:
    """The file of packaged config ``name`` (with or without ``.yaml``).

    segtune is installed as plain files (not zipped), so the resource is a real path that
    :func:`segtune.config.load_yaml` can read.

    Raises:
        ConfigError: there is no packaged config ``name``; the message lists those there are.
    """
    stem = name.removesuffix(_SUFFIX)
    entry = resources.files(__name__) / f"{stem}{_SUFFIX}"
    if stem not in named_configs() or not entry.is_file():
        raise ConfigError(f"--config '{name}': no such config file, and no packaged config of that name; "
                          f"packaged configs: {', '.join(named_configs())}")
    return Path(str(entry))
