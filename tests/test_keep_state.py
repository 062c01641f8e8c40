"""train.keep_state: a finished run's kept state continues into a run with more epochs, which then ends
exactly where an uninterrupted run of those epochs ends; anything else starts over, and says why."""

import numpy as np
import pytest
import torch

from actdict.config import Common
from actdict.harvest.store import write_vectors
from actdict.train import checkpoint
from actdict.train.config import DictConfig, TrainConfig
from actdict.train.log import log_path, read_log
from actdict.train.resume import KEPT, STATE, read_meta
from actdict.train.run import main

DICTS = [DictConfig(name="vaease", variant="vaease", k=12), DictConfig(name="l1", variant="sae_l1", k=12)]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    x = np.random.default_rng(1).standard_normal((640, 6)).astype(np.float32)
    return write_vectors(str(tmp_path_factory.mktemp("s") / "store"), x, shard_rows=256, chunk_rows=64)


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"dicts": DICTS, "epochs": 2, "batch_size": 50, "device": "cpu",
                          "checkpoint_every": 0, "log_every": 5} | kw)


def run(store, folder, **kw) -> Common:
    common = Common(run_dir=str(folder), seed=5, store=store.path)
    main(common, cfg(**kw))
    return common


def trained(folder, name):
    model, meta = checkpoint.load(folder / "dicts" / name)
    return model.state_dict(), meta


def test_more_epochs_continue_the_kept_state_bit_exactly(store, tmp_path, capsys):
    run(store, tmp_path / "ref", epochs=3)  # uninterrupted
    run(store, tmp_path / "run", keep_state=True)
    assert not (tmp_path / "run" / STATE).exists()  # the run's resume state goes as always
    kept = tmp_path / "run" / "dicts" / "vaease" / KEPT  # each dictionary's final state stays beside it
    meta = read_meta(kept)
    assert meta["final"] and meta["position"] == {"epoch": 2, "batch": 0, "step": 2 * 12}  # 576 rows / 50
    assert list(meta["members"]) == ["vaease"]
    capsys.readouterr()
    run(store, tmp_path / "run", epochs=3, keep_state=True)
    out = capsys.readouterr().out
    assert "continues the finished run kept at epoch 2 (train.keep_state) to epoch 3" in out
    for name in ("vaease", "l1"):
        (ref, ref_meta), (got, meta) = trained(tmp_path / "ref", name), trained(tmp_path / "run", name)
        assert all(torch.equal(ref[k], got[k]) for k in ref)
        assert meta["history"] == ref_meta["history"] and len(meta["history"]) == 3
        assert meta["config_hash"] == ref_meta["config_hash"] and meta["resumed_at_step"] == 24
        assert [(g["from_step"], g["to_step"], g["world_size"]) for g in meta["segments"]] == [(0, 24, 1),
                                                                                              (24, 36, 1)]
        assert meta["wall_s"] == pytest.approx(sum(g["wall_s"] for g in meta["segments"]), abs=2e-3)
        (ref_head, ref_log), (head, log) = (read_log(log_path(tmp_path / f, name)) for f in ("ref", "run"))
        assert head == ref_head and head["config_hash"] == meta["config_hash"]  # the extended run's log
        assert [r["step"] for r in log] == [5, 10, 12, 15, 20, 24, 25, 30, 35, 36]  # steps 5k, epoch ends
        assert [{k: v for k, v in r.items() if k != "time"} for r in log] == [
            {k: v for k, v in r.items() if k != "time"} for r in ref_log]  # the first run's records kept
    assert read_meta(kept)["position"]["epoch"] == 3  # kept again: 4 epochs would continue it too
    for steps, kept_too in ((24, True), (23, False)):  # max_steps at the end of the last epoch, or inside it
        run(store, tmp_path / f"max{steps}", keep_state=True, max_steps=steps)
        assert (tmp_path / f"max{steps}" / "dicts" / "l1" / KEPT).exists() is kept_too
    assert "no state kept, since the run stopped at train.max_steps, inside" in capsys.readouterr().out


def test_a_dictionary_added_later_keeps_the_others_states(store, tmp_path, capsys):
    """Adding a dictionary to a finished sweep trains it alone and leaves the others' kept states; then
    the three continue together, as a 3-epoch run of all three would end."""
    extra = DictConfig(name="topk", variant="sae_topk", k=12, params={"topk": 3})
    run(store, tmp_path / "ref", epochs=3, dicts=[*DICTS, extra])
    run(store, tmp_path / "run", keep_state=True)
    run(store, tmp_path / "run", keep_state=True, dicts=[*DICTS, extra])  # vaease, l1 skipped
    assert [read_meta(tmp_path / "run" / "dicts" / n / KEPT)["position"]["step"] for n in
            ("vaease", "l1", "topk")] == [24, 24, 24]
    capsys.readouterr()
    run(store, tmp_path / "run", epochs=3, keep_state=True, dicts=[*DICTS, extra])
    assert "continues the finished run kept at epoch 2" in capsys.readouterr().out
    for name in ("vaease", "l1", "topk"):
        ref, got = trained(tmp_path / "ref", name)[0], trained(tmp_path / "run", name)[0]
        assert all(torch.equal(ref[k], got[k]) for k in ref)
    capsys.readouterr()
    run(store, tmp_path / "run", epochs=4, dicts=[DICTS[0], extra])  # keep_state off: each kept one removed
    out = capsys.readouterr().out  # a kept state continues: no hint to keep one
    assert "vaease, topk: their finished checkpoints will be replaced" in out
    assert "train.keep_state=true keeps" not in out
    assert not (tmp_path / "run" / "dicts" / "vaease" / KEPT).exists()
    assert (tmp_path / "run" / "dicts" / "l1" / KEPT).exists()  # not trained this time: untouched


def test_a_sweep_given_more_epochs_says_its_checkpoints_are_replaced_in_one_line(store, tmp_path, capsys):
    """Raising a sweep's epochs printed 'NAME: its finished checkpoint will be replaced (... train.epochs:
    2 -> 3) ...' once per dictionary (11 alike lines for a sweep of 11) before 'continuing ...'."""
    sweep = [DictConfig(name=f"l1_lam1-{lam}", variant="sae_l1", k=12, params={"lam1": lam})
             for lam in (0.1, 0.3, 1.0, 3.0)]
    run(store, tmp_path / "run", keep_state=True, dicts=sweep)
    capsys.readouterr()
    run(store, tmp_path / "run", keep_state=True, dicts=sweep, epochs=3)
    out = capsys.readouterr().out.splitlines()
    assert [line for line in out if "will be replaced" in line] == [
        "train: 4 dictionaries l1_lam1-0.1 ... l1_lam1-3.0: their finished checkpoints will be replaced "
        "(they were trained with another config: train.epochs: 2 -> 3); set run_dir, or rename the "
        "dictionaries, to keep both"]
    assert "train: continues the finished run kept at epoch 2 (train.keep_state) to epoch 3" in out


def test_what_a_kept_state_does_not_continue_starts_over(store, tmp_path, capsys):
    run(store, tmp_path / "run", keep_state=True, schedule="warmup_cosine")
    capsys.readouterr()
    run(store, tmp_path / "run", epochs=3, schedule="warmup_cosine")  # the decay spans the whole run
    out = capsys.readouterr().out
    assert "do not continue this run (vaease: schedule warmup_cosine decays over the whole run" in out
    assert trained(tmp_path / "run", "l1")[1]["resumed_at_step"] is None
    assert not (tmp_path / "run" / "dicts" / "l1" / KEPT).exists()  # keep_state off: removed at the end
    run(store, tmp_path / "run2", keep_state=True)
    capsys.readouterr()
    run(store, tmp_path / "run2", epochs=3, dicts=[DICTS[0], DictConfig(name="l1", variant="sae_l1", k=12,
                                                                        lr=0.01)])
    assert "do not continue this run (l1: dict.lr: 0.005 -> 0.01; train.epochs: 2 -> 3)" in (
        capsys.readouterr().out)  # not a ResumeConflict: a finished run's state is set aside
    run(store, tmp_path / "run3")
    capsys.readouterr()
    run(store, tmp_path / "run3", epochs=3)  # no kept state: replaced, and told how to keep one next time
    said = "train.epochs: 2 -> 3); set run_dir, or rename the dictionaries, to keep both; train.keep_state="
    assert said in capsys.readouterr().out


def test_the_dry_run_says_whether_the_kept_states_continue(store, tmp_path, capsys):
    """--dry-run listed the dictionaries of a larger train.epochs as replaced, and said nothing of the kept
    states the training then continues from; it says what the training then says (and, under
    train.resume=false, that they are not used, where it said nothing)."""
    from actdict.train.plan import plan

    common = run(store, tmp_path / "run", keep_state=True)
    assert plan(common, cfg(epochs=3, keep_state=True)).lines[-1] == (
        "train: continues the finished run kept at epoch 2 (train.keep_state) to epoch 3")
    other = [DictConfig(name="vaease", variant="vaease", k=12, lr=0.02), DICTS[1]]
    said = plan(common, cfg(epochs=3, dicts=other)).lines[-1]
    assert said.startswith("train: the kept states of l1, vaease do not continue this run (vaease: "
                           "dict.lr: ") and said.endswith("removed when it ends (train.keep_state is off)")
    assert plan(common, cfg(epochs=3, resume=False)).lines[-1] == (
        "train: train.resume=false: the kept states of l1, vaease are not used")
    assert plan(common, cfg()).lines[-1].startswith("  l1 ")  # nothing to train: nothing continued
    capsys.readouterr()
    main(common, cfg(epochs=3, dicts=other))
    assert said in capsys.readouterr().out.splitlines()  # the training's own words


def test_under_resume_false_the_dry_run_says_the_resume_state_and_the_kept_states_are_not_used(
        store, tmp_path, capsys, monkeypatch):
    """A resume state beside the kept states: train.resume=false uses neither, and the training says both;
    the dry run said only the resume state's line."""
    from actdict.train import run as train_run
    from actdict.train.plan import plan

    common = run(store, tmp_path / "run", keep_state=True)

    def killed(*_a, **_k):
        raise KeyboardInterrupt  # after the last step, before the checkpoints: the resume state stays

    monkeypatch.setattr(train_run, "save_finished", killed)
    with pytest.raises(KeyboardInterrupt):
        main(common, cfg(epochs=3, keep_state=True, checkpoint_every=6))
    monkeypatch.undo()
    assert (tmp_path / "run" / STATE).is_file()
    kept = "train: train.resume=false: the kept states of l1, vaease are not used"
    assert plan(common, cfg(epochs=3, resume=False)).lines[-2:] == [
        f"train: train.resume=false: the resume state {tmp_path / 'run' / STATE} (step 36 of l1, "
        "vaease) is not used, and this run's replaces it", kept]
    capsys.readouterr()
    said = plan(common, cfg(epochs=3, resume=False)).lines[-2:]
    main(common, cfg(epochs=3, resume=False))
    assert set(said) <= set(capsys.readouterr().out.splitlines())  # the training's own words
