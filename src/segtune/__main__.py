"""``python -m segtune`` is the ``segtune`` command."""

from segtune.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
