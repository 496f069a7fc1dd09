"""Proof that the browser harness (tests/report/browser.py) catches what it is meant to catch.

Each test writes a tiny HTML page into tmp_path: a good one must pass every check, and pages with a JS
error, a broken image or nothing on them must fail the matching check.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .browser import Browser, check_screenshot


def png_data_uri(width: int = 240, height: int = 160, seed: int = 0) -> str:
    """A ``data:image/png;base64,...`` URI of a noisy RGB image (clearly not blank)."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def write_page(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{name}</title></head>"
                    f"<body>{body}</body></html>", encoding="utf-8")
    return path


GOOD_BODY = """
<h1>Report</h1><p>Some text about the run.</p>
<img id="first" src="{img}" width="240" height="160">
<div style="height: 3000px"></div>
<img id="lazy" loading="lazy" src="{img2}" width="240" height="160">
<p><button id="next">Next</button> <span id="counter">Page 1 / 3</span></p>
<script>
  let page = 1;
  document.getElementById('next').addEventListener('click', () => {{
    page = page % 3 + 1;
    document.getElementById('counter').textContent = `Page ${{page}} / 3`;
  }});
</script>
"""


def test_good_page_passes_every_check(browser: Browser, tmp_path: Path) -> None:
    page = browser.open(write_page(tmp_path, "good.html",
                                   GOOD_BODY.format(img=png_data_uri(), img2=png_data_uri(seed=1))))
    assert page.console_errors() == []
    assert page.broken_images() == []  # the lazy image far below the fold is forced to load
    assert page.count("img") == 2
    assert page.text("#counter") == "Page 1 / 3"
    page.click("#next")
    assert page.text("#counter") == "Page 2 / 3"
    assert page.js("return arguments[0] + arguments[1]", 2, 3) == 5
    assert not page.is_error_page()
    shot = page.screenshot(tmp_path / "good.png")
    check_screenshot(shot, page=page)
    with Image.open(shot) as image:
        assert image.size[1] > 3000  # the whole page, not just the 1000 px viewport
    assert page.console_errors() == []


def test_js_errors_are_reported(browser: Browser, tmp_path: Path) -> None:
    page = browser.open(write_page(tmp_path, "error.html", """
        <p>text</p><button id="b" onclick="throw new Error('bang on click')">b</button>
        <script>throw new Error('boom')</script>"""))
    errors = page.console_errors()
    assert len(errors) == 1 and "boom" in errors[0], errors
    page.click("#b")
    assert any("bang on click" in e for e in page.console_errors()), page.console_errors()


def test_broken_image_is_reported(browser: Browser, tmp_path: Path) -> None:
    page = browser.open(write_page(tmp_path, "broken.html", f"""
        <img src="{png_data_uri(32, 32)}"><img src="data:image/png;base64,AAAA">"""))
    assert page.broken_images() == ["data:image/png;base64,AAAA"]


def test_blank_page_screenshot_fails(browser: Browser, tmp_path: Path) -> None:
    page = browser.open(write_page(tmp_path, "blank.html", ""))
    assert page.console_errors() == [] and page.broken_images() == []
    with pytest.raises(AssertionError, match="looks blank"):
        check_screenshot(page.screenshot(tmp_path / "blank.png"))


def test_error_page_is_detected(browser: Browser, tmp_path: Path) -> None:
    missing = tmp_path / "missing.html"
    with pytest.raises(FileNotFoundError):
        browser.open(missing)
    page = browser.open_url(missing.as_uri())
    assert page.is_error_page()
    with pytest.raises(AssertionError, match="error page"):
        check_screenshot(page.screenshot(tmp_path / "missing.png"), page=page)


def test_check_screenshot_without_browser(tmp_path: Path) -> None:
    """The pixel checks alone (runs even where Chromium is missing)."""
    Image.new("RGB", (300, 200), "white").save(tmp_path / "white.png")
    with pytest.raises(AssertionError, match="looks blank"):
        check_screenshot(tmp_path / "white.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)).save(
        tmp_path / "noise.png")
    check_screenshot(tmp_path / "noise.png")
    with pytest.raises(AssertionError, match="missing"):
        check_screenshot(tmp_path / "absent.png")
