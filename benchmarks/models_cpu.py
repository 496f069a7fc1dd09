"""CPU time per training iteration of every registered model on real Penn-Fudan batches, next to COCO AP.

One command:  .venv/bin/python benchmarks/models_cpu.py [--min-size 512] [--iters 2] [--models a,b]

Each model is timed twice: in float32 with contiguous weights, and on segtune's fast path (what
``--amp auto --memory-format auto`` chooses here: bf16 autocast with channels-last weights on a CPU
that runs bfloat16 natively; on other CPUs it is float32 again, and the column says so).

Every model is built from random initialisation (no downloads), trained for one warm-up iteration
and then ``--iters`` timed iterations on the same Penn-Fudan batches (batch 2), all in this one
process, so the figures compare side by side. COCO box/mask/keypoint AP are torchvision's published
figures for each model's DEFAULT weights. Prints a Markdown table and writes
benchmarks/results/models_cpu.json.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from common import DATA, write_result

from segtune.cli.models import describe
from segtune.config import DataConfig, ModelConfig
from segtune.data import build_dataset, collate
from segtune.engine.amp import resolve_amp, setup_amp
from segtune.models import MODELS, build_from_config

NAME = "models_cpu.json"


def batches(data: str, n: int) -> list:
    """``n`` batches of 2 Penn-Fudan images with masks and boxes (keypoints made up for Keypoint R-CNN)."""
    ds = build_dataset(DataConfig(path=data), train=False)
    return [collate([ds[2 * i], ds[2 * i + 1]]) for i in range(n)]


def with_keypoints(targets: tuple) -> list[dict]:
    out = []
    for t in targets:
        boxes = t["boxes"]
        centre = torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1)
        kps = torch.cat([centre[:, None, :].repeat(1, 17, 1), torch.ones(len(boxes), 17, 1)], 2)
        out.append({**t, "keypoints": kps})
    return out


def measure(name: str, data: list, *, min_size: int, iters: int, fast: bool = False) -> float:
    # A custom-backbone family on mobilenet_v2: the tutorial's approach 2 (FPN on).
    backbone = "mobilenet_v2" if name in ("fasterrcnn", "maskrcnn", "keypointrcnn") else None
    cfg = ModelConfig(name=name, weights="none", weights_backbone="none", min_size=min_size,
                      max_size=int(min_size * 1333 / 800), backbone=backbone)
    spec = MODELS.get(name)
    model = build_from_config(cfg, 2, num_keypoints=17 if spec.has_keypoints else None)
    model.train()
    dtype = setup_amp("auto", torch.device("cpu"), model, "auto")[0] if fast else None
    autocast = (lambda: torch.autocast("cpu", dtype=dtype)) if dtype is not None else contextlib.nullcontext
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    times = []
    for i in range(iters + 1):
        images, targets = data[i % len(data)]
        targets = with_keypoints(targets) if spec.has_keypoints else list(targets)
        if not spec.has_masks:
            targets = [{k: v for k, v in t.items() if k != "masks"} for t in targets]
        start = time.perf_counter()
        with autocast():
            loss = sum(model(list(images), targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:  # the first iteration warms up allocators and kernels
            times.append(time.perf_counter() - start)
    return sum(times) / len(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--min-size", type=int, default=512)
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--models", default=None, help="comma-separated names (default: every registered model)")
    args = parser.parse_args()
    data = batches(args.data, args.iters + 1)
    fast_path, why = resolve_amp("auto", torch.device("cpu"))
    print(f"fast path here: {fast_path} ({why})", flush=True)
    rows = []
    for name in args.models.split(",") if args.models else MODELS.names():
        info = describe(MODELS.get(name))
        default = next((w for w in info.get("weights", []) if w.get("default")), None)
        s_per_iter = measure(name, data, min_size=args.min_size, iters=args.iters)
        fast = measure(name, data, min_size=args.min_size, iters=args.iters, fast=True)
        rows.append({"model": name, "task": info["task"], "parameters": info.get("parameters"),
                     "coco": default["metrics"] if default else {}, "s_per_iter": s_per_iter,
                     "s_per_iter_fast_path": fast})
        print(f"{name}: {s_per_iter:.2f} s/it float32, {fast:.2f} s/it fast path ({s_per_iter / fast:.2f}x)",
              flush=True)
    result = {"min_size": args.min_size, "batch": 2, "iters": args.iters,
              "fast_path": f"{fast_path} autocast{', channels-last weights' if fast_path != 'none' else ''} ({why})",
              "rows": rows}
    OUT = write_result(NAME, result)
    print(f"\nfast path: {result['fast_path']}")
    print(f"\n| model | task | params (M) | COCO AP (box / mask / kp) | CPU s/iter, batch 2, {args.min_size} px: "
          "float32 | fast path | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        c = r["coco"]
        ap = " / ".join(f"{c[k]:.1f}" if k in c else "-" for k in ("box_map", "mask_map", "kp_map"))
        params = f"{r['parameters'] / 1e6:.1f}" if r["parameters"] else "-"
        print(f"| `{r['model']}` | {r['task']} | {params} | {ap} | {r['s_per_iter']:.2f} | "
              f"{r['s_per_iter_fast_path']:.2f} | {r['s_per_iter'] / r['s_per_iter_fast_path']:.2f}x |")
    print(f"\nwrote {OUT}")


if __name__ == "__main__":
    main()
