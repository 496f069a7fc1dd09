"""download_dataset and ``segtune data download`` against a local HTTP server serving test-made zips."""

from __future__ import annotations

import functools
import io
import logging
import threading
import warnings
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segtune.data.download import download_dataset
from segtune.data.masks_folder import MaskFolderDataset
from segtune.errors import DownloadError


def _png(value: int, mode: str = "RGB") -> bytes:
    shape = (6, 8, 3) if mode == "RGB" else (6, 8)
    arr = np.full(shape, value, np.uint8)
    if mode == "L":
        arr[1:4, 2:6] = 1
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


IMAGE_BYTES = _png(90)
MASK_BYTES = _png(0, "L")


def _zip(path: Path, *, masks: bool = True, extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("PennFudanPed/PNGImages/x.png", IMAGE_BYTES)
        if masks:
            zf.writestr("PennFudanPed/PedMasks/x_mask.png", MASK_BYTES)
        zf.writestr("PennFudanPed/readme.txt", "test archive\n")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - keep the test output clean
        pass


@pytest.fixture
def server(tmp_path: Path, monkeypatch):
    """Serve ``tmp_path/www`` on 127.0.0.1 at a free port; yield ``(folder, base_url)``."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    www = tmp_path / "www"
    www.mkdir()
    _zip(www / "good.zip")
    _zip(www / "nomasks.zip", masks=False)
    _zip(www / "escape.zip", extra={"../escaped.txt": b"outside"})
    (www / "notzip.zip").write_text("<html>this is an error page, not a zip</html>")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield www, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_unpacks_into_dest(server, tmp_path: Path):
    _, base = server
    dest = tmp_path / "dest" / "deeper"  # created if missing
    folder = download_dataset("pennfudan", dest, url=f"{base}/good.zip", progress=False)
    assert folder == dest / "PennFudanPed"
    assert (folder / "PNGImages" / "x.png").read_bytes() == IMAGE_BYTES
    assert (folder / "PedMasks" / "x_mask.png").read_bytes() == MASK_BYTES
    assert (folder / "readme.txt").read_text() == "test archive\n"
    assert _entries(dest) == ["PennFudanPed"]  # no temp folder or archive left beside it
    ds = MaskFolderDataset(folder)
    assert ds.files == ["x.png"] and ds[0][1]["boxes"].tolist() == [[2.0, 1.0, 6.0, 4.0]]


def test_second_download_refuses_to_overwrite(server, tmp_path: Path):
    _, base = server
    dest = tmp_path / "dest"
    download_dataset("pennfudan", dest, url=f"{base}/good.zip", progress=False)
    (dest / "PennFudanPed" / "mine.txt").write_text("keep me")
    with pytest.raises(DownloadError) as e:
        download_dataset("pennfudan", dest, url=f"{base}/good.zip", progress=False)
    assert str(dest / "PennFudanPed") in str(e.value) and "already exists" in str(e.value)
    assert (dest / "PennFudanPed" / "mine.txt").read_text() == "keep me"
    assert _entries(dest) == ["PennFudanPed"]


@pytest.mark.parametrize(
    "name, words",
    [
        ("notzip.zip", "not a zip"),
        ("nomasks.zip", "PennFudanPed/PedMasks/"),
        ("missing.zip", "download failed"),  # 404
        ("escape.zip", "outside the archive"),
    ],
    ids=["not-a-zip", "no-masks-folder", "404", "path-escape"],
)
def test_failed_download_leaves_dest_as_it_was(server, tmp_path: Path, name: str, words: str):
    _, base = server
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "other.txt").write_text("unrelated")
    url = f"{base}/{name}"
    with pytest.raises(DownloadError) as e:
        download_dataset("pennfudan", dest, url=url, progress=False)
    assert url in str(e.value) and words in str(e.value)
    assert _entries(dest) == ["other.txt"]  # no PennFudanPed, no .segtune-download-* temp folder
    assert not (tmp_path / "escaped.txt").exists() and not (dest / "escaped.txt").exists()


def test_404_message_mentions_the_http_error(server, tmp_path: Path):
    _, base = server
    with pytest.raises(DownloadError, match="404"):
        download_dataset("pennfudan", tmp_path / "dest", url=f"{base}/missing.zip", progress=False)


def test_unknown_data_set(tmp_path: Path):
    with pytest.raises(DownloadError, match="unknown data set 'coco'.*pennfudan"):
        download_dataset("coco", tmp_path / "dest", url="http://127.0.0.1:9/x.zip", progress=False)
    assert not (tmp_path / "dest").exists()


# ---------------------------------------------------------------- the CLI


@pytest.fixture
def cli(monkeypatch):
    """Call ``segtune.cli.main.main``; put back the logging state that its set-up changes."""
    from segtune.cli.main import main

    logger = logging.getLogger("segtune")
    state = (list(logger.handlers), logger.level, logger.propagate)
    with warnings.catch_warnings():
        yield main
    logger.handlers[:], logger.level, logger.propagate = state
    logging.captureWarnings(False)


def test_cli_download(server, tmp_path: Path, cli, capsys):
    _, base = server
    dest = tmp_path / "dest"
    assert cli(["data", "download", "pennfudan", "--dest", str(dest), "--url", f"{base}/good.zip"]) == 0
    out = capsys.readouterr().out
    assert f"pennfudan is in {dest / 'PennFudanPed'}" in out
    assert (dest / "PennFudanPed" / "PedMasks" / "x_mask.png").is_file()


def test_cli_download_failure(server, tmp_path: Path, cli, capsys):
    _, base = server
    dest = tmp_path / "dest"
    url = f"{base}/notzip.zip"
    assert cli(["data", "download", "pennfudan", "--dest", str(dest), "--url", url]) == 1
    err = capsys.readouterr().err
    assert "segtune: error:" in err and url in err and "not a zip" in err
    assert _entries(dest) == []


def test_cli_download_twice(server, tmp_path: Path, cli, capsys):
    _, base = server
    args = ["data", "download", "pennfudan", "--dest", str(tmp_path / "dest"), "--url", f"{base}/good.zip"]
    assert cli(args) == 0
    capsys.readouterr()
    assert cli(args) == 1
    assert "segtune: error:" in capsys.readouterr().err


# ---------------------------------------------------------------- corrupt archives and bad destinations


def _corrupt_first_member(path: Path) -> Path:
    """Overwrite the first data byte of the zip's first member; the central directory stays valid."""
    with zipfile.ZipFile(path) as zf:
        info = zf.infolist()[0]
    data = bytearray(path.read_bytes())
    name_len = int.from_bytes(data[info.header_offset + 26: info.header_offset + 28], "little")
    extra_len = int.from_bytes(data[info.header_offset + 28: info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    # deflated: BTYPE = 11, a reserved block type, always invalid; stored: the CRC no longer matches
    data[start] = 0xFF if data[start] != 0xFF else 0x00
    path.write_bytes(bytes(data))
    return path


def test_corrupt_stored_member_is_a_download_error(server, tmp_path: Path):
    www, base = server
    with zipfile.ZipFile(_corrupt_first_member(_zip(www / "stored.zip"))) as zf:
        assert zf.infolist()[0].compress_type == zipfile.ZIP_STORED
    dest = tmp_path / "dest"
    url = f"{base}/stored.zip"
    with pytest.raises(DownloadError) as e:
        download_dataset("pennfudan", dest, url=url, progress=False)
    assert url in str(e.value) and "PennFudanPed/PNGImages/x.png is corrupt" in str(e.value)
    assert _entries(dest) == []


def test_corrupt_deflated_member_is_a_download_error(server, tmp_path: Path):
    www, base = server
    with zipfile.ZipFile(www / "deflated.zip", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("PennFudanPed/PNGImages/x.png", IMAGE_BYTES * 4)
        zf.writestr("PennFudanPed/PedMasks/x_mask.png", MASK_BYTES)
    _corrupt_first_member(www / "deflated.zip")
    dest = tmp_path / "dest"
    with pytest.raises(DownloadError, match="corrupt"):
        download_dataset("pennfudan", dest, url=f"{base}/deflated.zip", progress=False)
    assert _entries(dest) == []


def test_dest_that_is_a_file_is_a_download_error(tmp_path: Path):
    dest = tmp_path / "a-file"
    dest.write_text("not a folder")
    with pytest.raises(DownloadError) as e:
        download_dataset("pennfudan", dest, url="http://127.0.0.1:9/never-fetched.zip", progress=False)
    assert str(dest) in str(e.value)
