"""What ``pip install actdict`` gives a user outside this repository: the sdist holds the repository's
tests, docs, configs and benchmarks; the wheel built from it holds every module and the configs (as
``actdict.configs``), with the metadata pyproject.toml says; and a config path that is not found names the
installed copy of that config. One build (sdist, then the wheel from it: ``python -m build``, ~10 s)."""

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from actdict.config import ConfigError, read_yaml, shipped_config

ROOT = Path(__file__).parents[1]
PACKAGES = {"actdict": "actdict", "harvest": "actdict/harvest", "train": "actdict/train",
            "analyze": "actdict/analyze", "configs": "actdict/configs"}  # repository folder -> in the wheel
SDIST_EXTRA = ("docs", "tests", "benchmarks", ".ci")  # what the sdist holds beside the packages
LEFT_BY_BUILDS = (".git", ".venv*", "build", "dist", "*.egg-info", "runs", "__pycache__", ".cache",
                  ".*_cache")  # not copied: what builds, installs and runs leave in a checkout


def files_under(folder: str) -> set[str]:
    """The files of a repository folder, relative to the root, without Python's caches."""
    return {p.relative_to(ROOT).as_posix() for p in (ROOT / folder).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


def checkout_copy(root: Path, dest: Path) -> None:
    """``root`` copied to ``dest`` without what builds and installs leave in it (setuptools reads an old
    ``actdict.egg-info/SOURCES.txt`` back into a new sdist), links copied as links: a user's link to a
    large or unmounted folder (``data -> /mnt/...``) is neither copied whole nor, dangling, an error."""
    shutil.copytree(root, dest, symlinks=True, ignore=shutil.ignore_patterns(*LEFT_BY_BUILDS))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """(the sdist, the wheel built from it), from a copy of the repository (``checkout_copy``)."""
    src, out = tmp_path_factory.mktemp("src") / "actdict", tmp_path_factory.mktemp("dist")
    checkout_copy(ROOT, src)
    stray = src / "tests" / "__pycache__" / "plain_store.cpython-311.pyc"  # what a test run leaves
    stray.parent.mkdir(exist_ok=True)
    stray.write_bytes(b"\0")
    done = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "-o", str(out), str(src)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (sdist,), (wheel,) = out.glob("*.tar.gz"), out.glob("*.whl")
    return sdist, wheel


def test_the_build_copies_a_checkout_without_its_builds_and_with_a_dangling_link(tmp_path):
    """A checkout holding a link to a folder that is not there (an unmounted disk) stopped every test here
    with shutil.Error before the build; a stale build/ and egg-info are left out of the copy."""
    root = tmp_path / "checkout"
    for f in ("configs/demo.yaml", "build/lib/actdict/old.py", "actdict.egg-info/SOURCES.txt"):
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text("x")
    (root / "data").symlink_to(tmp_path / "unmounted")
    checkout_copy(root, tmp_path / "copy")
    assert sorted(p.relative_to(tmp_path / "copy").as_posix() for p in (tmp_path / "copy").rglob("*")) == [
        "configs", "configs/demo.yaml", "data"]
    assert os.readlink(tmp_path / "copy" / "data") == str(tmp_path / "unmounted")


def test_the_wheel_holds_every_module_and_the_configs(built):
    names = set(zipfile.ZipFile(built[1]).namelist())
    want = {f"{PACKAGES[f.split('/')[0]]}/{f.split('/', 1)[1]}" for folder in PACKAGES
            for f in files_under(folder) if f.endswith((".py", ".yaml"))}
    assert {n for n in want if n.startswith("actdict/configs/")} >= {"actdict/configs/demo.yaml"}
    assert sorted(want - names) == []
    assert sorted(n for n in names if n.startswith(("tests/", "docs/", "benchmarks/"))) == []


def test_the_wheel_metadata(built):
    with zipfile.ZipFile(built[1]) as z:
        meta = Parser().parsestr(z.read("actdict-0.1.0.dist-info/METADATA").decode())
        entry = z.read("actdict-0.1.0.dist-info/entry_points.txt").decode()
    assert (meta["Name"], meta["License-Expression"], meta["Requires-Python"]) == ("actdict", "MIT", ">=3.11")
    assert meta["Description-Content-Type"] == "text/markdown" and meta.get_payload().startswith("# actdict")
    requires = meta.get_all("Requires-Dist")
    assert "torch==2.13.0" in requires and "zarr<4,>=3.1" in requires
    assert "actdict = actdict.cli:entry" in entry
    assert meta.get_all("License-File") == ["LICENSE"]
    with zipfile.ZipFile(built[1]) as z:
        assert z.read("actdict-0.1.0.dist-info/licenses/LICENSE") == (ROOT / "LICENSE").read_bytes()


def test_the_sdist_holds_the_tests_docs_and_configs(built):
    with tarfile.open(built[0]) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    top = {"README.md", "LICENSE", "pyproject.toml"}
    want = set().union(*(files_under(f) for f in (*PACKAGES, *SDIST_EXTRA)), top)
    assert {"docs/architecture.md", "tests/data/texts/notes.jsonl", "configs/demo.yaml", ".ci/run"} <= want
    assert sorted(want - names) == []
    assert [n for n in names if n.endswith((".pyc", "__pycache__"))] == []  # a test run's bytecode left out


def test_an_installed_actdict_names_its_configs_outside_the_repository(built, tmp_path):
    """The wheel unpacked as site-packages would hold it, run from a folder with no configs/ in it."""
    site = tmp_path / "site"
    zipfile.ZipFile(built[1]).extractall(site)
    work = tmp_path / "work"
    work.mkdir()
    code = ("import actdict, sys; from actdict.config import read_yaml; print(actdict.__file__); "
            "read_yaml(sys.argv[1])")
    done = subprocess.run([sys.executable, "-c", code, "configs/demo.yaml"], cwd=work, capture_output=True,
                          text=True, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert done.stdout.strip() == str(site / "actdict" / "__init__.py")
    shipped = site / "actdict" / "configs" / "demo.yaml"
    assert done.stderr.strip().endswith(f"ConfigError: config file not found: configs/demo.yaml; actdict "
                                        f"ships demo.yaml as {shipped}: give that path (its relative paths, "
                                        "such as run_dir, are then under this folder), or copy it here to "
                                        "edit it")
    assert shipped.read_bytes() == (ROOT / "configs" / "demo.yaml").read_bytes()


def test_a_config_path_not_found(tmp_path, monkeypatch):
    assert shipped_config("demo.yaml").read_bytes() == (ROOT / "configs" / "demo.yaml").read_bytes()
    assert shipped_config("nope.yaml") is None and shipped_config("__init__.py") is None
    with pytest.raises(ConfigError, match=f"^config file not found: {tmp_path / 'nope.yaml'}$"):
        read_yaml(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=f"actdict ships layers.yaml as {shipped_config('layers.yaml')}:"):
        read_yaml(tmp_path / "configs" / "layers.yaml")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=f"actdict ships demo.yaml as {shipped_config('demo.yaml')}:"):
        read_yaml("demo.yaml")


def test_a_config_path_not_found_in_another_folder_is_the_users_own(tmp_path):
    """/work/exp/demo.yaml is the user's own config (moved, misspelt): not actdict's demo.yaml, which the
    message offered to run instead, or to copy 'here'."""
    for given in (tmp_path / "demo.yaml", tmp_path / "exp" / "layers.yaml", Path("exp") / "demo.yaml"):
        with pytest.raises(ConfigError) as e:
            read_yaml(given)
        assert str(e.value) == f"config file not found: {given}"
