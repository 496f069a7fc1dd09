"""A full disk while writing (issue #38): one line naming the file and the space it needed, the previous
file kept whole, and a training run that stops with that line and can resume from its last good checkpoint."""

from __future__ import annotations

import errno
import io
import json
import os
from pathlib import Path

import pytest
import torch

from segtune import fileio
from segtune.checkpoint import load_checkpoint, save_checkpoint
from segtune.cli.main import main
from segtune.errors import WriteError
from tests.toy_model import toy_registered

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd to name a file")


class _FullDisk(io.FileIO):
    """A file on a disk that fills after ``room`` bytes: the next write fails as the kernel says."""

    room = 1000

    def write(self, data) -> int:
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch):
    """``full_disk(match)``: temporary files whose name contains ``match`` are written to a full disk."""
    real = os.fdopen

    def install(match: str) -> None:
        def fdopen(fd, mode="r", *args, **kwargs):
            name = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else ""
            if match in Path(name).name and "b" in mode:
                return _FullDisk(fd, "wb", closefd=True)
            return real(fd, mode, *args, **kwargs)

        monkeypatch.setattr(fileio.os, "fdopen", fdopen)

    return install


def test_a_checkpoint_on_a_full_disk_is_one_line_and_the_old_file_stays(tmp_path: Path, full_disk) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1, "weights": torch.zeros(10)})
    full_disk("last.pt")
    with pytest.raises(WriteError) as error:
        save_checkpoint(path, {"epoch": 2, "weights": torch.zeros(100_000)})  # 400 kB of tensors
    message = str(error.value)
    assert message.startswith(f"{path}: no space left on device (needed about 391 kB")  # not torch's "unexpected pos"
    assert message.endswith("the previous file is kept")
    assert torch.load(path, weights_only=True)["epoch"] == 1  # whole, and the old one
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left


def test_training_on_a_full_disk_stops_with_the_line_and_resumes_from_the_last_good_checkpoint(
        tmp_path: Path, full_disk, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from tests.conftest import make_mask_folder

    data = make_mask_folder(tmp_path / "data", n=8, empty=())
    run = tmp_path / "run"
    flags = ["--model", "toy_segmenter", "--max-iters-per-epoch", "2", "--batch-size", "2", "--test-size", "3",
             "--classes", "box", "--weights", "none", "--weights-backbone", "none", "--amp", "none",
             "--report", "false", "train.augment=[]", "train.tensorboard=false", "train.val_loss=false"]
    saves = []
    real_save = fileio.atomic_write

    def count_then_fill(path, *args, **kwargs):  # the disk fills after epoch 1's checkpoints
        saves.append(Path(path).name)
        if Path(path).name == "last.pt" and saves.count("last.pt") == 2:
            full_disk("last.pt")
        return real_save(path, *args, **kwargs)

    with toy_registered():
        monkeypatch.setattr("segtune.checkpoint.atomic_write", count_then_fill)
        assert main(["train", "--data", str(data), "--out", str(run), "--epochs", "3", *flags]) == 1
        err = capsys.readouterr().err
        assert f"segtune: error: {run / 'weights' / 'last.pt'}: no space left on device (needed about" in err
        assert "Traceback" not in err and "unexpected pos" not in err
        assert load_checkpoint(run / "weights" / "last.pt")["epoch"] == 1
        monkeypatch.undo()  # space freed
        assert main(["train", "--resume", str(run), "--epochs", "3"]) == 0
    history = json.loads((run / "metrics.json").read_text())
    assert [r["epoch"] for r in history] == [0, 1, 2]
