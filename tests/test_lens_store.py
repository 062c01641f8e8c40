"""``analyze.lens.lens_store``: a run folder without a store reads the one its dictionaries' cfg.json records,
where it lies: a relative path from the folder the training ran in, a URL only when it is there."""

from pathlib import Path

import fsspec
import numpy as np
import pytest

from actdict.analyze.lens import LensError, lens_store
from actdict.config import Common
from actdict.harvest.store import open_store, write_vectors
from actdict.train.identity import describe_store


def _store(path, seed: int, d: int = 4) -> dict:
    """A small store of vectors at ``path``; what a checkpoint records of it, with its path relative."""
    x = np.random.default_rng(seed).standard_normal((64, d)).astype(np.float32)
    write_vectors(str(path), x, shard_rows=32, chunk_rows=16)
    return describe_store(open_store(str(path)), str(path)) | {"path": "shared/store"}


def test_a_relative_recorded_store_is_read_from_the_folder_the_training_ran_in(tmp_path, monkeypatch):
    """cfg.json records the store as the training's config spelled it ('shared/store', relative to the
    folder the training ran in). The lens of that run folder, run from another folder, tested that path
    against its own current folder: 'not there either' (or another folder's store of that name). It is
    now also looked for in the folders above the run folder, the nearest holding a store of the hook, d
    and model the dictionaries learned (all the lens reads of it: a store of that name and another d,
    nearer, is not it; one whose rows changed since, a larger harvest, is)."""
    project = tmp_path / "project"
    record = _store(project / "shared" / "store", 0) | {"rows": 32, "content": "an earlier harvest"}
    _store(project / "runs" / "shared" / "store", 1, d=3)  # nearer, same relative path, another d
    run_dir = project / "runs" / "other"
    (run_dir / "dicts").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    path, note = lens_store(Common(run_dir=str(run_dir)), {"sae": {"store": record}})
    assert path == str(project / "shared" / "store")
    assert note == (f"{run_dir / 'store'} holds no store: reading {path}, the store the dictionaries of "
                    f"{run_dir} learned (their cfg.json): their cfg.json records shared/store, relative to "
                    "the folder their training ran in: the run folder or one above it; --set store=PATH "
                    "reads another")
    monkeypatch.chdir(project)  # from the folder the training ran in: read as recorded, as before
    assert lens_store(Common(run_dir=str(run_dir)), {"sae": {"store": record}})[0] == "shared/store"
    monkeypatch.chdir(tmp_path / "elsewhere")
    inside = tmp_path / "inside"  # run_dir '.': its training ran in the run folder itself
    _store(inside / "shared" / "store", 0)
    (inside / "dicts").mkdir()
    assert lens_store(Common(run_dir=str(inside)), {"sae": {"store": record}})[0] == str(inside / "shared" /
                                                                                         "store")
    gone = {"sae": {"store": record | {"path": "nowhere/store"}}}
    with pytest.raises(LensError) as e:
        lens_store(Common(run_dir=str(run_dir)), gone)
    assert str(e.value) == (
        f"no store at {run_dir / 'store'} for the dictionaries of {run_dir} (they learned nowhere/store, "
        "which is not there either: a path relative to the folder their training ran in, found neither in "
        f"the current folder nor in {run_dir} or a folder above it): give the store they learned with --set "
        "store=PATH")


def _refusal(run_dir: Path, recorded: str) -> str:
    """The LensError lens_store says for dictionaries of ``run_dir`` that recorded the store ``recorded``."""
    with pytest.raises(LensError) as e:
        lens_store(Common(run_dir=str(run_dir)), {"sae": {"store": {"path": recorded}}})
    return str(e.value)


def _said(run_dir: Path, learned: str) -> str:
    return (f"no store at {run_dir / 'store'} for the dictionaries of {run_dir} (they learned {learned}): "
            "give the store they learned with --set store=PATH")


def test_a_recorded_store_url_that_is_not_there_is_said_as_a_missing_path_is(tmp_path):
    """A URL recorded in cfg.json (s3://, memory://) was returned unchecked, and the lens failed later on
    with the store's own error; it is now checked (fsspec) and a missing one gets the LensError of a
    missing local path."""
    run_dir = tmp_path / "other"
    (run_dir / "dicts").mkdir(parents=True)
    assert _refusal(run_dir, "memory://lens-gone/store") == _said(run_dir, "memory://lens-gone/store, which "
                                                                     "is not there either")
    fsspec.filesystem("memory").pipe("/lens-there/store/x", b"1")
    try:
        path, note = lens_store(Common(run_dir=str(run_dir)), {"sae": {"store": {"path": "memory://lens-there/store"}}})
    finally:
        fsspec.filesystem("memory").rm("/lens-there", recursive=True)
    assert path == "memory://lens-there/store"
    assert note.startswith(f"{run_dir / 'store'} holds no store: reading memory://lens-there/store, the ")


def test_a_recorded_store_url_that_cannot_be_checked_says_why(tmp_path, monkeypatch):
    """A URL whose check fails with an error of the backend's own (botocore's NoCredentialsError is no
    OSError) is said with why, in the LensError, not as a traceback; so is one of no installed backend."""
    from actdict.harvest import layout

    class NoCredentialsError(Exception):
        pass

    class Fs:
        def exists(self, path):
            raise NoCredentialsError("Unable to locate credentials")

    run_dir = tmp_path / "other"
    (run_dir / "dicts").mkdir(parents=True)
    with pytest.raises(LensError, match=r"\(they learned nosuchproto://b/store, which could not be checked "
                                        r"\(StoreError: store nosuchproto://b/store cannot be opened: "):
        lens_store(Common(run_dir=str(run_dir)), {"sae": {"store": {"path": "nosuchproto://b/store"}}})
    monkeypatch.setattr(layout, "fs_of", lambda path: (Fs(), "b/store"))
    why = "which could not be checked (NoCredentialsError: Unable to locate credentials)"
    assert _refusal(run_dir, "s3://b/store") == _said(run_dir, f"s3://b/store, {why}")


def test_a_run_folder_linked_from_another_disk_finds_the_store_below_its_link(tmp_path, monkeypatch):
    """A run folder linked into the project (runs/x -> /scratch/x) lies, as its path is given, below the
    folder its training ran in; the folders above it were those of the folder it links to (resolved), so
    the recorded relative store was not found there: 'not there either'. Both are looked in now, the
    link's folders first."""
    project, scratch = tmp_path / "project", tmp_path / "scratch" / "x"
    record = _store(project / "shared" / "store", 0)
    (scratch / "dicts").mkdir(parents=True)
    (project / "runs").mkdir()
    (project / "runs" / "x").symlink_to(scratch, target_is_directory=True)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    run_dir = project / "runs" / "x"
    assert lens_store(Common(run_dir=str(run_dir)), {"sae": {"store": record}})[0] == str(
        project / "shared" / "store")
    _store(tmp_path / "scratch" / "shared" / "store", 0)  # one above the folder it links to: found too
    (project / "shared" / "store").rename(project / "gone")
    assert lens_store(Common(run_dir=str(run_dir)), {"sae": {"store": record}})[0] == str(
        tmp_path / "scratch" / "shared" / "store")


def test_a_store_of_several_hooks_is_found_beside_a_dictionary_that_records_none(tmp_path, monkeypatch):
    """A run folder whose dictionaries include one recording no store (an import) beside those that learned
    hook 'a' of a store of two hooks: the search opened the store with no hook (the records' hooks were
    'a' and None), which a store of two hooks refuses, so the store they learned was 'not there either'.
    A record without a hook now leaves the hook to the others."""
    project = tmp_path / "project"
    x = np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32)
    for hook in ("a", "b"):
        write_vectors(str(project / "shared" / "store"), x, hook=hook, shard_rows=32, chunk_rows=16)
    record = describe_store(open_store(str(project / "shared" / "store"), "a"), "") | {"path": "shared/store"}
    run_dir = project / "runs" / "x"
    (run_dir / "dicts").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    records = {"sae": {"store": record}, "imported": {}}
    assert lens_store(Common(run_dir=str(run_dir)), records)[0] == str(project / "shared" / "store")


def test_another_store_of_the_recorded_name_in_the_current_folder_is_passed_over(tmp_path, monkeypatch):
    """The lens run from a folder that holds a store of the recorded relative name, of another d (another
    project's 'shared/store'), read that one, and then refused it as not the one they learned, though the
    store they learned lies above the run folder. A store there of their hook, d and model is read first
    now; the current folder's is read (and refused) only when there is none."""
    project, other = tmp_path / "project", tmp_path / "other"
    record = _store(project / "shared" / "store", 0)
    _store(other / "shared" / "store", 1, d=3)  # the current folder's: another d
    run_dir = project / "runs" / "x"
    (run_dir / "dicts").mkdir(parents=True)
    monkeypatch.chdir(other)
    assert lens_store(Common(run_dir=str(run_dir)), {"sae": {"store": record}})[0] == str(
        project / "shared" / "store")
    from actdict.analyze.storepath import located  # actdict compare's

    got, note = located({"store": record}, run_dir / "dicts" / "sae")
    assert got["store"]["path"] == str(project / "shared" / "store") and note == (
        "the store shared/store (cfg.json: relative to the folder the training ran in) in this folder is "
        f"another (its hook, d or model differ): read from {project / 'shared' / 'store'}")
    (project / "shared" / "store").rename(project / "gone")  # none of theirs: the current folder's, as before
    assert located({"store": record}, run_dir / "dicts" / "sae") == ({"store": record}, None)
    assert lens_store(Common(run_dir=str(run_dir)), {"sae": {"store": record}})[0] == "shared/store"
