"""The peer's own virtual environment, ``.venv-peer/``, and the worker that runs Ultralytics in it.

Part of ``peer_ultralytics.py`` (see its docstring): Ultralytics is never a dependency of segtune and never
enters ``.venv``. The peer venv has no torch of its own: a ``.pth`` file puts segtune's ``.venv``
site-packages after its own, and the install is pinned against segtune's ``constraints.txt``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

#: The Ultralytics release the peer runs (the newest on the registry here; it ships
#: cfg/models/26/yolo26-seg.yaml, whose scale 'n' is yolo26n-seg.yaml).
ULTRALYTICS = "8.4.190"
ROOT = Path(__file__).resolve().parents[1]
PEER = ROOT / ".venv-peer"
PEER_PYTHON = PEER / "bin" / "python"
MARKER = PEER / ".peer-installed"
WORKER = Path(__file__).resolve().with_name("peer_ultralytics_worker.py")
WORK = ROOT / "runs" / "benchmarks" / "peer_ultralytics"
MARK = "@@peer "


class Failure(Exception):
    """A clear error for the user: printed without a traceback. ``code`` 2: bad input, 1: failed at run time."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def say(message: str) -> None:
    print(f"peer_ultralytics: {message}", flush=True)


def segtune_site_packages() -> list[str]:
    import sysconfig

    paths = sysconfig.get_paths()
    return list(dict.fromkeys([paths["purelib"], paths["platlib"]]))


def peer_wanted() -> dict[str, Any]:
    """What the peer venv must hold; a venv whose marker says otherwise is made again."""
    import torch
    import torchvision

    return {"ultralytics": ULTRALYTICS, "python": sys.version.split()[0],
            "shared_site_packages": segtune_site_packages(), "torch": torch.__version__,
            "torchvision": torchvision.__version__}


def ensure_peer_venv(model: str) -> dict[str, Any]:
    """Make ``.venv-peer`` unless a finished one for the same versions is there, check that it builds
    ``model`` with segtune's torch; return what was done."""
    wanted = peer_wanted()
    if MARKER.is_file() and PEER_PYTHON.exists():
        try:
            if json.loads(MARKER.read_text()).get("wanted") == wanted:
                say(f"peer venv {PEER.relative_to(ROOT)}/ is ready (ultralytics {ULTRALYTICS}): reused")
                return {"path": str(PEER), "install_s": None, "reused": True}
        except json.JSONDecodeError:
            pass
    if PEER.exists():
        say(f"{PEER.relative_to(ROOT)}/ is unfinished or for other versions: making it again")
        shutil.rmtree(PEER)
    WORK.mkdir(parents=True, exist_ok=True)
    log = WORK / "peer-install.log"
    start = time.perf_counter()
    say(f"making the peer venv {PEER.relative_to(ROOT)}/ and installing ultralytics=={ULTRALYTICS} into it "
        f"(torch {wanted['torch']} and torchvision {wanted['torchvision']} are segtune's, not installed again; "
        f"about 30 s with a warm package cache; log: {log.relative_to(ROOT)})")
    with log.open("w") as out:
        def run(cmd: list[str], what: str) -> None:
            out.write(f"$ {' '.join(cmd)}\n")
            out.flush()
            done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
            if done.returncode != 0:
                out.flush()
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                raise Failure(f"{what} failed (exit {done.returncode}); the end of {log}:\n{tail}")

        run([sys.executable, "-m", "venv", str(PEER)], "making the venv")
        (PEER / ".gitignore").write_text("# made by benchmarks/peer_ultralytics.py: nothing here is tracked\n*\n")
        site = Path(subprocess.run(
            [str(PEER_PYTHON), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True).stdout.strip())
        # After the peer's own site-packages on sys.path: its own packages win, the rest are segtune's.
        (site / "zz_segtune_venv.pth").write_text("\n".join(wanted["shared_site_packages"]) + "\n")
        pins = WORK / "peer-constraints.txt"
        # The public versions (a local label such as +cu130 in a constraint makes pip look for that build on
        # the index instead of taking the one it sees installed).
        pins.write_text("".join(f"{name}=={wanted[name].split('+')[0]}\n" for name in ("torch", "torchvision")))
        run([str(PEER_PYTHON), "-m", "pip", "install", "--disable-pip-version-check",
             "-c", str(ROOT / "constraints.txt"), "-c", str(pins), f"ultralytics=={ULTRALYTICS}"],
            f"pip install ultralytics=={ULTRALYTICS}")
    check = worker(["check", "--model", model], timeout=300, what="checking the peer venv", log=WORK / "peer-check.log")
    info = json.loads(check.strip().splitlines()[-1])
    shared = [str(Path(p).resolve()) for p in wanted["shared_site_packages"]]
    if not any(str(Path(info["torch_file"]).resolve()).startswith(p) for p in shared):
        raise Failure(f"the peer venv imports torch from {info['torch_file']}, not from segtune's .venv: a second "
                      f"torch was installed (see {log})")
    seconds = round(time.perf_counter() - start, 1)
    MARKER.write_text(json.dumps({"wanted": wanted, "check": info, "install_s": seconds}, indent=2))
    say(f"peer venv ready in {seconds:.0f} s: ultralytics {info['ultralytics']}, torch {info['torch']} from segtune's "
        f".venv, {model} builds ({info['parameters']:,} parameters)")
    return {"path": str(PEER), "install_s": seconds, "reused": False}


def worker(args: list[str], *, timeout: float, what: str, log: Path, threads: str = "default") -> str:
    """Run the worker in the peer venv; its ``@@peer`` lines are shown, all output goes to ``log``.
    Returns its other output (what it printed besides progress). Killed after ``timeout`` seconds."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYTHONPATH")}
    if threads != "default":
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = threads
    config_dir = WORK / "ultralytics-config"
    env.update({"YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": str(config_dir), "PYTHONUNBUFFERED": "1",
                "PIP_NO_INDEX": "1"})  # should Ultralytics try to pip-install anything, it fails at once
    cmd = [str(PEER_PYTHON), "-P", str(WORKER), "--config-dir", str(config_dir), "--threads", threads, *args]
    log.parent.mkdir(parents=True, exist_ok=True)
    kept: list[str] = []
    with log.open("w") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                                cwd=WORK, env=env)
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            proc.kill()

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                out.write(line)
                if line.startswith(MARK):
                    say("  " + line[len(MARK):].rstrip())
                else:
                    kept.append(line)
            code = proc.wait()
        finally:
            timer.cancel()
    if code != 0:
        why = f"killed after {timeout:.0f} s, the most it may take" if killed.is_set() else f"exit {code}"
        tail = "".join(kept[-15:]).rstrip()
        raise Failure(f"{what} failed ({why}); the end of {log}:\n{tail}")
    return "".join(kept)
