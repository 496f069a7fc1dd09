"""A prediction stage and a sink plugged in from outside the package, through the public registries only:
a stage that renames classes and a sink that writes a CSV of boxes, over a folder of images and a video."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from segtune.predict import (SINKS, STAGES, Item, Predictor, RunContext, Sink, Stage, draw, predict_to_folder,
                             predict_video)

HEADER = ["file", "frame", "class", "score", "x0", "y0", "x1", "y1"]
SIZE = 64


class BrightestRegion(nn.Module):
    """A stand-in detector honouring torchvision's eval-mode contract (a list of float[3, H, W] images in, a
    dict per image out): one "person" (label 1, score 0.9) boxing and masking the pixels brighter than half."""

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        outputs = []
        for image in images:
            bright = image.mean(0) > 0.5
            ys, xs = torch.nonzero(bright, as_tuple=True)
            if not len(xs):
                outputs.append({"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                                "scores": torch.zeros(0), "masks": torch.zeros(0, 1, *bright.shape)})
                continue
            box = [float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1]
            outputs.append({"boxes": torch.tensor([box]), "labels": torch.tensor([1]), "scores": torch.tensor([0.9]),
                            "masks": bright[None, None].float()})
        return outputs


@STAGES.register("test_rename_person")
class RenamePerson(Stage):
    """Calls a "person" a "human" in every prediction it sees, and remembers the kinds of item seen."""

    name = "test_rename_person"

    def start(self, context: RunContext) -> None:
        super().start(context)
        self.kinds: set[str] = set()

    def process(self, item: Item) -> Item:
        self.kinds.add(item.kind)
        item.prediction.names = ["human" if n == "person" else n for n in item.prediction.names]
        return item


@SINKS.register("test_csv_boxes")
class CsvBoxes(Sink):
    """``boxes.csv``: a row per detection of every image and video frame (file, frame, class, score, box)."""

    name = "test_csv_boxes"

    def start(self, context: RunContext) -> None:
        super().start(context)
        self.rows: list[list[str]] = []

    def write(self, item: Item) -> None:
        pred = item.prediction
        for name, score, box in zip(pred.names, pred.scores.tolist(), pred.boxes.tolist()):
            frame = "" if item.frame is None else str(item.frame)
            self.rows.append([str(item.path), frame, name, f"{score:.3f}", *(f"{v:.1f}" for v in box)])

    def finish(self) -> list[Path]:
        path = self.context.out_dir / "boxes.csv"
        with path.open("w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([HEADER, *self.rows])
        return [path]


def _square(top: int, left: int, side: int = 20) -> np.ndarray:
    image = np.full((SIZE, SIZE, 3), 20, dtype=np.uint8)
    image[top:top + side, left:left + side] = 255
    return image


def _write_video(path: Path, frames: int = 6) -> Path:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = SIZE, SIZE, "yuv420p"
        for k in range(frames):  # a square moving right
            frame = av.VideoFrame.from_ndarray(_square(16, 4 + 5 * k), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    folder = tmp_path / "inputs"
    folder.mkdir()
    for k, (top, left) in enumerate([(10, 20), (30, 5), (2, 40)]):
        Image.fromarray(_square(top, left)).save(folder / f"im{k}.png")
    _write_video(folder / "clip.avi")
    return folder


@pytest.fixture
def predictor() -> Predictor:
    return Predictor(BrightestRegion(), ["person"], score_threshold=0.5)


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "boxes.csv").open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_a_registered_stage_and_sink_see_images_and_video_frames(predictor, inputs, tmp_path) -> None:
    out = tmp_path / "out"
    summary = predict_to_folder(predictor, [str(inputs)], out, vid_stride=2, save_crops=True,
                                stages=["test_rename_person"], sinks=["test_csv_boxes"])
    rows = _rows(out)
    image_rows = [r for r in rows if r["frame"] == ""]
    frame_rows = [r for r in rows if r["frame"] != ""]
    # The model really detects: one box per image, around its square.
    assert sorted(Path(r["file"]).name for r in image_rows) == ["im0.png", "im1.png", "im2.png"]
    first = next(r for r in image_rows if r["file"].endswith("im0.png"))
    assert [float(first[k]) for k in ("x0", "y0", "x1", "y1")] == [20.0, 10.0, 40.0, 30.0]
    # ... and on every second frame of the video, the square moving right.
    assert [int(r["frame"]) for r in frame_rows] == [0, 2, 4]
    assert all(Path(r["file"]).name == "clip.avi" for r in frame_rows)
    lefts = [float(r["x0"]) for r in frame_rows]
    assert lefts == sorted(lefts) and abs(lefts[0] - 4) <= 3 and abs(lefts[-1] - 24) <= 3
    assert {r["class"] for r in rows} == {"human"} and {r["score"] for r in rows} == {"0.900"}

    # The built-in outputs show the stage's names: results, per-frame results, crops, pictures.
    results = json.loads(summary.results_file.read_text())
    assert len(results) == 3 and {(r["category_name"], r["category_id"]) for r in results} == {("human", 1)}
    frames = json.loads((out / "clip.frames.json").read_text())
    assert [r["frame"] for r in frames] == [0, 2, 4] and {r["category_name"] for r in frames} == {"human"}
    assert sorted(p.name for p in (out / "crops" / "human").glob("*.jpg")) == ["im0_0.jpg", "im1_0.jpg", "im2_0.jpg"]
    assert not (out / "crops" / "person").exists()
    pred = predictor(inputs / "im0.png")
    expected = draw(pred.image, pred.boxes, ["human 0.90"], pred.masks)
    assert np.array_equal(np.asarray(Image.open(out / "im0.png")), expected.permute(1, 2, 0).numpy())
    assert [v.frames for v in summary.videos] == [3] and (out / "clip.mp4").is_file()


def test_stage_and_sink_instances_plug_into_a_video_alone(predictor, inputs, tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    stage = RenamePerson()
    summary = predict_video(predictor, inputs / "clip.avi", out, stages=[stage], sinks=[CsvBoxes()])
    assert stage.kinds == {"frame"} and summary.frames == 6
    rows = _rows(out)
    assert [int(r["frame"]) for r in rows] == list(range(6)) and {r["class"] for r in rows} == {"human"}
    assert {r["category_name"] for r in json.loads(summary.results_file.read_text())} == {"human"}
    assert not (out / "predictions.json").exists()  # a video alone writes its own results only


def test_an_unknown_stage_name_lists_the_registered_ones(predictor, inputs, tmp_path) -> None:
    from segtune.errors import ConfigError

    with pytest.raises(ConfigError, match="test_rename_person"):
        predict_to_folder(predictor, [str(inputs / "im0.png")], tmp_path / "out", stages=["no_such_stage"])


class _FailAtThirdFrame(Sink):
    """Stops the run at a video's third frame, as a crash or Ctrl-C would."""

    def write(self, item: Item) -> None:
        if item.frame == 2:
            raise KeyboardInterrupt


def test_a_run_stopped_inside_a_video_leaves_no_half_file(predictor, inputs, tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(KeyboardInterrupt):
        predict_video(predictor, inputs / "clip.avi", out, sinks=[_FailAtThirdFrame()])
    assert sorted(p.name for p in out.iterdir()) == []  # no clip.mp4, clip.frames.json or temporary file
