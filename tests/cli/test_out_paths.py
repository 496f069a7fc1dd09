"""An output path where a file already is: a clear error naming it, exit 2, nothing lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from segtune.cli.main import main
from segtune.errors import ConfigError
from segtune.fileio import make_folder, write_text
from tests.conftest import make_mask_folder


@pytest.mark.parametrize("out", ["taken.txt", "taken.txt/run"])
def test_train_out_on_a_file_is_a_clear_error_before_any_work(tmp_path: Path, capsys, out: str) -> None:
    data = make_mask_folder(tmp_path / "data", n=3)
    taken = tmp_path / "taken.txt"
    taken.write_text("my notes")
    code = main(["train", "--data", str(data), "--out", str(tmp_path / out), "--weights", "none",
                 "--weights-backbone", "none", "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert str(taken) in err and "is a file, not a folder" in err and "Traceback" not in err
    assert taken.read_text() == "my notes"


def test_writing_under_a_file_names_it(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        make_folder(tmp_path / "f" / "preds")
    with pytest.raises(ConfigError, match=str(tmp_path / "f")):
        write_text(tmp_path / "f" / "a.json", "{}")
    assert (tmp_path / "f").read_text() == "x"
    assert make_folder(tmp_path / "new" / "deeper").is_dir()
