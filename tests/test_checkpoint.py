"""The checkpoint format: round trip, refusing files that are not ours, atomic writes, and rebuilding a model."""

from __future__ import annotations

import collections
import os
import stat
from pathlib import Path

import pytest
import torch

import segtune
from segtune.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from segtune.config import Config, build_config
from segtune.errors import CheckpointError, WriteError
from segtune.fileio import atomic_write, write_json, write_text
from segtune.models import build_model, model_from_checkpoint


def small_state() -> dict:
    cfg = build_config(("test", {"model.weights": "none", "train.epochs": 7}))
    return {
        "model": {"conv.weight": torch.arange(12.0).reshape(3, 4), "conv.bias": torch.tensor([1.5, -2.0, 0.0]),
                  "bn.num_batches_tracked": torch.tensor(5)},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.005, "momentum": 0.9, "params": [0, 1]}]},
        "epoch": 2,
        "step": 40,
        "classes": ["pedestrian"],
        "config": cfg.to_dict(),
        "split": {"train": ["a.png", "b.png"], "test": ["c.png"]},
        "metrics": {"segm": {"AP": 0.25}},
    }


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- round trip -------------------------------------------------------------------------------------


def test_round_trip(tmp_path):
    state = small_state()
    path = save_checkpoint(tmp_path / "run" / "weights" / "last.pt", state)
    assert path == tmp_path / "run" / "weights" / "last.pt"
    assert listing(path.parent) == ["last.pt"]
    # A plain file that weights_only accepts.
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format_version"] == FORMAT_VERSION == 1
    ckpt = load_checkpoint(path)
    assert ckpt["path"] == str(path)
    assert ckpt["segtune_version"] == segtune.__version__
    assert ckpt["classes"] == ["pedestrian"]
    assert ckpt["config"] == state["config"]
    assert ckpt["config"]["model"]["weights"] == "none" and ckpt["config"]["train"]["epochs"] == 7
    assert (ckpt["epoch"], ckpt["step"]) == (2, 40)
    assert ckpt["split"] == state["split"] and ckpt["metrics"] == state["metrics"]
    assert ckpt["optimizer"] == state["optimizer"]
    assert set(ckpt["model"]) == set(state["model"])
    for key, value in state["model"].items():
        assert torch.equal(ckpt["model"][key], value)
        assert ckpt["model"][key].dtype == value.dtype


def test_save_overwrites(tmp_path):
    path = tmp_path / "best.pt"
    save_checkpoint(path, {**small_state(), "epoch": 1})
    save_checkpoint(path, {**small_state(), "epoch": 2})
    assert load_checkpoint(path)["epoch"] == 2
    assert listing(tmp_path) == ["best.pt"]


def test_run_folder_resolves_to_best(tmp_path):
    run = tmp_path / "runs" / "train"
    save_checkpoint(run / "weights" / "best.pt", {**small_state(), "epoch": 9})
    save_checkpoint(run / "weights" / "last.pt", {**small_state(), "epoch": 10})
    ckpt = load_checkpoint(run)
    assert ckpt["path"] == str(run / "weights" / "best.pt")
    assert ckpt["epoch"] == 9


def test_run_folder_without_best(tmp_path):
    (tmp_path / "weights").mkdir()
    with pytest.raises(CheckpointError, match="holds no weights/best.pt") as info:
        load_checkpoint(tmp_path)
    assert str(tmp_path) in str(info.value)


# --- files that are not ours ------------------------------------------------------------------------


class Payload:
    """An arbitrary pickled object: weights_only loading must refuse it."""

    def __init__(self) -> None:
        self.tensor = torch.ones(2)


class StateDict(collections.OrderedDict):
    pass


def _write(path: Path, kind: str) -> None:
    if kind == "bare state dict":
        torch.save({"backbone.weight": torch.zeros(2, 2), "head.bias": torch.ones(2)}, path)
    elif kind == "list":
        torch.save([torch.zeros(2), 3], path)
    elif kind == "text":
        path.write_text("epochs: 10\nlr: 0.005\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "object":
        torch.save(Payload(), path)
    elif kind == "dict subclass":
        torch.save(StateDict(model={"w": torch.zeros(1)}, classes=["x"], config={}, format_version=1), path)
    elif kind == "other dict":
        torch.save({"model": {"w": torch.zeros(1)}, "epoch": 3}, path)
    elif kind == "newer format":
        torch.save({"format_version": FORMAT_VERSION + 1, "model": {}, "classes": [], "config": {}}, path)
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize("kind, message", [
    ("bare state dict", r"not a segtune checkpoint \(missing key 'format_version'\); it looks like a bare state dict"),
    ("list", r"not a segtune checkpoint \(holds a list, not a dict\)"),
    ("text", "not a loadable checkpoint"),
    ("empty", "not a loadable checkpoint"),
    ("object", "not a loadable checkpoint"),
    ("dict subclass", "not a loadable checkpoint"),
    ("other dict", r"missing key 'format_version'\)$"),
    ("newer format", "is newer than this segtune reads"),
])
def test_not_our_checkpoint(tmp_path, kind, message):
    path = tmp_path / "file.pt"
    _write(path, kind)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(path)
    assert str(info.value).startswith(f"{path}: ")


def test_refused_object_is_never_constructed(tmp_path, monkeypatch):
    path = tmp_path / "file.pt"
    torch.save(Payload(), path)
    built = []
    monkeypatch.setattr(Payload, "__setstate__", lambda self, s: built.append(s), raising=False)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert built == []


def test_missing_file(tmp_path):
    path = tmp_path / "nope" / "best.pt"
    with pytest.raises(CheckpointError, match="checkpoint file not found") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_missing_keys_named(tmp_path):
    path = tmp_path / "file.pt"
    torch.save({"format_version": 1, "model": {"w": torch.zeros(1)}, "config": {}}, path)
    with pytest.raises(CheckpointError, match=r"missing key 'classes'\)$"):
        load_checkpoint(path)


# --- atomic writes ----------------------------------------------------------------------------------


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("exc", [Boom, KeyboardInterrupt])
@pytest.mark.parametrize("binary", [False, True])
def test_atomic_write_failure_keeps_old_file(tmp_path, exc, binary):
    path = tmp_path / "file.txt"
    path.write_text("old content\n")

    def write(f):
        f.write(b"new, half" if binary else "new, half")
        f.flush()
        raise exc("disk full")

    with pytest.raises(exc):
        atomic_write(path, write, binary=binary)
    assert path.read_text() == "old content\n"
    assert listing(tmp_path) == ["file.txt"]


def test_atomic_write_failure_without_old_file(tmp_path):
    def write(f):
        f.write("partial")
        raise Boom()

    with pytest.raises(Boom):
        atomic_write(tmp_path / "sub" / "new.txt", write)
    assert listing(tmp_path / "sub") == []


def test_atomic_write_success(tmp_path):
    path = tmp_path / "deep" / "er" / "file.txt"
    assert atomic_write(path, lambda f: f.write("héllo")) == path
    assert path.read_text(encoding="utf-8") == "héllo"
    write_text(path, "second")
    assert path.read_text() == "second"
    write_json(tmp_path / "m.json", {"a": [1, 2]})
    assert (tmp_path / "m.json").read_text() == '{\n  "a": [\n    1,\n    2\n  ]\n}\n'
    assert listing(path.parent) == ["file.txt"]


def test_save_checkpoint_failure_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "weights" / "best.pt"
    save_checkpoint(path, {**small_state(), "epoch": 1})
    before = path.read_bytes()
    real_save = torch.save
    calls = []

    def broken_save(obj, f, *args, **kwargs):
        calls.append(obj)
        f.write(b"PK\x03\x04 some bytes of a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(WriteError, match=f"{path}: no space left on device .*; the previous file is kept"):
        save_checkpoint(path, {**small_state(), "epoch": 2})
    monkeypatch.setattr(torch, "save", real_save)
    assert calls and calls[0]["epoch"] == 2  # the failing save really was the one called
    assert path.read_bytes() == before
    assert load_checkpoint(path)["epoch"] == 1
    assert listing(path.parent) == ["best.pt"]


@pytest.fixture
def umask():
    previous = os.umask(0o022)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    yield set_mask
    os.umask(previous)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_written_files_get_normal_permissions(tmp_path, umask, mask, mode):
    umask(mask)
    ckpt = save_checkpoint(tmp_path / "best.pt", small_state())
    text = write_text(tmp_path / "a.txt", "x")
    assert stat.S_IMODE(ckpt.stat().st_mode) == mode
    assert stat.S_IMODE(text.stat().st_mode) == mode
    assert os.umask(mask) == mask  # atomic_write left the umask as it was


# --- rebuilding a model -----------------------------------------------------------------------------

TINY = {"min_size": 64, "max_size": 96}


def tiny_config(weights: str = "none") -> Config:
    # weights_backbone none, as build_model's default: the saved model has trainable BatchNorm
    return build_config(("test", {"model.weights": weights, "model.weights_backbone": "none", "model.min_size": 64,
                                  "model.max_size": 96, "model.box_detections_per_img": 20}))


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    """A tiny random Mask R-CNN saved as a segtune checkpoint (built and written once)."""
    torch.manual_seed(7)
    model = build_model("maskrcnn_resnet50_fpn", num_classes=2, weights="none", **TINY)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias.fill_(0.375)  # not what an init gives
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint(path, {"model": model.state_dict(), "classes": ["pedestrian"], "config": tiny_config().to_dict()})
    yield path, model.state_dict()
    path.unlink(missing_ok=True)  # 170 MB


def test_model_from_checkpoint_round_trip(saved_tiny):
    path, state = saved_tiny
    ckpt = load_checkpoint(path)
    model, cfg = model_from_checkpoint(ckpt)
    assert not model.training
    assert cfg.model.weights == "none" and cfg.model.min_size == 64 and cfg.model.box_detections_per_img == 20
    assert cfg.data.classes == [] and ckpt["classes"] == ["pedestrian"]  # the data names the classes
    assert model.transform.min_size == (64,) and model.roi_heads.detections_per_img == 20
    assert model.roi_heads.box_predictor.cls_score.out_features == 2
    got = model.state_dict()
    assert set(got) == set(state)
    for key, value in state.items():
        assert torch.equal(got[key], value), key
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_model_from_checkpoint_weights_do_not_fit(saved_tiny):
    path, _ = saved_tiny
    ckpt = load_checkpoint(path)
    ckpt["classes"] = ["pedestrian", "cyclist"]  # 3 classes: the 2-class heads do not fit
    with pytest.raises(CheckpointError, match="weights do not fit maskrcnn_resnet50_fpn") as info:
        model_from_checkpoint(ckpt)
    assert str(info.value).startswith(f"{path}: ")


def test_model_from_checkpoint_truncated_state(saved_tiny):
    path, state = saved_tiny
    ckpt = load_checkpoint(path)
    ckpt["model"] = {k: v for k, v in ckpt["model"].items() if not k.startswith("rpn.")}
    with pytest.raises(CheckpointError, match="weights do not fit"):
        model_from_checkpoint(ckpt)


def test_model_from_checkpoint_bad_config():
    ckpt = {"path": "x.pt", "model": {}, "classes": ["a"], "config": {"model": {"nmae": "maskrcnn_resnet50_fpn"}}}
    with pytest.raises(CheckpointError, match="x.pt: its config does not load"):
        model_from_checkpoint(ckpt)


def test_model_from_checkpoint_trained_from_a_file_that_is_gone():
    torch.manual_seed(3)
    # A model fine-tuned from a local weights file has FrozenBatchNorm, as DEFAULT does.
    model = build_model("maskrcnn_resnet50_fpn", num_classes=2, weights="DEFAULT", load_weights=False, **TINY)
    ckpt = {"path": "best.pt", "model": model.state_dict(), "classes": ["pedestrian"],
            "config": tiny_config("/gone/elsewhere/coco.pth").to_dict()}
    rebuilt, _ = model_from_checkpoint(ckpt)
    got = rebuilt.state_dict()
    assert all(torch.equal(got[k], v) for k, v in model.state_dict().items())
