"""One writer per folder: a harvest locks its store, a training its run folder; a second one waits, saying
so, and then looks again; a killed holder frees the lock at once."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from actdict.cli import main
from actdict.lock import ANALYZE_LOCK, LOCK_FILE, FolderInUse, folder_lock

HOLD = ("import sys, time; from actdict.lock import folder_lock\n"
        "with folder_lock(sys.argv[1], 'x'):\n    print('held', flush=True); time.sleep(600)\n")


class Waiter(threading.Thread):
    """Runs ``fn`` in a thread; ``result`` holds its return value once it ends."""

    def __init__(self, fn):
        super().__init__(daemon=True)
        self.fn, self.result = fn, None

    def run(self):
        self.result = self.fn()


def wait_for(cond, timeout=60.0):
    t = time.monotonic()
    while not cond():
        assert time.monotonic() - t < timeout, "timed out"
        time.sleep(0.01)


def test_a_second_holder_waits_until_the_first_is_killed(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "store")], stdout=subprocess.PIPE,
                              text=True)
    said = []
    try:
        assert holder.stdout.readline() == "held\n"

        def second():
            with folder_lock(str(tmp_path / "store"), "store s", said.append):
                return time.monotonic()

        w = Waiter(second)
        w.start()
        wait_for(lambda: said)
        assert said == [f"store s is in use by another actdict process (it holds {tmp_path}/store/"
                        f"{LOCK_FILE}); waiting for it to finish (Ctrl-C stops this one)"]
        time.sleep(0.3)
        assert w.is_alive()  # still waiting
        killed = time.monotonic()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    w.join(10)
    assert w.result is not None and w.result - killed < 5  # no stale lock: the kernel dropped it


def test_under_torchrun_a_busy_folder_is_an_error_and_analysis_has_its_own_lock(tmp_path):
    with folder_lock(str(tmp_path), "run folder r"):  # a training holds the run folder
        with pytest.raises(FolderInUse, match="run folder r is in use .*under torchrun the ranks cannot"):
            with folder_lock(str(tmp_path), "run folder r", wait=False):
                pass
        with folder_lock(str(tmp_path), "run folder r (analysis)", wait=False, name=ANALYZE_LOCK):
            pass  # analysis beside it: another lock


def test_the_lock_file_follows_the_umask_and_a_read_only_one_still_locks(tmp_path):
    old = os.umask(0o002)
    try:
        with folder_lock(str(tmp_path / "a"), "store a"):
            pass
    finally:
        os.umask(old)
    lock = tmp_path / "a" / LOCK_FILE
    assert lock.stat().st_mode & 0o777 == 0o664  # a group store's members can all take it
    lock.chmod(0o444)
    real_open = os.open

    def no_write(path, flags, *a):  # root's tests cannot lose write access by chmod: refuse it here
        if path.endswith(LOCK_FILE) and flags & os.O_RDWR:
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *a)

    os.open = no_write
    try:
        said = []
        with folder_lock(str(tmp_path / "a"), "store a"):
            w = Waiter(lambda: folder_lock(str(tmp_path / "a"), "store a", said.append).__enter__())
            w.start()
            wait_for(lambda: said)  # the read-only descriptor locks as well
    finally:
        os.open = real_open
    w.join(10)
    assert not w.is_alive()


def test_a_lock_file_another_user_made_private_stops_a_run_in_a_folder_it_shares(tmp_path, monkeypatch):
    """A shared, writable folder whose lock file another user made under umask 077 (mode 600): the run could
    open it neither way and went on unlocked, silently, beside that user's training in the same run folder;
    it now stops, naming the file, its owner and what to do. A read-only folder still goes unlocked."""
    import pwd

    from actdict import lock

    with folder_lock(str(tmp_path), "run folder r"):
        pass
    (tmp_path / LOCK_FILE).chmod(0o600)
    real_open = os.open

    def private(path, flags, *a):  # root's tests open any file: refuse the lock file as to another user
        if str(path).endswith(LOCK_FILE):
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *a)

    monkeypatch.setattr(lock.os, "open", private)
    me, path = pwd.getpwuid(os.getuid()).pw_name, tmp_path / LOCK_FILE
    with pytest.raises(lock.FolderNotLockable, match=re.escape(
            f"cannot open the lock file {path} (Permission denied: {me}'s, mode 600, made under a private "
            f"umask), so whether {me}'s actdict is at work in {tmp_path} cannot be told: ask them to make it "
            f"readable (chmod a+r {path}), or remove it if no actdict process uses the folder")):
        with folder_lock(str(tmp_path), "run folder r"):
            pass
    monkeypatch.setattr(lock.os, "access", lambda *a: False)  # a folder it may not write in: only read
    with folder_lock(str(tmp_path), "run folder r"):
        pass


def test_a_read_only_folder_is_read_unlocked(tmp_path, monkeypatch):
    def read_only(*a, **k):
        raise OSError(30, "Read-only file system")  # EROFS: root's tests cannot chmod their way there

    monkeypatch.setattr(os, "open", read_only)
    ran = []
    with folder_lock(str(tmp_path), "store s"):
        ran.append(1)
    assert ran == [1] and not (tmp_path / LOCK_FILE).exists()
    with pytest.raises(OSError, match="in the body"), folder_lock(str(tmp_path), "store s"):
        raise OSError("in the body")  # an error of the body is not swallowed as the folder's


def _config(tmp_path: Path) -> Path:
    (tmp_path / "doc.txt").write_text("The ferry leaves at nine, rain or shine. Owls are quiet at night.\n")
    cfg = tmp_path / "c.yaml"
    src = f"{{kind: files, path: {tmp_path}/doc.txt}}"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\n"
                   f"harvest: {{source: {src}, device: cpu, ctx: 8, max_tokens: 8, shard_rows: 4, "
                   "chunk_rows: 4}\n"
                   "train: {epochs: 1, batch_size: 4, test_fraction: 0, dicts: [{name: s, variant: sae_l1, "
                   "k: 8}]}\n")
    return cfg


@pytest.mark.parametrize("stage, folder", [("harvest", "run/store"), ("train", "run")])
def test_a_second_stage_waits_for_the_folder_then_looks_again(tmp_path, capsys, stage, folder):
    cfg = _config(tmp_path)
    if stage == "train":
        assert main(["harvest", str(cfg)]) == 0
    capsys.readouterr()
    for again in (False, True):  # the second time it finds the work done by then
        with folder_lock(str(tmp_path / folder), "held by this test"):
            w = Waiter(lambda: main([stage, str(cfg)]))
            w.start()
            wait_for(lambda: "is in use by another actdict process" in capsys.readouterr().out)
            time.sleep(0.2)
            assert w.is_alive()
            if not again:
                assert not (tmp_path / "run" / ("store/blocks.3.hook_resid_post" if stage == "harvest"
                                                else "dicts")).exists()  # nothing written while waiting
        w.join(300)
        out = capsys.readouterr().out
        assert w.result == 0
        if again:
            assert ("already complete" if stage == "harvest" else "finished checkpoint with the same "
                    "config exists, skipped") in out
    assert (tmp_path / "run" / ("store/blocks.3.hook_resid_post/manifest.json" if stage == "harvest"
                                else "dicts/s/cfg.json")).is_file()


def test_the_vectors_import_waits_for_the_store(tmp_path, capsys):
    import numpy as np

    from actdict.harvest.vectors import cli

    x = np.arange(24, dtype=np.float32).reshape(8, 3)  # [n, d]
    np.save(tmp_path / "v.npy", x)
    store = tmp_path / "store"
    with folder_lock(str(store), "held by this test"):
        w = Waiter(lambda: cli([str(tmp_path / "v.npy"), str(store), "--chunk-rows", "4"]))
        w.start()
        wait_for(lambda: "is in use by another actdict process" in capsys.readouterr().out)
        time.sleep(0.2)
        assert w.is_alive() and not (store / "vectors").exists()  # nothing written while waiting
    w.join(120)
    assert w.result == 0 and (store / "vectors" / "manifest.json").is_file()


def test_a_store_changes_only_while_no_training_or_analysis_reads_it(tmp_path, capsys):
    """A vectors import over a hook that a training reads (its store's readers lock, held shared) waits for
    it, instead of pulling the shards from under it; a harvest that finds its store complete does not."""
    import numpy as np

    from actdict.harvest.store import open_store, read_lock
    from actdict.harvest.vectors import cli

    store = tmp_path / "store"
    np.save(tmp_path / "v.npy", np.arange(24, dtype=np.float32).reshape(8, 3))  # [n, d]
    assert cli([str(tmp_path / "v.npy"), str(store), "--chunk-rows", "4"]) == 0
    np.save(tmp_path / "v.npy", -np.arange(24, dtype=np.float32).reshape(8, 3))
    capsys.readouterr()
    with read_lock(str(store)), read_lock(str(store)):  # two readers share it
        w = Waiter(lambda: cli([str(tmp_path / "v.npy"), str(store), "--chunk-rows", "4", "--overwrite"]))
        w.start()
        wait_for(lambda: "(a training or an analysis reads it) is in use by another actdict process"
                 in capsys.readouterr().out)
        time.sleep(0.2)
        assert w.is_alive() and open_store(str(store)).read_rows(0, 8).acts[1, 0] == 3  # the old rows
    w.join(120)
    assert w.result == 0 and open_store(str(store)).read_rows(0, 8).acts[1, 0] == -3
    cfg = _config(tmp_path)
    assert main(["harvest", str(cfg)]) == 0
    capsys.readouterr()
    with read_lock(str(tmp_path / "run" / "store")):
        assert main(["harvest", str(cfg)]) == 0  # complete: skipped at once, beside the reader
    assert "already complete" in capsys.readouterr().out


def test_a_new_hook_is_written_beside_a_training_of_another(tmp_path, capsys):
    """A new hook imported into a store that a training reads (another, complete hook) changes nothing the
    training reads: it is written at once instead of waiting hours for the training to end. A new hook in a
    store with no complete one still waits (the training would find no store)."""
    import numpy as np

    from actdict.harvest.store import list_hooks, read_lock
    from actdict.harvest.vectors import cli

    store = tmp_path / "store"
    np.save(tmp_path / "v.npy", np.arange(24, dtype=np.float32).reshape(8, 3))  # [n, d]
    assert cli([str(tmp_path / "v.npy"), str(store), "--chunk-rows", "4"]) == 0
    with read_lock(str(store)):
        w = Waiter(lambda: cli([str(tmp_path / "v.npy"), str(store), "--chunk-rows", "4", "--hook", "other"]))
        w.start()
        w.join(60)
        assert not w.is_alive() and w.result == 0 and list_hooks(str(store)) == ["other", "vectors"]
        assert "is in use" not in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    with read_lock(str(tmp_path / "empty")):
        w = Waiter(lambda: cli([str(tmp_path / "v.npy"), str(tmp_path / "empty"), "--chunk-rows", "4"]))
        w.start()
        wait_for(lambda: "(a training or an analysis reads it) is in use" in capsys.readouterr().out)
        assert w.is_alive()
    w.join(60)
    assert w.result == 0


def test_a_training_waits_while_its_store_is_changed(tmp_path, capsys):
    from actdict.harvest.resume import store_lock
    from actdict.harvest.store import read_lock

    cfg = _config(tmp_path)
    assert main(["harvest", str(cfg)]) == 0
    capsys.readouterr()
    with store_lock(str(tmp_path / "run" / "store")) as writing:
        writing()  # a harvest growing the store, an import replacing a hook
        with pytest.raises(FolderInUse, match="/run/store/.actdict-readers"):  # its hook's own folder too
            with read_lock(str(tmp_path / "run" / "store" / "blocks.3.hook_resid_post"), wait=False):
                pass
        w = Waiter(lambda: main(["train", str(cfg)]))
        w.start()
        wait_for(lambda: f"store {tmp_path}/run/store is in use by another actdict process (it holds "
                 f"{tmp_path}/run/store/.actdict-readers); waiting" in capsys.readouterr().out)
        time.sleep(0.2)
        assert w.is_alive() and not (tmp_path / "run" / "dicts").exists()
    w.join(300)
    assert w.result == 0 and (tmp_path / "run" / "dicts" / "s" / "cfg.json").is_file()


def test_a_training_started_while_the_harvest_loads_its_model_waits_for_it(tmp_path, monkeypatch):
    """The store is being made from the harvest's start on, not from its first shard: a training started
    while the model loads waits (here: its lock, not taken) instead of finding no store."""
    import actdict.harvest.run as hrun
    from actdict.harvest.store import read_lock

    cfg, loading, go, real = _config(tmp_path), threading.Event(), threading.Event(), hrun.load_model

    def slow(*a, **k):
        loading.set()
        go.wait(60)
        return real(*a, **k)

    monkeypatch.setattr(hrun, "load_model", slow)
    w = Waiter(lambda: main(["harvest", str(cfg)]))
    w.start()
    try:
        assert loading.wait(60)
        with pytest.raises(FolderInUse, match=f"store {tmp_path}/run/store is in use .*/.actdict-readers"):
            with read_lock(str(tmp_path / "run" / "store"), wait=False):
                pass
    finally:
        go.set()
    w.join(300)
    assert w.result == 0


def test_a_harvest_that_fails_leaves_no_store_folder_of_lock_files(tmp_path, capsys):
    """A harvest that stops before its first shard (here a model path that does not exist; a bad vectors
    file alike) takes away the store folder its lock made: it held only the lock files, and looked like a
    store to the next command. A run folder spelled through '..' (new/../run) leaves no new/ either."""
    cfg = _config(tmp_path)
    assert main(["harvest", str(cfg), f"harvest.model={tmp_path / 'no-model'}"]) == 2
    assert "no-model" in capsys.readouterr().err and not (tmp_path / "run" / "store").exists()
    assert main(["harvest", str(cfg), f"run_dir={tmp_path / 'new' / '..' / 'run'}",
                 f"harvest.model={tmp_path / 'no-model'}"]) == 2
    assert "no-model" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not (tmp_path / "new").exists()
    (tmp_path / "run" / "store").mkdir(parents=True)  # a folder of the user's own stays
    assert main(["harvest", str(cfg), f"harvest.model={tmp_path / 'no-model'}"]) == 2
    assert (tmp_path / "run" / "store").is_dir()


@pytest.mark.parametrize("spelled", ["runs/x", "runs/new/../x"])
@pytest.mark.parametrize("stage", ["train", "run", "analyze"])
def test_a_stage_that_fails_leaves_no_run_folder_of_a_lock_file(tmp_path, capsys, stage, spelled):
    """A training whose store is missing (an analysis with no dictionaries) stopped after its lock had made
    the run folder (and its parents): the folders it made go again, however the run folder is spelled (the
    new/ that runs/new/../x makes too); a run folder that was there stays."""
    cfg = _config(tmp_path)
    over = [f"run_dir={tmp_path / spelled}", f"store={tmp_path / 'no-store'}", "train.test_fraction=0.5"]
    cfg.write_text("\n".join(line for line in cfg.read_text().splitlines() if not line.startswith("harvest"))
                   + "\nanalyze: {}\n")
    assert main([stage, str(cfg), *over]) == 2
    err = capsys.readouterr().err
    assert ("no trained dictionaries" if stage == "analyze" else "no-store") in err
    assert not (tmp_path / "runs").exists()
    (tmp_path / "runs" / "x").mkdir(parents=True)  # a folder of the user's own stays
    assert main([stage, str(cfg), *over]) == 2
    assert (tmp_path / "runs" / "x").is_dir() and os.listdir(tmp_path / "runs") == ["x"]


def test_a_waiter_locks_the_file_again_when_its_holder_removed_it(tmp_path):
    """A harvest failed and took away the store folder its lock made; a second one, waiting for it, then
    locks the lock file at the path, not the removed one (which a third harvest would not see)."""
    from actdict.harvest.resume import store_lock

    store, said, seen = tmp_path / "run" / "store", [], []

    def second():
        with folder_lock(str(store), "store s", said.append):
            seen.append((store / LOCK_FILE).exists())

    with pytest.raises(RuntimeError, match="failed"), store_lock(str(store)):
        w = Waiter(second)
        w.start()
        wait_for(lambda: said)
        raise RuntimeError("failed")
    w.join(10)
    assert seen == [True]


def test_a_remote_lock_removed_as_it_is_read_is_made_again(monkeypatch):
    """A remote store's lock object that its harvest removes (it ended) between this run's conditional write
    and its read of the holder: the lock is made again, not 'in use by actdict process None on host None'."""
    import fsspec

    from actdict.lock import REMOTE_LOCK, remote_lock

    fs, path = fsspec.filesystem("memory"), f"/racy-store/{REMOTE_LOCK}"
    fs.pipe_file(path, b'{"host": "elsewhere", "pid": 7}')  # another host's harvest, ending right now
    real = fs.cat_file

    def ends_first(p, *a, **k):
        fs.rm_file(p)
        return real(p, *a, **k)

    monkeypatch.setattr(fs, "cat_file", ends_first)
    with remote_lock(fs, path, f"memory:/{path}", "store memory://racy-store", print):
        assert json.loads(real(path))["pid"] == os.getpid()
    assert not fs.exists(path)
    monkeypatch.undo()  # a killed run's lock (no such pid here) that another run takes over just before us
    fs.pipe_file(path, json.dumps({"host": socket.gethostname(), "pids": os.readlink("/proc/self/ns/pid"),
                                   "pid": 2**22 + 1}).encode())
    rm = fs.rm_file

    def taken_over(p, *a, **k):
        rm(p)
        raise FileNotFoundError(p)

    monkeypatch.setattr(fs, "rm_file", taken_over)
    with remote_lock(fs, path, f"memory:/{path}", "store memory://racy-store", print):
        assert json.loads(fs.cat_file(path))["pid"] == os.getpid()


def test_a_remote_lock_is_taken_for_dead_only_where_this_host_can_tell(monkeypatch):
    """A lock object's process is taken for ended only when it is of this host and pid namespace and its pid
    is free: a harvest in a container on this host (same host name, its own pids: its pid here is free or
    another process's) or on a system without /proc was taken for dead, its lock removed, and the two
    harvests ran together."""
    import actdict.lock as lk

    ended = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                               text=True).stdout)
    here = {"host": socket.gethostname(), "pids": os.readlink("/proc/self/ns/pid")}
    assert lk._gone(here | {"pid": ended}) and not lk._gone(here | {"pid": os.getpid()})
    assert not lk._gone(here | {"pids": "pid:[1]", "pid": ended})  # another container's: may be alive
    monkeypatch.setattr(lk, "_started", lambda pid: None)  # no /proc here
    monkeypatch.setattr(lk, "_pid_space", lambda: None, raising=False)
    assert not lk._gone({"host": socket.gethostname(), "pids": None, "pid": os.getpid()})


def test_a_folder_that_links_to_nothing_is_said_in_one_line(tmp_path, capsys):
    """A run_dir (and so its store) that is a symbolic link to a folder that does not exist: os.makedirs
    stopped on it ('File exists'), the harvest and the import with a traceback, the training telling to make
    the folder writable; now each stage names the link, before anything is made."""
    import torch
    from safetensors.torch import save_file

    cfg, sae = _config(tmp_path), tmp_path / "sae"
    sae.mkdir()
    (sae / "cfg.json").write_text(json.dumps({"d_in": 2, "d_sae": 3, "architecture": "standard"}))
    save_file({"W_enc": torch.ones(2, 3), "b_enc": torch.zeros(3), "W_dec": torch.ones(3, 2),
               "b_dec": torch.zeros(2)}, sae / "sae_weights.safetensors")
    (tmp_path / "run").symlink_to(tmp_path / "gone" / "run")
    said = f"{tmp_path / 'run'} is a symbolic link to {tmp_path / 'gone' / 'run'}, which does not exist: make"
    for args in (["harvest", str(cfg)], ["train", str(cfg)], ["analyze", str(cfg)],
                 ["import", str(sae), str(tmp_path / "run" / "dicts" / "s")]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("actdict: FolderNotWritable: ") and said in err and "Traceback" not in err, err
    assert not (tmp_path / "gone").exists()


def test_a_store_that_cannot_be_written_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch,
                                                                           read_only):
    """A store folder that refuses new files (chmod a-w, another user's: a harvest loaded its model,
    computed a whole shard and then ended in a PermissionError; --repair of a damaged shard there alike) is
    named before anything is loaded or changed."""
    import numpy as np

    import actdict.harvest.run as hrun
    from actdict.harvest.vectors import cli

    cfg = _config(tmp_path)
    read_only("run/store")
    monkeypatch.setattr(hrun, "load_model", None)  # never reached
    assert main(["harvest", str(cfg)]) == 2
    assert capsys.readouterr().err == (
        f"actdict: FolderNotWritable: cannot write in {tmp_path}/run/store (Permission denied), where the "
        "store's manifests and shards go: make it writable, or set store to another folder\n")
    assert not (tmp_path / "run" / "store").exists()  # the folder the lock made for it is gone again
    np.save(tmp_path / "v.npy", np.arange(24, dtype=np.float32).reshape(8, 3))  # [n, d]
    assert cli([str(tmp_path / "v.npy"), str(tmp_path / "vs"), "--chunk-rows", "4"]) == 0
    before = {p: p.read_bytes() for p in (tmp_path / "vs").rglob("*") if p.is_file()}
    read_only("vs/vectors/shards")
    assert main(["store", str(tmp_path / "vs"), "--repair"]) == 2
    assert f"cannot write in {tmp_path}/vs/vectors/shards (Permission denied)" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in (tmp_path / "vs").rglob("*") if p.is_file()} == before
    read_only("ro_vs")  # python -m actdict.harvest.vectors takes the store as an argument: no 'set store'
    assert cli([str(tmp_path / "v.npy"), str(tmp_path / "ro_vs")]) == 2
    assert capsys.readouterr().err.endswith(f"cannot write in {tmp_path}/ro_vs (Permission denied), where "
                                            "the store's manifests and shards go: make it writable, or pass "
                                            "another STORE\n")


def test_a_store_folder_that_cannot_be_made_fails_with_its_own_error(tmp_path, monkeypatch):
    """Under a read-only folder the lock makes no store folder (and takes no lock): the harvest's own error
    is raised, not a FileNotFoundError of the clean-up that looks for the folder to remove."""
    from contextlib import nullcontext

    from actdict.harvest import resume

    monkeypatch.setattr(resume, "folder_lock", lambda *a, **k: nullcontext())
    with pytest.raises(ValueError, match="the harvest's own"), resume.store_lock(str(tmp_path / "ro" / "s")):
        raise ValueError("the harvest's own")


def test_without_flock_the_module_loads_and_locks_nothing_saying_so_once(tmp_path, monkeypatch):
    """Windows has no fcntl: actdict.lock still loads (every stage imports it), and a lock is a note said
    once per process, the block running unguarded (docs/architecture.md, Platforms)."""
    import importlib.util

    import actdict.lock

    monkeypatch.setitem(sys.modules, "fcntl", None)  # `import fcntl` raises ImportError, as on Windows
    spec = importlib.util.spec_from_file_location("lock_without_flock", actdict.lock.__file__)
    lock = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lock)
    monkeypatch.setattr(sys, "platform", "win32")
    said, ran = [], []
    store = str(tmp_path / "store")
    with lock.folder_lock(store, "store s", said.append):
        with lock.folder_lock(store, "store s", said.append, name=lock.READERS, shared=True):
            ran.append(1)
    with lock.folder_lock(str(tmp_path / "run"), "run folder r", said.append):
        ran.append(2)
    assert ran == [1, 2]
    assert said == ["note: this platform (win32) has no flock, so actdict locks no folder: run one actdict "
                    "process per store and per run folder at a time (a second one would take the first one's "
                    "unfinished files for a killed run's leftovers)"]
    assert (tmp_path / "store").is_dir() and (tmp_path / "run").is_dir()  # made, as a lock makes them


def test_where_is_no_statvfs_os_access_alone_says_what_cannot_be_written(tmp_path, monkeypatch, read_only):
    """Windows has no os.statvfs (nor os.ST_RDONLY): the dry runs' write check still answers, by os.access."""
    from actdict.lock import write_problem

    monkeypatch.delattr(os, "statvfs")
    monkeypatch.delattr(os, "ST_RDONLY")
    (tmp_path / "run").mkdir()
    assert write_problem([tmp_path / "run" / "dicts"], "dictionaries") is None
    read_only("run")
    assert write_problem([tmp_path / "run" / "dicts"], "dictionaries") == (
        f"cannot write in {tmp_path}/run/dicts (Permission denied), where dictionaries go: make it writable, "
        "or set run_dir to another folder")


def test_on_macos_a_remote_lock_of_an_ended_process_of_this_host_is_taken_for_dead(monkeypatch):
    """macOS has no /proc and no pid namespaces: a lock object that a killed harvest of this Mac left
    was never taken over (each later harvest stopped until the user deleted it); a free pid of this host
    now says its process ended. A live pid, or a Linux without /proc (a container's may be hidden), still
    does not."""
    import actdict.lock as lk

    ended = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                               text=True).stdout)
    monkeypatch.setattr(lk, "_started", lambda pid: None)
    monkeypatch.setattr(lk, "_pid_space", lambda: None)
    here = {"host": socket.gethostname(), "pids": None}
    assert not lk._gone(here | {"pid": ended})  # Linux without /proc
    monkeypatch.setattr(lk, "ONE_PID_SPACE", True, raising=False)
    assert lk._gone(here | {"pid": ended})
    assert not lk._gone(here | {"pid": os.getpid()})
    assert not lk._gone(here | {"host": "another-mac", "pid": ended})
