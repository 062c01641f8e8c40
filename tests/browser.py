"""A real headless Chromium for the test_report_browser_* files, and the analysed run they open, whose
corpus carries <script> / <img onerror> payloads.

Chromium comes from the system (``chromium`` on PATH or ``$ACTDICT_CHROMIUM``) or, without root, from
Debian packages fetched with ``apt-get download`` (chromium + the libraries this system lacks) and unpacked
with ``dpkg-deb -x`` into ``$ACTDICT_CACHE/chromium`` (default ``~/.cache/actdict/chromium``, ~200 MB,
once). The tests are skipped, saying why, only when none of these works.
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

PAYLOAD_SCRIPT = "<script>document.body.setAttribute('data-pwned','script')</script>"
PAYLOAD_IMG = "<img src=x onerror=\"document.body.setAttribute('data-pwned','img')\">"
APT_FLAGS = ["--recurse", "--no-recommends", "--no-suggests", "--no-conflicts", "--no-breaks",
             "--no-replaces", "--no-enhances", "--no-pre-depends"]


def _cache() -> Path:
    root = os.environ.get("ACTDICT_CACHE") or Path.home() / ".cache" / "actdict"
    return Path(root).expanduser() / "chromium"


def _unpacked_env(x: Path) -> dict:
    libs = [x / "usr/lib/x86_64-linux-gnu", x / "usr/lib/x86_64-linux-gnu/pulseaudio",
            x / "lib/x86_64-linux-gnu", x / "usr/lib/chromium"]
    return {"LD_LIBRARY_PATH": ":".join(str(p) for p in libs)}


def _fetch(dest: Path) -> None:
    """apt-get download chromium and every dependency not installed here; dpkg-deb -x them into dest/x."""
    debs = dest / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    deps = subprocess.run(["apt-cache", "depends", *APT_FLAGS, "chromium", "chromium-common"],
                          capture_output=True, text=True, check=True).stdout.split()
    names = sorted({d for d in deps if re.fullmatch(r"[a-z0-9][a-z0-9.+-]+", d)})
    installed = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${Status}\n", *names], capture_output=True,
                               text=True).stdout
    have = {line.split()[0] for line in installed.splitlines() if line.endswith("install ok installed")}
    subprocess.run(["apt-get", "download", *sorted(set(names) - have)], cwd=debs, capture_output=True,
                   check=True, timeout=600)
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(dest / "x")], check=True)
    shutil.rmtree(debs)


@pytest.fixture(scope="module")
def chromium():
    """(argv prefix, env) of a working headless Chromium, or skip saying what was tried."""
    tried = []
    for exe in filter(None, [os.environ.get("ACTDICT_CHROMIUM"), shutil.which("chromium"),
                             shutil.which("chromium-browser"), shutil.which("google-chrome")]):
        tried.append(exe)
        if _works([exe], {}):
            return [exe], {}
    dest = _cache()
    exe = dest / "x/usr/lib/chromium/chromium"
    if not exe.is_file() and shutil.which("apt-get") and shutil.which("dpkg-deb"):
        try:
            _fetch(dest)
        except (subprocess.SubprocessError, OSError) as e:
            tried.append(f"apt-get download into {dest}: {e}")
    if exe.is_file() and _works([str(exe)], _unpacked_env(dest / "x")):
        return [str(exe)], _unpacked_env(dest / "x")
    pytest.skip(f"no headless Chromium could be obtained (tried: {tried or 'nothing on PATH'}, {exe})")


def _works(argv, env) -> bool:
    try:
        return "<html" in _dump(argv, env, "data:text/html,<p>ok</p>")
    except (subprocess.SubprocessError, OSError):
        return False


def _dump(argv, env, url: str, *extra: str) -> str:
    cmd = [*argv, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=4000", *extra,
           "--dump-dom", url]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=os.environ | env)
    return res.stdout


def _panel(argv, env, url: str) -> str:
    """The feature panel of the page at ``url`` as rendered: its DOM up to the embedded JSON (not the
    script's data, which holds every string unrendered)."""
    dom = _dump(argv, env, url)
    return dom[dom.index('id="panel"'):dom.index('<script type="application/json"')]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """run.main on a tiny store whose token strings include the payloads."""
    return _analysed(tmp_path_factory.mktemp("run"), "relu")


def _analysed(path: Path, name: str) -> Path:
    """run.main in ``path`` on a tiny store whose token strings include the payloads; one dictionary,
    ``name``."""
    from actdict.analyze import run
    from actdict.analyze.config import AnalyzeConfig
    from actdict.config import Common
    from actdict.harvest.store import StoreWriter
    from tests.relu_linear import ReluLinear

    g = np.random.default_rng(2)
    n, d, k = 256, 4, 6
    acts = g.standard_normal((n, d)).astype(np.float32)
    W = g.standard_normal((d, k)).astype(np.float32)
    with StoreWriter(str(path / "store"), {"hook": "h"}, d, "float32", 64, 32) as w:
        w.append(acts, np.arange(n), np.arange(n) // 16, np.arange(n) % 16)
    (path / "split.json").write_text(json.dumps({"train_chunks": [0, 1, 2, 3], "test_chunks": [4, 5, 6, 7]}))

    def decoder(ids):
        return [PAYLOAD_SCRIPT if i % 3 == 0 else PAYLOAD_IMG if i % 3 == 1 else f" w{i}" for i in ids]

    mp = pytest.MonkeyPatch()
    mp.setattr(run, "load_models", lambda *a: {name: ReluLinear(d, k, W)})
    mp.setattr(run, "resolve_decoder", lambda m: decoder)
    run.main(Common(run_dir=str(path)), AnalyzeConfig(n_features=3, top_k=4, context=3, device="cpu"))
    mp.undo()
    return path
