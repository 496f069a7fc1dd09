"""Prediction over many images: an unreadable file is skipped and counted, an interrupted run resumes,
the results file stays valid when a run stops, masks are written as instance-id PNGs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segtune.cli.main import main
from segtune.engine import configure
from segtune.models import build_from_config
from segtune.predict import Predictor, predict_to_folder
from tests.conftest import TINY_MODEL


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    """A tiny Mask R-CNN with random weights: it finds boxes at score threshold 0, which is all these tests need."""
    torch.manual_seed(0)
    cfg = configure(("test", {"data.path": ".", **TINY_MODEL}))
    model = build_from_config(cfg.model, num_classes=2, classes=["thing"], load_weights=False)
    model.roi_heads.score_thresh = 0.0
    return Predictor(model, ["thing"], score_threshold=0.0)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    for k in range(5):
        Image.fromarray(rng.integers(0, 255, (60 + 4 * k, 80, 3), dtype=np.uint8)).save(images / f"im{k}.png")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return images


def _results(out: Path) -> list[dict]:
    return json.loads((out / "predictions.json").read_text())


def test_an_unreadable_image_is_skipped_named_and_counted(predictor, folder, tmp_path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="segtune"):
        summary = predict_to_folder(predictor, [str(folder)], tmp_path / "out")
    assert summary.skipped == [str(folder / "broken.png")]
    assert len(summary.pictures) == 5 and all(p.is_file() for p in summary.pictures)
    assert {r["file_name"] for r in _results(tmp_path / "out")} <= {str(folder / f"im{k}.png") for k in range(5)}
    assert "broken.png" in caplog.text and "1 of 6 inputs could not be read" in caplog.text


def test_an_interrupted_run_resumes_and_keeps_what_it_had(predictor, folder, tmp_path, monkeypatch) -> None:
    out = tmp_path / "out"
    predict_to_folder(predictor, [str(folder)], out)
    first = _results(out)
    assert first
    for k in (1, 3):
        (out / f"im{k}.png").unlink()  # as if the run had stopped before these
    calls = []
    batch = predictor.predict_batch
    monkeypatch.setattr(predictor, "predict_batch", lambda images: calls.append(len(images)) or batch(images))
    predict_to_folder(predictor, [str(folder)], out)
    assert sum(calls) == 2
    assert sorted(json.dumps(r, sort_keys=True) for r in _results(out)) == \
        sorted(json.dumps(r, sort_keys=True) for r in first)
    calls.clear()
    predict_to_folder(predictor, [str(folder)], out, overwrite=True)
    assert sum(calls) == 5


def test_the_results_file_is_valid_when_a_run_stops(predictor, folder, tmp_path, monkeypatch) -> None:
    out = tmp_path / "out"
    batch = predictor.predict_batch
    seen = []

    def stop_at_the_fourth(images):
        seen.append(1)
        if len(seen) == 4:
            raise KeyboardInterrupt
        return batch(images)

    monkeypatch.setattr(predictor, "predict_batch", stop_at_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        predict_to_folder(predictor, [str(folder)], out, save_every=2)
    written = _results(out)  # parses: written whole after the second image
    assert {r["image_id"] for r in written} <= {1, 2}


def test_masks_are_written_as_instance_id_pngs(predictor, folder, tmp_path) -> None:
    out = tmp_path / "out"
    predict_to_folder(predictor, [str(folder / "im0.png"), str(folder / "im1.png")], out, save_masks=True,
                      batch_size=2)
    results = _results(out)
    for k in range(2):
        ids = np.array(Image.open(out / "masks" / f"im{k}.png"))
        assert ids.shape == (60 + 4 * k, 80)
        found = len([r for r in results if r["image_id"] == k])
        assert 0 < int(ids.max()) <= found  # instance k + 1 at its pixels (hidden ones may be covered)


def test_the_cli_counts_skipped_images(predictor, folder, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(Predictor, "from_checkpoint", classmethod(lambda cls, *a, **k: predictor))
    assert main(["predict", "ckpt.pt", str(folder), "--out", str(tmp_path / "out"), "--save-masks",
                 "--save-crops"]) == 0
    assert "1 unreadable inputs skipped" in capsys.readouterr().out
    assert len(list((tmp_path / "out" / "masks").glob("*.png"))) == 5
    results = _results(tmp_path / "out")
    crops = sorted((tmp_path / "out" / "crops" / "thing").glob("*.jpg"))
    assert len(crops) == len(results)  # one per detection
    first = next(r for r in results if r["file_name"].endswith("im0.png"))
    with Image.open(tmp_path / "out" / "crops" / "thing" / "im0_0.jpg") as crop:
        assert abs(crop.width - first["bbox"][2]) <= 2 and abs(crop.height - first["bbox"][3]) <= 2


def _write_video(path: Path, frames: int = 10) -> Path:
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 80, 64, "yuv420p"
        for _ in range(frames):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_a_video_gives_an_annotated_video_and_per_frame_results(predictor, tmp_path, capsys, monkeypatch) -> None:
    import av

    video = _write_video(tmp_path / "clip.avi")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    monkeypatch.setattr(Predictor, "from_checkpoint", classmethod(lambda cls, *a, **k: predictor))
    out = tmp_path / "out"
    assert main(["predict", "ckpt.pt", str(video), str(broken), "--out", str(out), "--vid-stride", "3"]) == 0
    printed = capsys.readouterr().out
    assert "4 frames annotated" in printed and "1 unreadable inputs skipped" in printed
    with av.open(str(out / "clip.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 4  # frames 0, 3, 6, 9
    results = json.loads((out / "clip.frames.json").read_text())
    assert results and {r["frame"] for r in results} <= {0, 3, 6, 9}
    assert not (out / "broken.mp4").exists() and not list(out.glob(".*.tmp")) and not list(out.glob(".broken*"))


def test_yolo_labels_read_back_as_the_predicted_masks(predictor, folder, tmp_path) -> None:
    from segtune.data.polygons import polygons_to_mask

    out = tmp_path / "out"
    predict_to_folder(predictor, [str(folder / "im2.png")], out, save_txt=True)
    pred = predictor(folder / "im2.png")
    lines = (out / "labels" / "im2.txt").read_text().splitlines()
    kept = [k for k in range(len(pred)) if pred.masks[k].any()]
    assert len(lines) == len(kept) > 0
    height, width = pred.masks.shape[1:]
    for line, k in zip(lines, kept):
        cls, *coords = line.split()
        assert cls == "0" and len(coords) % 2 == 0 and all(0 <= float(v) <= 1 for v in coords)
        points = [float(v) * (width if n % 2 == 0 else height) for n, v in enumerate(coords)]
        drawn = polygons_to_mask([points], height, width).astype(bool)
        truth = pred.masks[k].numpy()
        iou = (drawn & truth).sum() / max(1, (drawn | truth).sum())
        assert iou > 0.6, iou  # an outline's polygon against its pixels (small masks lose most at the edge)
