"""Owns fetching public data sets (Penn-Fudan) and unpacking them without leaving half a folder."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch.hub

from segtune.errors import DownloadError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetSource:
    url: str
    folder: str  # the top-level folder inside the archive
    required: tuple[str, ...]  # entries that must be inside ``folder``


SOURCES = {
    "pennfudan": DatasetSource(
        url="https://www.cis.upenn.edu/~jshi/ped_html/PennFudanPed.zip",
        folder="PennFudanPed",
        required=("PNGImages", "PedMasks"),
    ),
}


def download_dataset(name: str, dest: str | os.PathLike, *, url: str | None = None, progress: bool = True) -> Path:
    """Download and unpack data set ``name`` into ``dest``; return the unpacked folder.

    The archive goes to a temporary folder beside ``dest`` and is moved into place only once it
    is complete and checked, so a failed download leaves ``dest`` as it was.

    Raises:
        DownloadError: unknown name, network failure, not a zip, or a zip without the expected folders.
    """
    if name not in SOURCES:
        raise DownloadError(f"unknown data set '{name}'; choose one of: {', '.join(SOURCES)}")
    source = SOURCES[name]
    url = url or source.url
    dest = Path(dest)
    target = dest / source.folder
    if target.exists():
        raise DownloadError(f"{target}: already exists; remove it or choose another --dest")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"{dest}: cannot create the folder ({e})") from None
    with tempfile.TemporaryDirectory(prefix=".segtune-download-", dir=dest) as tmp:
        archive = Path(tmp) / "archive.zip"
        logger.info("downloading %s", url)
        try:
            # torch.hub's downloader: progress bar, temp file + rename, and the proxy settings users have.
            torch.hub.download_url_to_file(url, str(archive), progress=progress)
        except Exception as e:  # urllib raises URLError, HTTPError, socket errors, ...
            raise DownloadError(f"{url}: download failed ({e})") from None
        unpacked = Path(tmp) / "unpacked"
        try:
            with zipfile.ZipFile(archive) as zf:
                bad = zf.testzip()
                if bad is not None:
                    raise DownloadError(f"{url}: archive member {bad} is corrupt")
                for member in zf.namelist():  # refuse paths that would land outside the folder
                    resolved = (unpacked / member).resolve()
                    if not resolved.is_relative_to(unpacked.resolve()):
                        raise DownloadError(f"{url}: archive member {member} points outside the archive")
                zf.extractall(unpacked)
        except zipfile.BadZipFile:
            raise DownloadError(f"{url}: the downloaded file is not a zip archive") from None
        except (zlib.error, EOFError) as e:
            raise DownloadError(f"{url}: the archive is corrupt ({e})") from None
        root = unpacked / source.folder
        missing = [r for r in source.required if not (root / r).is_dir()]
        if missing:
            raise DownloadError(f"{url}: archive lacks {source.folder}/{missing[0]}/")
        shutil.move(str(root), str(target))
    logger.info("unpacked to %s", target)
    return target
