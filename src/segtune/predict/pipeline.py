"""Owns the shape of a prediction run: source -> model -> stages -> sinks, and the registries of stages and sinks.

A *source* gives :class:`Stream` objects (the images of a run, or one video each), a stream gives batches
of :class:`Item` (one image or video frame each), the *model* (:meth:`Predictor.predict_batch`) sets each
item's :class:`~segtune.predict.predictor.Prediction`, the *stages* may change it one item at a time, and
the *sinks* write it out. Stages and sinks have Detectron2's ``DatasetEvaluator`` shape: ``start`` once,
``open`` / ``close`` around each stream (a tracker resets per video; a video file is finished or thrown
away), ``process`` / ``write`` per item, ``finish`` once. Each says which items it ``takes``: images,
video frames, or both.

Add one by subclassing :class:`Stage` or :class:`Sink` and registering it by name::

    @SINKS.register("csv")
    class CsvSink(Sink):
        ...

then pass it (the name or an instance) to ``predict_to_folder(..., stages=[...], sinks=[...])``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from segtune.errors import ConfigError
from segtune.registry import Registry

if TYPE_CHECKING:  # the predictor module imports this package's video module, which imports this one
    import torch

    from segtune.predict.predictor import Prediction, Predictor

logger = logging.getLogger(__name__)

#: The kinds of item: a still image, or a frame of a video.
IMAGE, FRAME = "image", "frame"
BOTH = frozenset({IMAGE, FRAME})

STAGES: Registry[type[Stage]] = Registry("prediction stage")
SINKS: Registry[type[Sink]] = Registry("prediction sink")


@dataclass
class Item:
    """One image or video frame on its way from the source to the sinks.

    Attributes:
        path: the input file: the image, or the video the frame comes from.
        image_id: the ``image_id`` of its COCO results: an image's position among the inputs; a frame's
            index in its video.
        name: an output name unique in the run, without suffix: ``<stem>`` (``<stem>-2`` for a second input
            of that stem) for an image, ``<video stem>_<frame, 6 digits>`` for a frame.
        image: uint8[3, H, W], RGB.
        prediction: set by the model step; stages may change or replace it.
        frame: a frame's index in its video (every ``vid_stride``-th); None for an image.
        time_s: a frame's time in its video, in seconds; None for an image.
    """

    path: Path
    image_id: int
    name: str
    image: torch.Tensor
    prediction: Prediction | None = None
    frame: int | None = None
    time_s: float | None = None

    @property
    def kind(self) -> str:
        """:data:`FRAME` for a video frame, else :data:`IMAGE`."""
        return IMAGE if self.frame is None else FRAME


class Stream:
    """A source's run of items that belong together: the images of a run, or the frames of one video.

    Subclasses set ``kind``, ``name`` (an image stream's is ``"images"``, a video's its stem), ``path`` (the
    video; None for images) and ``fps`` (a video's output frame rate), and implement :meth:`batches`.
    """

    kind: str = IMAGE
    name: str = "images"
    path: Path | None = None
    fps: Fraction | None = None

    def open(self) -> None:
        """Get ready to give items (open a video); raises ``DatasetError`` if the input cannot be read."""

    def batches(self) -> Iterator[list[Item]]:
        """The items, in batches for one forward pass each, without predictions."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what :meth:`open` took; called after the last batch, or when the run stops."""


@dataclass
class RunContext:
    """What stages and sinks are told when a run starts.

    Attributes:
        out_dir: the output folder (made).
        predictor: the model's :class:`Predictor`: ``classes``, ``category_id``, ``mask_threshold``...
        resumed: image_id -> input path of the images an earlier run into ``out_dir`` did (their pictures
            exist; they are not predicted again and a sink may keep what it wrote for them).
    """

    out_dir: Path
    predictor: Predictor
    resumed: dict[int, str] = field(default_factory=dict)


class _Unit:
    """What stages and sinks share: a name, the kinds of item taken, and the run's events (all optional)."""

    name: ClassVar[str] = ""
    #: The kinds of item (:data:`IMAGE`, :data:`FRAME`) this unit sees; the others pass it by.
    takes: ClassVar[frozenset[str]] = BOTH

    def start(self, context: RunContext) -> None:
        """Called once before the first stream."""
        self.context = context

    def open(self, stream: Stream) -> None:
        """Called before the first item of a stream this unit takes (``stream.kind`` in :attr:`takes`)."""

    def close(self, stream: Stream, complete: bool) -> None:
        """Called after a stream's last item; ``complete`` is False when the stream failed or the run stopped
        (throw away what was begun for it)."""


class Stage(_Unit):
    """A step between the model and the sinks that sees one item at a time and may change its prediction
    (rename classes, merge tiles, track identities across frames)."""

    def process(self, item: Item) -> Item:
        """Return ``item`` with its prediction changed as this stage does (the same item or a new one)."""
        return item

    def finish(self) -> None:
        """Called once after the last stream."""


class Sink(_Unit):
    """An output: writes what it wants of each item it takes, and says at the end what it wrote (the files it
    adds to ``written``, which :meth:`start` empties)."""

    written: list[Path]

    def start(self, context: RunContext) -> None:
        super().start(context)
        self.written = []

    def write(self, item: Item) -> None:
        """Write (or collect) ``item``, whose ``prediction`` is set."""
        raise NotImplementedError

    def finish(self) -> list[Path]:
        """Called once after the last stream (not when the run stops early); returns the files written."""
        return self.written


def build_units(units: Iterable[Any], registry: Registry) -> list[Any]:
    """Stage or sink instances from instances or registered names (a name is made with no arguments).

    Raises:
        ConfigError: a name that is not registered.
    """
    built = []
    for unit in units:
        if isinstance(unit, str):
            unit = registry.get(unit)()
        elif isinstance(unit, type):
            raise ConfigError(f"{registry.kind} {unit.__name__}: pass an instance or a registered name, not the class")
        built.append(unit)
    return built


@dataclass
class StreamResult:
    """What one stream gave: its items predicted on and their detections (after the stages)."""

    stream: Stream
    items: int
    detections: int


class Pipeline:
    """Runs streams through the model, the stages and the sinks, in the order given.

    Args:
        predictor: the model step (its ``predict_batch``; its score filter is the first stage, applied there).
        stages: :class:`Stage` instances, run in order on each item.
        sinks: :class:`Sink` instances, each given each item it takes in order: put the sink whose file
            marks an item done (the picture) last.
    """

    def __init__(self, predictor: Predictor, stages: Sequence[Stage], sinks: Sequence[Sink]) -> None:
        self.predictor = predictor
        self.stages, self.sinks = list(stages), list(sinks)

    def start(self, context: RunContext) -> None:
        for unit in (*self.stages, *self.sinks):
            unit.start(context)

    def run(self, stream: Stream) -> StreamResult:
        """Predict on every item of ``stream`` and give each to the stages and sinks that take it.

        Raises:
            DatasetError: the stream cannot be read (a video that does not open or decode); the units it was
                opened for are closed with ``complete=False`` first, as on any other exception.
        """
        stream.open()
        units = [u for u in (*self.stages, *self.sinks) if stream.kind in u.takes]
        stages = [s for s in self.stages if stream.kind in s.takes]
        sinks = [s for s in self.sinks if stream.kind in s.takes]
        opened: list[_Unit] = []
        items = detections = 0
        complete = False
        try:
            for unit in units:
                unit.open(stream)
                opened.append(unit)
            for batch in stream.batches():
                for item, pred in zip(batch, self.predictor.predict_batch([it.image for it in batch])):
                    item.prediction = pred
                    for stage in stages:
                        item = stage.process(item)
                    for sink in sinks:
                        sink.write(item)
                    items += 1
                    detections += len(item.prediction)
            complete = True
        finally:
            try:
                _close(opened, stream, complete)
            finally:
                stream.close()
        return StreamResult(stream, items, detections)

    def finish(self) -> dict[Sink, list[Path]]:
        """Finish the stages, then the sinks; returns the files each sink wrote."""
        for stage in self.stages:
            stage.finish()
        return {sink: sink.finish() for sink in self.sinks}


def _close(units: Sequence[_Unit], stream: Stream, complete: bool) -> None:
    """Close each unit; once one fails, the rest are closed as incomplete (they throw away what they began)
    and the first error is raised, unless the stream had failed already (its error is the one to report)."""
    error: Exception | None = None
    for unit in units:
        try:
            unit.close(stream, complete=complete and error is None)
        except Exception as e:
            if error is None and complete:
                error = e
            else:
                logger.exception("predict: %s could not close %s", type(unit).__name__, stream.name)
    if error is not None:
        raise error
