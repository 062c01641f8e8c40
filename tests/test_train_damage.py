"""Training's folder after kills, damaged files and full disks: nothing wrong is read as finished, nothing
unreadable ends in a traceback, and stale or damaged states are named and set aside."""

import json

import numpy as np
import pytest
import torch

from actdict.config import Common, ConfigError
from actdict.harvest.store import write_vectors
from actdict.train import checkpoint
from actdict.train.checkpoint import is_finished
from actdict.train.config import DictConfig, TrainConfig
from actdict.train.protocol import make
from actdict.train.resume import STATE, ResumeConflict, read_meta
from actdict.train.run import main


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    x = np.random.default_rng(0).standard_normal((1000, 3)).astype(np.float32)  # [1000, 3]
    return write_vectors(str(tmp_path_factory.mktemp("s") / "store"), x, shard_rows=256, chunk_rows=64)


def cfg(*dicts, **kw):
    return TrainConfig(dicts=list(dicts) or [DictConfig("a", "sae_topk", k=4, lr=0.01, params={"topk": 2})],
                       epochs=2, batch_size=100, test_fraction=0.2, device="cpu", checkpoint_every=3, **kw)


def stopped_at_first_save(common: Common, t: TrainConfig) -> None:
    """Train until the first resume state is saved, then stop there (as a kill would): the state stays."""
    import actdict.train.run as train_run

    real = train_run.train

    def stop_after_first_save(*a, **kw):
        saved = kw["save"]

        def save_then_stop(pos):
            saved(pos)
            raise KeyboardInterrupt

        return real(*a, **(kw | {"save": save_then_stop}))

    train_run.train = stop_after_first_save
    try:
        with pytest.raises(KeyboardInterrupt):
            main(common, t)
    finally:
        train_run.train = real


def test_a_kill_inside_a_save_never_pairs_new_weights_with_the_old_record(tmp_path, monkeypatch):
    checkpoint.save(tmp_path / "d", make("sae_l1", 3, 4, lam1=0.1), {"finished": True, "config_hash": "old"})
    assert is_finished(tmp_path / "d", "old")

    real = checkpoint.os.replace

    def full_at_the_record(src, dst):  # the weights are in place, the record cannot be written
        if str(dst).endswith("cfg.json"):
            raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", full_at_the_record)
    with pytest.raises(checkpoint.WriteError, match=r"could not write .*cfg\.json: .*No space left"):
        checkpoint.save(tmp_path / "d", make("sae_l1", 3, 4), {"finished": True, "config_hash": "new"})
    monkeypatch.undo()
    assert not is_finished(tmp_path / "d", "old") and not (tmp_path / "d" / "cfg.json").exists()
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["model.safetensors"]  # no temporaries
    with pytest.raises(checkpoint.CheckpointError, match="has no cfg.json"):
        checkpoint.load(tmp_path / "d")


def test_a_full_disk_is_one_line_and_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    checkpoint.write_safetensors({"a": torch.ones(2)}, path)
    checkpoint.save(tmp_path / "d", make("sae_l1", 3, 4), {"finished": True, "config_hash": "h"})

    def full(tensors, filename, metadata=None):
        open(filename, "wb").write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", full)
    with pytest.raises(checkpoint.WriteError, match=r"w\.safetensors: .*No space left.* is as it was"):
        checkpoint.write_safetensors({"a": torch.zeros(2)}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "w.safetensors"]
    assert checkpoint.weights_readable(path)
    with pytest.raises(checkpoint.WriteError):  # the weights cannot be written: the old checkpoint stays
        checkpoint.save(tmp_path / "d", make("sae_l1", 3, 4), {"finished": True, "config_hash": "x"})
    assert is_finished(tmp_path / "d", "h") and sorted(p.name for p in (tmp_path / "d").iterdir()) == [
        "cfg.json", "model.safetensors"]


def test_damaged_checkpoints_are_named_and_trained_again(store, tmp_path, capsys):
    common = Common(run_dir=str(tmp_path / "run"), seed=0, store=store.path)
    main(common, cfg())
    folder = tmp_path / "run" / "dicts" / "a"
    good = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(good[: len(good) // 2])  # a copy cut short
    with pytest.raises(checkpoint.CheckpointError, match=r"holds a damaged checkpoint: rerun actdict train"):
        checkpoint.load(folder)
    capsys.readouterr()
    main(common, cfg())
    assert "its weights file is missing or damaged" in capsys.readouterr().out
    assert (folder / "model.safetensors").read_bytes() == good  # trained again, the same weights
    record = (folder / "cfg.json").read_text()
    (folder / "cfg.json").write_text(record[:40])
    with pytest.raises(checkpoint.CheckpointError, match="holds a damaged checkpoint"):
        checkpoint.load(folder)
    (folder / "cfg.json").write_text(json.dumps({"architecture": "standard"}))  # a SAELens cfg.json
    with pytest.raises(checkpoint.CheckpointError, match="is not an actdict checkpoint's record"):
        checkpoint.load(folder)


def test_stale_and_damaged_states_are_set_aside_with_a_note(store, tmp_path, capsys, monkeypatch,
                                                             stop_training):
    common = Common(run_dir=str(tmp_path / "run"), seed=0, store=store.path)
    state = tmp_path / "run" / STATE
    real_unlink = checkpoint.Path.unlink

    def keeps_the_state(self, missing_ok=False):  # a kill after the final saves, before the state goes
        if self.name != STATE:
            real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(checkpoint.Path, "unlink", keeps_the_state)
    main(common, cfg())
    monkeypatch.undo()
    assert read_meta(state)["position"]["step"] == 18
    capsys.readouterr()
    main(common, cfg(DictConfig("a", "sae_topk", k=4, lr=0.02, params={"topk": 2})))  # was a ResumeConflict
    out = capsys.readouterr().out
    assert "removed" in out and "whose dictionaries all finished after it" in out and not state.exists()
    record = json.loads((tmp_path / "run" / "dicts" / "a" / "cfg.json").read_text())
    assert record["dict_config"]["lr"] == 0.02

    b = DictConfig("b", "sae_topk", k=4, lr=0.01, params={"topk": 2})
    stop_training(Common(run_dir=str(tmp_path / "r2"), seed=0, store=store.path), cfg(b), 3)
    c = DictConfig("c", "sae_topk", k=4, lr=0.01, params={"topk": 2})
    with pytest.raises(ResumeConflict, match=r"c: not in the state\): dictionaries join a run only at its "
                                             r"start: finish this one first \(leave \['c'\] out"):
        main(Common(run_dir=str(tmp_path / "r2"), seed=0, store=store.path), cfg(b, c))
    (tmp_path / "r2" / STATE).write_bytes((tmp_path / "r2" / STATE).read_bytes()[:100])
    main(Common(run_dir=str(tmp_path / "r2"), seed=0, store=store.path), cfg(b))
    out = capsys.readouterr().out
    assert f"{tmp_path / 'r2' / STATE} is damaged or not a resume state" in out
    assert json.loads((tmp_path / "r2" / "dicts" / "b" / "cfg.json").read_text())["resumed_at_step"] is None
    (tmp_path / "r2" / STATE).write_bytes(b"\x08garbage")  # damaged, and nothing left to train: removed
    main(Common(run_dir=str(tmp_path / "r2"), seed=0, store=store.path), cfg(b))
    assert "removed" in capsys.readouterr().out and not (tmp_path / "r2" / STATE).exists()
    from dataclasses import replace

    stop_training(Common(run_dir=str(tmp_path / "r2"), seed=0, store=store.path), replace(cfg(b), epochs=4),
                  3)  # b to 4 epochs, stopped: its state stays
    main(Common(run_dir=str(tmp_path / "r2"), seed=0, store=store.path), cfg(b))  # 2 epochs: finished
    assert "holds the unfinished run of b (at step 3), another config than this one's: it is kept" in (
        capsys.readouterr().out) and (tmp_path / "r2" / STATE).exists()


@pytest.mark.parametrize("name", ["", ".", "..", ".hidden", "a/b", "a\0b", "x" * 201])
def test_names_that_cannot_be_folders_are_refused(name):
    with pytest.raises(ConfigError, match="cannot name a dictionary"):
        DictConfig(name, "sae_l1")


def test_a_read_only_run_folder_and_a_cut_split_are_said_before_training(store, tmp_path, capsys,
                                                                          read_only):
    from actdict import lock

    common = Common(run_dir=str(tmp_path / "run"), seed=0, store=store.path)
    main(common, cfg())
    split = (tmp_path / "run" / "split.json").read_text()
    (tmp_path / "run" / "split.json").write_text(split[:30])  # a kill mid-write, before it was atomic
    main(common, cfg())  # all finished: skipped, and the split is whole again
    assert (tmp_path / "run" / "split.json").read_text() == split
    read_only("dicts/a")
    capsys.readouterr()
    with pytest.raises(lock.FolderNotWritable, match=r"cannot write in .*dicts/a \(Permission denied\)"):
        main(common, cfg(DictConfig("a", "sae_topk", k=4, lr=0.02, params={"topk": 2})))
    assert "train: 100%" not in capsys.readouterr().err  # refused before the first step
    record = json.loads((tmp_path / "run" / "dicts" / "a" / "cfg.json").read_text())
    assert record["dict_config"]["lr"] == 0.01  # the finished checkpoint is untouched
    (tmp_path / "run" / "dicts" / "a" / "snapshots").mkdir()  # another user's, or copied read-only: a
    read_only("dicts/a/snapshots")  # snapshot there was a PermissionError traceback after the steps before it
    with pytest.raises(lock.FolderNotWritable, match=r"cannot write in .*dicts/a/snapshots \(Permission de"):
        main(common, cfg(DictConfig("a", "sae_topk", k=4, lr=0.02, params={"topk": 2})))
    assert "train: 100%" not in capsys.readouterr().err


def test_a_checkpoint_saved_while_it_is_read_is_read_whole(tmp_path, monkeypatch):
    """An analysis beside a training: the training saves the checkpoint again between the reads of its
    record and of its weights. The load reads it again: the new record with the new weights, never the old
    record with the new weights."""
    old, new = make("sae_l1", 3, 4), make("sae_l1", 3, 4)
    for m, v in ((old, 1.0), (new, 2.0)):
        for p in m.parameters():
            torch.nn.init.constant_(p, v)
    checkpoint.save(tmp_path / "d", old, {"finished": True, "config_hash": "old"})
    real, saved = checkpoint.load_file, []

    def save_meanwhile(path, *a, **k):
        if not saved:
            saved.append(checkpoint.save(tmp_path / "d", new, {"finished": True, "config_hash": "new"}))
        return real(path, *a, **k)

    monkeypatch.setattr(checkpoint, "load_file", save_meanwhile)
    model, record = checkpoint.load(tmp_path / "d")
    assert saved and record["config_hash"] == "new" and all(bool((p == 2).all()) for p in model.parameters())


def test_a_record_missing_for_a_moment_while_a_save_runs_is_waited_for(tmp_path, monkeypatch):
    """A save that begins between the load's check and its read (cfg.json removed for the moment the new
    weights take its place): the load waits for the new record rather than calling the checkpoint
    unfinished."""
    import threading

    model = make("sae_l1", 3, 4)
    checkpoint.save(tmp_path / "d", model, {"finished": True, "config_hash": "h"})
    cfg = tmp_path / "d" / "cfg.json"
    real, text, began = checkpoint._read, cfg.read_text(), []

    def save_begins(d):
        if not began:
            began.append(cfg.unlink())
            threading.Timer(0.25, lambda: cfg.write_text(text)).start()
        return real(d)

    monkeypatch.setattr(checkpoint, "_read", save_begins)
    _, record = checkpoint.load(tmp_path / "d")
    assert record["config_hash"] == "h"


@pytest.mark.parametrize(("edit", "said"), [
    ({"k": 10**12}, r"does not hold the tensors its cfg.json describes \(sae_l1, d=3, k=1000000000000\): "
                    r"decoder.weight \[3, 4\] \(the record's: \[3, 1000000000000\]\)"),
    ({"d": "3x"}, r"its cfg.json records d='3x', k=4: not whole numbers >= 1"),
    ({"params": [1]}, r"its cfg.json records params \[1\]: not a mapping"),
    ({"normalized": True}, r"decoder.bias \[3\] \(the record's: none\)"),
])
def test_a_record_that_does_not_describe_its_weights_is_damaged_before_any_allocation(tmp_path, edit, said):
    checkpoint.save(tmp_path / "d", make("sae_l1", 3, 4), {"finished": True})
    record = json.loads((tmp_path / "d" / "cfg.json").read_text())
    (tmp_path / "d" / "cfg.json").write_text(json.dumps(record | edit))  # a shared run folder's, edited
    with pytest.raises(checkpoint.CheckpointError, match=r"holds a damaged checkpoint: .*" + said):
        checkpoint.load(tmp_path / "d")


@pytest.mark.parametrize("meta", ['{"members": {"a": {}}, "position": {}}', "[1]",
                                  '{"members": [], "position": 3}'])
def test_a_state_file_whose_json_is_not_a_states_is_set_aside_with_a_note(store, tmp_path, capsys, meta):
    """A resume state whose metadata is JSON but not a state's (another program's, an edit) was a KeyError or
    TypeError traceback in train; it is now named as damaged and replaced, as an unreadable one is."""
    from safetensors.torch import save_file

    (tmp_path / "run").mkdir()
    save_file({"x": torch.zeros(1)}, str(tmp_path / "run" / STATE), metadata={"actdict_train_state": meta})
    assert read_meta(tmp_path / "run" / STATE) is None
    main(Common(run_dir=str(tmp_path / "run"), seed=0, store=store.path), cfg())
    assert f"{tmp_path / 'run' / STATE} is damaged or not a resume state" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "dicts" / "a" / "cfg.json").read_text())["finished"]


def test_a_state_whose_tensors_do_not_fit_its_dictionaries_is_one_line(store, tmp_path):
    """A resume state whose metadata matches the run (its config hashes) but whose tensors do not fit the
    dictionaries (hand-made, or written over by another program) was a load_state_dict traceback."""
    from safetensors.torch import load_file, save_file


    common, t, state = Common(run_dir=str(tmp_path), seed=0, store=store.path), cfg(), tmp_path / STATE
    stopped_at_first_save(common, t)
    meta = read_meta(state)
    tensors = load_file(state)
    key = next(k for k in tensors if k.startswith("a/model/"))
    tensors[key] = torch.zeros(7, 7)  # another shape than the dictionary's
    save_file(tensors, state, metadata={"actdict_train_state": json.dumps(meta)})
    with pytest.raises(ResumeConflict, match=r"holds a state of a that does not fit its dictionary \(.*"
                                             r"\): it is damaged or not this run's; remove it, or set "
                                             r"train\.resume=false"):
        main(common, t)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_weights_with_nan_or_inf_are_named_at_load(tmp_path, bad):
    """A checkpoint whose weights hold NaN or +inf (an edit, a broken copy: a training saves none) stopped
    the analysis with a traceback from the Otsu split ('activity contains NaN'); load names it. (-inf is
    a log of 0: an imported JumpReLU's threshold of 0, test_saelens_import.)"""
    m = make("sae_l1", 3, 4)
    with torch.no_grad():
        m.decoder.weight[1, 2] = bad
    checkpoint.save(tmp_path / "d", m, {"finished": True})
    with pytest.raises(checkpoint.CheckpointError, match=r"d holds weights with NaN or \+inf values "
                                                         r"\(decoder.weight; .*delete the folder and rerun"):
        checkpoint.load(tmp_path / "d")


@pytest.mark.parametrize("normalized", [False, True])
def test_a_jumprelu_threshold_of_minus_inf_loads_and_nan_or_plus_inf_does_not(tmp_path, normalized):
    """An SAELens JumpReLU threshold <= 0 imports as log_threshold -inf (z = relu(p)); load refused it."""
    m = make("sae_jumprelu", 3, 4)
    with torch.no_grad():
        m.log_threshold[1] = -torch.inf
    w = checkpoint.Normalized(m, torch.zeros(3), 1.0) if normalized else m
    checkpoint.save(tmp_path / "d", w, {"finished": True})
    back, _ = checkpoint.load(tmp_path / "d")
    assert back.state_dict()[("inner." if normalized else "") + "log_threshold"][1] == -torch.inf
    for bad in (float("nan"), float("inf")):
        with torch.no_grad():
            m.log_threshold[1] = bad
        checkpoint.save(tmp_path / "e", w, {"finished": True})
        said = r"NaN or \+inf values \((inner\.)?log_threshold;"
        with pytest.raises(checkpoint.CheckpointError, match=said):
            checkpoint.load(tmp_path / "e")


def test_a_state_saved_before_grad_norm_was_logged_leaves_it_out_of_its_epoch_and_interval(store, tmp_path):
    """A run stopped mid-epoch by a version that logged no grad_norm and resumed by this one: the epoch's
    mean and the open interval's summed the gradient norm over the resumed steps only and divided by all
    of them (too low by the share of steps before the stop); they leave it out, and the next ones have it."""
    from safetensors.torch import load_file, save_file

    from actdict.train.log import log_path, read_log

    common, t = Common(run_dir=str(tmp_path), seed=0, store=store.path), cfg(log_every=2)
    state = tmp_path / STATE
    stopped_at_first_save(common, t)
    meta = read_meta(state)
    assert meta["position"] == {"epoch": 0, "batch": 3, "step": 3}
    for part in ("sums", "window"):  # as the older version saved them
        del meta["members"]["a"][part]["grad_norm"]
    save_file(load_file(state), str(state), metadata={"actdict_train_state": json.dumps(meta)})
    main(common, t)
    _, rec = checkpoint.load(tmp_path / "dicts" / "a")
    assert ["grad_norm" in h for h in rec["history"]] == [False, True]
    records = read_log(log_path(tmp_path, "a"))[1]
    assert [(r["step"], "grad_norm" in r) for r in records[:4]] == [(2, True), (4, False), (6, True),
                                                                     (8, True)]
