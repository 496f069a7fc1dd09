"""The package's shape: layers import one way, and the top-level API is loaded only when used."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _modules_after(statement: str) -> list[str]:
    """The ``segtune`` modules a fresh interpreter has loaded after running ``statement``."""
    code = f"{statement}\nimport json, sys\nprint(json.dumps(sorted(m for m in sys.modules if m.startswith('segtune'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("package", ["segtune.data", "segtune.models", "segtune.runtimes", "segtune.evaluation",
                                     "segtune.checkpoint", "segtune.report"])
def test_lower_layers_import_no_engine_module(package: str) -> None:
    loaded = _modules_after(f"import {package}")
    assert package in loaded
    assert not [m for m in loaded if m.startswith(("segtune.engine", "segtune.cli", "segtune.predict"))], loaded
    if package != "segtune.report":  # the report sits above evaluation
        assert not [m for m in loaded if m.startswith("segtune.report")], loaded


def test_data_and_models_do_not_import_each_other() -> None:
    assert not [m for m in _modules_after("import segtune.data") if m.startswith("segtune.models")]
    assert not [m for m in _modules_after("import segtune.models") if m.startswith("segtune.data")]


def test_runtimes_sit_between_models_and_what_runs_them() -> None:
    assert not [m for m in _modules_after("import segtune.models") if m.startswith("segtune.runtimes")]
    loaded = _modules_after("import segtune.runtimes")
    assert not [m for m in loaded if m.startswith(("segtune.data", "segtune.evaluation", "segtune.export"))], loaded


def test_the_top_level_api_loads_on_first_use() -> None:
    assert _modules_after("import segtune") == ["segtune", "segtune.version"]
    loaded = _modules_after("import segtune\nsegtune.train, segtune.evaluate, segtune.Predictor, segtune.configure")
    assert "segtune.engine.trainer" in loaded and "segtune.predict.predictor" in loaded

    import segtune
    from segtune.evaluation import evaluate_checkpoint

    assert segtune.evaluate is evaluate_checkpoint
    assert {"train", "evaluate", "Predictor", "__version__"} <= set(dir(segtune))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        segtune.nope  # noqa: B018
