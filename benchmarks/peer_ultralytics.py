"""A peer for comparison: Ultralytics YOLO26n-seg trained on segtune's Penn-Fudan split, scored by segtune.

One command:  .venv/bin/python benchmarks/peer_ultralytics.py [--minutes 10] [--threads default|2] [--data DIR]

1. Makes (once; reused after) ``.venv-peer/`` in the repository root with Ultralytics (pinned as
   ``peer_venv.ULTRALYTICS``; ``peer_venv.py`` makes the venv and runs the worker in it) and the
   dependencies it lacks. It has no torch of its own: a ``.pth`` file puts segtune's ``.venv``
   site-packages after its own, so torch and torchvision (and numpy, faster-coco-eval, ...) are
   segtune's, and the install is pinned against them. Ultralytics is never a dependency of segtune and
   never enters ``.venv``. ``.venv-peer/.gitignore`` keeps git away from it.
2. Draws the split the main job trains on (``scripts/main.sh``: ``--test-size 50``, the default seed)
   with segtune's own ``choose_split`` (120 train / 50 test images), and writes it as an Ultralytics
   YOLO-seg data set under ``runs/benchmarks/peer_ultralytics/dataset/``: the images are links to the
   data set's files, one polygon per instance mask (contours of the mask, parts joined), one class.
3. Trains yolo26n-seg from its YAML (random initialisation, no weights exist here) in a subprocess
   of the peer venv for ``--minutes`` of wall clock (Ultralytics' ``time=``, which counts its per-epoch
   validation too; segtune's ``--time-limit`` does not count evaluation), 320 px, batch 16, optimizer
   auto, CPU, no AMP, no plots, 0 loader workers (Ultralytics sets 0 on CPU whatever it is given).
4. Predicts the 50 test images with ``best.pt`` at evaluation settings (conf 0.001, max_det 100, masks
   at image size) and scores them with segtune's COCO evaluator against the ground truth segtune builds
   of the same images (``dataset_ground_truth`` + ``score``): the AP segtune reports for its own models.
5. Times CPU inference per image (median over the test images after 2 warm-up ones, images decoded
   beforehand as segtune's benchmark does): the network forward alone, ``predict()`` at its default
   confidence 0.25, and ``predict()`` at the evaluation settings.

``--threads default`` leaves Ultralytics' thread choice (torch on max(1, cores - 1) threads: 1 on
2 cores); ``--threads 2`` makes torch use 2 in training and inference. Prints a Markdown table and
writes ``benchmarks/results/peer_ultralytics-<minutes>min-<threads>.json``. Work files (data set,
Ultralytics' run folder with ``results.csv`` and weights, logs) are under ``runs/benchmarks/peer_ultralytics/``.
``--self-check`` checks the polygon conversion and the scoring path (a perfect prediction scores AP 1)
in a few seconds, without the peer venv.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import DATA, machine, write_result
from peer_venv import PEER, ROOT, WORK, Failure, ensure_peer_venv, say, worker

MODEL = "yolo26n-seg.yaml"
IMGSZ, BATCH = 320, 16
#: What the main job passes (scripts/main.sh: --test-size 50); the split seed is the default.
MAIN_JOB_DATA = {"data.test_size": 50}

# --- 1. the split, as an Ultralytics data set ------------------------------------------------------------

def main_job_split(data: str) -> tuple[Any, dict[str, Any]]:
    """The data set and the split ``scripts/main.sh`` trains on: segtune's own choose_split, with the main
    job's data settings (``--test-size 50``, everything else default) resolved as ``segtune train`` does."""
    from segtune.config import resolve_data_path
    from segtune.data import ProblemSink, open_dataset
    from segtune.data.split import choose_split
    from segtune.engine import configure

    cfg = configure(("scripts/main.sh", {"data.path": data, **MAIN_JOB_DATA}))
    data_cfg = dataclasses.replace(cfg.data, path=resolve_data_path(cfg.data.path))
    full = open_dataset(data_cfg, keep_crowd=True, sink=ProblemSink(collect=True))  # as segtune's trainer opens it
    return data_cfg, choose_split(full, data_cfg)


def compare_with_main_runs(split: dict[str, Any]) -> str:
    """Whether the newest main-job run (runs/pennfudan-*) trained on this split; a line to print."""
    runs = sorted(ROOT.glob("runs/pennfudan-*/split.json"))
    if not runs:
        return "no main-job run (runs/pennfudan-*) to compare the split with"
    theirs = json.loads(runs[-1].read_text())
    same = theirs.get("train") == split["train"] and theirs.get("test") == split["test"]
    where = runs[-1].relative_to(ROOT)
    if not same:
        say(f"WARNING: the split differs from {where} (same data set? other --test-size?)")
    return f"{'identical to' if same else 'DIFFERENT from'} {where}"


def _simplify(points: np.ndarray) -> np.ndarray:
    """Drop the points of a closed polygon that lie on a straight line between their neighbours."""
    if len(points) < 4:
        return points
    before, after = points - np.roll(points, 1, axis=0), np.roll(points, -1, axis=0) - points
    turn = np.abs(before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]) > 1e-9
    return points[turn] if turn.sum() >= 3 else points


def mask_polygon(mask: np.ndarray) -> np.ndarray | None:
    """One polygon ``float[K, 2]`` (x, y in pixels, COCO's convention: pixel (x, y) covers [x, x+1) x [y, y+1))
    that rasterises to ``mask``: the outer contour of each part at level 0.5 (holes are dropped: a YOLO-seg
    label has none), the parts joined by zero-width bridges between their closest points, as Ultralytics
    joins the parts of a COCO polygon. None for an empty mask."""
    from contourpy import FillType, contour_generator

    z = np.pad(np.asarray(mask, dtype=np.float64) > 0, 1).astype(np.float64)
    points, offsets = contour_generator(z=z, fill_type=FillType.OuterOffset).filled(0.5, 1.5)
    parts = []
    for p, o in zip(points, offsets):
        outer = p[o[0]:o[1]]
        if len(outer) > 1 and np.allclose(outer[0], outer[-1]):
            outer = outer[:-1]
        if len(outer) >= 3:
            parts.append(_simplify(outer - 0.5))  # padded grid index -> pixel coordinates (centres at +0.5)
    if not parts:
        return None
    parts.sort(key=len, reverse=True)
    polygon = parts[0]
    for part in parts[1:]:
        d = ((polygon[:, None, :] - part[None, :, :]) ** 2).sum(-1)
        a, b = np.unravel_index(int(d.argmin()), d.shape)
        detour = np.concatenate([np.roll(part, -b, axis=0), part[b:b + 1]])  # around the part, back to its start
        polygon = np.concatenate([polygon[:a + 1], detour, polygon[a:]])
    return polygon


def write_yolo_dataset(data_cfg: Any, split: dict[str, Any], out: Path) -> dict[str, Any]:
    """The split as an Ultralytics YOLO-seg data set in ``out``: images/{train,test} (links), labels/{...}
    (class x1 y1 x2 y2 ... normalised), data.yaml. Returns counts and the test set (segtune's view of it)."""
    import yaml

    from segtune.data import build_dataset

    if out.exists():
        shutil.rmtree(out)
    views, counts = {}, {}
    for role in ("train", "test"):
        view = build_dataset(data_cfg, files=split[role], train=False)
        (out / "images" / role).mkdir(parents=True)
        (out / "labels" / role).mkdir(parents=True)
        instances = 0
        for i in range(len(view)):
            height, width, target = view.annotation(i)
            source = view.image_path(i)
            name = Path(view.files[i])
            flat = name.as_posix().replace("/", "__")  # one folder level, whatever the data set's layout
            (out / "images" / role / flat).symlink_to(source.resolve())
            lines = []
            masks = target["masks"].numpy()
            for mask, label, crowd in zip(masks, target["labels"].tolist(), target["iscrowd"].tolist()):
                polygon = None if crowd else mask_polygon(mask)
                if polygon is None:
                    continue
                xy = np.clip(polygon / np.array([width, height]), 0.0, 1.0)
                lines.append(f"{label - 1} " + " ".join(f"{v:.6f}" for v in xy.reshape(-1)))
            label_file = out / "labels" / role / Path(flat).with_suffix(".txt").name
            label_file.write_text("\n".join(lines) + ("\n" if lines else ""))
            instances += len(lines)
        views[role], counts[role] = view, {"images": len(view), "instances": instances}
    classes = list(views["train"].classes)
    (out / "data.yaml").write_text(yaml.safe_dump({"path": str(out), "train": "images/train", "val": "images/test",
                                                   "names": dict(enumerate(classes))}, sort_keys=False))
    (out / "split.json").write_text(json.dumps({k: split[k] for k in ("train", "test", "source")}, indent=1))
    return {"counts": counts, "test": views["test"], "classes": classes}


# --- 2. training --------------------------------------------------------------------------------------

def read_curve(results_csv: Path) -> list[dict[str, Any]]:
    """Per-epoch box and mask mAP from Ultralytics' results.csv (its own validation on the test images)."""
    if not results_csv.is_file():
        return []
    keys = {"metrics/mAP50-95(M)": "mask_mAP50_95", "metrics/mAP50(M)": "mask_mAP50",
            "metrics/mAP50-95(B)": "box_mAP50_95", "metrics/mAP50(B)": "box_mAP50"}
    curve = []
    with results_csv.open() as f:
        for row in csv.DictReader(f):
            row = {k.strip(): v.strip() for k, v in row.items() if k}
            point: dict[str, Any] = {"epoch": int(float(row["epoch"]))}
            if "time" in row:
                point["minutes"] = round(float(row["time"]) / 60.0, 2)
            point.update({short: round(float(row[k]), 4) for k, short in keys.items() if row.get(k)})
            curve.append(point)
    return curve


# --- 3. scoring by segtune ----------------------------------------------------------------------------

def coco_results(predictions: dict[str, list[dict[str, Any]]], image_ids: dict[str, int],
                 category_ids: list[int]) -> list[dict[str, Any]]:
    """COCO results entries (segtune's conventions) for predictions keyed by file name: ``xyxy`` boxes, a
    0-based ``class`` and an RLE mask each; ``bbox`` becomes COCO's x, y, width, height."""
    import torch

    from segtune.data.coco_json import xyxy_to_xywh

    results = []
    for name, entries in predictions.items():
        if not entries:
            continue
        boxes = xyxy_to_xywh(torch.tensor([e["xyxy"] for e in entries], dtype=torch.float64))
        for entry, box in zip(entries, boxes):
            result = {"image_id": image_ids[name], "category_id": int(category_ids[entry["class"]]), "bbox": box,
                      "score": float(entry["score"])}
            if "rle" in entry:
                result["segmentation"] = entry["rle"]
            results.append(result)
    return results


def score_predictions(test: Any, classes: list[str], predictions: dict[str, list[dict[str, Any]]],
                      names: dict[str, str]) -> dict[str, dict[str, float]]:
    """segtune's COCO bbox + segm AP of ``predictions`` (keyed by the YOLO data set's file names) on ``test``."""
    from segtune.evaluation import dataset_ground_truth, score
    from segtune.evaluation.evaluator import category_ids_of

    gt = dataset_ground_truth(test, classes)
    image_ids = {names[test.files[i]]: test.image_id(i) for i in range(len(test))}
    results = coco_results(predictions, image_ids, category_ids_of(test, classes))
    return score(gt, results, ("bbox", "segm"), print_fn=lambda line: None)


# --- the whole benchmark ------------------------------------------------------------------------------

def check_data(data: str) -> Path:
    path = Path(data)
    if not path.is_dir():
        raise Failure(f"{path}: data folder not found (give the Penn-Fudan folder with --data DIR or $SEGTUNE_DATA)", 2)
    if not ((path / "PNGImages").is_dir() and (path / "PedMasks").is_dir()):
        say(f"note: {path} has no PNGImages/ and PedMasks/: not Penn-Fudan; segtune reads it in whatever "
            "format it finds")
    return path


def run(args: argparse.Namespace) -> None:
    data = check_data(args.data)
    tag = f"{args.minutes:g}min-{args.threads}"
    venv = ensure_peer_venv(MODEL)

    from segtune.errors import SegtuneError

    try:
        data_cfg, split = main_job_split(str(data))
        say(f"split: {len(split['train'])} train / {len(split['test'])} test images, {split['source']}; "
            f"{compare_with_main_runs(split)}")
        dataset = write_yolo_dataset(data_cfg, split, WORK / "dataset")
    except SegtuneError as e:
        raise Failure(str(e), 2) from None
    counts = dataset["counts"]
    say(f"YOLO-seg data set written to {(WORK / 'dataset').relative_to(ROOT)}/: " + ", ".join(
        f"{role} {c['images']} images / {c['instances']} polygons" for role, c in counts.items()))

    run_dir = WORK / tag
    if run_dir.exists():
        shutil.rmtree(run_dir)  # Ultralytics appends to an old results.csv
    run_dir.mkdir(parents=True)
    say(f"training {MODEL} from its YAML (random init) for {args.minutes:g} min of wall clock, {IMGSZ} px, batch "
        f"{BATCH}, threads {args.threads} (log: {(run_dir / 'train.log').relative_to(ROOT)})")
    started = time.perf_counter()
    worker(["train", "--model", MODEL, "--data-yaml", str(WORK / "dataset" / "data.yaml"),
            "--project", str(run_dir), "--minutes", str(args.minutes), "--imgsz", str(IMGSZ),
            "--batch", str(BATCH), "--out", str(run_dir / "train.json")],
           timeout=args.minutes * 60 * 1.5 + 900, what="training", log=run_dir / "train.log", threads=args.threads)
    trained = json.loads((run_dir / "train.json").read_text())
    trained["subprocess_wall_s"] = round(time.perf_counter() - started, 1)
    curve = read_curve(Path(trained["save_dir"]) / "results.csv")
    weights = trained["best"] or trained["last"]
    if not weights:
        raise Failure(f"training wrote no weights (see {run_dir / 'train.log'})")
    say(f"trained {trained['epochs_done']} epoch(s) in {trained['train_loop_s'] / 60:.2f} min (per-epoch "
        f"validation included; {trained['train_wall_s'] / 60:.2f} min with the final validation); predicting "
        f"with {Path(weights).name}")

    test = dataset["test"]
    names = {test.files[i]: Path(test.files[i]).as_posix().replace("/", "__") for i in range(len(test))}
    images = {names[test.files[i]]: str(test.image_path(i).resolve()) for i in range(len(test))}
    (run_dir / "test_images.json").write_text(json.dumps(images, indent=1))
    worker(["predict", "--weights", weights, "--images", str(run_dir / "test_images.json"), "--imgsz", str(IMGSZ),
            "--out", str(run_dir / "predictions.json")], timeout=1800, what="predicting", log=run_dir / "predict.log",
           threads=args.threads)
    predicted = json.loads((run_dir / "predictions.json").read_text())
    say(f"scoring {sum(len(v) for v in predicted['predictions'].values())} detections on {len(test)} test images "
        "with segtune's COCO evaluator")
    metrics = score_predictions(test, dataset["classes"], predicted["predictions"], names)

    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "ultralytics": predicted["ultralytics"], "model": f"{MODEL} (random initialisation)", "imgsz": IMGSZ,
        "batch": BATCH, "optimizer": "auto", "minutes": args.minutes, "threads": args.threads,
        "torch_threads": {"train": trained["torch_threads"], "inference": predicted["torch_threads"]},
        # "machine" is stamped with this process's threads; the peer trained with its own.
        "work_machine": machine(threads=trained["torch_threads"]),
        "epochs": trained["epochs_done"], "train_loop_min": round(trained["train_loop_s"] / 60, 2),
        "train_wall_min": round(trained["train_wall_s"] / 60, 2),
        "ultralytics_own_best_metrics": trained["ultralytics_best_metrics"],
        "weights": Path(weights).name, "data": str(data.resolve()), "split": {
            "train_images": counts["train"]["images"], "test_images": counts["test"]["images"],
            "test_instances": counts["test"]["instances"], "source": split["source"],
            "made_as": "segtune.data.split.choose_split, data.test_size 50 (scripts/main.sh), default seed"},
        "bbox": {k: round(metrics["bbox"][k], 4) for k in ("AP", "AP50", "AP75")},
        "segm": {k: round(metrics["segm"][k], 4) for k in ("AP", "AP50", "AP75")},
        "coco_stats": {t: {k: round(v, 4) for k, v in m.items()} for t, m in metrics.items()},
        "curve": curve,
        "inference_ms_per_image": predicted["ms_per_image"], "timed_images": predicted["timed_images"],
        "peer_venv": {"path": str(PEER.relative_to(ROOT)), "install_s": venv["install_s"], "reused": venv["reused"]},
        "network_lookups_blocked": sorted(set(trained["blocked"]) | set(predicted["blocked"])),
        "run_dir": str(Path(trained["save_dir"]).relative_to(ROOT)),
    }
    print()
    print(markdown(result))
    path = write_result(f"peer_ultralytics-{tag}.json", result)
    say(f"wrote {path.relative_to(ROOT)}")


def markdown(r: dict[str, Any]) -> str:
    ms = r["inference_ms_per_image"]
    own = {k: (r["ultralytics_own_best_metrics"] or {}).get(k, float("nan")) for k in (
        "mask_mAP50_95", "mask_mAP50", "box_mAP50_95", "box_mAP50")} if r["ultralytics_own_best_metrics"] else None
    rows = [
        ("peer", f"Ultralytics {r['ultralytics']}, {r['model']}, {r['imgsz']} px, batch {r['batch']}, optimizer auto"),
        ("budget", f"{r['minutes']:g} min wall clock (Ultralytics `time=`, its per-epoch validation included)"),
        ("threads", f"{r['threads']} (torch threads: training {r['torch_threads']['train']}, "
                    f"inference {r['torch_threads']['inference']})"),
        ("epochs", f"{r['epochs']} (the last may be cut short by the budget) in {r['train_loop_min']:.2f} min, "
                   f"scored with {r['weights']}"),
        ("test images", f"{r['split']['test_images']} ({r['split']['test_instances']} instances; "
                        f"{r['split']['train_images']} train), the main job's split"),
        ("bbox AP / AP50", f"{r['bbox']['AP']:.3f} / {r['bbox']['AP50']:.3f}"),
        ("segm AP / AP50", f"{r['segm']['AP']:.3f} / {r['segm']['AP50']:.3f}"),
        ("Ultralytics' own mAP of best.pt", "mask mAP50-95 {mask_mAP50_95:.3f} / mAP50 {mask_mAP50:.3f}, box mAP50-95 "
         "{box_mAP50_95:.3f} / mAP50 {box_mAP50:.3f} (its evaluator, for reference)".format(**own) if own else "n/a"),
        ("forward alone", f"{ms['forward']:.1f} ms/image"),
        ("predict(), conf 0.25", f"{ms['predict_conf_0.25']:.1f} ms/image"),
        ("predict(), evaluation settings",
         f"{ms['predict_eval']:.1f} ms/image (conf 0.001, max_det 100, full-size masks)"),
    ]
    lines = ["| | yolo26n-seg on Penn-Fudan, scored by segtune |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    if r["curve"]:
        lines += ["", "Ultralytics' own validation per epoch (its mAP, on the same 50 test images):", "",
                  "| epoch | minutes | mask mAP50-95 | mask mAP50 | box mAP50-95 |", "|---|---|---|---|---|"]
        lines += [f"| {p['epoch']} | {p.get('minutes', float('nan')):.2f} | {p.get('mask_mAP50_95', float('nan')):.3f} | "
                  f"{p.get('mask_mAP50', float('nan')):.3f} | {p.get('box_mAP50_95', float('nan')):.3f} |"
                  for p in r["curve"]]
    return "\n".join(lines)


# --- self-check (no peer venv, a few seconds) ---------------------------------------------------------

def self_check(data: str | None) -> None:
    """The polygon conversion and the scoring path, checked: shapes survive mask -> polygon -> mask, and
    the ground truth itself, passed through the results conversion, scores AP 1."""
    import torch

    from segtune.data.coco_json import encode_masks
    from segtune.data.polygons import polygons_to_mask

    def iou(a: np.ndarray, b: np.ndarray) -> float:
        a, b = a > 0, b > 0
        return float((a & b).sum() / max((a | b).sum(), 1))

    mask = np.zeros((40, 60), dtype=np.uint8)
    mask[5:30, 4:20] = 1          # a body
    mask[8:12, 30:50] = 1         # a separate part
    mask[33:39, 52:59] = 1        # another, in a corner region
    mask[0:3, 0:3] = 1            # touching the border
    polygon = mask_polygon(mask)
    assert polygon is not None
    back = polygons_to_mask([polygon.reshape(-1).tolist()], 40, 60)
    assert iou(back, mask) > 0.97, f"synthetic shape: IoU {iou(back, mask):.3f} after mask -> polygon -> mask"
    assert mask_polygon(np.zeros((5, 5))) is None
    say(f"self-check: synthetic 4-part mask -> polygon -> mask IoU {iou(back, mask):.3f}")
    if data is None or not Path(data).is_dir():
        say("self-check: no data folder, the split and scoring checks are skipped")
        return
    data_cfg, split = main_job_split(data)
    assert (len(split["train"]), len(split["test"])) == (120, 50) or "PennFudan" not in data, split["source"]
    from segtune.data import build_dataset

    test = build_dataset(data_cfg, files=split["test"], train=False)
    ious, predictions = [], {}
    for i in range(len(test)):
        height, width, target = test.annotation(i)
        entries = []
        for box, mask, label in zip(target["boxes"].tolist(), target["masks"], target["labels"].tolist()):
            polygon = mask_polygon(mask.numpy())
            ious.append(iou(polygons_to_mask([polygon.reshape(-1).tolist()], height, width), mask.numpy()))
            entries.append({"xyxy": box, "score": 1.0, "class": label - 1,
                            "rle": encode_masks(mask[None].to(torch.uint8))[0]})
        predictions[test.files[i]] = entries
    assert min(ious) > 0.9, f"a Penn-Fudan instance's polygon covers its mask with IoU {min(ious):.3f} only"
    metrics = score_predictions(test, list(test.classes), predictions, {f: f for f in test.files})
    assert abs(metrics["bbox"]["AP"] - 1) < 1e-9 and abs(metrics["segm"]["AP"] - 1) < 1e-9, metrics
    say(f"self-check: split {len(split['train'])}/{len(split['test'])}; {len(ious)} test instances -> polygon -> mask "
        f"IoU min {min(ious):.3f}, mean {np.mean(ious):.4f}; ground truth as predictions scores bbox AP "
        f"{metrics['bbox']['AP']:.3f}, segm AP {metrics['segm']['AP']:.3f}: passed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="training wall-clock budget (default 10)")
    parser.add_argument("--threads", choices=["default", "2"], default="default",
                        help="default: Ultralytics' own choice (1 torch thread on 2 cores); 2: torch uses 2")
    parser.add_argument("--data", default=DATA,
                        help="the Penn-Fudan folder (default $SEGTUNE_DATA or ../shared/data/PennFudanPed)")
    parser.add_argument("--self-check", action="store_true", help="check the conversion and scoring path, then stop")
    args = parser.parse_args()
    try:
        if args.self_check:
            self_check(args.data)
            return 0
        if args.minutes <= 0:
            raise Failure("--minutes must be positive", 2)
        run(args)
    except Failure as e:
        print(f"peer_ultralytics: error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("peer_ultralytics: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
