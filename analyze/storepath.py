"""Where the store that dictionaries learned lies, from the path their cfg.json records (``store.path``).

Training records the store's path as its config spelled it (``train.identity.describe_store``): a URL, an
absolute path, or a path relative to the folder the training ran in (a config's relative paths are
relative to the folder the command runs in: README), which no record names. Analysis reads such a path
from the current folder; ``actdict compare`` (``located``) and the lens of another run folder (``--set
run_dir=OTHER``) read it from there too, else from the run folder or the nearest folder above it where a
store of their hook, d and model is (a run_dir such as ``runs/x`` lies below the folder its training ran
in). A URL is checked to exist (fsspec) rather than failing later with the store's own error.
``unlearned`` says what of a store differs from the one the dictionaries learned, by what the lens reads of
it (hook, d, model)."""

from __future__ import annotations

import os
from pathlib import Path


def url_exists(url: str) -> tuple[bool, str | None]:
    """(whether something is at the fsspec ``url``, why it could not be told: None when it could)."""
    from actdict.harvest.layout import fs_of

    try:
        fs, root = fs_of(url)
        return bool(fs.exists(root)), None
    except Exception as e:  # no backend (StoreError), no access: OSError, botocore's NoCredentialsError...
        return False, f"{type(e).__name__}: {e}"


def _same_store(path: str, records: dict[str, dict]) -> bool:
    """The store at ``path`` opens on the hook the ``records`` learned, with their d and model (``unlearned``
    finds none of them otherwise)."""
    from actdict.harvest.store import StoreError, open_store

    hooks = {(r.get("store") or {}).get("hook") for r in records.values()} - {None}  # an import: none
    try:
        store = open_store(path, hooks.pop() if len(hooks) == 1 else None)
    except StoreError:
        return False
    return not unlearned(store, records)


def unlearned(store, records: dict[str, dict]) -> dict[str, list[str]]:
    """{dictionary: what differs} for each of ``records`` (cfg.json) whose recorded store has another hook, d
    or model than ``store`` (where recorded): all the lens reads of a store (the text's rows come from the
    model), so a store grown since (a larger harvest.max_tokens: other rows and config_hash) is theirs as
    well, and another model's store of the same hook and d is not."""
    from actdict.config_data import config_changes

    have = {"hook": store.hook, "d": store.d, "model": store.manifest.get("model")}
    out = {}
    for name, r in records.items():
        was = {k: v for k, v in (r.get("store") or {}).items() if k in have and v is not None}
        if changes := config_changes(was, {k: have[k] for k in was}, "store."):
            out[name] = changes
    return out


def learned_store(path: str, run_dir: Path, records: dict[str, dict]) -> tuple[str | None, str]:
    """(where the store recorded as ``path`` lies, or None; what was tried, in words, for a message): a URL
    where fsspec finds it, an absolute path where it is, a relative one from the current folder where it
    holds a store of the hook, d and model ``records`` learned, else from ``run_dir`` or the nearest folder
    above it that holds one (its absolute path), else from the current folder where it is (opening it
    then says what differs)."""
    if "://" in path:
        there, why = url_exists(path)
        return (path if there else None), ("which is not there either" if why is None else
                                           f"which could not be checked ({why})")
    if os.path.isabs(path) or Path(path).exists() and _same_store(path, records):
        return (path if Path(path).exists() else None), "which is not there either"
    for folder in _above(run_dir):  # nearest first (run_dir '.': the training ran in the run folder)
        if (folder / path).exists() and _same_store(str(folder / path), records):
            return str(folder / path), ""
    if Path(path).exists():  # another store of that name here, and none of theirs above the run folder
        return path, ""
    return None, (f"which is not there either: a path relative to the folder their training ran in, found "
                  f"neither in the current folder nor in {run_dir} or a folder above it")


def _above(run_dir: Path) -> list[Path]:
    """``run_dir`` and the folders above it, nearest first: those of its path as given (made absolute, links
    kept: a run folder linked in from another disk, ``runs/x -> /scratch/x``, lies below the folder its
    training ran in) and then those of the folder it links to, each once."""
    given, real = Path(os.path.abspath(run_dir)), Path(run_dir).resolve()
    return list(dict.fromkeys((given, *given.parents, real, *real.parents)))


def located(record: dict, folder: Path) -> tuple[dict, str | None]:
    """``record`` (a dictionary's cfg.json, in ``folder``) with its store's path where it lies, and a note
    when that is not as recorded (``actdict compare``): a path relative to the folder the training ran in
    that is not in the current folder, or is another store there, is looked for in ``folder``, its run
    folder and the folders above, the nearest holding a store of its hook, d and model (``learned_store``);
    as recorded when none is found (opening it then says so)."""
    s = record.get("store") or {}
    path = s.get("path")
    if not path or "://" in path or os.path.isabs(path):
        return record, None
    found, _ = learned_store(path, folder, {"it": record})
    if not found or found == path:
        return record, None
    here = ("is not in this folder" if not Path(path).exists() else
            "in this folder is another (its hook, d or model differ)")
    return record | {"store": s | {"path": found}}, (
        f"the store {path} (cfg.json: relative to the folder the training ran in) {here}: read from {found}")
