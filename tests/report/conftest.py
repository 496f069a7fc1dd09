"""The ``browser`` fixture: one headless Chromium for the whole session, or a skip with the exact reason.

Set SEGTUNE_REQUIRE_BROWSER=1 (.ci/run does, where scripts/setup.sh installed Chromium) to fail instead of
skipping when the browser is unavailable. Under CI=true the skip fails anyway (tests/conftest.py turns every
skip outside its CI_ALLOWED_SKIPS into a failure).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from .browser import CHROMEDRIVER, CHROMIUM, Browser


def _unavailable(reason: str) -> None:
    if os.environ.get("SEGTUNE_REQUIRE_BROWSER") == "1":
        pytest.fail(f"browser required (SEGTUNE_REQUIRE_BROWSER=1) but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """A started ``Browser`` (headless Chromium via chromedriver), shared by every test of the session."""
    try:
        import selenium  # noqa: F401
    except ImportError as error:
        _unavailable(f"selenium not importable ({error}); run scripts/setup.sh")
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        _unavailable(f"no chromium binary at {CHROMIUM} (apt-get install chromium)")
    if not (CHROMEDRIVER.exists() and os.access(CHROMEDRIVER, os.X_OK)):
        _unavailable(f"no chromedriver at {CHROMEDRIVER} (apt-get install chromium-driver)")
    try:
        instance = Browser()
    except Exception as error:  # noqa: BLE001 - any start failure is reported, not raised
        _unavailable(f"the browser failed to start: {type(error).__name__}: {str(error).strip()[:500]}")
    try:
        yield instance
    finally:
        instance.close()
