"""Owns prediction on videos: frames decoded with PyAV one at a time, an annotated video written beside
per-frame COCO results.

``<stem>.mp4`` (H.264 where the PyAV build has libx264, else MPEG-4 part 2) holds every
``vid_stride``-th frame with its detections drawn, at the source's frame rate divided by the
stride; ``<stem>.frames.json`` holds a COCO results entry per detection with ``frame`` (the frame's
index in the source) and ``time_s``. Both are written to temporary names and renamed when the video
is done, so an interrupted video leaves no half-file.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from segtune.errors import DatasetError
from segtune.fileio import write_json

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


def predict_video(predictor: Any, path: str | os.PathLike, out_dir: str | os.PathLike, *,
                  vid_stride: int = 1) -> VideoSummary:
    """Predict on every ``vid_stride``-th frame of the video at ``path``; see the module docstring."""
    import av

    path, out = Path(path), Path(out_dir)
    stride = max(1, int(vid_stride))
    container = _open(path)
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate or Fraction(25)
    time_base = stream.time_base or Fraction(1, int(rate))
    video_path, results_path = out / f"{path.stem}.mp4", out / f"{path.stem}.frames.json"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{video_path.name}.", suffix=".mp4", dir=out)
    os.close(fd)
    tmp = Path(tmp_name)
    writer = av.open(str(tmp), "w", format="mp4")
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    ostream = None
    results: list[dict[str, Any]] = []
    frames, done = 0, False
    try:
        for index, frame in enumerate(container.decode(stream)):
            if index % stride:
                continue
            rgb = frame.to_ndarray(format="rgb24")
            pred = predictor(rgb)
            seconds = float(frame.pts * time_base) if frame.pts is not None else index / float(rate)
            for entry in pred.to_coco(index, predictor.mask_threshold):
                label = entry["category_id"]
                entry.update(frame=index, time_s=round(seconds, 3), file_name=str(path),
                             category_name=predictor.name(label), category_id=predictor.category_id(label))
                results.append(entry)
            drawn = pred.draw().permute(1, 2, 0).numpy()
            if ostream is None:
                ostream = writer.add_stream(codec, rate=Fraction(rate) / stride)
                # Encoders of 4:2:0 video want even sides: the last row or column is dropped if need be.
                ostream.height, ostream.width = drawn.shape[0] // 2 * 2, drawn.shape[1] // 2 * 2
                ostream.pix_fmt = "yuv420p"
            drawn = np.ascontiguousarray(drawn[:ostream.height, :ostream.width])
            for packet in ostream.encode(av.VideoFrame.from_ndarray(drawn, format="rgb24")):
                writer.mux(packet)
            frames += 1
        if ostream is not None:
            for packet in ostream.encode():
                writer.mux(packet)
        done = frames > 0
    except av.error.FFmpegError as e:
        raise DatasetError(f"{path}: the video cannot be decoded past frame {frames} ({e})") from None
    finally:
        writer.close()
        container.close()
        if not done:
            tmp.unlink(missing_ok=True)
    if not done:
        raise DatasetError(f"{path}: no frame could be decoded")
    os.replace(tmp, video_path)
    write_json(results_path, results)
    logger.info("predict: %s: %d frames (every %d), %d detections -> %s", path, frames, stride, len(results),
                video_path)
    return VideoSummary(video_path, results_path, frames, len(results))
