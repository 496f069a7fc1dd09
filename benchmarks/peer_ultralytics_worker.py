"""The Ultralytics side of ``peer_ultralytics.py``: runs in ``.venv-peer`` only, never in segtune's venv.

``peer_ultralytics.py`` starts it as ``.venv-peer/bin/python -P peer_ultralytics_worker.py COMMAND ...``:

* ``check``: import ultralytics and torch, build yolo26n-seg from its YAML; print versions as JSON;
* ``train``: train yolo26n-seg from its YAML (random initialisation) under a wall-clock budget;
* ``predict``: predict the test images at evaluation settings (COCO results, keyed by file name, masks as
  RLE) and time CPU inference three ways.

Ultralytics is made offline before it is imported: ``YOLO_OFFLINE``, its settings (no sync, no
integrations), a local font so nothing fetches ``Arial.ttf``, and a guard that makes any host-name
look-up fail at once (and says which host was wanted) instead of waiting on a network that is not
there. Lines starting with ``@@peer`` are progress for the parent; everything else goes to its log.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import sys
import time
from pathlib import Path

MARK = "@@peer "
WARMUP = 2
BLOCKED: list[str] = []


def say(message: str) -> None:
    print(MARK + message, flush=True)


def block_network() -> None:
    """Host-name look-ups fail at once: nothing in this process waits on a network that is not there."""
    def refuse(host, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        if str(host) not in BLOCKED:
            BLOCKED.append(str(host))
            say(f"blocked a network look-up of {host} (offline by design)")
        raise socket.gaierror(socket.EAI_NONAME, f"{host}: offline (blocked by peer_ultralytics_worker.py)")

    socket.getaddrinfo = refuse  # type: ignore[assignment]
    socket.gethostbyname = refuse  # type: ignore[assignment]


def offline_ultralytics(config_dir: Path) -> None:
    """Environment and settings so that Ultralytics never reaches for the network; call before importing it."""
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    os.environ.pop("ULTRALYTICS_API_KEY", None)
    user_dir = config_dir / "Ultralytics"  # Ultralytics' USER_CONFIG_DIR under YOLO_CONFIG_DIR
    user_dir.mkdir(parents=True, exist_ok=True)
    # check_det_dataset() calls check_font('Arial.ttf') whatever `plots` says, which downloads it when it is
    # missing. Any TrueType font under that name satisfies it (only plots would draw with it; they are off).
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        if not (user_dir / name).exists():
            import matplotlib

            shutil.copyfile(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf", user_dir / name)
    block_network()
    from ultralytics import settings

    settings.update({"sync": False, "api_key": "", "clearml": False, "comet": False, "dvc": False, "mlflow": False,
                     "raytune": False, "tensorboard": False, "wandb": False, "vscode_msg": False,
                     "openvino_msg": False, "runs_dir": str(config_dir / "runs"),
                     "weights_dir": str(config_dir / "weights"), "datasets_dir": str(config_dir / "datasets")})


def apply_threads(threads: str) -> None:
    """``default``: Ultralytics' own choice (it sets torch to max(1, cores - 1) threads whenever it selects the
    CPU). A number: torch uses that many, also after Ultralytics selects the device again."""
    if threads == "default":
        return
    import torch
    import ultralytics.utils.torch_utils as torch_utils

    torch_utils.NUM_THREADS = int(threads)  # what select_device() resets torch to
    torch.set_num_threads(int(threads))


def cmd_check(args: argparse.Namespace) -> None:
    offline_ultralytics(Path(args.config_dir))
    import torch
    import torchvision
    import ultralytics
    from ultralytics import YOLO

    model = YOLO(args.model, task="segment")
    print(json.dumps({"ultralytics": ultralytics.__version__, "torch": torch.__version__,
                      "torch_file": torch.__file__, "torchvision": torchvision.__version__,
                      "model": args.model, "parameters": sum(p.numel() for p in model.model.parameters()),
                      "blocked": BLOCKED}))


def cmd_train(args: argparse.Namespace) -> None:
    offline_ultralytics(Path(args.config_dir))
    import torch
    import ultralytics
    from ultralytics import YOLO

    apply_threads(args.threads)
    model = YOLO(args.model, task="segment")  # a YAML: random initialisation, nothing is downloaded
    state: dict = {"epochs": 0, "validated": 0, "start": time.time(), "final": None}

    def on_train_start(trainer) -> None:  # noqa: ANN001
        state["threads"] = torch.get_num_threads()
        state["train_start"] = state["loop_end"] = time.time()
        say(f"training: {len(trainer.train_loader.dataset)} images, {trainer.train_loader.num_workers} loader "
            f"workers, torch {state['threads']} thread(s), optimizer {type(trainer.optimizer).__name__}")

    def on_train_epoch_end(trainer) -> None:  # noqa: ANN001
        state["epochs"] += 1

    def on_fit_epoch_end(trainer) -> None:  # noqa: ANN001
        m = trainer.metrics or {}
        mask = {"mask_mAP50_95": m.get("metrics/mAP50-95(M)"), "mask_mAP50": m.get("metrics/mAP50(M)"),
                "box_mAP50_95": m.get("metrics/mAP50-95(B)"), "box_mAP50": m.get("metrics/mAP50(B)")}
        if state["validated"] < state["epochs"]:  # an epoch's validation
            state["validated"] += 1
            state["loop_end"] = time.time()
            say(f"epoch {state['epochs']}: {(state['loop_end'] - state['train_start']) / 60:.2f} min, mask mAP50-95 "
                f"{mask['mask_mAP50_95'] or 0.0:.3f} (Ultralytics' own validation)")
        else:  # final_eval() validates best.pt and calls this callback once more
            state["final"] = {k: round(float(v), 4) for k, v in mask.items() if v is not None}
            say(f"Ultralytics' validation of best.pt: mask mAP50-95 {mask['mask_mAP50_95'] or 0.0:.3f}")

    model.add_callback("on_train_start", on_train_start)
    model.add_callback("on_train_epoch_end", on_train_epoch_end)
    model.add_callback("on_fit_epoch_end", on_fit_epoch_end)
    model.train(data=args.data_yaml, imgsz=args.imgsz, batch=args.batch, time=args.minutes / 60.0,
                optimizer="auto", device="cpu", workers=0, plots=False, amp=False, pretrained=False,
                project=args.project, name="train", exist_ok=True, seed=0, deterministic=True, verbose=True)
    trainer = model.trainer
    weights = Path(trainer.save_dir) / "weights"
    Path(args.out).write_text(json.dumps({
        "ultralytics": ultralytics.__version__, "save_dir": str(trainer.save_dir),
        "best": str(weights / "best.pt") if (weights / "best.pt").is_file() else None,
        "last": str(weights / "last.pt") if (weights / "last.pt").is_file() else None,
        "epochs_done": state["epochs"], "torch_threads": state.get("threads"),
        "train_loop_s": round(state["loop_end"] - state["train_start"], 1),
        "train_wall_s": round(time.time() - state["train_start"], 1), "ultralytics_best_metrics": state["final"],
        "process_wall_s": round(time.time() - state["start"], 1), "blocked": BLOCKED,
    }, indent=2))


def median_ms(times: list[float]) -> float:
    return round(statistics.median(times[WARMUP:]) * 1000, 1) if len(times) > WARMUP else float("nan")


def cmd_predict(args: argparse.Namespace) -> None:
    offline_ultralytics(Path(args.config_dir))
    import cv2
    import numpy as np
    import torch
    import ultralytics
    from faster_coco_eval.core import mask as mask_utils  # what segtune encodes masks with
    from ultralytics import YOLO

    apply_threads(args.threads)
    paths = json.loads(Path(args.images).read_text())
    images = {name: cv2.imread(path) for name, path in paths.items()}  # decoded first: not timed (as segtune's)
    missing = [name for name, im in images.items() if im is None]
    if missing:
        raise SystemExit(f"cannot read {len(missing)} test image(s): {missing[:3]}")
    model = YOLO(args.weights, task="segment")
    common = {"imgsz": args.imgsz, "device": "cpu", "verbose": False}

    # Evaluation settings: every detection above 0.001, at most 100, masks at the image's own size.
    say(f"predicting {len(images)} test images at evaluation settings (conf 0.001, max_det 100, retina_masks)")
    predictions, eval_times = {}, []
    for name, image in images.items():
        start = time.perf_counter()
        result = model.predict(image, conf=0.001, max_det=100, retina_masks=True, **common)[0]
        eval_times.append(time.perf_counter() - start)
        boxes = result.boxes
        entries = []
        if len(boxes):
            masks = result.masks.data.to(torch.uint8).cpu().numpy() if result.masks is not None else None
            rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0))) if masks is not None else None
            for k, (box, score, cls) in enumerate(zip(boxes.xyxy.tolist(), boxes.conf.tolist(), boxes.cls.tolist())):
                entry = {"xyxy": box, "score": score, "class": int(cls)}
                if rles is not None:
                    entry["rle"] = {"size": [int(v) for v in rles[k]["size"]],
                                    "counts": rles[k]["counts"].decode("ascii")}
                entries.append(entry)
        predictions[name] = entries
    threads_eval = torch.get_num_threads()

    # predict() at Ultralytics' defaults: conf 0.25, max_det 300, masks at the network's size. Named, since
    # the predictor keeps the last call's settings for whatever a call does not name.
    say("timing predict() at its default confidence 0.25")
    default_times = []
    for image in images.values():
        start = time.perf_counter()
        model.predict(image, conf=0.25, max_det=300, retina_masks=False, **common)
        default_times.append(time.perf_counter() - start)

    # The network alone, on the tensor the predictor makes of each image (letterboxed to imgsz).
    say("timing the network forward alone")
    predictor = model.predictor
    forward_times = []
    with torch.inference_mode():
        for image in images.values():
            tensor = predictor.preprocess([image])
            start = time.perf_counter()
            predictor.inference(tensor)
            forward_times.append(time.perf_counter() - start)

    Path(args.out).write_text(json.dumps({
        "ultralytics": ultralytics.__version__, "weights": args.weights, "imgsz": args.imgsz,
        "torch_threads": threads_eval, "torch_threads_end": torch.get_num_threads(),
        "timed_images": max(0, len(images) - WARMUP), "warmup_images": WARMUP,
        "ms_per_image": {"forward": median_ms(forward_times), "predict_conf_0.25": median_ms(default_times),
                         "predict_eval": median_ms(eval_times)},
        "predictions": predictions, "blocked": BLOCKED,
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-dir", required=True, help="Ultralytics' settings folder (YOLO_CONFIG_DIR)")
    parser.add_argument("--threads", default="default", help="'default' (Ultralytics' choice) or a number")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check")
    check.add_argument("--model", default="yolo26n-seg.yaml")
    train = sub.add_parser("train")
    train.add_argument("--model", default="yolo26n-seg.yaml")
    train.add_argument("--data-yaml", required=True)
    train.add_argument("--project", required=True)
    train.add_argument("--minutes", type=float, required=True)
    train.add_argument("--imgsz", type=int, default=320)
    train.add_argument("--batch", type=int, default=16)
    train.add_argument("--out", required=True)
    predict = sub.add_parser("predict")
    predict.add_argument("--weights", required=True)
    predict.add_argument("--images", required=True, help="JSON {file name: image path}")
    predict.add_argument("--imgsz", type=int, default=320)
    predict.add_argument("--out", required=True)
    args = parser.parse_args()
    {"check": cmd_check, "train": cmd_train, "predict": cmd_predict}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
