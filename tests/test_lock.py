"""One writer per folder: a harvest locks its store, a training its run folder; a killed holder frees it."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from actdict.cli import main
from actdict.lock import LOCK_FILE, FolderInUse, folder_lock

HOLD = ("import sys, time; from actdict.lock import folder_lock\n"
        "with folder_lock(sys.argv[1], 'x'):\n    print('held', flush=True); time.sleep(600)\n")


def test_lock_of_a_killed_holder_is_free_at_once(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "store")], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(FolderInUse, match=f"store .* in use by another actdict process .*{LOCK_FILE}"):
            with folder_lock(str(tmp_path / "store"), "store s"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    t = time.perf_counter()
    with folder_lock(str(tmp_path / "store"), "store s"):  # no stale lock: the kernel dropped it
        assert (tmp_path / "store" / LOCK_FILE).is_file()
    assert time.perf_counter() - t < 1


def test_a_read_only_folder_is_read_unlocked(tmp_path, monkeypatch):
    import os

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
    (tmp_path / "doc.txt").write_text("The ferry leaves at nine, rain or shine.\n")
    cfg = tmp_path / "c.yaml"
    src = f"{{kind: files, path: {tmp_path}/doc.txt}}"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\n"
                   f"harvest: {{source: {src}, device: cpu, ctx: 8, max_tokens: 8}}\n"
                   "train: {epochs: 1, batch_size: 4}\n")
    return cfg


@pytest.mark.parametrize("stage, folder", [("harvest", "run/store"), ("train", "run")])
def test_a_second_writer_is_refused_while_the_first_holds_the_folder(tmp_path, capsys, stage, folder):
    cfg = _config(tmp_path)
    with folder_lock(str(tmp_path / folder), "held by this test"):
        assert main([stage, str(cfg)]) == 2
        err = capsys.readouterr().err
        what = "store" if stage == "harvest" else "run folder"
        assert f"FolderInUse: {what} {tmp_path / folder} is in use" in err
        assert sorted(p.name for p in (tmp_path / folder).iterdir()) == [LOCK_FILE]  # nothing written
    if stage == "harvest":  # free again: the harvest runs (the model is the offline MiniLM)
        assert main([stage, str(cfg)]) == 0
        assert (tmp_path / folder / "blocks.3.hook_resid_post" / "manifest.json").is_file()
