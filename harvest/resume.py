"""What a harvest finds in its store before it starts, and the last step that marks it complete.

A harvest killed at any moment leaves: manifests with ``complete: false``, whole shards (each with its
done-record), maybe hidden ``.tmp-*`` shards (local disks) or half-written shards without a done-record
(object stores), maybe a manifest's temporary file (``.manifest.json.tmp-*``, local disks). ``clean``
removes the last three; ``done_shards`` lists the whole ones, which a rerun of
the same command skips; the done-record's ``start`` cursor says where the document stream of that shard
began, so the rerun does not even re-tokenize the documents before the shard ahead of the first missing one.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import zarr

from actdict.errors import ActdictError
from actdict.files import check_not_linked, remove_temps
from actdict.harvest.config import RUN_KEYS, hook_pattern, rows_view
from actdict.harvest.layout import (
    ACT_DTYPES,
    DONE_KEY,
    FORMAT_VERSION,
    MANIFEST,
    SHARDS,
    TMP_PREFIX,
    StoreError,
    check_shard,
    fs_of,
    is_local,
    is_shard_name,
    make_dirs,
    manifest_problem,
    read_json,
    shard_entries,
    shard_gaps,
    shard_name,
    whole_shards,
    write_json,
    zarr_url,
)
from actdict.harvest.store import shard_damage
from actdict.lock import (
    LOCK_FILE,
    READERS,
    REMOTE_LOCK,
    check_writable,
    folder_lock,
    remote_lock,
    remove_made,
)
from actdict.signals import rank, under_torchrun

PROGRESS_KEYS = ("complete", "n_rows", "n_shards")  # the manifest keys that change while harvesting


class HarvestError(ActdictError, RuntimeError):
    """A harvest that cannot run as configured (the message says what to do)."""


def hook_dir(path: str, hook: str) -> tuple[object, str]:
    fs, root = fs_of(path)
    return fs, f"{root}/{hook}"


def read_manifest(path: str, hook: str) -> dict | None:
    fs, d = hook_dir(path, hook)
    return read_json(fs, f"{d}/{MANIFEST}") if fs.isfile(f"{d}/{MANIFEST}") else None


def clean(path: str, hook: str) -> list[str]:
    """Remove the temporary and the damaged (half-written) shards of a hook, and the temporary file of a
    manifest write a kill cut short (local disks: ``write_atomic``); returns what was removed. Only rank 0
    calls it, before any rank writes."""
    m = read_manifest(path, hook)
    fs, d = hook_dir(path, hook)
    removed = [str(tmp) for tmp in remove_temps(Path(d), MANIFEST)] if is_local(fs) else []
    for name in shard_entries(fs, d):
        where = f"{d}/{SHARDS}/{name}"
        if name.startswith(TMP_PREFIX):
            fs.rm(where, recursive=True)
            removed.append(where)
        elif is_shard_name(name) and m is not None:
            try:
                check_shard(fs, where, int(m["d"]), ACT_DTYPES[m["dtype"]], int(m["chunk_rows"]),
                            crc=m.get("format_version", 1) >= 2)
            except StoreError:
                fs.rm(where, recursive=True)
                removed.append(where)
    return removed


def done_shards(path: str, hook: str) -> set[int]:
    fs, d = hook_dir(path, hook)
    return {int(n) for n in whole_shards(fs, d)}


def record(path: str, hook: str, shard: int) -> dict:
    """The done-record of a whole shard."""
    fs, d = hook_dir(path, hook)
    return dict(zarr.open_group(zarr_url(fs, f"{d}/{SHARDS}/{shard_name(shard)}"), mode="r").attrs[DONE_KEY])


def prefix_done(done: set[int]) -> int:
    """k such that shards 0..k-1 are all done."""
    k = 0
    while k in done:
        k += 1
    return k


def check_manifest(found: dict, expected: dict, where: str) -> None:
    """The manifest a rerun would write must equal the one found (progress keys aside)."""
    keys = sorted(k for k in set(found) | set(expected) if k not in PROGRESS_KEYS
                  and found.get(k) != expected.get(k))
    if keys:
        diff = "; ".join(f"{k}: store {found.get(k)!r}, this run {expected.get(k)!r}" for k in keys[:4])
        why = ("this run's forward dtype or device is not the one the store was started with "
               "(harvest.dtype / harvest.device: 'auto' picks by the machine): it resumes where they pick "
               "the store's numerics again (set otherwise, they are another config)"
               if keys == ["numerics"] else
               "the model, its files or the source files changed since the store was started, or an earlier "
               "actdict began it")
        raise HarvestError(f"{where} does not match this harvest ({diff}): {why}; delete the store to "
                           "harvest again, or set store / run_dir to another folder")


def forward_numerics(dtype: str, device: str, store_dtype: str) -> str:
    """What a token harvest's manifests record of its numerics: the forward's dtype (``auto`` resolved) and
    device kind ('cuda:1': cuda), the stored dtype."""
    return f"forward {dtype} on {device.split(':')[0]}, stored {store_dtype}"


def numerics_refusal(manifests: dict[str, dict], cfg, path: str, grow: bool) -> str | None:
    """For ``--dry-run``: the refusal a harvest of ``cfg`` would stop with once its model is loaded, where
    the numerics it would record here (``harvest.dtype`` / ``device`` 'auto' resolved on this machine) are
    not those of the store's unfinished hooks (``grow``: its hooks, to grow them); else None."""
    from actdict.harvest.models import resolve_device
    from actdict.precision import forward_dtype

    try:
        device = resolve_device(cfg.device)
    except ActdictError:  # a device this machine lacks: the harvest says so itself
        return None
    here = forward_numerics(forward_dtype(cfg.dtype, device), device, cfg.store_dtype)
    for h, m in manifests.items():
        if m.get("numerics") in (None, here) or (m.get("complete") and not grow):
            continue
        try:
            if grow:
                check_growth(m, {"numerics": here}, f"store {path} hook {h!r}")
            else:
                check_manifest({"numerics": m["numerics"]}, {"numerics": here}, f"store {path} hook {h!r}")
        except HarvestError as e:
            return str(e)
    return None


def identity_diff(found: dict, expected: dict) -> tuple[list[str], str]:
    """The keys of ``expected`` (what a manifest records of the rows besides the config: ``rows_identity``)
    whose value the manifest ``found`` does not hold, and 'key: store X, this run Y; ...' of the first 4."""
    keys = sorted(k for k in expected if found.get(k) != expected[k])
    return keys, "; ".join(f"{k}: store {found.get(k)!r}, this run {expected.get(k)!r}" for k in keys[:4])


def check_growth(found: dict, expected: dict, where: str) -> None:
    """Before a complete store is reopened to grow: what the larger harvest's manifest would record besides
    its config (``expected``: the model's revision, the source files' fingerprint, an encoder's attention
    mask, the numerics: the forward's dtype and device, which ``auto`` picks by the machine) must be the
    store's. Otherwise HarvestError, and the store is left complete, as it was (reopened
    first, it was refused only afterwards by ``check_manifest``: incomplete, a short last shard removed,
    neither resumable nor usable)."""
    keys, diff = identity_diff(found, expected)
    if not keys:
        return
    why = ("an earlier actdict harvested it (its attention mask also hid a window's final [SEP] after a "
           "separator), so a larger harvest's rows would differ" if keys == ["attention_mask"] and
           found.get("attention_mask") is None else
           "this run's forward dtype or device is not the one it was harvested with (harvest.dtype / "
           "harvest.device: 'auto' picks by the machine), so its rows would mix two: it grows where they "
           "pick the store's numerics again" if keys == ["numerics"] else
           "the model, its files or the source files changed since it was harvested")
    old = (found.get("harvest") or {}).get("max_tokens")
    raise HarvestError(f"{where} cannot grow ({diff}): {why}; it is left complete as it was: use it with "
                       f"harvest.max_tokens={old}, or set store / run_dir to another folder to harvest more "
                       "rows")


def growable(manifests: dict[str, dict], harvest_cfg: dict) -> bool:
    """True when every hook's manifest is a complete harvest of ``harvest_cfg`` (the config as
    ``to_dict``/JSON) with a smaller ``max_tokens``: raising max_tokens grows such a store (``reopen``) into
    the store a harvest with the larger max_tokens makes. Raises when the new max_tokens is smaller. A store
    whose hooks were harvested by configs naming other hooks (a layer added, ``harvest.added``) grows when
    this config names each of its hooks, and only them: every hook grows, none is left shorter. Hooks this
    growth already reopened (unfinished, of this very config: a kill between two hooks' ``reopen``) are
    reopened again with the others, which are still complete."""
    names = harvest_cfg.get("hooks") or []
    every = set(names) == set(manifests) and not any(hook_pattern(h) for h in names)
    manifests = {h: m for h, m in manifests.items() if not reopened(m, harvest_cfg)}
    if not manifests:
        return False

    def same(m: dict) -> bool:  # a complete harvest of this config but for max_tokens (and hooks: ``every``)
        old = m.get("harvest")
        if not (m.get("complete") and m.get("format_version") == FORMAT_VERSION and isinstance(old, dict)):
            return False
        aside = ("max_tokens", "hooks") if every else ("max_tokens",)
        return rows_view(old, aside) == rows_view(harvest_cfg, aside) and all(
            old.get(k) == harvest_cfg.get(k) for k in RUN_KEYS)  # settings its mode does not read aside

    if not all(same(m) for m in manifests.values()):
        return False
    first = next(iter(manifests.values()))
    old, new = first["harvest"]["max_tokens"], harvest_cfg["max_tokens"]
    if old == new:
        return False
    n = int(first.get("n_rows", 0))
    if old is None and harvest_cfg.get("mode") == "tokens" and new >= n:  # max_tokens counts rows there
        raise HarvestError(f"this store holds every row of the source ({n:,}, max_tokens null): max_tokens "
                           f"{new} would hold the same rows; set harvest.max_tokens=null to use it")
    if old is None or (new is not None and new < old):
        held = "every row" if old is None else f"the first {old} rows"
        raise HarvestError(f"this store holds {held} of the source (max_tokens {old}); a smaller max_tokens "
                           f"({new}) needs another store (or train.max_steps, to train on fewer rows)")
    return True


def reopened(manifest: dict, harvest_cfg: dict) -> bool:
    """The hook is unfinished with ``harvest_cfg`` as its config: ``reopen`` done (or a harvest of it begun);
    beside a complete hook of the same store, only a growth killed between two hooks' reopen leaves that."""
    return not manifest.get("complete") and manifest.get("harvest") == harvest_cfg and (
        manifest.get("format_version") == FORMAT_VERSION)


def reopen(path: str, hook: str, chash: str, harvest_cfg: dict) -> None:
    """Turn a complete hook into the unfinished harvest of ``harvest_cfg`` (a larger max_tokens): its last
    shard, when short, is removed (the longer stream fills it), then the manifest takes the new config and
    ``complete: false``; the whole shards stay and are skipped by the harvest. In this order a kill between
    the steps leaves a store that the same command reopens again."""
    m = read_manifest(path, hook)
    fs, d = hook_dir(path, hook)
    n, per = int(m["n_rows"]), int(m["shard_rows"])
    last = f"{d}/{SHARDS}/{shard_name(n // per)}"
    if n % per and fs.exists(last):
        fs.rm(last, recursive=True)
    write_json(fs, f"{d}/{MANIFEST}", m | {"complete": False, "config_hash": chash, "harvest": harvest_cfg})


def start_manifest(path: str, hook: str, manifest: dict) -> None:
    """Write a hook's manifest (incomplete) if it has none yet."""
    fs, d = hook_dir(path, hook)
    make_dirs(fs, f"{d}/{SHARDS}")
    if not fs.isfile(f"{d}/{MANIFEST}"):
        write_json(fs, f"{d}/{MANIFEST}", manifest)


def finish(path: str, hook: str, manifest: dict, n_rows: int, shard_rows: int) -> None:
    """Mark a hook complete once every one of its shards is there with the right row count."""
    fs, d = hook_dir(path, hook)
    n_shards = -(-n_rows // shard_rows)
    done = done_shards(path, hook)
    missing = sorted(set(range(n_shards)) - done)
    extra = sorted(done - set(range(n_shards)))
    if missing or extra:
        raise HarvestError(f"{d}: shards {missing} are missing and {extra} unexpected after the harvest "
                           "(a rank failed?); re-run the same command to finish it")
    got = sum(int(record(path, hook, s)["n_rows"]) for s in range(n_shards))
    if got != n_rows:
        raise HarvestError(f"{d}: shards hold {got} rows, the stream had {n_rows}; delete the store and "
                           "harvest again")
    write_json(fs, f"{d}/{MANIFEST}", manifest | {"complete": True, "n_rows": n_rows, "n_shards": n_shards})


@contextmanager
def store_lock(path: str, elsewhere: str = "set store to another folder") -> Iterator[Callable[..., None]]:
    """``actdict.lock.folder_lock`` of a local store, for a harvest or a repair; under torchrun rank 0 takes
    it for all ranks (they are one writer) and a busy store is an error. A store on an fsspec URL gets a
    lock object instead (``remote_lock``: a busy one is an error). Yields ``writing``, to call before the
    first change to the store: it waits until no training or analysis reads the store (they hold its
    ``READERS`` lock shared: ``store.read_lock``) and keeps new ones waiting until the ``with`` block ends;
    a harvest that finds its store complete never calls it. ``writing(hooks)``, for a change of those hooks
    only, does not wait when they are new in a store that has a complete hook (``only_new_hooks``): what
    the readers read is left as it is. ``elsewhere``: the way out a store that cannot be written names."""
    fs, root = fs_of(path)
    if rank():
        yield lambda hooks=None: None
        return
    if not is_local(fs):  # no flock there: a lock object, and no readers lock (trainings are not locked out)
        with remote_lock(fs, f"{root}/{REMOTE_LOCK}", f"{path.rstrip('/')}/{REMOTE_LOCK}", f"store {path}"):
            yield lambda hooks=None: None
        return
    if file := next((p for p in (Path(root), *Path(root).parents) if p.exists() and not p.is_dir()), None):
        raise StoreError(f"store {path}: {file} is a file, not a folder: name a folder for the store (store, "
                         "run_dir)")  # a swapped argument, a store path that is a vectors file
    wait = not under_torchrun()
    with folder_lock(root, f"store {path}", wait=wait) as made, ExitStack() as held:
        def writing(hooks: list[str] | None = None) -> None:
            check_not_linked([p for h in hooks or () for p in (Path(root, h), Path(root, h, SHARDS))],
                             "the hook's manifest and shards")  # a shared store's link: out of the store
            names = hooks or [n for n in (os.listdir(root) if os.path.isdir(root) else []) if n[:1] != "."]
            check_writable([root, *(p for h in names for p in (Path(root, h), Path(root, h, SHARDS))
                                    if p.is_dir())], "the store's manifests and shards", owner="harvest",
                           elsewhere=elsewhere)  # before the model loads, not after
            if not taken and not (hooks is not None and only_new_hooks(root, hooks)):
                held.enter_context(folder_lock(root, f"store {path} (a training or an analysis reads it)",
                                               wait=wait, name=READERS))
                taken.append(True)

        taken: list[bool] = []
        try:
            yield writing
        except BaseException:  # a model not found, a bad file, Ctrl-C: a store folder the lock made goes
            left = os.listdir(root) if os.path.isdir(root) else []  # none: the folder could not be made
            if made and set(left) <= {LOCK_FILE, READERS}:  # with nothing but the lock files
                shutil.rmtree(root, ignore_errors=True)
                remove_made(made)  # and the run folder it made for it (new/ of new/../run too), if empty
            raise


def only_new_hooks(root: str, hooks: list[str]) -> bool:
    """The local store ``root`` has a complete hook and none of ``hooks`` (nor a staged replacement of one):
    writing them changes nothing that a training or analysis of the store may be reading."""
    names = os.listdir(root) if os.path.isdir(root) else []
    if any(h in names or f".replacing-{h}" in names for h in hooks):
        return False
    try:
        return any((read_manifest(root, h) or {}).get("complete") for h in names if not h.startswith("."))
    except (OSError, ValueError):  # a damaged manifest: the writer waits for the readers, to be safe
        return False


def repair(path: str, hook: str, m: dict | None = None) -> dict[str, str]:
    """Remove the damaged shards of a hook (``store.shard_damage``: every chunk re-read) and those its
    complete manifest does not list, and mark the manifest unfinished, so that the harvest that made the
    store writes them again (a token harvest computes only those shards; the result is the store it made,
    bit for bit). Returns {shard name: what was wrong}, missing shards of a complete hook included; {}
    leaves the hook untouched. Each shard is first renamed to a temporary name (atomic on local disks:
    a kill leaves no half-deleted shard under its own name; the harvest removes temporary ones), then
    removed (object stores: its done-record first, then the rest); the manifest is written last: a kill
    before it leaves a complete manifest with missing shards, which the next repair marks unfinished.
    ``m``: the hook's manifest (``repair_manifest``) when already read."""
    m = repair_manifest(path, hook) if m is None else m
    fs, d = hook_dir(path, hook)
    names = whole_shards(fs, d)
    args = (int(m["d"]), ACT_DTYPES[m["dtype"]], int(m["chunk_rows"]), m.get("format_version", 1) >= 2)
    bad = {n: why for n in names if (why := shard_damage(fs, f"{d}/{SHARDS}/{n}", *args))}
    if m.get("complete"):
        listed, have = int(m["n_shards"]), {int(n) for n in names}
        missing, n_missing = shard_gaps(have, listed)  # the first 8: a manifest may list 10**12
        bad |= {shard_name(i): "missing" for i in missing}
        if n_missing > len(missing):
            bad[shard_name(missing[-1])] = f"missing, and {n_missing - len(missing):,} more after it"
        bad |= {n: f"not in the manifest (it lists {listed})" for n in names if int(n) >= listed}
    for n, why in bad.items():
        if why.startswith("missing"):
            continue
        where = f"{d}/{SHARDS}/{n}"
        if is_local(fs):
            gone = f"{d}/{SHARDS}/{TMP_PREFIX}repair-{n}"
            fs.mv(where, gone, recursive=True)
            fs.rm(gone, recursive=True)
        else:  # an object store has no atomic rename (s3fs' mv of a prefix copies, then fails): its
            fs.rm(f"{where}/zarr.json")  # done-record goes first, so a kill leaves no shard taken for whole
            fs.rm(where, recursive=True)
    if bad and m.get("complete"):
        write_json(fs, f"{d}/{MANIFEST}", m | {"complete": False})
    return dict(sorted(bad.items()))


def repair_manifest(path: str, hook: str) -> dict:
    """The manifest of a hook to repair; StoreError when there is none or it is unreadable."""
    try:
        m = read_manifest(path, hook)
    except (OSError, ValueError) as e:
        raise StoreError(f"store {path}, hook {hook!r}: its {MANIFEST} is unreadable ({type(e).__name__}: "
                         f"{e}); a hook cannot be repaired without it: harvest it again") from e
    if m is None:
        raise StoreError(f"store {path} has no hook {hook!r}")
    if missing := [k for k in ("d", "dtype", "chunk_rows") if k not in m]:
        raise StoreError(f"store {path}, hook {hook!r}: its {MANIFEST} lacks {missing}; a hook cannot be "
                         "repaired without them: harvest it again")
    if problem := manifest_problem(m):
        raise StoreError(f"store {path}, hook {hook!r}: {problem}; a hook cannot be repaired with it: "
                         "restore it from a copy of the store, or harvest it again")
    if differs := other_layout(*hook_dir(path, hook), m):
        raise StoreError(f"store {path}, hook {hook!r}: its {MANIFEST} does not describe its shards "
                         f"({differs}): the manifest is damaged or from another store, not the shards; "
                         "nothing removed: restore the manifest from a copy of the store")
    return m


def other_layout(fs, d: str, m: dict) -> str | None:
    """How the layout that the manifest ``m`` records (d, stored dtype, chunk_rows) differs from the one the
    shards of the hook folder ``d`` record in their own metadata (the first shard's acts array that opens),
    in words; None when they agree or no shard's metadata can be read."""
    names = {str(dt): n for n, dt in ACT_DTYPES.items()}  # stored dtype -> the manifest's name of it
    for shard in whole_shards(fs, d):
        try:
            acts = zarr.open_array(zarr_url(fs, f"{d}/{SHARDS}/{shard}/acts"), mode="r")
            have = {"d": acts.shape[1], "dtype": names.get(str(acts.dtype), str(acts.dtype)),
                    "chunk_rows": acts.chunks[0]}
        except Exception:  # a damaged shard: the next one's metadata, or none to compare with
            continue
        return "; ".join(f"{k} {m[k]}, its shards' {have[k]}" for k in have if m[k] != have[k]) or None
    return None
