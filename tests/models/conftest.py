"""Fixtures of the pretrained-weights tests: no download allowed, or no network at all."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch.hub


@pytest.fixture
def no_download(monkeypatch):
    """Any download attempt fails the test: the cache must be used."""

    def fail(*args, **kwargs):
        raise AssertionError(f"tried to download {args[:1]}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fail)


@pytest.fixture
def offline(request, monkeypatch, tmp_path) -> Path:
    """An empty TORCH_HOME (returned) and no way to download: torch's hub function patched to fail as it
    does without a network; with ``@pytest.mark.parametrize("offline", ["patched", "refused"], indirect=True)``
    also the real download path, aimed at a closed local port so nothing leaves the machine."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    if getattr(request, "param", "patched") == "patched":
        def no_network(*args, **kwargs):
            raise urllib.error.URLError("no network")

        monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    else:
        for name in ("no_proxy", "NO_PROXY"):
            monkeypatch.delenv(name, raising=False)
        for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
            monkeypatch.setenv(name, "http://127.0.0.1:9")
    return tmp_path / "torch"
