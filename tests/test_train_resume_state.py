"""A training's resume state: written, read back, refused naming what changed, dropped, kept, cleaned up."""

import json

import numpy as np
import pytest
import torch

from actdict.config import Common
from actdict.harvest.store import write_vectors
from actdict.train import checkpoint
from actdict.train.config import DictConfig, TrainConfig
from actdict.train.member import Member
from actdict.train.protocol import make
from tests import train_store

store = train_store.store  # a fixture: the tests below take it as an argument


def test_a_kill_between_the_final_saves_resumes(store, tmp_path, monkeypatch):
    from actdict.train.run import main

    common = Common(run_dir=str(tmp_path / "run"), seed=3, store=store.path)
    cfg = TrainConfig(dicts=[DictConfig("a", "sae_topk", k=4, lr=0.01, params={"topk": 2}),
                             DictConfig("b", "sae_topk", k=4, lr=0.02, params={"topk": 2})],
                      epochs=1, batch_size=100, test_fraction=0.2, device="cpu", checkpoint_every=1)
    real = checkpoint.save

    def dies_on_b(path, model, record):
        if record["name"] == "b":
            raise OSError("killed")
        return real(path, model, record)

    monkeypatch.setattr(checkpoint, "save", dies_on_b)
    with pytest.raises(OSError, match="killed"):
        main(common, cfg)  # a's checkpoint written, b's not; the state holds both
    monkeypatch.setattr(checkpoint, "save", real)
    main(common, cfg)  # not a ResumeConflict: a is finished, b resumes from the state
    _, meta = checkpoint.load(tmp_path / "run" / "dicts" / "b")
    assert meta["finished"] and meta["resumed_at_step"] == meta["steps"] == 9


def test_a_refused_resume_says_what_changed_and_resume_drop_resumes_the_rest(store, tmp_path, stop_training):
    """A sweep killed with its state on disk: a changed dictionary is named with what changed; leaving one
    out is refused until train.resume_drop names it, and then the others finish as if never interrupted."""
    from dataclasses import replace

    from actdict.train.resume import STATE, ResumeConflict, read_meta
    from actdict.train.run import main

    def cfg(*dicts, **kw):
        return TrainConfig(dicts=list(dicts), epochs=2, batch_size=100, test_fraction=0.2, device="cpu",
                           checkpoint_every=3, **kw)

    a = DictConfig("a", "sae_topk", k=4, lr=0.01, params={"topk": 2})
    b = DictConfig("b", "sae_topk", k=4, lr=0.02, params={"topk": 2})
    main(Common(run_dir=str(tmp_path / "ref"), seed=3, store=store.path), cfg(a))  # a alone, uninterrupted
    common = Common(run_dir=str(tmp_path / "run"), seed=3, store=store.path)
    stop_training(common, cfg(a, b), 6)  # as a SIGTERM: the state of step 6 holds a and b
    state = tmp_path / "run" / STATE
    assert read_meta(state)["position"]["step"] == 6
    with pytest.raises(ResumeConflict, match=r"at step 6; b: dict\.lr: 0\.02 -> 0\.03\): rerun that run"):
        main(common, cfg(a, replace(b, lr=0.03)))
    other = store.read_rows(0, len(store)).acts + 1  # other vectors, the same layout
    moved = Common(run_dir=common.run_dir, seed=3, store=write_vectors(
        str(tmp_path / "other"), other, shard_rows=256, chunk_rows=64).path)
    with pytest.raises(ResumeConflict, match=r"a, b: store\.content: .*the store changed since that run "
                                             r"began \(grown, or written again\), so it cannot continue"):
        main(moved, cfg(a, b))
    with pytest.raises(ResumeConflict, match=r"b: in the state, not in train\.dicts\): to resume \['a'\] and "
                                             r"drop the progress of \['b'\], set train\.resume_drop=\[b\]"):
        main(common, cfg(a))
    main(common, cfg(a, resume_drop=["b"]))
    _, meta = checkpoint.load(tmp_path / "run" / "dicts" / "a")
    assert meta["resumed_at_step"] == 6 and meta["steps"] == 18 and not state.exists()
    segs = meta["segments"]  # the killed segment's record came through the state
    assert [(g["from_step"], g["to_step"]) for g in segs] == [(0, 6), (6, 18)] and segs[0]["device"] == "cpu"
    assert meta["wall_s"] == pytest.approx(segs[0]["wall_s"] + segs[1]["wall_s"], abs=2e-3)
    assert min(g["wall_s"] for g in segs) > 0
    ref = checkpoint.load(tmp_path / "ref" / "dicts" / "a")[0].state_dict()
    got = checkpoint.load(tmp_path / "run" / "dicts" / "a")[0].state_dict()
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_an_interrupted_run_of_another_split_leaves_the_finished_dictionaries_split(store, tmp_path,
                                                                                    stop_training):
    """analyze reads <run_dir>/split.json: a run with another split (test_fraction, seed) stopped before its
    checkpoints must not leave the finished dictionaries evaluated on rows they were trained on."""

    from actdict.train import run

    common = Common(run_dir=str(tmp_path / "run"), seed=3, store=store.path)
    cfg = TrainConfig(dicts=[DictConfig("a", "sae_topk", k=4, params={"topk": 2})], epochs=1, batch_size=100,
                      test_fraction=0.2, device="cpu")
    run.main(common, cfg)
    split = tmp_path / "run" / "split.json"
    first = json.loads(split.read_text())
    assert json.loads((tmp_path / "run" / "dicts" / "a" / "cfg.json").read_text())["test_chunks"] == first[
        "test_chunks"] and len(first["test_chunks"]) == 3

    other = TrainConfig(**{**vars(cfg), "test_fraction": 0.5})
    stop_training(common, other, 1)
    assert json.loads(split.read_text()) == first  # still the finished dictionary's split
    run.main(common, other)  # resumed and finished: its split goes with its checkpoint
    assert len(json.loads(split.read_text())["test_chunks"]) == 8 == len(json.loads(
        (tmp_path / "run" / "dicts" / "a" / "cfg.json").read_text())["test_chunks"])


def test_a_resume_reads_its_state_header_once(store, tmp_path, monkeypatch, stop_training):
    """A run resumed from its state on disk reads the state's JSON header once (the stale, damaged and
    other-run checks and the load share that read) and opens the file once more for its tensors; it resumes
    at the step saved."""

    from actdict.train import resume
    from actdict.train.resume import STATE
    from actdict.train.run import main

    cfg = TrainConfig(dicts=[DictConfig("a", "sae_topk", k=4, lr=0.01, params={"topk": 2})], epochs=2,
                      batch_size=100, test_fraction=0.2, device="cpu", checkpoint_every=3)
    common = Common(run_dir=str(tmp_path / "run"), seed=3, store=store.path)
    stop_training(common, cfg, 6)
    seen, real = [], resume.safe_open

    class Counted:  # safe_open, recording each open and each header read of a file
        def __init__(self, path, *a, **kw):
            self.path, self.inner = path, real(path, *a, **kw)
            seen.append((path, "open"))

        def __enter__(self):
            self.f = self.inner.__enter__()
            return self

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

        def metadata(self):
            seen.append((self.path, "header"))
            return self.f.metadata()

        def keys(self):
            return self.f.keys()

        def get_tensor(self, k):
            return self.f.get_tensor(k)

    monkeypatch.setattr(resume, "safe_open", Counted)
    main(common, cfg)
    state = str(tmp_path / "run" / STATE)
    assert [what for path, what in seen if path == state] == ["open", "header", "open"]
    _, meta = checkpoint.load(tmp_path / "run" / "dicts" / "a")
    assert meta["resumed_at_step"] == 6 and meta["steps"] == 18


def test_replace_note_hints_keep_state_for_more_epochs_only():
    from actdict.train.run import replace_note

    hint = "train.keep_state=true keeps a finished run's state"
    assert hint in replace_note(["a"], "train.epochs: 2 -> 3", keep_state=False)
    assert hint not in replace_note(["a"], "train.epochs: 2 -> 3", keep_state=True)  # asked for, or left
    assert hint not in replace_note(["a"], "dict.lr: 0.005 -> 0.01", keep_state=False)  # not a longer run


def test_a_resume_conflict_blames_the_store_only_when_only_the_store_changed():
    """The store-only advice needs every recorded change under store., a recorded config to compare, and the
    same members; anything else gets the general advice."""
    from actdict.train.resume import conflict

    said = "the store changed since that run began"
    old = {"store": {"content": "x1", "rows": 10}, "dict": {"lr": 0.01}}
    moved = old | {"store": {"content": "x2", "rows": 10}}

    def why(members, new=moved):
        return conflict({"members": members, "position": {"step": 6}}, {"a": "h2"}, {"a": new}, set())

    assert said in why({"a": {"config_hash": "h1", "config": old}})
    assert said not in why({"a": {"config_hash": "h1", "config": old}}, moved | {"dict": {"lr": 0.02}})
    assert said not in why({"a": {"config_hash": "h1"}})  # an older state: no config recorded
    assert said not in why({"a": {"config_hash": "h1", "config": old}, "b": {"config_hash": "h3"}})


def test_a_resume_state_is_written_from_the_dictionaries_own_memory(tmp_path, monkeypatch):
    """Each checkpoint copied every dictionary's weights and Adam state before writing them: a sweep's
    whole state twice in memory at once (+271 MiB for 20 sae_l1 of k = 1,536 at d = 384). Tensors are now
    written from their own memory, and copied only where two share a storage (safetensors refuses that);
    the state reads back the same."""
    from contextlib import nullcontext

    from actdict.train import resume
    from actdict.train.member import Position
    from actdict.train.step import step

    members = [Member(f"l1_{i}", make("sae_l1", 4, 6, seed=i), 0.01) for i in range(2)]
    for m in members:
        m.setup(torch.device("cpu"))
        step(m, torch.randn(16, 4), 0.01, nullcontext(), None)
    written, real, hashes = {}, resume.write_safetensors, {"l1_0": "h", "l1_1": "h"}

    def write(tensors, *a, **kw):  # what is handed to safetensors
        written.update(tensors)
        real(tensors, *a, **kw)

    monkeypatch.setattr(resume, "write_safetensors", write)
    path = resume.save_state(tmp_path / "state.safetensors", members, hashes, Position(0, 1, 1))
    for m in members:
        mine = {f"{m.name}/model/{k}": v for k, v in m.model.state_dict().items()}
        mine |= {f"{m.name}/opt/{p}/exp_avg": st["exp_avg"] for p, st in m.opt.state_dict()["state"].items()}
        assert all(written[k].data_ptr() == v.data_ptr() for k, v in mine.items())  # no copy
    tied = torch.zeros(3)
    both = resume.unshared({"a": tied, "b": tied, "c": torch.ones(2)})
    assert both["a"].data_ptr() == tied.data_ptr() != both["b"].data_ptr() and both["b"].equal(tied)
    fresh = [Member(f"l1_{i}", make("sae_l1", 4, 6, seed=9), 0.01) for i in range(2)]
    for m in fresh:
        m.setup(torch.device("cpu"))
    resume.load_state(path, fresh, hashes)
    for m, f in zip(members, fresh, strict=True):
        assert all(v.equal(f.model.state_dict()[k]) for k, v in m.model.state_dict().items())


def test_a_resume_conflict_of_a_sweep_names_each_change_once():
    """A sweep of 16 whose lr changed after a kill: the refusal listed the 16 names, then each name again with
    the same 'dict.lr: 0.005 -> 0.001' (1,900 characters). Dictionaries with the same change are now named
    together, more than 3 by their number, first and last; 3 or fewer are named as before."""
    from actdict.train.resume import conflict

    names = [f"l1_lam1-{v}_seed-{s}" for v in (0.01, 0.1, 1.0) for s in range(6)]  # 18, sorted
    old, new = {"dict": {"lr": 0.005}}, {"dict": {"lr": 0.001}}
    members = {n: {"config_hash": "h1", "config": old} for n in names}
    hashes = {n: "h2" for n in names[:16]} | {"l1_lam1-2.0_seed-0": "h2"}
    said = conflict({"members": members, "position": {"step": 5}}, hashes, dict.fromkeys(hashes, new), set())
    assert said.startswith("holds the resume state of another run (18 dictionaries l1_lam1-0.01_seed-0 ... "
                           "l1_lam1-1.0_seed-5 at step 5; l1_lam1-1.0_seed-4, l1_lam1-1.0_seed-5: in the "
                           "state, not in train.dicts; l1_lam1-2.0_seed-0: not in the state; 16 dictionaries "
                           "l1_lam1-0.01_seed-0 ... l1_lam1-1.0_seed-3: dict.lr: 0.005 -> 0.001): rerun")
    two = conflict({"members": dict(list(members.items())[:2]), "position": {"step": 5}},
                   dict.fromkeys(names[:2], "h2"), dict.fromkeys(names[:2], new), set())
    assert two.startswith(f"holds the resume state of another run (dictionaries {names[:2]} at step 5; "
                          f"{names[0]}, {names[1]}: dict.lr: 0.005 -> 0.001): rerun")


def test_kept_states_continue_only_from_the_end_of_their_last_epoch_at_one_step():
    """``resume.extension``: kept states continue a longer run only when each stands at the end of the epochs
    it was configured for (epoch = its epochs, batch 0), all at the same step, under a schedule whose rate at
    a step does not depend on the run's length (a decay to eta_min over more steps is another run)."""
    from actdict.train.resume import extension

    def kept(name, epochs, epoch, batch, step, schedule="constant"):
        config = {"train": {"epochs": epochs, "schedule": schedule}, "dict": {"k": 4}}
        return {"position": {"epoch": epoch, "batch": batch, "step": step},
                "members": {name: {"config_hash": f"h-{name}", "config": config}}}

    def new(schedule="constant"):
        return {n: {"train": {"epochs": 3, "schedule": schedule}, "dict": {"k": 4}} for n in "ab"}

    hashes = {"a": "h2-a", "b": "h2-b"}
    for schedule in ("constant", "cosine_restarts"):
        assert extension({n: kept(n, 2, 2, 0, 24, schedule) for n in "ab"}, hashes, new(schedule)) == (
            {"a": "h-a", "b": "h-b"}, "")
    for schedule in ("warmup_cosine", "linear_decay"):
        got = extension({n: kept(n, 2, 2, 0, 24, schedule) for n in "ab"}, hashes, new(schedule))
        assert got[0] is None and got[1].startswith(f"a: schedule {schedule} decays over the whole run")
    assert extension({"a": kept("a", 2, 2, 0, 24), "b": kept("b", 2, 2, 0, 23)}, hashes, new()) == (
        None, "the kept states stand at different steps")
    for epoch, batch in ((1, 0), (2, 5), (1, 11)):  # a state inside the run, not at its end
        got = extension({n: kept(n, 2, epoch, batch, 24) for n in "ab"}, hashes, new())
        assert got == (None, f"a: train.epochs 2 -> 3, the state at epoch {epoch}")


def test_resume_drop_naming_a_dictionary_still_trained_resumes_it(store, tmp_path, stop_training):
    """train.resume_drop drops only dictionaries the run leaves out of train.dicts: one it still trains is
    resumed from the state with the others (not refused, not started over)."""
    from actdict.train.run import main

    cfg = TrainConfig(dicts=[DictConfig("a", "sae_topk", k=4, lr=0.01, params={"topk": 2}),
                             DictConfig("b", "sae_topk", k=4, lr=0.02, params={"topk": 2})],
                      epochs=1, batch_size=100, test_fraction=0.2, device="cpu", checkpoint_every=0)
    common = Common(run_dir=str(tmp_path / "run"), seed=3, store=store.path)
    stop_training(common, cfg, 4)
    main(common, TrainConfig(**{**vars(cfg), "resume_drop": ["b"]}))
    for name in ("a", "b"):
        meta = checkpoint.load(tmp_path / "run" / "dicts" / name)[1]
        assert (meta["resumed_at_step"], meta["steps"]) == (4, 9)


def test_a_resumed_run_warns_as_the_uninterrupted_one(store, tmp_path, stop_training):
    """The training warning (``Member.diverged``: the SSE's moving average, the last epoch's baseline and
    spread) of a run stopped inside its last epoch and resumed is the uninterrupted run's, word for word and
    number for number: the resume state carries them, not only the weights."""
    from actdict.train.run import main

    cfg = TrainConfig(dicts=[DictConfig("flat", "sae_l1", k=16, lr=0.05, params={"lam1": 1e4})], epochs=4,
                      batch_size=100, test_fraction=0.2, device="cpu", checkpoint_every=0)
    runs = {}
    for name, stop in (("whole", None), ("resumed", 30), ("early", 3)):
        common = Common(run_dir=str(tmp_path / name), seed=0, store=store.path)
        if stop:
            stop_training(common, cfg, stop)  # 8 steps an epoch: step 30 is in the last one
        main(common, cfg)
        runs[name] = checkpoint.load(tmp_path / name / "dicts" / "flat")[1]
    assert "it has learned almost nothing" in runs["whole"]["warning"]
    for name in ("resumed", "early"):
        assert runs[name]["resumed_at_step"] == {"resumed": 30, "early": 3}[name]
        assert runs[name]["warning"] == runs["whole"]["warning"]
        assert runs[name]["history"] == runs["whole"]["history"]


def test_a_rerun_removes_the_temporary_files_a_killed_write_left(store, tmp_path, stop_training):
    """A kill inside the split's or the resume state's write (temporary file, then rename) leaves the
    temporary file in the run folder: the rerun that finishes the run removes it, so that the finished
    folder holds what an uninterrupted run's does."""
    from actdict.train.resume import STATE
    from actdict.train.run import main

    cfg = TrainConfig(dicts=[DictConfig("a", "sae_l1", k=4, lr=0.01)], epochs=2, batch_size=100,
                      test_fraction=0.2, device="cpu", checkpoint_every=0)
    files = {}
    for name in ("whole", "killed"):
        common = Common(run_dir=str(tmp_path / name), seed=0, store=store.path)
        if name == "killed":
            stop_training(common, cfg, 5)  # a SIGTERM's state, then a kill inside the writes that follow
            (tmp_path / name / ".split.json.tmp-0badf00d").write_text('{"train_ch')
            (tmp_path / name / f".{STATE}.tmp").write_bytes(b"\x08\x00")
        main(common, cfg)
        files[name] = sorted(str(p.relative_to(tmp_path / name)) for p in (tmp_path / name).rglob("*"))
    assert files["killed"] == files["whole"]


def test_a_resume_state_from_before_2026_12_05_refused_for_its_store_path_says_how_to_resume(tmp_path,
                                                                                            stop_training):
    """A resume state written before 2026-12-05 records no config and hashed the store's path as spelled:
    after the store moved, the same command is refused, and the refusal says the state is an older actdict's
    and to spell the store as then (it said 'another config or store: rerun that run's command', which is
    the command just run); a symlink at the old path then resumes it."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from actdict.harvest.store import open_store
    from actdict.train.identity import describe_store, dict_hash
    from actdict.train.resume import STATE, ResumeConflict
    from actdict.train.run import main

    x = np.random.default_rng(0).standard_normal((512, 3)).astype(np.float32)
    write_vectors(str(tmp_path / "old" / "store"), x, shard_rows=256, chunk_rows=64)
    dc = DictConfig("a", "sae_topk", k=4, lr=0.01, params={"topk": 2})
    cfg = TrainConfig(dicts=[dc], epochs=2, batch_size=100, test_fraction=0.25, device="cpu")
    then = Common(run_dir=str(tmp_path / "run"), seed=3, store=str(tmp_path / "old" / "store"))
    stop_training(then, cfg, 3)
    state = tmp_path / "run" / STATE  # as an actdict of before 2026-12-05 wrote it
    with safe_open(str(state), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        meta = json.loads(f.metadata()["actdict_train_state"])
    old_store = describe_store(open_store(then.store), then.store)
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    meta.pop("segments", None)
    meta["members"]["a"].pop("config")
    meta["members"]["a"]["config_hash"] = dict_hash(dc, cfg, then, old_store, split, legacy=True)
    save_file(tensors, str(state), metadata={"actdict_train_state": json.dumps(meta)})
    (tmp_path / "old").rename(tmp_path / "new")  # the store moved
    moved = Common(run_dir=then.run_dir, seed=3, store=str(tmp_path / "new" / "store"))
    with pytest.raises(ResumeConflict, match=r"a: another config or store\): rerun that run's command, with "
                                             r"`store` spelled as it was then \(an actdict of before "
                                             r"2026-12-05 wrote this state"):
        main(moved, cfg)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "store").symlink_to(tmp_path / "new" / "store")
    main(then, cfg)  # spelled as then: it resumes
    _, record = checkpoint.load(tmp_path / "run" / "dicts" / "a")
    assert record["resumed_at_step"] == 3 and record["finished"]


def test_a_resumed_run_saves_over_the_state_it_resumed_from_where_a_mapped_file_cannot_be_replaced(
        store, tmp_path, monkeypatch, stop_training):
    """Windows replaces no file that a process holds mapped, and the tensors of a resume state stay mapped
    from its file while they live (safetensors): the Adam moments a resumed run kept were the file's, so its
    next save over that file failed there. Simulated with an os.replace that refuses a file this process
    has mapped, as Windows' does; the resumed run saves and finishes as the uninterrupted one."""
    import os

    from actdict.train.run import main

    if not os.path.exists("/proc/self/maps"):
        pytest.skip("tells a mapped file by /proc/self/maps (Linux)")
    real = os.replace

    def replace(src, dst, *a, **kw):
        target = os.path.realpath(dst)
        with open("/proc/self/maps") as f:
            if any(line.rstrip("\n").endswith(" " + target) for line in f):
                raise PermissionError(13, "The requested operation cannot be performed on a file with a "
                                          "user-mapped section open", str(dst))
        return real(src, dst, *a, **kw)

    cfg = TrainConfig(dicts=[DictConfig("a", "sae_topk", k=4, lr=0.01, params={"topk": 2})], epochs=2,
                      batch_size=100, test_fraction=0.2, device="cpu", checkpoint_every=3)
    runs = {}
    for name, stop in (("whole", None), ("resumed", 4)):
        common = Common(run_dir=str(tmp_path / name), seed=3, store=store.path)
        if stop:
            stop_training(common, cfg, stop)  # its state saved at step 4, then saved over at 6, 9, ...
            monkeypatch.setattr(os, "replace", replace)
        main(common, cfg)
        runs[name] = checkpoint.load(tmp_path / name / "dicts" / "a")
    assert runs["resumed"][1]["resumed_at_step"] == 4 and runs["resumed"][1]["steps"] == 18
    for k, v in runs["whole"][0].state_dict().items():
        assert torch.equal(runs["resumed"][0].state_dict()[k], v), k
