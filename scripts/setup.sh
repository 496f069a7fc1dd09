#!/usr/bin/env bash
# Creates .venv (if missing) and installs segtune with every dependency pinned by constraints.txt.
# Safe to run again: an up-to-date environment installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "segtune setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.segtune-installed
want="$(cat constraints.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "segtune setup: installing torch, torchvision and the rest (pinned in constraints.txt); this takes a few minutes"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]" 2>&1 \
    | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import torch, torchvision, segtune" \
    || { echo "segtune setup: install failed" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
# Headless Chromium + chromedriver for the browser tests of report.html (tests/report). Best effort:
# installed with apt-get where this runs as root with apt-get present; otherwise those tests skip.
# Under CI (CI set, as .ci/run does) a missing browser is an error: setup exits 1 with the same line.
browser_missing() {
  case "$(printf '%s' "${CI:-}" | tr '[:upper:]' '[:lower:]')" in
    ""|0|false|no) echo "segtune setup: browser tests (tests/report) will be skipped: $1" ;;
    *) echo "segtune setup: error: CI=$CI needs the browser tests (tests/report), but $1" >&2; exit 1 ;;
  esac
}
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  :  # already installed
elif [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  browser_missing "/usr/bin/chromium or /usr/bin/chromedriver missing and cannot apt-get install chromium chromium-driver ($( [ "$(id -u)" != 0 ] && echo 'not root' || echo 'no apt-get'))"
else
  echo "segtune setup: installing chromium and chromium-driver with apt-get (browser tests, tests/report)"
  if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq \
         && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver; } >/tmp/segtune-apt.log 2>&1; then
    browser_missing "apt-get install chromium chromium-driver failed (see /tmp/segtune-apt.log)"
  elif ! { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; }; then
    browser_missing "apt-get installed chromium but /usr/bin/chromium or /usr/bin/chromedriver is still missing"
  fi
fi
