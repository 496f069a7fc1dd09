"""Fitting a recipe to the data (model.adapt_to_data): the rules on made-up shapes, then a real run."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import yaml

from segtune.config import build_config
from segtune.data.check import check_dataset
from segtune.engine import configure
from segtune.engine.adapt import Shapes, fit_anchors, fit_detections, fit_input_size, kmeans_1d
from segtune.engine.trainer import Trainer
from segtune.errors import ConfigError
from tests.conftest import make_mask_folder, short_run_settings


def shapes(boxes: list[tuple[float, float, int, int]], instances: list[int] | None = None) -> Shapes:
    return Shapes(torch.tensor(boxes, dtype=torch.float64), instances or [1] * len(boxes))


def test_small_objects_in_large_images_get_a_larger_input_and_the_stride4_level() -> None:
    # 12-px objects in 2000x1500 images: at 320 px they would be about 2.6 px.
    s = shapes([(12 + k % 5, 12 + k % 7, 2000, 1500) for k in range(200)])
    min_size, max_size, why = fit_input_size(s, 320, 512)
    # Even at the largest size, 1024, the objects are still 12 x 1024 / 1500 = 8 px (and the 1500-px shorter
    # side allows inputs up to 3000): 1024, with the recipe's 512 / 320 = 1.6 kept: 1024 x 1.6 = 1638.4 -> 1638.
    assert min_size == 1024 and max_size == 1638
    assert "under 16 px" in why  # still small at the largest size tried: said
    sizes, ratios, levels, why = fit_anchors(s, min_size, max_size, 3, [32, 64, 128, 256], [1.0, 2.0, 3.0])
    assert levels == 4 and len(sizes) == 5 and sizes[0] <= 12  # objects of about 10 px at the input
    assert "stride-4 level added" in why


def test_large_objects_keep_the_recipes_input_and_images_are_not_blown_up() -> None:
    big = shapes([(200, 300, 640, 480)] * 50)
    assert fit_input_size(big, 320, 512)[:2] == (320, 512)
    # Small objects in small images: the input stops at twice the images' median shorter side.
    tiny = shapes([(3, 3, 200, 200)] * 50)
    assert fit_input_size(tiny, 320, 512)[0] == 384  # 400 px allowed: 384 is the last size under it


def test_kmeans_finds_three_clear_groups() -> None:
    values = torch.tensor([0.0] * 30 + [1.0] * 30 + [5.0] * 30) + torch.linspace(-0.1, 0.1, 90)
    centres = kmeans_1d(values, 3)
    assert torch.allclose(centres, torch.tensor([0.0, 1.0, 5.0], dtype=torch.float64), atol=0.1)


def test_anchors_follow_the_boxes_shapes_and_fit_better_than_the_fixed_ones() -> None:
    # Wide boxes (height / width about 0.33) of about 100 px at 320-px input: the fixed 1, 2, 3 ratios
    # (upright people) fit them badly.
    s = shapes([(170 + k % 20, 56 + k % 9, 640, 480) for k in range(300)])
    sizes, ratios, levels, why = fit_anchors(s, 320, 512, 3, [32, 64, 128, 256], [1.0, 2.0, 3.0])
    assert levels == 3 and len(sizes) == 4
    assert all(r < 0.5 for r in ratios)
    before, after = [float(x) for x in why.split("anchor ")[1].split(",")[0].split(" -> ")]
    assert after > before + 0.2


def test_busy_images_get_more_detections_but_the_same_roi_sample(tmp_path) -> None:
    cfg = configure(("test", {"train.preset": "cpu-scratch", "data.path": str(tmp_path)}))
    calm, _ = fit_detections(shapes([(50, 50, 640, 480)] * 10, [3] * 10), cfg.model)
    assert calm["model.box_detections_per_img"] == cfg.model.box_detections_per_img  # never below the recipe's
    busy, why = fit_detections(shapes([(20, 20, 640, 480)] * 10, [150] + [60] * 9), cfg.model)
    # At most 150 instances in one image: 1.5 x 150 = 225 detections, proposals twice that, 2 x 225 = 450
    # (both above cpu-scratch's 100 and 150).
    assert busy["model.box_detections_per_img"] == 225
    assert busy["model.rpn_post_nms_top_n_test"] == 450 and busy["model.rpn_pre_nms_top_n_test"] >= 450
    assert "model.box_batch_size_per_image" not in busy  # training's cost stays the recipe's
    assert "at most 150 instances" in why


def test_a_group_you_set_is_not_fitted(tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    groups = ["input_size", "anchors", "detections"]
    with caplog.at_level(logging.INFO, logger="segtune.train"):
        cfg = configure(("test", {"train.preset": "cpu-scratch", "data.path": str(tmp_path),
                                  "model.adapt_to_data": groups}), ("command line", {"model.min_size": 512}))
    assert cfg.model.adapt_to_data == ["anchors", "detections"] and cfg.model.min_size == 512
    assert "input_size not fitted to the data: set by you (model.min_size)" in caplog.text
    assert build_config(("flags", {"model.adapt_to_data": ["none"]})).model.adapt_to_data == []
    with pytest.raises(ConfigError, match="model.adapt_to_data: sizes unknown; choose from: input_size"):
        configure(("test", {"data.path": str(tmp_path), "model.adapt_to_data": ["sizes"]}))


def test_the_data_check_reports_object_sizes(tmp_path) -> None:
    data = make_mask_folder(tmp_path / "data", n=6)
    report = check_dataset(configure(("test", {"data.path": str(data), "data.check_cache": False})).data,
                           progress=False)
    assert len(report.box_sample) == report.instances
    assert {row[0] for row in report.box_sample} <= set(report.instance_counts)
    assert "object sizes (square root of the box area, " in report.format_text()


def test_a_run_fitted_to_its_data_keeps_the_fitted_model(tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    """A short run of a composed Mask R-CNN with every group fitted: the log says what and why, config.yaml
    holds the fitted values, and the checkpoint's model has the fitted anchors."""
    data = make_mask_folder(tmp_path / "data", n=8, size=(72, 96))
    settings = short_run_settings(data, tmp_path / "run", **{
        "model.name": "maskrcnn", "model.backbone": "resnet18", "model.fpn_channels": 32, "model.fpn_levels": 3,
        "model.anchor_sizes": [32, 64, 128, 256], "model.aspect_ratios": [1.0, 2.0, 3.0],
        "model.box_head_dim": 64, "model.mask_head_channels": 16, "model.mask_hidden": 16,
        "model.adapt_to_data": ["input_size", "anchors", "detections"]})
    with caplog.at_level(logging.INFO, logger="segtune.train"):
        # The Python API: a config built directly fits every group it names (configure() would leave out
        # the groups whose settings these layers give, as tested above).
        trainer = Trainer(build_config(("test", settings)))
        result = trainer.fit()
    assert "fitted to the data (model.adapt_to_data: input_size, anchors, detections;" in caplog.text
    assert "  anchors: model.anchor_sizes 32,64,128,256 -> " in caplog.text
    # Said while the run is set up, before its folder exists, and still in its train.log.
    log = (result.run_dir / "train.log").read_text()
    assert "fitted to the data (model.adapt_to_data" in log and "number formats:" in log
    assert log.index("fitted to the data") < log.index("run folder:")
    written = yaml.safe_load((result.run_dir / "config.yaml").read_text())["model"]
    fitted = trainer.cfg.model
    assert written["anchor_sizes"] == fitted.anchor_sizes != [32, 64, 128, 256]
    assert written["aspect_ratios"] == fitted.aspect_ratios
    assert len(fitted.anchor_sizes) == fitted.fpn_levels + 1
    # The input stays at 64 px: the next size tried (320) is more than twice the images' 72-px side.
    assert fitted.min_size == 64
    generator = trainer.model.rpn.anchor_generator
    assert [s[0] for s in generator.sizes] == fitted.anchor_sizes
    assert [round(r, 2) for r in generator.aspect_ratios[0]] == fitted.aspect_ratios
    assert math.isfinite(result.last_metrics["bbox"]["AP"])
