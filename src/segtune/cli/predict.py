"""``segtune predict``: pictures with masks/boxes/names/scores and a COCO-results JSON."""

from __future__ import annotations

import argparse
from typing import Any

from segtune.cli.options import add_amp_argument
from segtune.errors import ConfigError
from segtune.predict import Predictor, predict_to_folder, split_images


def add_parser(sub: Any) -> None:
    p = sub.add_parser("predict", help="draw and save predictions for images",
                       description="Predict on image files, videos, folders or globs (or the run's test split) and "
                       "write one picture per image plus predictions.json (COCO results), and per video an "
                       "annotated video plus its per-frame results.")
    p.add_argument("checkpoint", help="a .pt checkpoint, a run folder (uses weights/best.pt), or a file "
                   "written by segtune export (.onnx, .torchscript, .xml: OpenVINO IR)")
    p.add_argument("inputs", nargs="*", help="image files, folders, or glob patterns")
    p.add_argument("--split", choices=["test", "train"], help="predict on this split of the run's data set instead")
    p.add_argument("--data", help="with --split: the run's data set, if it moved since training")
    p.add_argument("--out", default="preds", help="output folder (default: preds)")
    p.add_argument("--score-threshold", type=float, default=0.5, help="keep detections scoring at least this (default: 0.5)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    add_amp_argument(p)
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass (a checkpoint's eager model; "
                   "exported files take one at a time) (default: 1)")
    p.add_argument("--overwrite", action="store_true", help="predict again on images that already have a picture "
                   "in --out (default: skip them and keep their results: an interrupted run resumes)")
    p.add_argument("--save-masks", action="store_true", help="also write masks/<name>.png per image: pixel k = "
                   "instance k (the Penn-Fudan layout: correct them and train on them)")
    p.add_argument("--save-crops", action="store_true", help="also write crops/<class>/<name>_<k>.jpg: each "
                   "detection's box cut out of its image")
    p.add_argument("--save-txt", action="store_true", help="also write labels/<name>.txt: YOLO-seg labels (class "
                   "and the mask's outline, normalised; boxes for detection-only models)")
    p.add_argument("--vid-stride", type=int, default=1, help="videos (.mp4, .avi, .mov, ...): predict on every "
                   "N-th frame (default: 1, every frame)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    inputs = list(args.inputs)
    if args.split:
        inputs += [str(path) for path in split_images(args.checkpoint, args.split, data=args.data)]
    if not inputs:
        raise ConfigError("predict needs image files, folders or globs, or --split test")
    predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device, score_threshold=args.score_threshold,
                                         amp=args.amp)
    summary = predict_to_folder(predictor, inputs, args.out, overwrite=args.overwrite, save_masks=args.save_masks,
                                batch_size=args.batch_size, vid_stride=args.vid_stride, save_crops=args.save_crops,
                                save_txt=args.save_txt)
    print(f"{len(summary.pictures)} pictures in {summary.out_dir}/; {summary.num_detections} detections "
          f"(score >= {args.score_threshold}) in {summary.results_file}"
          + (f"; {len(summary.skipped)} unreadable inputs skipped" if summary.skipped else ""))
    for video in summary.videos:
        print(f"{video.video}: {video.frames} frames annotated; {video.num_detections} detections in {video.results_file}")
    return 0
