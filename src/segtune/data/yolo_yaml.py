"""Owns Ultralytics data YAMLs: reading one, its class names, and finding the one of a YOLO folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from segtune.errors import DatasetError

#: The entries of a data YAML that list images; all of them are read.
SPLIT_KEYS = ("train", "val", "test")
#: Files looked at, in order, for class names when the data path is a folder.
NAME_FILES = ("data.yaml", "dataset.yaml")


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise DatasetError(f"{path}: cannot read the data YAML ({e})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: a data YAML is a mapping with 'names' and 'train'/'val' entries")
    return data


def has_names(path: Path) -> bool:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and "names" in data


def class_names(data: dict[str, Any], path: Path) -> list[str]:
    """The class names of a data YAML: ``names`` as a list, or an ``{index: name}`` mapping of 0..n-1."""
    names = data.get("names")
    if isinstance(names, list) and names:
        result = [str(n) for n in names]
    elif isinstance(names, dict) and names:
        try:
            by_index = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            raise DatasetError(f"{path}: 'names' keys must be class indices 0, 1, ...; got {sorted(map(str, names))}")
        if sorted(by_index) != list(range(len(by_index))):
            raise DatasetError(f"{path}: 'names' indices must be 0..{len(by_index) - 1} without gaps; "
                               f"got {sorted(by_index)}")
        result = [by_index[i] for i in range(len(by_index))]
    else:
        raise DatasetError(f"{path}: 'names' must list the class names (a list, or a mapping {{0: name, ...}}); "
                           f"got {names!r}")
    nc = data.get("nc")
    if nc is not None and nc != len(result):
        raise DatasetError(f"{path}: 'nc' is {nc} but 'names' has {len(result)} classes")
    return result


def find_names_file(folder: Path) -> Path:
    """The file that names the classes of a YOLO folder: data.yaml, dataset.yaml, *.yaml with names, classes.txt."""
    candidates = [folder / n for n in NAME_FILES]
    candidates += sorted(p for p in folder.iterdir() if p.suffix.lower() in (".yaml", ".yml") and p not in candidates)
    for path in candidates:
        if path.is_file() and has_names(path):
            return path
    # Label Studio's and LabelImg's YOLO exports name the classes in classes.txt, one per line.
    if (folder / "classes.txt").is_file():
        return folder / "classes.txt"
    raise DatasetError(
        f"{folder}: no class names found; looked for {', '.join(NAME_FILES)}, any *.yaml with 'names', "
        "and classes.txt (one name per line). Add a data.yaml with 'names: [cat, dog, ...]' "
        "or pass the data YAML itself as --data"
    )


def split_yaml(folder: Path) -> Path | None:
    """The data YAML of a folder laid out by splits (``train/images`` ...), if it has one naming classes."""
    for name in NAME_FILES:
        path = folder / name
        if path.is_file() and has_names(path):
            return path
    return None
