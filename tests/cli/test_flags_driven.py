"""Flags no other test drove (issue #37: paths no test drives), each driven through ``segtune`` and checked by its
effect: the output, the files of a run, or the optimiser / schedule the resolved config builds. Training runs
use the toy segmenter of tests/toy_model.py (two steps in about a second)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from segtune.cli.main import build_parser, main
from segtune.cli.train import user_layers
from segtune.engine import configure, parts
from segtune.version import __version__
from tests.conftest import make_mask_folder
from tests.toy_model import toy_registered

TOY = ["--model", "toy_segmenter", "--epochs", "1", "--max-iters-per-epoch", "2", "--batch-size", "2",
       "--test-size", "3", "--classes", "box", "--weights", "none", "--weights-backbone", "none", "--lr", "0.001",
       "--amp", "none", "--report", "false", "train.augment=[]", "train.tensorboard=false", "train.val_loss=false"]


@pytest.fixture(scope="module")
def toy():
    with toy_registered():
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mask_folder(tmp_path_factory.mktemp("flags") / "data", n=8, empty=())


def _train(data: Path, out: Path, *flags: str, top: tuple[str, ...] = ()) -> Path:
    assert main([*top, "train", "--data", str(data), "--out", str(out), *TOY, *flags]) == 0
    return out


@pytest.fixture(scope="module")
def runs(toy, data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three toy runs: split seeds 1, 2 and 1 again; the first quiet, with --sync-bn and evaluation flags."""
    root = tmp_path_factory.mktemp("flag-runs")
    return {
        "seed1": _train(data, root / "seed1", "--split-seed", "1", "--sync-bn", "true", "--eval-batch-size", "2",
                        "--mask-threshold", "0.4", top=("--quiet",)),
        "seed2": _train(data, root / "seed2", "--split-seed", "2"),
        "seed1-again": _train(data, root / "seed1-again", "--split-seed", "1"),
    }


def test_version_prints_the_version_and_exits_0(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"segtune {__version__}"


def test_debug_shows_the_traceback_of_an_error_and_without_it_only_one_line(capsys) -> None:
    assert main(["train", "lr0.01"]) == 2  # an override without '=': a ConfigError
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["segtune: error: override 'lr0.01' must be written section.key=value"]
    assert main(["--debug", "train", "lr0.01"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):") and "ConfigError" in err
    assert err.rstrip().endswith("segtune: error: override 'lr0.01' must be written section.key=value")


def test_split_seed_picks_the_split_and_the_same_seed_the_same_one(runs: dict[str, Path]) -> None:
    split = {name: json.loads((run / "split.json").read_text()) for name, run in runs.items()}
    assert split["seed1"]["test"] == split["seed1-again"]["test"]
    assert split["seed1"]["train"] == split["seed1-again"]["train"]
    assert sorted(split["seed1"]["test"]) != sorted(split["seed2"]["test"])
    assert len(split["seed1"]["test"]) == len(split["seed2"]["test"]) == 3


def test_quiet_keeps_information_off_the_terminal_but_in_the_log(runs: dict[str, Path], toy, data: Path,
                                                                  tmp_path: Path, capsys) -> None:
    quiet = _train(data, tmp_path / "quiet", "--max-iters-per-epoch", "1", top=("--quiet",))
    err_quiet = capsys.readouterr().err
    loud = _train(data, tmp_path / "loud", "--max-iters-per-epoch", "1")
    err_loud = capsys.readouterr().err
    assert "split: " in err_loud and "schedule: " in err_loud
    assert "split: " not in err_quiet and "schedule: " not in err_quiet and "Epoch: [0]" not in err_quiet
    assert all(line.startswith(("WARNING", "ERROR")) or not line.strip() or line.startswith(" ")
               for line in err_quiet.splitlines()), err_quiet
    for run in (quiet, loud):  # the run's own log keeps everything either way
        assert "split: " in (run / "train.log").read_text()


def test_sync_bn_on_one_cpu_process_trains_and_is_recorded(runs: dict[str, Path]) -> None:
    # One process: wrap_ddp returns the model unchanged, so --sync-bn is a no-op (no DDP, nothing to sync);
    # nothing says so today (the CPU warning in wrap_ddp is only reached by a distributed run).
    run = runs["seed1"]
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["train"]["sync_bn"] is True
    assert json.loads((run / "metrics.json").read_text())[-1]["train"]["iters"] == 2


def test_evaluation_flags_reach_the_run_config(runs: dict[str, Path]) -> None:
    cfg = yaml.safe_load((runs["seed1"] / "config.yaml").read_text())
    assert cfg["eval"]["batch_size"] == 2 and cfg["eval"]["mask_threshold"] == 0.4
    assert cfg["data"]["split_seed"] == 1
    default = yaml.safe_load((runs["seed2"] / "config.yaml").read_text())
    assert default["eval"]["batch_size"] == 1 and default["eval"]["mask_threshold"] == 0.5
    assert not (runs["seed2"] / "report.html").exists()  # --report false


def test_evaluate_workers_give_the_same_metrics(runs: dict[str, Path], tmp_path: Path) -> None:
    run = runs["seed2"]
    assert main(["evaluate", str(run), "--workers", "0", "--out", str(tmp_path / "w0.json")]) == 0
    assert main(["evaluate", str(run), "--workers", "1", "--batch-size", "2", "--out", str(tmp_path / "w1.json")]) == 0
    w0, w1 = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("w0", "w1"))
    assert w0["num_images"] == w1["num_images"] == 3
    for iou_type in w0["metrics"]:
        assert w0["metrics"][iou_type]["AP"] == pytest.approx(w1["metrics"][iou_type]["AP"], abs=1e-6)


def test_predict_save_txt_and_overwrite(runs: dict[str, Path], data: Path, tmp_path: Path) -> None:
    images = sorted((data / "PNGImages").iterdir())[:2]
    out = tmp_path / "preds"
    args = ["predict", str(runs["seed2"]), *map(str, images), "--out", str(out), "--score-threshold", "0.3"]
    assert main([*args, "--save-txt"]) == 0
    labels = sorted((out / "labels").glob("*.txt"))
    assert [p.stem for p in labels] == [p.stem for p in images]
    rows = [line.split() for line in labels[0].read_text().splitlines()]
    assert rows and all(r[0] == "0" and len(r) >= 7 and len(r) % 2 == 1 for r in rows)  # class, then x y pairs
    assert all(0.0 <= float(v) <= 1.0 for r in rows for v in r[1:])  # normalised
    shutil.rmtree(out / "labels")
    assert main([*args, "--save-txt"]) == 0  # pictures already there: skipped, nothing written again
    assert not list(out.glob("labels/*.txt"))
    assert main([*args, "--save-txt", "--overwrite"]) == 0  # predicted again
    assert sorted(p.stem for p in (out / "labels").glob("*.txt")) == [p.stem for p in images]


@pytest.fixture(scope="module")
def moved_run(toy, data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(run, data)``: a toy run with its report files (module scope: before the suite's fixture that turns
    the report hook off), whose data set was then moved."""
    root = tmp_path_factory.mktemp("moved")
    shutil.copytree(data, root / "first")
    run = _train(root / "first", root / "run", "--max-iters-per-epoch", "1", "--report", "true")
    (root / "first").rename(root / "moved")
    return run, root / "moved"


def test_report_data_finds_a_moved_data_set(moved_run: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    run, moved = moved_run
    assert (run / "test_detections.json").is_file()
    capsys.readouterr()
    assert main(["report", str(run), "--out", str(tmp_path / "without.html")]) != 0  # the data set is gone
    assert "segtune: error:" in capsys.readouterr().err and not (tmp_path / "without.html").exists()
    assert main(["report", str(run), "--data", str(moved), "--out", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    assert page.lstrip().lower().startswith("<!doctype html") and "<img" in page


def test_data_show_seed_picks_the_images(data: Path, tmp_path: Path) -> None:
    def show(seed: int) -> bytes:
        out = tmp_path / f"grid{seed}.png"
        assert main(["data", "show", str(data), "--out", str(out), "--count", "1", "--columns", "1",
                     "--seed", str(seed)]) == 0
        return out.read_bytes()

    grids = {seed: show(seed) for seed in (-1, 0, 1, 2, 3)}
    assert show(1) == grids[1]  # the same seed, the same image
    assert len(set(grids.values())) > 1  # other seeds, other images


def _renamed_layout(data: Path, root: Path) -> Path:
    """``data`` with its masks in ``gt/`` named ``<stem>-seg.png`` (neither found by auto)."""
    folder = root / "renamed"
    shutil.copytree(data / "PNGImages", folder / "pics")
    (folder / "gt").mkdir()
    for mask in (data / "PedMasks").iterdir():
        shutil.copy(mask, folder / "gt" / mask.name.replace("_mask", "-seg"))
    return folder


@pytest.mark.parametrize("command", ["check", "show", "convert"])
def test_data_commands_take_the_mask_folder_flags(data: Path, tmp_path: Path, command: str, capsys) -> None:
    folder = _renamed_layout(data, tmp_path)
    layout = ["--images-dir", "pics", "--masks-dir", "gt", "--mask-suffix=-seg"]
    out = {"check": [], "show": ["--out", str(tmp_path / "g.png"), "--count", "2"],
           "convert": [str(tmp_path / "c.json")]}[command]
    assert main(["data", command, str(folder), *out, *layout]) == 0
    printed = capsys.readouterr().out
    if command == "check":
        assert "images: 8\ninstances: 12\n" in printed and "result: OK" in printed, printed
    if command == "convert":
        coco = json.loads((tmp_path / "c.json").read_text())
        assert len(coco["images"]) == 8 and len(coco["annotations"]) == 12
    if command == "show":
        with Image.open(tmp_path / "g.png") as grid:
            assert grid.size[0] > 0 and grid.size[1] > 0


def test_data_check_class_map_names_the_classes(data: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "map.yaml").write_text("classes: [big, small]\nvalues: {1: big, 2: small}\n")
    class_map = ["--class-map", str(tmp_path / "map.yaml")]
    assert main(["data", "convert", str(data), str(tmp_path / "c.json"), *class_map]) == 0
    coco = json.loads((tmp_path / "c.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["big", "small"]
    assert {a["category_id"] for a in coco["annotations"]} == {c["id"] for c in coco["categories"]}
    assert main(["data", "check", str(data), "--class-map", str(tmp_path / "map.yaml")]) == 0
    assert "small" in capsys.readouterr().out


def test_data_check_image_root_finds_the_images_of_a_coco_file(data: Path, tmp_path: Path, capsys) -> None:
    assert main(["data", "convert", str(data), str(data.parent / "inplace.json")]) == 0  # names relative to data/..
    elsewhere = tmp_path / "ann"
    elsewhere.mkdir()
    shutil.move(data.parent / "inplace.json", elsewhere / "instances.json")
    capsys.readouterr()
    assert main(["data", "check", str(elsewhere / "instances.json"), "--image-root", str(data.parent)]) == 0
    assert "images: 8\n" in capsys.readouterr().out
    assert main(["data", "check", str(elsewhere / "instances.json")]) != 0  # without it: images not found


def _config(*flags: str):
    return configure(*user_layers(build_parser().parse_args(["train", *flags])))


def test_optimiser_flags_reach_the_optimiser() -> None:
    model = torch.nn.Linear(2, 2)
    cfg = _config("--optimizer", "sgd", "--lr", "0.01", "--momentum", "0.9", "--nesterov", "true", "--batch-size", "2",
                  "--lr-scale-with-batch", "8")
    optimizer = parts.build_optimizer(cfg, model, accumulate=1, world_size=1)
    group = optimizer.param_groups[0]
    assert group["nesterov"] is True and group["momentum"] == 0.9
    assert group["lr"] == pytest.approx(0.01 * 2 / 8)  # linear scaling from a batch of 8 to one of 2
    plain = parts.build_optimizer(_config("--lr", "0.01"), model, accumulate=1, world_size=1)
    assert plain.param_groups[0]["nesterov"] is False


def _lrs(cfg, steps: int, per_epoch: int = 2) -> list[float]:
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1.0)
    scheduler = parts.build_schedule(cfg, optimizer, steps_per_epoch=per_epoch)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_schedule_flags_shape_the_learning_rate() -> None:
    step = _lrs(_config("--lr", "1", "--epochs", "6", "--schedule", "step", "--lr-step", "2", "--lr-gamma", "0.5",
                        "--warmup-iters", "0"), 12)
    assert step == pytest.approx([1, 1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25])
    multi = _lrs(_config("--lr", "1", "--epochs", "4", "--schedule", "multistep", "--lr-milestones", "[1, 3]",
                         "--lr-gamma", "0.1", "--warmup-iters", "0"), 8)
    assert multi == pytest.approx([1, 1, 0.1, 0.1, 0.1, 0.1, 0.01, 0.01])
    warm = _lrs(_config("--lr", "1", "--epochs", "2", "--schedule", "step", "--warmup-iters", "4",
                        "--warmup-factor", "0.2"), 5)
    assert warm[0] == pytest.approx(0.2) and warm[4] == pytest.approx(1.0) and warm[0] < warm[1] < warm[2] < warm[3]


def test_augmentation_and_model_flags_reach_the_config() -> None:
    cfg = _config("--hflip-prob", "0.25", "--lsj-scale", "[0.5, 1.5]", "--fpn", "false",
                  "--trainable-backbone-layers", "2", "--masks-dir", "gt", "--mask-suffix=-seg",
                  "--class-map", "map.yaml", "--image-root", "imgs")
    assert cfg.train.hflip_prob == 0.25 and cfg.train.lsj_scale == [0.5, 1.5]
    assert cfg.model.fpn is False and cfg.model.trainable_backbone_layers == 2
    assert (cfg.data.masks_dir, cfg.data.mask_suffix, cfg.data.class_map, cfg.data.image_root) == \
        ("gt", "-seg", "map.yaml", "imgs")
    with pytest.raises(Exception, match="hflip_prob"):
        _config("--hflip-prob", "1.5")
