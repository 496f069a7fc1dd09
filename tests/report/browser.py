"""Headless-Chromium harness for testing HTML pages such as segtune's ``report.html``.

``Browser`` starts Debian's Chromium through chromedriver (Selenium); ``Browser.open(path)`` loads a local
file and returns a ``Page`` with the checks a report test needs: console errors, broken images, clicks,
text, element counts, screenshots. ``check_screenshot`` rejects blank screenshots (and, given the page,
Chromium's own error page).

Selenium is imported only when a ``Browser`` is made, so this module imports without it (the ``browser``
fixture in conftest.py then skips the tests with the reason).
"""

from __future__ import annotations

import base64
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WINDOW = (1400, 1000)
# Tallest full-page screenshot taken; a taller page is cut off here (keeps PNGs and memory bounded).
MAX_SCREENSHOT_HEIGHT = 16384


class Browser:
    """One headless Chromium (Selenium Chrome driver) that opens local HTML files as ``Page`` objects.

    Starting it takes a second or two, so tests share one (the session-scoped ``browser`` fixture).
    Only the page opened last is live: opening another navigates the same tab.
    """

    def __init__(self, binary: Path = CHROMIUM, driver: Path = CHROMEDRIVER,
                 window: tuple[int, int] = WINDOW, timeout: float = 30.0):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = str(binary)
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    f"--window-size={window[0]},{window[1]}", "--hide-scrollbars"):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console messages via get_log
        self.timeout = timeout
        self.driver = webdriver.Chrome(options=options, service=Service(executable_path=str(driver)))
        self.driver.set_page_load_timeout(timeout)
        self._page: Page | None = None

    def open(self, path: Path) -> Page:
        """Load the local file ``path`` and wait until ``document.readyState == 'complete'``.

        Raises FileNotFoundError if ``path`` is not a file (rather than returning Chromium's error page).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no such file to open in the browser: {path}")
        return self.open_url(path.resolve().as_uri())

    def open_url(self, url: str) -> Page:
        """Load ``url`` (any URL Chromium takes) and wait for the document to be complete."""
        from selenium.webdriver.support.ui import WebDriverWait

        if self._page is not None:
            self._page._collect_log()  # keep the previous page's messages with it, not the next one
        self.driver.get_log("browser")  # drop anything left over from earlier pages
        self.driver.get(url)
        WebDriverWait(self.driver, self.timeout, poll_frequency=0.05).until(
            lambda d: d.execute_script("return document.readyState") == "complete")
        self._page = Page(self.driver, url, timeout=self.timeout)
        return self._page

    def close(self) -> None:
        """Quit Chromium and chromedriver."""
        self.driver.quit()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Page:
    """A page loaded by ``Browser.open``: the checks and actions a report test uses."""

    def __init__(self, driver: Any, url: str, timeout: float = 30.0):
        self.driver = driver
        self.url = url
        self.timeout = timeout
        self._log: list[dict] = []

    def _collect_log(self) -> None:
        # get_log drains chromedriver's buffer, so keep every entry read for later calls.
        self._log.extend(self.driver.get_log("browser"))

    def console_errors(self) -> list[str]:
        """Console messages of level SEVERE so far: console.error calls, uncaught JS exceptions (e.g.
        ``"file:///.../report.html 12:9 Uncaught Error: boom"``) and resources that failed to load."""
        self._collect_log()
        return [entry["message"] for entry in self._log if entry.get("level") == "SEVERE"]

    def broken_images(self, timeout: float = 10.0) -> list[str]:
        """The ``src`` (first 80 characters) of every ``<img>`` that failed to load.

        Lazy images are forced to load first (``loading='eager'``, then scrolled into view if still
        pending); images hidden in other gallery pages count too. An image is broken if it is not
        ``complete`` within ``timeout`` seconds or has ``naturalWidth == 0`` (bad data, missing file,
        no src)."""
        self.js("for (const img of document.images) img.loading = 'eager';")
        if not self._wait_images(min(timeout, 2.0)):
            self.js("for (const img of document.images) if (!img.complete) img.scrollIntoView();"
                    "window.scrollTo(0, 0);")
            self._wait_images(timeout)
        srcs = self.js("return Array.from(document.images)"
                       ".filter(img => !img.complete || img.naturalWidth === 0)"
                       ".map(img => img.getAttribute('src') || '')")
        return [src[:80] if src else "<img without src>" for src in srcs]

    def _wait_images(self, timeout: float) -> bool:
        """Wait until every ``<img>`` is complete; False if some are still loading after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            if self.js("return Array.from(document.images).every(img => img.complete)"):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    def js(self, script: str, *args: Any) -> Any:
        """Run JavaScript in the page (``execute_script``: use ``return`` to get a value back)."""
        return self.driver.execute_script(script, *args)

    def click(self, css_selector: str) -> None:
        """Click the first element matching ``css_selector`` (NoSuchElementException if none)."""
        from selenium.webdriver.common.by import By

        self.driver.find_element(By.CSS_SELECTOR, css_selector).click()

    def text(self, css_selector: str) -> str:
        """The visible text of the first element matching ``css_selector`` ('' if it is hidden)."""
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css_selector).text

    def count(self, css_selector: str) -> int:
        """How many elements match ``css_selector``."""
        from selenium.webdriver.common.by import By

        return len(self.driver.find_elements(By.CSS_SELECTOR, css_selector))

    def screenshot(self, path: Path) -> Path:
        """Save a PNG of the whole page (up to MAX_SCREENSHOT_HEIGHT px tall) to ``path``; returns ``path``.

        Falls back to the viewport if the full-page capture (Chrome DevTools) fails."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            size = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
            clip = {"x": 0, "y": 0, "width": max(1, int(size["width"])),
                    "height": max(1, min(int(size["height"]), MAX_SCREENSHOT_HEIGHT)), "scale": 1}
            shot = self.driver.execute_cdp_cmd("Page.captureScreenshot", {
                "format": "png", "captureBeyondViewport": True, "clip": clip})
            path.write_bytes(base64.b64decode(shot["data"]))
        except Exception:  # noqa: BLE001 - any DevTools failure: the viewport is still worth having
            if not self.driver.save_screenshot(str(path)):
                raise
        return path

    def is_error_page(self) -> bool:
        """True if Chromium shows its own error page (chrome-error:// URL or net::ERR_... text) instead of
        the document, e.g. for a missing file or a refused URL."""
        url = self.js("return document.URL") or ""
        if url.startswith("chrome-error://") or self.driver.current_url.startswith("chrome-error://"):
            return True
        body = self.js("return document.body ? document.body.innerText : ''") or ""
        return "net::ERR_" in body or re.search(r"\bERR_[A-Z][A-Z_]+\b", body) is not None


def check_screenshot(path: Path, *, page: Page | None = None, max_dominant: float = 0.999,
                     min_std: float = 2.0) -> None:
    """Raise AssertionError unless ``path`` is a PNG with something on it.

    Blank means the most common colour covers at least ``max_dominant`` of the pixels (default: all but
    0.1%, about one word of text in a 1400x1000 viewport), or the pixel standard deviation is below
    ``min_std`` (0-255 scale). Given ``page``, Chromium's error page (``Page.is_error_page``) fails
    first: it is an icon and a few lines of text, so the pixels alone cannot tell it from a real page.
    """
    path = Path(path)
    if page is not None:
        assert not page.is_error_page(), f"screenshot {path} shows Chromium's error page for {page.url}"
    assert path.is_file() and path.stat().st_size > 0, f"screenshot {path} is missing or empty"
    with Image.open(path) as image:
        assert image.format == "PNG", f"screenshot {path} is {image.format}, not PNG"
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.size > 0, f"screenshot {path} has no pixels"
    flat = pixels.reshape(-1, 3)
    packed = (flat[:, 0].astype(np.uint32) << 16) | (flat[:, 1].astype(np.uint32) << 8) | flat[:, 2]
    _, counts = np.unique(packed, return_counts=True)
    dominant = counts.max() / len(packed)
    std = float(pixels.std())
    assert dominant < max_dominant and std >= min_std, (
        f"screenshot {path} ({pixels.shape[1]}x{pixels.shape[0]}) looks blank: most common colour covers "
        f"{dominant:.2%} of pixels (limit {max_dominant:.2%}), pixel std {std:.2f} (minimum {min_std})")
