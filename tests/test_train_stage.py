"""The train stage: its split, checkpoints, config hashes, sweeps, skips and retrainings, and its warnings."""

import json
import os

import numpy as np
import pytest
import torch

from actdict.config import Common
from actdict.harvest.store import write_vectors
from actdict.train import checkpoint
from actdict.train.config import DictConfig, TrainConfig
from actdict.train.data import make_split
from actdict.train.dist import Dist
from actdict.train.member import Member
from actdict.train.protocol import make
from tests import train_store

store = train_store.store  # a fixture: the tests below take it as an argument


def test_store_identity_in_the_hash():
    from actdict.train.identity import dict_hash, store_key

    common, dc = Common(run_dir="r", seed=0, store="s"), DictConfig("v", "vaease")
    split = {"train_chunks": [0, 1]}
    sid = {"path": "runs/x/store", "hook": "h", "rows": 10, "d": 3, "config_hash": "abc",
           "source_fingerprint": "f", "revision": "r"}
    # checkpoints made before 2026-12-05 hashed the store's path as spelled (the code of 8ed0810 gave this):
    assert dict_hash(dc, TrainConfig(), common, sid, split, legacy=True) == "bbf6f65c696ff958"
    same = dict_hash(dc, TrainConfig(), common, sid | {"path": "/abs/runs/x/store"}, split)
    assert dict_hash(dc, TrainConfig(), common, sid, split) == same != "bbf6f65c696ff958"
    named = sid | {"model": "EleutherAI/pythia-70m-deduped"}  # recorded since 2026-12-05: hashes unchanged
    assert dict_hash(dc, TrainConfig(), common, named, split) == same
    assert dict_hash(dc, TrainConfig(), common, named, split, legacy=True) == "bbf6f65c696ff958"
    for other in ({"source_fingerprint": "g"}, {"revision": "r2"}, {"config_hash": "abd"}, {"rows": 11}):
        assert dict_hash(dc, TrainConfig(), common, sid | other, split) != same  # other rows: retrain
    bare = {"path": "x/../x/store", "rows": 10}  # no config_hash: the resolved path tells stores apart
    assert store_key(bare | {"model": None}) == store_key(bare)
    assert store_key(bare)["path"] == os.path.realpath("x/store") and store_key(sid) == {
        k: v for k, v in sid.items() if k != "path"}
    remote = {"path": "s3://b/v1", "rows": 10, "content": "c"}  # a URL: one spelling, trailing '/' or not
    assert store_key(remote | {"path": "s3://b/v1/"}) == store_key(remote) == remote


@pytest.fixture
def case_insensitive(tmp_path, monkeypatch):
    """tmp_path/store and tmp_path/STORE as macOS' default disk has them: one folder, which it lists by the
    name it was made with (STORE, a link here, opens it), and whose realpath keeps the case given."""
    (tmp_path / "store").mkdir()
    (tmp_path / "STORE").symlink_to("store")
    real = os.path.realpath

    def kept_case(path, *args, **kwargs):  # no link on macOS: STORE is resolved as it is spelled
        out = real(path, *args, **kwargs)
        spelled = "STORE" in str(path)
        return out.replace(str(tmp_path / "store"), str(tmp_path / "STORE"), 1) if spelled else out

    monkeypatch.setattr(os.path, "realpath", kept_case)
    return tmp_path


def test_a_path_in_another_case_is_spelled_as_its_disk_holds_it_only_where_that_disk_takes_any_case(
        case_insensitive, tmp_path):
    from actdict.files import disk_path

    assert disk_path(str(tmp_path / "STORE" / "X")) == str(tmp_path / "store" / "X")  # X: not there
    assert disk_path(str(tmp_path / "STORE")) == disk_path(str(tmp_path / "store")) == str(tmp_path / "store")
    (tmp_path / "data").mkdir()
    (tmp_path / "DATA").mkdir()  # a case-sensitive disk's two folders: each its own spelling
    assert disk_path(str(tmp_path / "DATA")) == str(tmp_path / "DATA")
    assert disk_path("no/such") == os.path.realpath("no/such")


def test_a_path_through_a_folder_that_cannot_be_listed_is_left_as_spelled(case_insensitive, tmp_path,
                                                                          monkeypatch):
    """A folder one may pass through but not list (mode 0711, a shared home): disk_path stopped the training
    (and actdict summary) with its PermissionError on a case-insensitive disk; the name stays as given."""
    from actdict.files import disk_path

    listdir = os.listdir

    def refused(folder="."):
        if os.fspath(folder) == str(tmp_path):
            raise PermissionError(13, "Permission denied", str(folder))
        return listdir(folder)

    monkeypatch.setattr(os, "listdir", refused)
    assert disk_path(str(tmp_path / "STORE" / "X")) == str(tmp_path / "STORE" / "X")
    assert disk_path(str(tmp_path / "store")) == str(tmp_path / "store")


def test_a_vectors_store_spelled_in_another_case_on_a_case_insensitive_disk_is_the_same_store(
        case_insensitive, tmp_path, capsys):
    """A store without a config hash (write_vectors, the vectors import) is identified by its path, and
    macOS' realpath keeps the case it is given: store=STORE retrained the dictionaries trained on store,
    one folder there. Its path is now spelled as the disk holds it: they are skipped."""
    from actdict.train.run import main

    x = np.random.default_rng(0).standard_normal((256, 3)).astype(np.float32)
    write_vectors(str(tmp_path / "store"), x, shard_rows=128, chunk_rows=32)
    cfg = TrainConfig(dicts=[DictConfig("s", "sae_topk", k=4, lr=0.01, params={"topk": 2})], epochs=1,
                      batch_size=64, test_fraction=0.25, device="cpu")
    main(Common(run_dir=str(tmp_path / "run"), seed=3, store=str(tmp_path / "store")), cfg)
    capsys.readouterr()
    main(Common(run_dir=str(tmp_path / "run"), seed=3, store=str(tmp_path / "STORE")), cfg)
    assert capsys.readouterr().out.startswith("train: s: finished checkpoint with the same config exists, "
                                              "skipped")
    record = json.loads((tmp_path / "run" / "dicts" / "s" / checkpoint.CFG).read_text())
    assert record["store"]["path"] == str(tmp_path / "store")


def test_train_stage_writes_split_checkpoints_and_skips(store, tmp_path, capsys):
    common = Common(run_dir=str(tmp_path / "run"), seed=3, store=store.path)
    cfg = TrainConfig(dicts=[DictConfig("v", "vaease", k=4, lr=0.01, params={"loggamma_init": 0.0}),
                             DictConfig("s", "sae_topk", k=4, lr=0.01, params={"topk": 2})],
                      epochs=1, batch_size=100, test_fraction=0.2, device="cpu", normalize="mean_scale")
    from actdict.train.identity import dict_hash
    from actdict.train.run import main
    main(common, cfg)
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert split == make_split(store.num_chunks, 0.2, 3)
    umask = os.umask(0o022)
    os.umask(umask)
    for name in ("v", "s"):
        weights = tmp_path / "run" / "dicts" / name / checkpoint.WEIGHTS
        assert weights.stat().st_mode & 0o777 == 0o666 & ~umask  # not safetensors' own 0600
        model, meta = checkpoint.load(tmp_path / "run" / "dicts" / name)
        assert meta["finished"] and meta["steps"] == 9 and meta["normalized"] and model.d == 3
        assert torch.isfinite(model(torch.zeros(2, 3), sample=False).x_hat).all()
    capsys.readouterr()
    main(common, cfg)  # same config: nothing retrained
    assert capsys.readouterr().out.count("skipped") == 2
    cfg2 = TrainConfig(dicts=[*cfg.dicts[:1], DictConfig("s", "sae_topk", k=4, lr=0.02, params={"topk": 2})],
                       epochs=1, batch_size=100, test_fraction=0.2, device="cpu", normalize="mean_scale")
    main(common, cfg2)
    out = capsys.readouterr().out
    assert out.count("skipped") == 1 and "\ntrain: s on " in out  # the one it trains
    assert "s: its finished checkpoint will be replaced (it was trained with another config: dict.lr: 0.01 " \
           "-> 0.02)" in out
    respelled = Common(run_dir=common.run_dir, seed=3, store=os.path.relpath(store.path))
    main(respelled, cfg2)  # the same store by another path: the same dictionaries
    assert capsys.readouterr().out.count("skipped") == 2
    record = tmp_path / "run" / "dicts" / "v" / checkpoint.CFG  # a checkpoint from before 2026-12-05
    meta = json.loads(record.read_text())
    spelled = meta["store"] | {"path": os.path.relpath(store.path)}
    old = dict_hash(cfg.dicts[0], cfg2, respelled, spelled, make_split(store.num_chunks, 0.2, 3), legacy=True)
    assert old != meta["config_hash"]
    record.write_text(json.dumps(meta | {"config_hash": old}))
    main(respelled, cfg2)  # its hash had the path as spelled: still finished
    assert capsys.readouterr().out.count("skipped") == 2
    with pytest.raises(ValueError, match="unique names"):
        main(common, TrainConfig(dicts=[cfg.dicts[0], cfg.dicts[0]]))


def test_train_stage_seeds_each_dictionary_and_normalises_on_train_rows_only(store, tmp_path):
    """A dictionary's ``seed`` (else the experiment's) seeds its initialisation (lr 0 keeps it), and the
    normalisation statistics come from the train chunks alone, never from the held-out ones."""
    from actdict.train.run import main

    common = Common(run_dir=str(tmp_path / "run"), seed=3, store=store.path)
    dicts = [DictConfig("a", "sae_l1", k=4, lr=0.0, seed=7), DictConfig("b", "sae_l1", k=4, lr=0.0)]
    cfg = TrainConfig(dicts=dicts,
                      max_steps=1, batch_size=100, test_fraction=0.25, device="cpu", normalize="mean_scale",
                      norm_chunks=100)
    main(common, cfg)
    split = make_split(store.num_chunks, 0.25, 3)
    x = np.concatenate([store.read_chunk(c).acts for c in split["train_chunks"]]).astype(np.float64)
    for name, seed in (("a", 7), ("b", 3)):
        model, meta = checkpoint.load(tmp_path / "run" / "dicts" / name)
        assert meta["seed"] == seed
        init = make("sae_l1", 3, 4, seed=seed)
        assert torch.equal(model.inner.encoder.weight, init.encoder.weight)
        np.testing.assert_allclose(model.norm_mean.numpy(), x.mean(0), rtol=1e-6)
        assert float(model.norm_scale) == pytest.approx(np.sqrt(((x - x.mean(0)) ** 2).sum(1).mean() / 3),
                                                        rel=1e-6)


def test_one_split_per_run_folder(store, tmp_path, capsys):
    """A run whose split (seed, test_fraction) differs from finished dictionaries' in the same folder is
    refused before it trains, leaving split.json as it was (analysis reads one split per folder)."""
    from actdict.config import ConfigError
    from actdict.train.run import main

    def cfg(*dicts):
        return TrainConfig(dicts=list(dicts), epochs=2, batch_size=100, test_fraction=0.2, device="cpu")

    run_dir = tmp_path / "run"
    a, b = DictConfig("a", "sae_l1", k=4, lr=0.01), DictConfig("b", "sae_l1", k=4, lr=0.02)
    main(Common(run_dir=str(run_dir), seed=0, store=store.path), cfg(a))
    split = (run_dir / "split.json").read_text()
    for missing in (False, True):  # split.json lost: the refused run does not write its own either
        if missing:
            (run_dir / "split.json").unlink()
        with pytest.raises(ConfigError, match=r"finished dictionaries \['a'\] trained with other held-out "):
            main(Common(run_dir=str(run_dir), seed=1, store=store.path), cfg(b))
        assert (run_dir / "split.json").exists() is not missing and not (run_dir / "dicts" / "b").exists()
    (run_dir / "split.json").write_text(split)
    capsys.readouterr()
    main(Common(run_dir=str(run_dir), seed=0, store=store.path), cfg(b))  # the same split: trained
    assert (run_dir / "dicts" / "b" / "cfg.json").is_file() and (run_dir / "split.json").read_text() == split


def test_the_saved_line_counts_its_last_epoch_from_one():
    """'for 14 epoch(s)', then 'train: saved runs/demo/dicts/vaease (last epoch: loss 254.01, ..., epoch 13)':
    the history's epoch counts from 0. The line names the epoch as the bar counts it, 14, before its means."""
    from actdict.train.run import last_epoch

    means = {"loss": 254.0123, "sse": 29.50412, "grad_norm": 42.674, "epoch": 13}
    assert last_epoch(means) == "epoch 14, the last: loss 254.01, sse 29.504, grad_norm 42.674"
    assert last_epoch({"loss": 1.5}) == "last epoch: loss 1.5"  # a record without its epoch


def test_a_diverged_dictionary_is_named_when_saved(store, tmp_path, capsys):
    """A loss that stays finite but blows up (lr far too high) is saved as finished with a warning: its last
    epoch's SSE is over 100x that of predicting each batch's mean row. A healthy one gets none."""
    from actdict.train.run import main

    dicts = [DictConfig("wild", "sae_l1", k=4, lr=20.0), DictConfig("calm", "sae_l1", k=4, lr=0.01)]
    main(Common(run_dir=str(tmp_path / "run"), seed=0, store=store.path),
         TrainConfig(dicts=dicts, epochs=1, batch_size=100, test_fraction=0.2, device="cpu"))
    out = capsys.readouterr().out
    assert "train: warning: wild: its last epoch's reconstruction error" in out and "it diverged" in out
    calm = [line for line in out.splitlines() if line.startswith("train: warning: calm")]
    assert not any("diverged" in line for line in calm)  # 8 steps from 0 on rows of mean 500: only slow
    _, meta = checkpoint.load(tmp_path / "run" / "dicts" / "wild")
    spread = np.var(store.read_rows(0, 1000).acts, axis=0).sum()  # the SSE of the mean row, all rows
    assert meta["finished"] and meta["history"][-1]["sse"] > 100 * spread
    assert "it diverged" in meta["warning"]  # recorded: export repeats it
    from actdict.train.export import main as export

    assert export([str(tmp_path / "run" / "dicts" / "wild"), str(tmp_path / "sl")]) == 0
    assert "actdict export: warning: its training warned: wild: its last epoch's" in capsys.readouterr().err


def test_a_dictionary_that_learned_nothing_is_named_in_its_own_units(store, tmp_path, capsys):
    """An L1 penalty far too strong for the inputs' scale leaves codes at 0 and x_hat at the mean: warned.
    Under train.normalize the SSE is in normalised units, and so is the baseline it is compared with."""
    from actdict.train.member import LEARNED_NOTHING
    from actdict.train.run import main

    dicts = [DictConfig("flat", "sae_l1", k=16, lr=0.05, params={"lam1": 1e4}),
             DictConfig("calm", "sae_l1", k=16, lr=0.01, params={"lam1": 1e-3})]
    main(Common(run_dir=str(tmp_path / "run"), seed=0, store=store.path),
         TrainConfig(dicts=dicts, epochs=4, batch_size=100, test_fraction=0.2, device="cpu",
                     normalize="mean_scale"))
    out = capsys.readouterr().out
    assert "train: warning: flat: its reconstruction error over its last steps" in out
    assert "it has learned almost nothing" in out and "warning: calm" not in out
    model, meta = checkpoint.load(tmp_path / "run" / "dicts" / "flat")
    x = torch.from_numpy(store.read_rows(0, 500).acts).float()
    assert int((model(x, sample=False).codes != 0).sum()) == 0  # every code 0: x_hat is the decoder bias
    inner = make("sae_l1", 3, 2)
    wrapped = checkpoint.Normalized(inner, torch.zeros(3), 10.0)
    m = Member("n", wrapped, 0.01, history=[{"sse": 0.5}], baseline=50.0, spread=100.0)  # raw: 1.0 normalised
    assert m.diverged() is None and 0.5 < LEARNED_NOTHING
    m.history = [{"sse": 0.99}]
    assert "0.99x that of predicting every row by the mean row (1; explained variance 0.01)" in m.diverged()
    m.history = [{"sse": 51.0}]
    assert "its last epoch's reconstruction error 51 is 102x that of predicting each batch's" in m.diverged()
    lse = Member("e", make("lse", 3, 2), 0.01, history=[{"sse": 1e9}], baseline=1.0, spread=1.0)
    assert lse.diverged() is None  # lse trains no reconstruction: its x_hat may be anything


def test_rows_far_from_zero_are_told_to_normalise_not_to_lower_the_lr(tmp_path, capsys):
    """Rows of mean 1e4 and spread 0.01: a fresh SAE's x_hat is near 0, its SSE that of predicting 0 (~d e8),
    ~1e12 x the batch-mean baseline, and it was told "it diverged; lower its lr", which cannot help (the
    decoder bias would need ~1e6 Adam steps to reach the mean). Its SSE is no worse than predicting 0, so
    the warning says the rows sit far from 0 and to set train.normalize; a real divergence (SSE far over
    predicting 0) keeps the old warning."""
    from actdict.train.member import Spread
    from actdict.train.run import main

    x = (1e4 + 0.01 * np.random.default_rng(0).standard_normal((512, 4))).astype(np.float32)  # [n, d]
    store = write_vectors(str(tmp_path / "store"), x, chunk_rows=64)
    main(Common(run_dir=str(tmp_path / "run"), seed=0, store=store.path),
         TrainConfig(dicts=[DictConfig("far", "sae_l1", k=4)], epochs=1, batch_size=64, test_fraction=0.2,
                     device="cpu"))
    out = capsys.readouterr().out
    assert "train: warning: far: its last epoch's reconstruction error" in out
    assert "about that of predicting 0 for every row" in out and "set train.normalize: mean_scale" in out
    assert "it diverged" not in out
    s = Spread()
    for b in torch.from_numpy(x).split(100):
        s.add(b)
    s.end(Dist())
    assert s.norm2 == pytest.approx(float((x.astype(np.float64) ** 2).sum(1).mean()), rel=1e-9)
    m = Member("m", make("sae_l1", 3, 2), 0.01, history=[{"sse": 5e8}], baseline=1e-4, spread=3e-4, norm2=4e8)
    assert "predicting 0 for every row (4e+08)" in m.diverged()
    m.history = [{"sse": 1e9}]  # over twice the SSE of x_hat = 0: it blew up
    assert "it diverged; lower its lr" in m.diverged()
    m = Member("c", make("sae_l1", 3, 2), 0.01, history=[{"sse": 5e3}], baseline=1.0, spread=3.0, norm2=3.0)
    assert "it diverged; lower its lr" in m.diverged()  # rows about 0: as before


def test_a_fresh_dictionary_far_from_trained_is_not_called_diverged(tmp_path, capsys):
    """JumpReLU with k = 80 latents on d = 2 (decoder rows of unit norm, W_enc = W_dec^T: a fresh one
    reconstructs x with ~k / 2d times its norm) starts ~300x the batch-mean baseline and comes down steadily;
    after two epochs it was told "it diverged; lower its lr", which only slows it. Its SSE is below its
    first step's, so the warning says it is far from trained; one whose SSE rose past its first step's
    (lr far too high) is still called diverged."""
    from actdict.train.run import main

    x = np.random.default_rng(0).standard_normal((64, 2)).astype(np.float32)  # [n, d]
    store = write_vectors(str(tmp_path / "store"), x, chunk_rows=8)
    main(Common(run_dir=str(tmp_path / "run"), seed=0, store=store.path),
         TrainConfig(dicts=[DictConfig("j", "sae_jumprelu", k=80)], epochs=2, batch_size=8, device="cpu",
                     normalize="mean_scale", test_fraction=0.25))
    out = capsys.readouterr().out
    _, meta = checkpoint.load(tmp_path / "run" / "dicts" / "j")
    sse = [h["sse"] for h in meta["history"]]
    assert sse[-1] < sse[0] and "is still" in meta["warning"] and "far from trained, not diverged" in out
    assert "it diverged" not in out
    m = Member("m", make("sae_l1", 3, 2), 0.01, history=[{"sse": 500.0}], baseline=1.0, first=600.0)
    assert "down from 600 at its first step: it is far from trained" in m.diverged()
    m.first = 400.0  # worse than it started: blown up
    assert "it diverged; lower its lr" in m.diverged()
    m.first = None  # not known (a state saved before it was recorded): as before
    assert "it diverged; lower its lr" in m.diverged()


def test_a_sweeps_training_names_its_dictionaries_in_one_short_line(store, tmp_path, capsys):
    """Training began by printing the list of its dictionaries' names: 600 characters for a sweep of 20, 1,300
    for 48; a rerun said each finished one was skipped, one line each. More than 3 are now named by their
    number, first and last, in one line; up to 3 as before."""
    from actdict.train.run import main

    sweep = [DictConfig(f"l1_lam1-{v}", "sae_l1", k=4, lr=0.01, params={"lam1": v}) for v in (0.1, 0.2, 1, 9)]
    for dicts, said in ((sweep, "4 dictionaries l1_lam1-0.1 ... l1_lam1-9 on 808 rows"),
                        (sweep[:2], "l1_lam1-0.1, l1_lam1-0.2 on 808 rows")):
        main(Common(run_dir=str(tmp_path / str(len(dicts))), seed=0, store=store.path),
             TrainConfig(dicts=dicts, epochs=1, batch_size=100, test_fraction=0.2, device="cpu"))
        assert f"train: {said} (" in capsys.readouterr().out
    main(Common(run_dir=str(tmp_path / "4"), seed=0, store=store.path),  # again: all finished, one line
         TrainConfig(dicts=sweep, epochs=1, batch_size=100, test_fraction=0.2, device="cpu"))
    said = "train: 4 dictionaries l1_lam1-0.1 ... l1_lam1-9: finished checkpoints with the same config exist"
    assert capsys.readouterr().out.splitlines() == [said + ", skipped"]


def test_a_checkpoint_is_finished_only_with_the_flag_its_hash_and_whole_weights(tmp_path):
    """``checkpoint.is_finished``: a cfg.json saying ``finished`` with one of the hashes asked for, beside a
    readable weights file; a record without the flag (not the train stage's final save) is not finished."""
    model = make("sae_l1", 3, 4)
    checkpoint.save(tmp_path / "draft", model, {"config_hash": "h1"})
    checkpoint.save(tmp_path / "done", model, {"config_hash": "h1", "finished": True})
    assert not checkpoint.is_finished(tmp_path / "draft", "h1") and checkpoint.finished_record(
        tmp_path / "draft") is None
    assert checkpoint.is_finished(tmp_path / "done", "h0", "h1") and not checkpoint.is_finished(
        tmp_path / "done", "h2")
    weights = tmp_path / "done" / checkpoint.WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-8])  # cut short
    assert not checkpoint.is_finished(tmp_path / "done", "h1")


def test_the_hash_covers_what_changes_a_trained_dictionary_and_nothing_else():
    """``dict_hash`` changes with the seed, the train chunks and every train setting that changes the batches
    or the steps (a finished checkpoint of another one is retrained), and not with where or how often the
    run saves or which device it runs on."""
    from actdict.train.identity import dict_hash

    common, dc = Common(run_dir="r", seed=0, store="s"), DictConfig("v", "vaease")
    sid, split = {"rows": 10, "config_hash": "c"}, {"train_chunks": [0, 1]}
    base = dict_hash(dc, TrainConfig(), common, sid, split)
    changed = [dict_hash(dc, TrainConfig(), Common(run_dir="r", seed=1, store="s"), sid, split),
               dict_hash(dc, TrainConfig(), common, sid, {"train_chunks": [0, 2]}),
               *(dict_hash(dc, TrainConfig(**{k: v}), common, sid, split) for k, v in (
                   ("buffer_chunks", 3), ("batch_size", 7), ("epochs", 2), ("warmup_steps", 1), ("t0", 6),
                   ("normalize", "mean_scale"), ("max_steps", 5)))]
    assert base not in changed and len(set(changed)) == len(changed)
    for k, v in (("device", "cpu"), ("checkpoint_every", 7), ("resume", False), ("keep_state", True)):
        assert dict_hash(dc, TrainConfig(**{k: v}), common, sid, split) == base, k
    assert dict_hash(dc, TrainConfig(), Common(run_dir="elsewhere", seed=0, store="s"), sid, split) == base


def test_train_stage_draws_each_steps_noise_from_the_experiments_seed(store, tmp_path, monkeypatch):
    """The train stage seeds the loop's per-step draws (VAE noise) with the experiment's seed, so that runs
    of another seed draw other noise; it trains on the split's train chunks for the epochs asked."""
    from actdict.train import loop
    from actdict.train.run import main
    from actdict.train.step import step_seed

    seeds = []
    real = loop.seed_step
    monkeypatch.setattr(loop, "seed_step", lambda s, device: (seeds.append(s), real(s, device)))

    common = Common(run_dir=str(tmp_path / "run"), seed=11, store=store.path)
    main(common, TrainConfig(dicts=[DictConfig("a", "sae_l1", k=4, seed=2)], epochs=2, batch_size=100,
                             test_fraction=0.25, device="cpu"))
    assert seeds == [step_seed(11, s, "a") for s in range(16)]  # 12 train chunks: 8 batches an epoch


def test_a_sweep_in_any_order_trains_each_dictionary_as_it_trains_alone(store, tmp_path):
    """docs/training.md, "Reproducibility": the dictionaries of a sweep, listed in either order, end with the
    weights each gets trained alone, bit for bit (VAE noise, dead-latent tracking and normalisation
    included); another ``buffer_chunks`` is another batch order, so other weights."""
    from safetensors.torch import load_file

    from actdict.train.run import main

    dicts = [DictConfig("v", "vaease", k=6, lr=0.01), DictConfig("l", "sae_l1", k=6, lr=0.01),
             DictConfig("b", "sae_batchtopk", k=6, params={"topk": 2})]

    def run(name, ds, **kw):
        main(Common(run_dir=str(tmp_path / name), seed=5, store=store.path),
             TrainConfig(dicts=ds, epochs=2, batch_size=64, test_fraction=0.2, device="cpu",
                         normalize="mean_scale", **kw))
        return {d.name: load_file(tmp_path / name / "dicts" / d.name / "model.safetensors") for d in ds}

    def same(a, b):
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    sweep, backwards = run("sweep", dicts), run("backwards", dicts[::-1])
    for d in dicts:
        alone = run(f"alone_{d.name}", [d])[d.name]
        assert same(sweep[d.name], alone) and same(backwards[d.name], alone)
    other = run("buffer2", dicts, buffer_chunks=2)
    assert not any(same(other[d.name], sweep[d.name]) for d in dicts)


def test_a_train_split_of_one_row_is_refused_only_for_batch_statistics(tmp_path):
    """65 rows in chunks of 64: the split of seed 0 trains on the 1-row chunk. lse (batch variance) cannot
    learn from it and is refused before training; sae_l1 trains on it."""
    from actdict.config import ConfigError
    from actdict.train.run import main

    x = np.random.default_rng(0).standard_normal((65, 3)).astype(np.float32)
    one = write_vectors(str(tmp_path / "s"), x, shard_rows=128, chunk_rows=64)
    assert make_split(one.num_chunks, 0.5, 0)["train_chunks"] == [1] and one.chunk_bounds(1) == (64, 65)

    def cfg(variant):
        return TrainConfig(dicts=[DictConfig("a", variant, k=4)], epochs=1, test_fraction=0.5, device="cpu")

    with pytest.raises(ConfigError, match=r"the train split holds 1 row, and \['a'\] train on batches of 2"):
        main(Common(run_dir=str(tmp_path / "r1"), seed=0, store=one.path), cfg("lse"))
    assert not (tmp_path / "r1" / "dicts").exists()
    main(Common(run_dir=str(tmp_path / "r2"), seed=0, store=one.path), cfg("sae_l1"))
    assert checkpoint.load(tmp_path / "r2" / "dicts" / "a")[1]["steps"] == 1


def test_a_moved_run_of_a_checkpoint_from_before_2026_12_05_is_not_retrained(tmp_path, capsys):
    """A checkpoint made before 2026-12-05 hashed its harvested store's path as spelled; its run folder (or
    store) moved since: the same harvest (config_hash), rows and config still count as finished, as a newer
    checkpoint's do, instead of a retraining that blamed the store's revision and fingerprint (which such
    records lack) and threw the finished dictionary away."""
    import shutil

    from actdict.train.identity import dict_hash
    from actdict.train.run import main

    x = np.random.default_rng(0).standard_normal((512, 3)).astype(np.float32)
    write_vectors(str(tmp_path / "a" / "store"), x, shard_rows=256, chunk_rows=64)
    man = next((tmp_path / "a" / "store").glob("*/manifest.json"))
    m = {k: v for k, v in json.loads(man.read_text()).items() if k != "content"}
    man.write_text(json.dumps(m | {"config_hash": "8d26385831054abc", "revision": "r1",  # a harvested store:
                                   "source_fingerprint": "f1"}))  # its harvest's config_hash identifies it
    cfg = TrainConfig(dicts=[DictConfig("s", "sae_topk", k=4, lr=0.01, params={"topk": 2})], epochs=1,
                      batch_size=100, test_fraction=0.25, device="cpu")
    old = Common(run_dir=str(tmp_path / "a" / "run"), seed=3, store=str(tmp_path / "a" / "store"))
    main(old, cfg)
    record = tmp_path / "a" / "run" / "dicts" / "s" / checkpoint.CFG  # as an actdict of before 2026-12-05
    meta = json.loads(record.read_text())  # wrote it: the store's path, hook, rows, d and config_hash
    meta["store"] = {k: meta["store"][k] for k in ("path", "hook", "rows", "d", "config_hash")}
    split = json.loads((tmp_path / "a" / "run" / "split.json").read_text())
    meta["config_hash"] = dict_hash(cfg.dicts[0], cfg, old, meta["store"], split, legacy=True)
    record.write_text(json.dumps(meta))
    main(old, cfg)  # where it was made: finished
    assert "skipped" in capsys.readouterr().out
    shutil.move(tmp_path / "a", tmp_path / "b")  # the whole experiment moved
    moved = Common(run_dir=str(tmp_path / "b" / "run"), seed=3, store=str(tmp_path / "b" / "store"))
    before = (tmp_path / "b" / "run" / "dicts" / "s" / checkpoint.WEIGHTS).read_bytes()
    main(moved, cfg)
    out = capsys.readouterr().out
    assert "s: finished checkpoint with the same config exists, skipped" in out and "replaced" not in out
    assert (tmp_path / "b" / "run" / "dicts" / "s" / checkpoint.WEIGHTS).read_bytes() == before


def test_a_checkpoint_from_before_2026_12_05_replaced_by_a_changed_config_is_told_what_changed(tmp_path,
                                                                                               capsys):
    """Retraining a checkpoint whose record predates the store's revision and source fingerprint (made
    before 2026-12-05) names what the config changed, not 'store.revision: unset -> ...' for what the old
    record simply lacks (which read as though the model or the corpus had changed)."""
    from actdict.train.run import main

    x = np.random.default_rng(0).standard_normal((512, 3)).astype(np.float32)
    write_vectors(str(tmp_path / "store"), x, shard_rows=256, chunk_rows=64)
    man = next((tmp_path / "store").glob("*/manifest.json"))
    m = {k: v for k, v in json.loads(man.read_text()).items() if k != "content"}
    man.write_text(json.dumps(m | {"config_hash": "8d26385831054abc", "revision": "r1",  # a harvested store
                                   "source_fingerprint": "f1"}))
    common = Common(run_dir=str(tmp_path / "run"), seed=3, store=str(tmp_path / "store"))
    dc = DictConfig("s", "sae_topk", k=4, lr=0.01, params={"topk": 2})
    cfg = TrainConfig(dicts=[dc], epochs=1, batch_size=100, test_fraction=0.25, device="cpu")
    main(common, cfg)
    record = tmp_path / "run" / "dicts" / "s" / checkpoint.CFG  # as an actdict of before 2026-12-05 wrote it
    meta = json.loads(record.read_text())
    meta["store"] = {k: meta["store"][k] for k in ("path", "hook", "rows", "d", "config_hash")}
    record.write_text(json.dumps(meta))
    capsys.readouterr()
    main(common, TrainConfig(dicts=[DictConfig("s", "sae_topk", k=4, lr=0.02, params={"topk": 2})], epochs=1,
                             batch_size=100, test_fraction=0.25, device="cpu"))
    out = capsys.readouterr().out
    assert "(it was trained with another config: dict.lr: 0.01 -> 0.02)" in out and "store." not in out


def test_a_sweep_trains_what_its_dictionaries_written_out_train(store, tmp_path):
    from actdict.config import build
    from actdict.train.run import main

    base = {"epochs": 1, "batch_size": 100, "test_fraction": 0.2, "device": "cpu"}
    item = {"name": "t", "variant": "sae_topk", "k": 4, "params": {"topk": 2}}
    swept = build(TrainConfig, base | {"dicts": [item | {"sweep": {"lr": [0.01, 0.02], "seed": [5, 6]}}]})
    main(Common(run_dir=str(tmp_path / "sweep"), seed=3, store=store.path), swept)
    names = [f"t_lr-{lr}_seed-{s}" for lr in (0.01, 0.02) for s in (5, 6)]
    by_hand = TrainConfig(dicts=[DictConfig(f"t_lr-{lr}_seed-{s}", "sae_topk", k=4, lr=lr, params={"topk": 2},
                                            seed=s) for lr in (0.01, 0.02) for s in (5, 6)], **base)
    main(Common(run_dir=str(tmp_path / "hand"), seed=3, store=store.path), by_hand)
    assert sorted(p.name for p in (tmp_path / "sweep" / "dicts").iterdir()) == sorted(names)
    weights = []
    for name in names:
        (a, ma), (b, mb) = (checkpoint.load(tmp_path / run / "dicts" / name) for run in ("sweep", "hand"))
        assert ma["config_hash"] == mb["config_hash"]
        assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
        weights.append(a.encoder.weight)
    assert not torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])  # all differ


def test_a_batchtopk_run_too_short_for_its_threshold_is_told_so(store, tmp_path, capsys):
    """The demo store, 264 steps at the default threshold_beta 0.999: the threshold still held 77 % of the
    untrained dictionary's first value, and analysis measured L0 10 / 15 at topk 16 / 32 (EV 0.57, below
    sae_topk's 0.63 / 0.71), with nothing saying why; at threshold_beta 0.9, L0 16 / 32 and EV 0.65 / 0.71."""
    from actdict.train.run import main
    from actdict.train.variants.sae_batchtopk import threshold_note

    note = threshold_note(0.999, 264)
    assert "(threshold_beta 0.999), and at the end of this run's 264 steps" in note
    assert "still weighs 77% of it" in note and "threshold_beta 0.988 or lower" in note
    assert 0.988 ** 263 <= 0.05 < 0.989 ** 263  # the beta it suggests is the largest that forgets
    runs = ((0.999, 2995), (0.999, 3000), (0.9, 264), (0.999, 99))
    assert [threshold_note(beta, steps) is None for beta, steps in runs] == [False, True, True, True]
    dicts = [DictConfig(f"b{t}", "sae_batchtopk", k=8, params={"topk": t}) for t in (2, 3)]
    quick = DictConfig("q", "sae_batchtopk", k=8, params={"topk": 2, "threshold_beta": 0.9})
    common = Common(run_dir=str(tmp_path / "run"), seed=0, store=store.path)
    main(common, TrainConfig(dicts=[*dicts, quick], epochs=6, batch_size=50, device="cpu"))  # >= 100 steps
    notes = [line for line in capsys.readouterr().out.splitlines() if "inference threshold" in line]
    steps = checkpoint.load(tmp_path / "run" / "dicts" / "b2")[1]["steps"]
    assert notes == [f"train: note: b2, b3: {threshold_note(0.999, steps)}"] and steps >= 100


def test_on_windows_a_run_whose_paths_pass_259_characters_is_warned_of_at_its_config_check(store, tmp_path,
                                                                                           monkeypatch):
    """A long run_dir and sweep names make paths Windows refuses (over 259 characters, unless long paths
    are enabled): its write failed deep in the training. The config check (and so the dry run) now warns
    there, naming the longest path and by how much to shorten it; elsewhere it says nothing. The longest
    path is a snapshot's temporary cfg.json, longer than any file a training leaves."""
    import warnings

    import actdict.names
    from actdict.errors import ActdictWarning
    from actdict.train.plan import longest_file
    from actdict.train.precheck import check
    from actdict.train.run import main

    cfg = TrainConfig(dicts=[DictConfig("a", "sae_topk", k=4, params={"topk": 2}), DictConfig(
        "sae_l1_lam1-0.1_seed-0", "sae_l1", k=4)], max_steps=4, batch_size=100, snapshot_every=2,
        keep_state=True, device="cpu")
    main(Common(run_dir=str(tmp_path / "run"), seed=3, store=store.path), cfg)
    made = max((str(p) for p in (tmp_path / "run").rglob("*")), key=len)
    assert made == str(tmp_path / "run" / "dicts" / "sae_l1_lam1-0.1_seed-0" / "snapshots" / "step-0000002" /
                       "model.safetensors")
    longest = longest_file(str(tmp_path / "run"), cfg)
    assert longest == os.path.join(os.path.dirname(made), ".cfg.json.tmp-12345678").replace("02/", "00/")
    assert longest_file(str(tmp_path / "run"), TrainConfig(dicts=cfg.dicts)) == str(
        tmp_path / "run" / "report" / "sae_l1_lam1-0.1_seed-0.parts" / ".00000.js.tmp-12345678")
    assert longest_file(str(tmp_path / "run"), TrainConfig(dicts=[])) == str(tmp_path / "run")  # max() raised

    run_dir = str(tmp_path / ("r" * (259 - len(longest) + len("run"))))
    assert len(longest_file(run_dir, cfg)) == 259
    over = Common(run_dir=run_dir + "x", store=store.path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check(over, cfg)  # Linux, macOS: no such limit
        monkeypatch.setattr(actdict.names, "WINDOWS", True)
        check(Common(run_dir=run_dir, store=store.path), cfg)  # 259: taken
    with pytest.warns(ActdictWarning) as said:
        check(over, cfg)
    path = longest_file(over.run_dir, cfg)
    assert [str(w.message) for w in said] == [
        f"this training (and its analysis) writes paths of up to 260 characters ({path}), "
        "and Windows takes at most 259 unless long paths are enabled (LongPathsEnabled=1 in the registry key "
        "HKLM\\SYSTEM\\CurrentControlSet\\Control\\FileSystem, as an administrator): a write would fail "
        "there; set a shorter run_dir or shorter names (by 1 character), or enable long paths"]
