"""CPU time per training iteration of every registered model on real Penn-Fudan batches, next to COCO AP.

One command:  .venv/bin/python benchmarks/models_cpu.py [--min-size 512] [--iters 2]

Every model is built from random initialisation (no downloads), trained for one warm-up iteration
and then ``--iters`` timed iterations on the same Penn-Fudan batches (batch 2), all in this one
process, so the figures compare side by side. COCO box/mask/keypoint AP are torchvision's published
figures for each model's DEFAULT weights. Prints a Markdown table and writes
benchmarks/results/models_cpu.json.
"""

from __future__ import annotations

import argparse
import time

import torch

from common import DATA, write_result

from segtune.cli.models import describe
from segtune.config import DataConfig, ModelConfig
from segtune.data import build_dataset, collate
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


def measure(name: str, data: list, *, min_size: int, iters: int) -> float:
    # A custom-backbone family on mobilenet_v2: the tutorial's approach 2 (FPN on).
    backbone = "mobilenet_v2" if name in ("fasterrcnn", "maskrcnn", "keypointrcnn") else None
    cfg = ModelConfig(name=name, weights="none", weights_backbone="none", min_size=min_size,
                      max_size=int(min_size * 1333 / 800), backbone=backbone)
    spec = MODELS.get(name)
    model = build_from_config(cfg, 2, num_keypoints=17 if spec.has_keypoints else None)
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    times = []
    for i in range(iters + 1):
        images, targets = data[i % len(data)]
        targets = with_keypoints(targets) if spec.has_keypoints else list(targets)
        if not spec.has_masks:
            targets = [{k: v for k, v in t.items() if k != "masks"} for t in targets]
        start = time.perf_counter()
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
    args = parser.parse_args()
    data = batches(args.data, args.iters + 1)
    rows = []
    for name in MODELS.names():
        info = describe(MODELS.get(name))
        default = next((w for w in info.get("weights", []) if w.get("default")), None)
        s_per_iter = measure(name, data, min_size=args.min_size, iters=args.iters)
        rows.append({"model": name, "task": info["task"], "parameters": info.get("parameters"),
                     "coco": default["metrics"] if default else {}, "s_per_iter": s_per_iter})
        print(f"{name}: {s_per_iter:.2f} s/it", flush=True)
    result = {"min_size": args.min_size, "batch": 2,
              "iters": args.iters, "rows": rows}
    OUT = write_result(NAME, result)
    print(f"\n| model | task | params (M) | COCO AP (box / mask / kp) | CPU s/iter, batch 2, {args.min_size} px |")
    print("|---|---|---|---|---|")
    for r in rows:
        c = r["coco"]
        ap = " / ".join(f"{c[k]:.1f}" if k in c else "-" for k in ("box_map", "mask_map", "kp_map"))
        params = f"{r['parameters'] / 1e6:.1f}" if r["parameters"] else "-"
        print(f"| `{r['model']}` | {r['task']} | {params} | {ap} | {r['s_per_iter']:.2f} |")
    print(f"\nwrote {OUT}")


if __name__ == "__main__":
    main()
