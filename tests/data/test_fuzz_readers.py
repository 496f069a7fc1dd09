"""Property-based tests (issue #38): every reader and the data doctor meet randomly broken files calmly.

Each property writes a small valid data set of one format into a fresh folder (the helpers of the
format's own tests), breaks it the way hypothesis draws (annotation JSON/YAML/txt mutated structurally,
annotation files replaced by random, truncated, empty or non-UTF-8 bytes, images and masks truncated,
emptied, replaced, resized, re-encoded in another mode, removed) and then asserts one outcome of
:func:`_check`:

* opening the data set (as training does: strictly, errors raise) and reading every ``dataset[i]``
  (evaluation's view, and training's view that leaves unusable instances out) and
  ``dataset.annotation(i)`` either raises :class:`DatasetError` whose message names a broken file (or the
  data set itself, for a set-level error), or gives a valid target: finite float32 boxes ``[N, 4]`` inside
  the image, int64 labels ``[N]`` among the classes, uint8 masks ``[N, H, W]`` of the image's size;
* the data doctor (``check_dataset``) either raises such a DatasetError (nothing to scan) or returns a
  report whose every error names a broken file, and which is clean exactly when strict reading is;
* nothing else is ever raised (no KeyError, TypeError, PIL error, MemoryError) and nothing hangs.

Runs are reproducible (``derandomize``, no example database) and small: the file takes about 30 s.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import copy
import io
import json
import math
import os
import shutil
import signal
import struct
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from PIL import Image

from segtune.config import DataConfig
from segtune.data.build import open_dataset
from segtune.data.check import check_dataset, raise_on_errors
from segtune.data.images import MAX_PIXELS_VARIABLE
from segtune.errors import DatasetError
from tests.conftest import make_mask_folder
from tests.data.rects import pixels
from tests.data.test_coco import _coco
from tests.data.test_coco import _save_image as _coco_image
from tests.data.test_coco import _write as _write_json
from tests.data.test_given_splits import roboflow_coco, roboflow_yolo
from tests.data.test_instance_pngs import dsb, flat
from tests.data.test_labelme import _labelme_set
from tests.data.test_yolo import _yolo_set

#: The pixel limit while fuzzing: well above the test images (at most 40 x 48), so a "bomb" is cheap to make.
PIXEL_LIMIT = 64 * 64
#: Seconds one example may take before it counts as a hang.
HANG_SECONDS = 20
#: A longer hunt on demand: SEGTUNE_FUZZ_SCALE=20 runs twenty times the examples (and, with
#: SEGTUNE_FUZZ_RANDOM=1, new ones each run instead of the same reproducible ones).
SCALE = max(1, int(os.environ.get("SEGTUNE_FUZZ_SCALE", "1") or 1))
RANDOM = os.environ.get("SEGTUNE_FUZZ_RANDOM", "") not in ("", "0")


def fuzz_settings(examples: int) -> settings:
    return settings(max_examples=examples * SCALE, deadline=None, derandomize=not RANDOM, database=None,
                    print_blob=RANDOM,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


# ---------------------------------------------------------------- checking the outcome


class Hang(Exception):
    """An example took longer than HANG_SECONDS."""


@contextlib.contextmanager
def _guard() -> Iterator[None]:
    """A low pixel limit (so small 'bombs' are refused) and a time limit (a hang fails the example)."""
    def expire(signum, frame):
        raise Hang(f"an example took more than {HANG_SECONDS} s")

    old_limit = os.environ.get(MAX_PIXELS_VARIABLE)
    os.environ[MAX_PIXELS_VARIABLE] = str(PIXEL_LIMIT)
    old_handler = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, HANG_SECONDS)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if old_limit is None:
            os.environ.pop(MAX_PIXELS_VARIABLE, None)
        else:
            os.environ[MAX_PIXELS_VARIABLE] = old_limit


def _names_a_culprit(message: str, blame: set[str], data_path: Path) -> bool:
    """Whether ``message`` names one of the broken files (its name or path), or the data set itself."""
    return message.startswith(f"{data_path}:") or any(token in message for token in blame)


def _assert_named(message: str, blame: set[str], data_path: Path, what: str) -> None:
    assert _names_a_culprit(message, blame, data_path), (
        f"{what} names none of the broken files {sorted(blame)} (nor the data set {data_path}):\n{message}")


def _assert_target(ds: Any, image: Any, target: dict[str, Any], *, training: bool) -> None:
    """``target`` is what a torchvision detection model takes for ``image``."""
    assert image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == 3, image.shape
    height, width = image.shape[-2:]
    boxes = target["boxes"].as_subclass(torch.Tensor)
    assert boxes.dtype == torch.float32 and boxes.ndim == 2 and boxes.shape[1] == 4, boxes.shape
    assert torch.isfinite(boxes).all(), boxes
    assert (boxes[:, 0::2] >= 0).all() and (boxes[:, 0::2] <= width).all(), boxes
    assert (boxes[:, 1::2] >= 0).all() and (boxes[:, 1::2] <= height).all(), boxes
    n = len(boxes)
    labels = target["labels"]
    assert labels.dtype == torch.int64 and tuple(labels.shape) == (n,), labels
    assert ((labels >= 1) & (labels <= len(ds.classes))).all(), (labels, ds.classes)
    assert tuple(target["area"].shape) == (n,) and torch.isfinite(target["area"]).all(), target["area"]
    assert tuple(target["iscrowd"].shape) == (n,), target["iscrowd"]
    assert isinstance(target["image_id"], int)
    if "masks" in target:
        masks = target["masks"].as_subclass(torch.Tensor)
        assert masks.dtype == torch.uint8 and tuple(masks.shape) == (n, height, width), (masks.shape, image.shape)
        assert not n or int(masks.max()) <= 1
    if "keypoints" in target:
        points = target["keypoints"]
        assert points.ndim == 3 and len(points) == n and points.shape[2] == 3 and torch.isfinite(points).all()
    if training:  # what a model trains on: boxes with width and height, no crowd region
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all(), boxes
        assert not target["iscrowd"].any()


def _event(what: str) -> None:
    """Count an outcome in hypothesis' statistics (``--hypothesis-show-statistics``): how often each is reached."""
    if currently_in_test_context():
        event(what)


def _read_strictly(cfg: DataConfig, blame: set[str], data_path: Path) -> bool:
    """Open and read everything as training and evaluation do; True when nothing raised."""
    try:
        ds = open_dataset(cfg)
    except DatasetError as e:
        _assert_named(str(e), blame, data_path, "opening")
        _event("strict: cannot open")
        return False
    clean = True
    shapes: dict[int, tuple[int, int]] = {}
    for view, training in ((ds, False), (ds.view(keep_crowd=False), True)):
        for i in range(len(view)):
            try:
                image, target = view[i]
            except DatasetError as e:
                _assert_named(str(e), blame, data_path, f"dataset[{i}]")
                clean = False
                continue
            _assert_target(view, image, target, training=training)
            shapes[i] = tuple(image.shape[-2:])
    for i in range(len(ds)):  # evaluation's ground truth: header sizes only, read without the data doctor first
        try:
            height, width, annotated = ds.annotation(i)
        except DatasetError as e:
            _assert_named(str(e), blame, data_path, f"annotation({i})")
            continue
        n = len(annotated["labels"])
        assert height > 0 and width > 0 and shapes.get(i, (height, width)) == (height, width)
        assert tuple(annotated["boxes"].shape) == (n, 4) and torch.isfinite(annotated["boxes"]).all()
        assert ((annotated["labels"] >= 1) & (annotated["labels"] <= len(ds.classes))).all()
        assert tuple(annotated["area"].shape) == (n,) and torch.isfinite(annotated["area"]).all()
        if "masks" in annotated:
            assert tuple(annotated["masks"].shape) == (n, height, width)
    _event(f"strict: opened, {'every image read' if clean else 'some image raised'}")
    return clean


def _doctor(cfg: DataConfig, blame: set[str], data_path: Path) -> bool | None:
    """Run the data doctor; whether its report is clean (None: it could not open the data set)."""
    try:
        report = check_dataset(cfg, progress=False)
    except DatasetError as e:
        _assert_named(str(e), blame, data_path, "the data doctor")
        return None
    for problem in report.errors:
        assert problem.path, problem
        _assert_named(str(problem), blame, data_path, "a data doctor error")
    assert report.format_text()
    try:
        raise_on_errors(report)
    except DatasetError as e:
        assert not report.ok and str(e).startswith(f"{report.path}:")
    return report.ok


def _check(data_path: Path, blame: set[str], **settings_: Any) -> None:
    """The properties of the module docstring for the data set at ``data_path`` with ``blame`` broken."""
    cfg = DataConfig(path=str(data_path), check_cache=False, **settings_)
    with _guard():
        strict = _read_strictly(cfg, blame, data_path)
        doctor = _doctor(cfg, blame, data_path)
    if doctor is not None:  # training stops on the doctor's errors, and only on them
        assert doctor == strict, f"the data doctor says {'OK' if doctor else 'errors'}, strict reading " \
                                 f"{'passes' if strict else 'fails'}"


@contextlib.contextmanager
def _folder() -> Iterator[Path]:
    """A fresh folder per example, two levels below a folder of its own (so '..' in a file stays small)."""
    with tempfile.TemporaryDirectory(prefix="fuzz-", dir=_BASE) as tmp:
        yield Path(tmp)


_BASE = tempfile.mkdtemp(prefix="segtune-fuzz-")
atexit.register(shutil.rmtree, _BASE, True)


# ---------------------------------------------------------------- strategies: JSON-like values

#: Text without path separators (a data YAML's ``train: /`` would list the whole disk, which is no reader bug).
TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="/\\~", exclude_categories=["Cs"]),
               max_size=6)
NUMBER = st.one_of(
    st.integers(-3, 50),  # near the real ids and pixel coordinates: duplicates, dangling ids, unknown categories
    st.floats(-5, 50),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e30, -1e30, 2**31, 2**63, 10**30, -(10**30), 0.5, True, False]),
)
LEAF = st.one_of(st.none(), st.booleans(), NUMBER, st.integers(), st.floats(), TEXT)
JSON = st.recursive(LEAF, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(TEXT, kids, max_size=3),
                    max_leaves=8)
NUMBERS = st.lists(NUMBER, max_size=11)  # polygons of any length (odd, short), boxes of the wrong length


def _png(size: tuple[int, int] = (6, 5), mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full(size, 255, np.uint8)).convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


#: base64 strings LabelMe embeds (``imageData``, a ``mask`` shape's PNG): good, truncated, not a PNG, not base64.
BASE64 = st.sampled_from([
    base64.b64encode(_png()).decode(), base64.b64encode(_png()[:30]).decode(),
    base64.b64encode(_png((20, 30), "RGB")).decode(), base64.b64encode(b"not an image").decode(),
    "not base64!", "", "AAAA",
])
RLE = st.fixed_dictionaries(
    {},
    optional={
        "size": st.one_of(st.just([20, 30]), st.lists(st.integers(-2, 40), max_size=3), JSON),
        "counts": st.one_of(
            st.lists(st.integers(-5, 700), max_size=6),  # uncompressed: counts that do not add up
            st.lists(st.sampled_from([600, 0, 2**40, -(2**40), 300]), max_size=3),
            st.text(alphabet=st.characters(min_codepoint=48, max_codepoint=111), max_size=12),  # compressed
            TEXT, JSON,
        ),
    },
)


def hostile(*extra: st.SearchStrategy) -> st.SearchStrategy:
    """A value to put where a reader expects something else (each kind about as likely as the others)."""
    return st.one_of(NUMBER, st.none() | st.booleans() | TEXT, NUMBERS, st.lists(NUMBERS, max_size=3), RLE, BASE64,
                     JSON, *extra)


def _children(node: Any) -> list[Any]:
    if isinstance(node, dict):
        return list(node)
    if isinstance(node, list):
        return list(range(len(node)))
    return []


def _edit_field(draw: st.DrawFn, doc: Any, fields: dict[tuple[str, ...], tuple[str, ...]],
                values: st.SearchStrategy) -> Any:
    """One known field of one record (``fields``: where records are -> their keys) set to a hostile value or dropped."""
    where = draw(st.sampled_from(sorted(fields)))
    node = doc
    for name in where:  # a list of records (COCO's 'images', LabelMe's 'shapes'); () is the document itself
        node = node.get(name) if isinstance(node, dict) else None
    if where:
        node = node[draw(st.integers(0, len(node) - 1))] if isinstance(node, list) and node else None
    if isinstance(node, dict):
        key = draw(st.sampled_from(fields[where]))
        if key in node and draw(st.booleans()):
            del node[key]
        else:
            node[key] = copy.deepcopy(draw(values))  # a copy: never a strategy's constant, changed in place later
    return doc


@st.composite
def mutated(draw: st.DrawFn, doc: Any, fields: dict[tuple[str, ...], tuple[str, ...]],
            values: st.SearchStrategy) -> Any:
    """``doc`` with 1-3 changes: a known field of a record set to a value of ``values`` or dropped, or a structural
    change at a random place (a value replaced, a key or list item dropped, a value wrapped in a list or
    unwrapped, a list item duplicated, a list cut short, a known key added to a mapping)."""
    doc = copy.deepcopy(doc)
    keys = sorted({key for names in fields.values() for key in names})
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.booleans()):
            doc = _edit_field(draw, doc, fields, values)
            continue
        parent, key, node = None, None, doc
        for _ in range(draw(st.integers(0, 5))):
            children = _children(node)
            if not children:
                break
            parent, key = node, draw(st.sampled_from(children))
            node = node[key]
        op = draw(st.sampled_from(["replace", "drop", "wrap", "unwrap", "duplicate", "cut", "add-key"]))
        if op == "drop" and parent is not None:
            del parent[key]
            continue
        if op == "duplicate" and isinstance(parent, list):
            parent.insert(key, copy.deepcopy(node))
            continue
        if op == "cut" and isinstance(node, list):
            new = node[:draw(st.integers(0, max(0, len(node) - 1)))]
        elif op == "add-key" and isinstance(node, dict):
            new = dict(node)
            new[draw(st.sampled_from(keys))] = copy.deepcopy(draw(values))
        elif op == "wrap":
            new = [node]
        elif op == "unwrap" and _children(node):
            new = node[draw(st.sampled_from(_children(node)))]
        else:
            new = copy.deepcopy(draw(values))
        if parent is None:
            doc = new
        else:
            parent[key] = new
    return doc


class _Bytes(bytes):
    """A file's bytes that hypothesis names briefly in its reports (not the whole file)."""

    def __repr__(self) -> str:
        return f"<{len(self)} bytes>"


def _dump_json(doc: Any) -> bytes:
    return json.dumps(doc, allow_nan=True).encode()  # NaN and Infinity as Python writes them


def broken_bytes(good: bytes) -> st.SearchStrategy[bytes]:
    """A file's bytes broken as files break: emptied, cut short, garbage, another encoding, bytes flipped."""
    return _broken_bytes(_Bytes(good))


@st.composite
def _broken_bytes(draw: st.DrawFn, good: bytes) -> bytes:
    kind = draw(st.sampled_from(["empty", "truncate", "random", "utf16", "latin1", "bom", "flip", "insert"]))
    if kind == "empty":
        return b""
    if kind == "truncate":
        return good[:draw(st.integers(0, max(0, len(good) - 1)))]
    if kind == "random":
        return draw(st.binary(max_size=80))
    if kind == "utf16":
        return good.decode("utf-8", "replace").encode("utf-16")
    if kind == "latin1":  # a non-UTF-8 byte inside
        at = draw(st.integers(0, len(good)))
        return good[:at] + "é".encode("latin-1") + good[at:]
    if kind == "bom":
        return b"\xef\xbb\xbf" + good
    at = draw(st.integers(0, max(0, len(good) - 1)))
    if kind == "flip" and good:
        return good[:at] + bytes([good[at] ^ draw(st.integers(1, 255))]) + good[at + 1:]
    return good[:at] + draw(st.binary(min_size=1, max_size=8)) + good[at:]


# ---------------------------------------------------------------- strategies: images and masks


def _bomb(width: int = 200, height: int = 200) -> bytes:
    """A valid PNG declaring more pixels than PIXEL_LIMIT (a decompression bomb in miniature)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\0" + b"\0" * ((width + 7) // 8) for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _encode(img: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt)
    return buffer.getvalue()


def broken_image(good: bytes) -> st.SearchStrategy[bytes | None]:
    """An image or mask file broken (None: the file is removed), or re-encoded in a mode or size it may not expect."""
    return _broken_image(_Bytes(good)).map(lambda new: new if new is None else _Bytes(new))


@st.composite
def _broken_image(draw: st.DrawFn, good: bytes) -> bytes | None:
    if len(good) < 16:  # emptied by an earlier change: break a good one
        good = _Bytes(_encode(Image.fromarray(pixels(0, (32, 40))), "PNG"))
    kind = draw(st.sampled_from(["empty", "truncate", "random", "png-junk", "flip", "resize", "mode", "jpeg",
                                 "tiff-float", "bomb", "remove"]))
    if kind == "remove":
        return None
    if kind == "empty":
        return b""
    if kind == "truncate":
        return good[:draw(st.integers(1, max(1, len(good) - 1)))]
    if kind == "random":
        return draw(st.binary(min_size=1, max_size=64))
    if kind == "png-junk":
        return b"\x89PNG\r\n\x1a\n" + draw(st.binary(max_size=64))
    if kind == "flip":
        at = draw(st.integers(8, max(8, len(good) - 1)))
        return good[:at] + bytes([good[at] ^ draw(st.integers(1, 255))]) + good[at + 1:]
    if kind == "bomb":
        return _bomb()
    try:
        with Image.open(io.BytesIO(good)) as img:
            img.load()
    except (OSError, SyntaxError, ValueError):  # broken already (by an earlier change): start from a good one
        img = Image.fromarray(pixels(0, (32, 40)))
    if img.mode not in ("1", "L", "LA", "P", "RGB", "RGBA"):  # re-encoded already (16-bit, float, CMYK): start over
        img = Image.fromarray(pixels(0, (img.height, img.width)))
    if kind == "resize":
        return _encode(img.resize((draw(st.integers(1, 48)), draw(st.integers(1, 48)))), "PNG")
    if kind == "jpeg":  # a JPEG under a .png name (CMYK too: no PNG mode for it)
        return _encode(img.convert(draw(st.sampled_from(["RGB", "L", "CMYK"]))), "JPEG")
    if kind == "tiff-float":
        return _encode(Image.fromarray(np.asarray(img.convert("L"), np.float32) / 3), "TIFF")
    mode = draw(st.sampled_from(["1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I"]))
    if mode == "I;16":
        return _encode(Image.fromarray(np.asarray(img.convert("L"), np.uint16) * 257), "PNG")
    if mode == "I":  # 32-bit grey: PNG cannot hold it, TIFF can
        return _encode(img.convert("I"), "TIFF")
    return _encode(img.convert(mode), "PNG")


def _apply_image(path: Path, new: bytes | None) -> None:
    if new is None:
        path.unlink()
    else:
        path.write_bytes(new)


def _blame_image(path: Path, new: bytes | None, *partners: Path) -> set[str]:
    """A broken image is named by its name; a removed one by its stem, the file that pairs it or its folder."""
    if new is not None:
        return {path.name}
    return {path.name, path.stem, f"{path.parent}:", *(p.name for p in partners)}  # the folder left without it


# ---------------------------------------------------------------- COCO

COCO_FIELDS = {
    (): ("images", "annotations", "categories"),
    ("images",): ("id", "file_name", "height", "width"),
    ("annotations",): ("id", "image_id", "category_id", "segmentation", "bbox", "area", "iscrowd", "keypoints"),
    ("categories",): ("id", "name", "supercategory", "keypoints", "skeleton"),
}
COCO_VALUES = hostile(st.sampled_from(["a.png", "sub/b.png", "c.png", "_background_", "dog", "person"]))
COCO_IMAGES = ("a.png", "sub/b.png", "c.png")


def _coco_files(root: Path) -> Path:
    """The COCO set of tests/data/test_coco.py: polygons, both RLEs, crowd, keypoints, a negative."""
    for seed, name in enumerate(COCO_IMAGES):
        _coco_image(root / name, seed=seed)
    return _write_json(root / "annotations" / "instances.json", _coco())


@fuzz_settings(120)
@given(changes=st.lists(st.one_of(
           st.tuples(st.just("json"), mutated(_coco(), COCO_FIELDS, COCO_VALUES)),
           st.tuples(st.just("bytes"), broken_bytes(json.dumps(_coco()).encode())),
           st.tuples(st.sampled_from(COCO_IMAGES), broken_image(_encode(Image.fromarray(pixels(0, (20, 30))), "PNG")))),
       min_size=1, max_size=2),
       given_path=st.sampled_from(["file", "folder"]), fmt=st.sampled_from(["auto", "coco"]))
def test_coco_reader_and_doctor_survive_broken_files(changes, given_path, fmt) -> None:
    with _folder() as tmp:
        annotation = _coco_files(tmp / "data")
        blame: set[str] = set()
        for what, change in changes:
            if what == "json":
                annotation.write_bytes(_dump_json(change))
                blame.add(annotation.name)
            elif what == "bytes":
                annotation.write_bytes(change)
                blame.add(annotation.name)
            else:
                image = tmp / "data" / what
                if image.exists():
                    _apply_image(image, change)
                blame |= _blame_image(image, change, annotation)
        _check(annotation if given_path == "file" else tmp / "data", blame, format=fmt)


# ---------------------------------------------------------------- LabelMe

LABELME_FIELDS = {
    (): ("shapes", "imagePath", "imageData", "imageHeight", "imageWidth"),
    ("shapes",): ("label", "points", "shape_type", "group_id", "mask", "flags", "description"),
}
LABELME_VALUES = hostile(
    st.sampled_from(["polygon", "rectangle", "circle", "mask", "line", "point", "points", "linestrip", "spline",
                     "cat", "dog", "__ignore__", "_background_", "a.png", "sub/c.png", "gone.png"]),
    st.lists(st.lists(NUMBER, max_size=3), max_size=5),  # points with pairs that are not pairs
)
LABELME_FILES = ("a", "b", "sub/c")


def _labelme_doc(root: Path, stem: str) -> dict[str, Any]:
    return json.loads((root / f"{stem}.json").read_text())


@fuzz_settings(100)
@given(data=st.data(), targets=st.lists(st.sampled_from(LABELME_FILES), min_size=1, max_size=2),
       kinds=st.lists(st.sampled_from(["json", "bytes", "image", "image", "classes", "embed"]), min_size=2,
                      max_size=2),
       fmt=st.sampled_from(["auto", "labelme"]))
def test_labelme_reader_and_doctor_survive_broken_files(data, targets, kinds, fmt) -> None:
    with _folder() as tmp:
        root = _labelme_set(tmp / "lm")
        originals = {stem: _labelme_doc(root, stem) for stem in LABELME_FILES}
        docs = copy.deepcopy(originals)  # as last written (what a second change changes)
        blame: set[str] = set()
        for stem, kind in zip(targets, kinds):
            json_path, image = root / f"{stem}.json", root / f"{stem}.png"
            if kind == "json":
                doc = docs[stem] = data.draw(mutated(docs[stem], LABELME_FIELDS, LABELME_VALUES), label=f"{stem}.json")
                json_path.write_bytes(_dump_json(doc))
            elif kind == "bytes":
                json_path.write_bytes(data.draw(broken_bytes(json_path.read_bytes()), label=f"{stem}.json bytes"))
            elif kind == "classes":  # a class file that may not be text, or may not name the labels used
                json_path = root / data.draw(st.sampled_from(["labels.txt", "classes.txt"]))
                good = "cat\ndog\n".encode()
                json_path.write_bytes(data.draw(st.one_of(broken_bytes(good), TEXT.map(str.encode)),
                                                label=json_path.name))
            elif kind == "embed" and image.exists():  # the image only as base64 imageData, maybe broken
                doc = docs[stem] = docs[stem] if isinstance(docs[stem], dict) else copy.deepcopy(originals[stem])
                doc["imageData"] = data.draw(st.one_of(
                    BASE64, st.builds(lambda b: base64.b64encode(b).decode(), broken_image(image.read_bytes()).filter(
                        lambda b: b is not None))), label="imageData")
                image.unlink()
                json_path.write_bytes(_dump_json(doc))
            elif image.exists():
                new = data.draw(broken_image(image.read_bytes()), label=image.name)
                _apply_image(image, new)
                blame |= _blame_image(image, new, json_path)
            blame.add(json_path.name)
        _check(root, blame, format=fmt)


# ---------------------------------------------------------------- YOLO

YOLO_FIELDS = {(): ("path", "train", "val", "test", "names", "nc")}
YOLO_VALUES = hostile(st.sampled_from(["images", "images/sub", "labels", ".", "data.yaml", "missing", "list.txt"]))
TOKEN = st.one_of(
    st.floats(0, 1).map(lambda v: f"{v:.4f}"),  # a coordinate
    st.integers(-2, 3).map(str),  # a class index, in range or not
    st.sampled_from(["nan", "inf", "-inf", "1e30", "-0.5", "1.5", "0x1", "1.5e", "", "1_0", "٣", "0.5,", "NaN"]),
    TEXT,
)
LINE = st.lists(TOKEN, max_size=12).map(" ".join)


@fuzz_settings(100)
@given(data=st.data(), kinds=st.lists(st.sampled_from(["lines", "label-bytes", "yaml", "yaml-bytes", "image",
                                                       "orphan", "list"]), min_size=1, max_size=2),
       given_path=st.sampled_from(["yaml", "folder"]), fmt=st.sampled_from(["auto", "yolo"]))
def test_yolo_reader_and_doctor_survive_broken_files(data, kinds, given_path, fmt) -> None:
    with _folder() as tmp:
        root = _yolo_set(tmp / "yolo")
        data_yaml = root / "data.yaml"
        yaml_doc = yaml.safe_load(data_yaml.read_text())  # as last written (for a second change)
        labels = {"a": root / "labels" / "a.txt", "b": root / "labels" / "b.txt", "c": root / "labels" / "sub" / "c.txt"}
        images = {"a": root / "images" / "a.png", "b": root / "images" / "b.png", "c": root / "images" / "sub" / "c.png"}
        blame: set[str] = set()
        for kind in kinds:
            stem = data.draw(st.sampled_from(sorted(labels)), label="image")
            label = labels[stem]
            if kind == "lines":  # a label file (maybe where there was none) with lines of any shape
                lines = data.draw(st.lists(LINE, min_size=1, max_size=4), label=label.name)
                end = data.draw(st.sampled_from(["\n", "\r\n", "\t\n"]))
                label.write_text(end.join(lines) + end)
                blame.add(label.name)
            elif kind == "label-bytes":
                good = label.read_bytes() if label.exists() else b"0 0.5 0.5 0.2 0.2\n"
                label.write_bytes(data.draw(broken_bytes(good), label=label.name))
                blame.add(label.name)
            elif kind == "yaml":
                yaml_doc = data.draw(mutated(yaml_doc, YOLO_FIELDS, YOLO_VALUES), label="yaml")
                data_yaml.write_text(yaml.safe_dump(yaml_doc))
                blame.add(data_yaml.name)
            elif kind == "yaml-bytes":
                broken = st.one_of(broken_bytes(data_yaml.read_bytes()),
                                   st.sampled_from([b"names: [cat, dog\n", b"names:\n\t- cat\n", b"{}", b"- a\n",
                                                    b"names: {0: cat, 2: dog}\ntrain: images\n",
                                                    b"names: [cat]\nnc: 2\ntrain: images\n",
                                                    b"names: {a: cat}\ntrain: images\n",
                                                    b"names: [cat, dog]\ntrain: [images, 3]\n",
                                                    b"names: [cat, dog]\ntrain: images\nnc: [1]\n",
                                                    b"names: [cat, dog]\ntrain: a.png\n",
                                                    b"&a [*a]\n", b"names: !!python/object:os.system {}\n"]))
                data_yaml.write_bytes(data.draw(broken, label="yaml bytes"))
                blame.add(data_yaml.name)
            elif kind == "orphan":  # a label file without its image
                orphan = root / "labels" / data.draw(st.sampled_from(["ghost.txt", "sub/ghost.txt", "classes.txt"]))
                orphan.write_text(data.draw(LINE) + "\n")
                blame.add(orphan.name)
            elif kind == "list":  # train: an image-list file of any lines
                listing = root / "list.txt"
                listing.write_text("\n".join(data.draw(st.lists(st.one_of(
                    st.sampled_from(["images/a.png", "./images/b.png", "images/gone.png", "", "images"]), TEXT),
                    max_size=4), label="list.txt")))
                data_yaml.write_text(yaml.safe_dump({"path": ".", "train": "list.txt", "val": "images/sub",
                                                     "names": ["cat", "dog"]}))
                blame |= {listing.name, data_yaml.name}
            elif images[stem].exists():
                new = data.draw(broken_image(images[stem].read_bytes()), label=images[stem].name)
                _apply_image(images[stem], new)
                blame |= _blame_image(images[stem], new, label)
        _check(data_yaml if given_path == "yaml" else root, blame, format=fmt)


# ---------------------------------------------------------------- mask folders (Penn-Fudan layout)

SIDECAR_VALUES = hostile(st.sampled_from(["object", "cat", "#ff0000", "1,2,3", "1"]))


@fuzz_settings(80)
@given(data=st.data(), kinds=st.lists(st.sampled_from(["image", "mask", "mask", "sidecar", "class-map", "extra"]),
                                      min_size=1, max_size=2),
       fmt=st.sampled_from(["auto", "masks"]))
def test_mask_folder_reader_and_doctor_survive_broken_files(data, kinds, fmt) -> None:
    with _folder() as tmp:
        root = make_mask_folder(tmp / "pf", n=2, size=(32, 40), empty=())
        blame: set[str] = set()
        settings_: dict[str, Any] = {"format": fmt}
        for kind in kinds:
            stem = data.draw(st.sampled_from(["img000", "img001"]), label="image")
            image, mask = root / "PNGImages" / f"{stem}.png", root / "PedMasks" / f"{stem}_mask.png"
            if kind == "sidecar":  # a mask's value -> class JSON
                sidecar = mask.with_suffix(".json")
                doc = data.draw(mutated({"1": "object", "2": "object"}, {(): ("1", "2", "3", "#ff0000")}, SIDECAR_VALUES))
                sidecar.write_bytes(data.draw(st.one_of(st.just(_dump_json(doc)), broken_bytes(_dump_json(doc)))))
                blame.add(sidecar.name)
            elif kind == "class-map":
                class_map = root / "classes.yaml"
                good = {"classes": ["person", "bike"], "values": {1: "person", 2: "bike"}}
                doc = data.draw(mutated(good, {(): ("classes", "values")}, SIDECAR_VALUES), label="class map")
                class_map.write_bytes(data.draw(st.one_of(st.just(yaml.safe_dump(doc).encode()),
                                                          broken_bytes(yaml.safe_dump(good).encode()))))
                settings_["class_map"] = str(class_map)
                blame.add(class_map.name)
            elif kind == "extra":  # a stray image or mask, or a second mask for one image
                extra = data.draw(st.sampled_from([root / "PNGImages" / "lonely.png", root / "PedMasks" / "ghost_mask.png",
                                                   root / "PedMasks" / f"{stem}_mask.jpg", root / "PNGImages" / f"{stem}.bmp"]))
                new = data.draw(broken_image(mask.read_bytes() if mask.exists() else _png((32, 40))))
                extra.write_bytes(new if new is not None else _png((32, 40)))
                blame |= {extra.name, extra.stem}
            else:
                path = image if kind == "image" else mask
                if path.exists():
                    new = data.draw(broken_image(path.read_bytes()), label=path.name)
                    _apply_image(path, new)
                    blame |= _blame_image(path, new, mask if kind == "image" else image)
        _check(root, blame, **settings_)


# ---------------------------------------------------------------- one PNG per instance


@fuzz_settings(60)
@given(data=st.data(), layout=st.sampled_from(["dsb", "flat"]),
       kinds=st.lists(st.sampled_from(["image", "mask", "mask", "extra"]), min_size=1, max_size=2),
       fmt=st.sampled_from(["auto", "instance-pngs"]))
def test_instance_png_reader_and_doctor_survive_broken_files(data, layout, kinds, fmt) -> None:
    with _folder() as tmp:
        root = (dsb if layout == "dsb" else flat)(tmp / "cells")
        images = sorted(p for p in root.rglob("*.png") if p.parent.name == "images")
        masks = sorted(p for p in root.rglob("*.png") if p.parent.name == "masks")
        blame: set[str] = set()
        for kind in kinds:
            if kind == "extra":  # one more mask, maybe broken
                where = data.draw(st.sampled_from(masks)).parent
                extra = where / (f"{images[0].stem}_9.png" if layout == "flat" else "extra.png")
                new = data.draw(broken_image(masks[0].read_bytes() if masks[0].exists() else b""))
                extra.write_bytes(new if new is not None else b"")
                blame.add(extra.name)
                continue
            path = data.draw(st.sampled_from(images if kind == "image" else masks), label=kind)
            if path.exists():
                new = data.draw(broken_image(path.read_bytes()), label=path.name)
                _apply_image(path, new)
                owner = path.parent.parent.name if layout == "dsb" else path.stem.rsplit("_", 1)[0]  # its image
                blame |= _blame_image(path, new) | {owner}
        _check(root, blame, format=fmt)


# ---------------------------------------------------------------- split exports (Roboflow's COCO and YOLO layouts)

ROBOFLOW_COCO = {
    (): ("images", "annotations", "categories"),
    ("images",): ("id", "file_name", "height", "width"),
    ("annotations",): ("id", "image_id", "category_id", "segmentation", "bbox"),
    ("categories",): ("id", "name", "supercategory"),
}


@fuzz_settings(50)
@given(data=st.data(), layout=st.sampled_from(["coco", "yolo"]),
       kinds=st.lists(st.sampled_from(["json", "bytes", "image"]), min_size=1, max_size=2),
       fmt=st.sampled_from(["auto", "given"]))
def test_split_exports_survive_broken_files(data, layout, kinds, fmt) -> None:
    """One data set read from several split folders: each folder's file (or the YAML naming them) broken."""
    with _folder() as tmp:
        root = (roboflow_coco if layout == "coco" else roboflow_yolo)(tmp / "export")
        blame: set[str] = set()
        for kind in kinds:
            split = data.draw(st.sampled_from(["train", "valid", "test"]), label="split")
            if kind == "image":
                image = (sorted((root / split).rglob("*.jpg")) or [root / "gone.jpg"])[0]
                if image.exists():
                    new = data.draw(broken_image(image.read_bytes()), label=image.name)
                    _apply_image(image, new)
                    blame |= _blame_image(image, new, *root.rglob("*.json"))
                continue
            target = root / split / "_annotations.coco.json" if layout == "coco" else root / "data.yaml"
            if kind == "bytes":
                target.write_bytes(data.draw(broken_bytes(target.read_bytes()), label=target.name))
            elif layout == "coco":
                try:
                    doc = json.loads(target.read_text())
                except ValueError:  # broken already by an earlier change
                    continue
                target.write_bytes(_dump_json(data.draw(mutated(doc, ROBOFLOW_COCO, COCO_VALUES), label=target.name)))
            else:
                doc = {"train": "../train/images", "val": "../valid/images", "test": "../test/images", "nc": 1,
                       "names": ["thing"]}
                target.write_text(yaml.safe_dump(data.draw(mutated(doc, YOLO_FIELDS, YOLO_VALUES), label="yaml")))
            blame.add(target.name)
        _check(root, blame, format=layout if fmt == "given" else "auto")


# ---------------------------------------------------------------- what the properties found, kept as plain cases


def _edit_json(path: Path, change) -> Path:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))
    return path


def _coco_case(change):
    def build(tmp: Path) -> tuple[Path, set[str], dict[str, Any]]:
        return _edit_json(_coco_files(tmp / "data"), change), {"instances.json"}, {}
    return build


def _labelme_case(change, remove_image: bool = False):
    def build(tmp: Path) -> tuple[Path, set[str], dict[str, Any]]:
        root = _labelme_set(tmp / "lm")
        _edit_json(root / "a.json", change)
        if remove_image:
            (root / "a.png").unlink()
        return root, {"a.json"}, {}
    return build


def _class_map_case(content: bytes):
    def build(tmp: Path) -> tuple[Path, set[str], dict[str, Any]]:
        root = make_mask_folder(tmp / "pf", n=2, size=(32, 40), empty=())
        (root / "classes.yaml").write_bytes(content)
        return root, {"classes.yaml"}, {"class_map": str(root / "classes.yaml")}
    return build


def _no_masks(tmp: Path) -> tuple[Path, set[str], dict[str, Any]]:
    root = make_mask_folder(tmp / "pf", n=2, size=(32, 40), empty=())
    for mask in (root / "PedMasks").iterdir():
        mask.unlink()
    return root, {"PedMasks:", "img000_mask", "img001_mask"}, {"format": "masks"}  # (auto detection needs masks to tell the layout)


def _short_ihdr(tmp: Path) -> tuple[Path, set[str], dict[str, Any]]:
    root = make_mask_folder(tmp / "pf", n=2, size=(32, 40), empty=())
    image = root / "PNGImages" / "img000.png"
    data = bytearray(image.read_bytes())
    data[11] = 12  # IHDR's length: Pillow's PNG reader raises ValueError("Truncated IHDR chunk") on open
    image.write_bytes(bytes(data))
    return root, {"img000.png"}, {}


def _yolo_nothing_listed(tmp: Path) -> tuple[Path, set[str], dict[str, Any]]:
    root = _yolo_set(tmp / "yolo")
    (root / "list.txt").write_text("")
    (root / "data.yaml").write_text(yaml.safe_dump({"train": "list.txt", "val": "labels/sub", "names": ["cat"]}))
    return root / "data.yaml", {"data.yaml"}, {}


def _split_case(layout: str, change, **settings_: Any):
    """A Roboflow export (tests/data/test_given_splits.py) with its train file changed."""
    def build(tmp: Path) -> tuple[Path, set[str], dict[str, Any]]:
        root = (roboflow_coco if layout == "coco" else roboflow_yolo)(tmp / "export")
        target = root / "train" / "_annotations.coco.json" if layout == "coco" else root / "data.yaml"
        change(target)
        return root, {target.name}, settings_
    return build


def _set_field(section: str, key: str, value: Any, index: int = 0):
    def change(doc: dict[str, Any]) -> None:
        doc[section][index][key] = value
    return change


KNOWN = {  # case: (how to break a good data set, what the data doctor says); each raised something else before
    "coco skeleton not pairs": (_coco_case(_set_field("categories", "skeleton", [1, 2], 1)),
                                "category 3: 'skeleton' must list pairs"),
    "coco supercategory a list": (_coco_case(_set_field("categories", "supercategory", [])), "result: OK"),
    "coco negative image height": (_coco_case(_set_field("images", "height", -3)), "are not an image size"),
    "coco huge image height": (_coco_case(_set_field("images", "height", 10**30)), "are not an image size"),
    "labelme group_id a list": (_labelme_case(lambda d: d["shapes"][0].update(group_id=[1])),
                                "shape 1: 'group_id' must be a number or null"),
    "labelme shape_type a list": (_labelme_case(lambda d: d["shapes"][0].update(shape_type=["polygon"])),
                                  "shape 1: 'shape_type' must be a name"),
    "labelme mask shape not a string": (_labelme_case(lambda d: d["shapes"][0].update(shape_type="mask", mask=5)),
                                        "shape 1: 'mask' is not a base64 PNG"),
    "labelme mask shape a bomb": (_labelme_case(lambda d: d["shapes"][0].update(
        shape_type="mask", mask=base64.b64encode(_bomb()).decode())), "200 x 200 pixels is more than segtune decodes"),
    "labelme imageData not ASCII": (_labelme_case(lambda d: d.update(imageData="\x80"), remove_image=True),
                                    "cannot read the embedded imageData"),
    "class map values not a mapping": (_class_map_case(b"classes: [person]\nvalues: 1.0\n"), "'values' must map"),
    "class map not UTF-8": (_class_map_case(b"\x80"), "cannot read the class map"),
    "mask folder without any mask": (_no_masks, "none of the 2 images has a mask (for img000.png it would be"),
    "PNG header cut short": (_short_ihdr, "img000.png: not a readable image (Truncated IHDR chunk)"),
    "yolo yaml listing no image": (_yolo_nothing_listed, "data.yaml: no images found in"),
    "split export category id null": (_split_case("coco", lambda p: _edit_json(p, _set_field("categories", "id", None))),
                                      "its categories differ from those of"),
    "split export image id a list": (_split_case("coco", lambda p: _edit_json(p, lambda d: (
        d["images"][0].update(id=[0]), d["annotations"][0].update(image_id=[0])))),
                                     "images[0] needs an integer 'id'"),
    "split export YAML empty": (_split_case("yolo", lambda p: p.write_text(""), format="yolo"),
                                "data.yaml: a data YAML is a mapping"),
}


@pytest.mark.parametrize("case", sorted(KNOWN))
def test_known_breakages_are_named_not_crashes(case: str) -> None:
    build, says = KNOWN[case]
    with _folder() as tmp:
        data_path, blame, settings_ = build(tmp)
        _check(data_path, blame, **settings_)
        with _guard():
            try:
                text = check_dataset(DataConfig(path=str(data_path), check_cache=False, **settings_),
                                     progress=False).format_text()
            except DatasetError as e:
                text = str(e)
    assert says in text, text


def _long_name(layout: str):
    """A file name longer than the file system allows (255 bytes) where a data set names its images."""
    long = "x" * 300 + ".png"

    def build(tmp: Path) -> tuple[Path, set[str], dict[str, Any]]:
        if layout == "coco":
            return _coco_case(_set_field("images", "file_name", long))(tmp)
        if layout == "labelme":
            return _labelme_case(lambda d: d.update(imagePath=long))(tmp)
        root = _yolo_set(tmp / "yolo")
        (root / "list.txt").write_text(f"{long}\nimages/a.png\n")
        (root / "data.yaml").write_text("train: list.txt\nval: images/sub\nnames: [cat, dog]\n")
        return root / "data.yaml", {"list.txt", "data.yaml"}, {}
    return build


@pytest.mark.parametrize("layout", ["coco", "labelme", "yolo"])
def test_an_image_name_too_long_for_the_file_system_is_named(layout: str) -> None:
    with _folder() as tmp:
        data_path, blame, settings_ = _long_name(layout)(tmp)
        _check(data_path, blame, **settings_)
