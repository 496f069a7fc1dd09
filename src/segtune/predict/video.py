"""Owns prediction on videos: the frames as a source (decoded with PyAV one at a time) and the annotated video
as a sink, run through the same pipeline as images (:mod:`segtune.predict.pipeline`).

``<stem>.mp4`` (H.264 where the PyAV build has libx264, else MPEG-4 part 2) holds every
``vid_stride``-th frame with its detections drawn, at the source's frame rate divided by the
stride; ``<stem>.frames.json`` (:class:`~segtune.predict.sinks.CocoResults`) holds a COCO results entry per
detection with ``frame`` (the frame's index in the source) and ``time_s``. Both are written to temporary
names and renamed when the video is done, so an interrupted video leaves no half-file.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from segtune.errors import DatasetError
from segtune.predict.pipeline import FRAME, SINKS, STAGES, Item, Pipeline, RunContext, Sink, Stage, Stream, build_units
from segtune.predict.sinks import CocoResults, frames_file

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")


def is_video(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


@dataclass
class VideoSummary:
    video: Path          # the annotated video written
    results_file: Path   # its per-frame COCO results
    frames: int          # frames predicted on
    num_detections: int


def video_file(out_dir: Path, stream: Stream) -> Path:
    """A video's annotated copy: ``<stem>.mp4``."""
    return out_dir / f"{stream.name}.mp4"


def _open(path: Path) -> Any:
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as e:
        raise DatasetError(f"{path}: cannot be opened as a video ({e})") from None
    if not container.streams.video:
        container.close()
        raise DatasetError(f"{path}: holds no video stream")
    return container


class VideoStream(Stream):
    """Every ``vid_stride``-th frame of the video at ``path``, one item per batch (a video's frames are not
    held in memory); an item's ``image_id`` and ``frame`` are the frame's index in the video."""

    kind = FRAME

    def __init__(self, path: str | os.PathLike, *, vid_stride: int = 1) -> None:
        self.path = Path(path)
        self.name = self.path.stem
        self.stride = max(1, int(vid_stride))
        self._container: Any = None

    def open(self) -> None:
        self._container = _open(self.path)
        stream = self._container.streams.video[0]
        self._rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        self._time_base = stream.time_base or Fraction(1, int(self._rate))
        self.fps = Fraction(self._rate) / self.stride

    def batches(self) -> Iterator[list[Item]]:
        import av

        from segtune.predict.predictor import to_uint8_chw  # that module imports this one

        frames = 0
        try:
            for index, frame in enumerate(self._container.decode(self._container.streams.video[0])):
                if index % self.stride:
                    continue
                image = to_uint8_chw(frame.to_ndarray(format="rgb24"))
                seconds = float(frame.pts * self._time_base) if frame.pts is not None else index / float(self._rate)
                yield [Item(self.path, index, f"{self.name}_{index:06d}", image, frame=index, time_s=seconds)]
                frames += 1
        except av.error.FFmpegError as e:
            raise DatasetError(f"{self.path}: the video cannot be decoded past frame {frames} ({e})") from None
        if not frames:
            raise DatasetError(f"{self.path}: no frame could be decoded")

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


@SINKS.register("video")
class AnnotatedVideo(Sink):
    """``<stem>.mp4`` per video: its frames with their detections drawn, written to a temporary file and
    renamed when the video is done (an interrupted or unreadable video leaves nothing)."""

    name = "video"
    takes = frozenset({FRAME})

    def open(self, stream: Stream) -> None:
        import av

        self._target = video_file(self.context.out_dir, stream)
        fd, tmp = tempfile.mkstemp(prefix=f".{self._target.name}.", suffix=".mp4", dir=self.context.out_dir)
        os.close(fd)
        self._tmp, self._fps, self._out = Path(tmp), stream.fps or Fraction(25), None
        try:
            self._writer = av.open(tmp, "w", format="mp4")
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            raise

    def write(self, item: Item) -> None:
        import av

        drawn = item.prediction.draw().permute(1, 2, 0).numpy()
        try:
            if self._out is None:
                codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
                self._out = self._writer.add_stream(codec, rate=self._fps)
                # Encoders of 4:2:0 video want even sides: the last row or column is dropped if need be.
                self._out.height, self._out.width = drawn.shape[0] // 2 * 2, drawn.shape[1] // 2 * 2
                self._out.pix_fmt = "yuv420p"
            drawn = np.ascontiguousarray(drawn[:self._out.height, :self._out.width])
            for packet in self._out.encode(av.VideoFrame.from_ndarray(drawn, format="rgb24")):
                self._writer.mux(packet)
        except av.error.FFmpegError as e:
            raise DatasetError(f"{item.path}: the annotated video cannot be written at frame {item.frame} ({e})") \
                from None

    def close(self, stream: Stream, complete: bool) -> None:
        keep = False
        try:
            if complete and self._out is not None:
                for packet in self._out.encode():  # the frames the encoder still holds
                    self._writer.mux(packet)
                keep = True
        finally:
            self._writer.close()
            if keep:
                os.replace(self._tmp, self._target)
                self.written.append(self._target)
            else:
                self._tmp.unlink(missing_ok=True)


def run_video(pipeline: Pipeline, path: str | os.PathLike, out_dir: Path, *, vid_stride: int = 1) -> VideoSummary:
    """Run one video through a started ``pipeline`` (its sinks include :class:`AnnotatedVideo` and
    :class:`~segtune.predict.sinks.CocoResults`). Raises ``DatasetError`` for a video that cannot be read."""
    stream = VideoStream(path, vid_stride=vid_stride)
    done = pipeline.run(stream)
    video = video_file(out_dir, stream)
    logger.info("predict: %s: %d frames (every %d), %d detections -> %s", stream.path, done.items, stream.stride,
                done.detections, video)
    return VideoSummary(video, frames_file(out_dir, stream), done.items, done.detections)


def predict_video(predictor: Any, path: str | os.PathLike, out_dir: str | os.PathLike, *, vid_stride: int = 1,
                  stages: Sequence[Stage | str] = (), sinks: Sequence[Sink | str] = ()) -> VideoSummary:
    """Predict on every ``vid_stride``-th frame of the video at ``path``; see the module docstring.

    Args:
        predictor: a :class:`~segtune.predict.Predictor`.
        out_dir: an existing folder.
        stages: extra stages (instances or names registered in ``STAGES``), run in order after the model.
        sinks: extra sinks (instances or names registered in ``SINKS``), given each frame before the video.

    Raises:
        DatasetError: the video cannot be opened or decoded (nothing is left in ``out_dir``).
    """
    out = Path(out_dir)
    pipeline = Pipeline(predictor, build_units(stages, STAGES),
                        [CocoResults(takes=frozenset({FRAME})), *build_units(sinks, SINKS), AnnotatedVideo()])
    pipeline.start(RunContext(out, predictor))
    summary = run_video(pipeline, path, out, vid_stride=vid_stride)
    pipeline.finish()
    return summary
