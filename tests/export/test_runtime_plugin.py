"""A runtime from outside segtune, registered through the public registry only: ``segtune benchmark`` lists it
beside the built-in ones with its AP and speed, and ``predict`` / ``evaluate`` take its files. Also: the
benchmark reads the checkpoint once, however many runtimes it exports to."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from segtune.cli.main import main
from segtune.runtimes import RUNTIMES, ExportRequest, InferenceOnly, Runtime, register_runtime
from tests.toy_model import ToySegmenter, toy_registered, train_toy


class StateDictRunner(InferenceOnly):
    """Runs a toy segmenter rebuilt from a state-dict file; counts its calls."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.calls = model.eval(), 0

    def __call__(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        self.calls += 1
        return self.model(images)


class StateDictRuntime(Runtime):
    """A toy format: the toy segmenter's state dict, rebuilt for the classes in the sidecar."""

    name = "statedict"
    suffix = ".sd"
    description = "a test's toy format"

    def export(self, model: torch.nn.Module, sample: torch.Tensor, path: Path, request: ExportRequest) -> str:
        torch.save(model.state_dict(), path)
        return "torch.save"

    def load(self, path: Path, meta: dict[str, Any], *, device: torch.device) -> Any:
        model = ToySegmenter(len(meta["classes"]) + 1)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return StateDictRunner(model)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory):
    with toy_registered():
        yield train_toy(tmp_path_factory.mktemp("toy"))


def test_segtune_benchmark_lists_a_registered_runtime_with_its_ap_and_speed(toy_run, capsys) -> None:
    data, run = toy_run
    register_runtime(StateDictRuntime())
    try:
        assert main(["benchmark", str(run), "--images", "2"]) == 0
        table = capsys.readouterr().out
        rows = {r["path"]: r for r in json.loads((run / "benchmark.json").read_text())["rows"]}
        assert list(rows)[:2] == ["eager", "eager-bf16"] and "statedict" in rows and "onnx" in rows
        toy, eager = rows["statedict"], rows["eager"]
        assert "| statedict | parity passed |" in table
        assert toy["status"] == "parity passed" and toy["size_mb"] is not None
        assert toy["segm_ap"] == pytest.approx(eager["segm_ap"]) and toy["segm_ap"] > 0.3
        assert toy["ms_per_image"] > 0 and toy["predict_ms_per_image"] > 0
        # Its files work wherever an exported file does.
        out = run / "weights" / "best.sd"
        assert out.is_file() and json.loads(Path(f"{out}.json").read_text())["format"] == "statedict"
        assert main(["evaluate", str(out)]) == 0
        assert main(["predict", str(out), str(data / "PNGImages"), "--out", str(run.parent / "sd-preds")]) == 0
        assert json.loads((run.parent / "sd-preds" / "predictions.json").read_text())
        assert main(["export", str(run), "--format", "statedict"]) == 0
    finally:
        RUNTIMES.unregister("statedict")


def test_segtune_benchmark_reads_the_checkpoint_once(toy_run, monkeypatch) -> None:
    _, run = toy_run
    loads: list[str] = []
    real = torch.load

    def counting(f, *args, **kwargs):
        loads.append(str(f))
        return real(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting)
    assert main(["benchmark", str(run), "--images", "1"]) == 0
    rows = json.loads((run / "benchmark.json").read_text())["rows"]
    assert [r["path"] for r in rows] == ["eager", "eager-bf16", "torchscript", "onnx", "openvino"]
    assert [Path(f).name for f in loads] == ["best.pt"]
