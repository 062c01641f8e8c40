"""Training data stream, loop, checkpoints and the train stage, on tiny stores made with write_vectors."""

import json
import os
import threading

import numpy as np
import pytest
import torch

from actdict.config import Common
from actdict.harvest.store import write_vectors
from actdict.train import checkpoint
from actdict.train.config import DictConfig, TrainConfig
from actdict.train.data import iter_batches, iter_rows, make_split, norm_stats
from actdict.train.dist import Dist
from actdict.train.loop import Member, TrainingError, train
from actdict.train.protocol import make
from actdict.train.schedule import lr_at


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """1000 rows, d = 3, chunks of 64 rows (the last one short): row i has x[:, 0] == i."""
    x = np.random.default_rng(0).standard_normal((1000, 3)).astype(np.float32)
    x[:, 0] = np.arange(1000)
    return write_vectors(str(tmp_path_factory.mktemp("s") / "store"), x, shard_rows=256, chunk_rows=64)


def rows_of(batches) -> list[int]:
    return [int(v) for b in batches for v in b[:, 0].tolist()]


def test_split_is_a_seeded_partition(store):
    s = make_split(store.num_chunks, 0.2, seed=5)
    assert sorted(s["train_chunks"] + s["test_chunks"]) == list(range(store.num_chunks))
    assert len(s["test_chunks"]) == round(0.2 * store.num_chunks) and s["seed"] == 5
    assert make_split(store.num_chunks, 0.2, seed=5) == s != make_split(store.num_chunks, 0.2, seed=6)
    assert len(make_split(3, 0.01, 0)["test_chunks"]) == 1  # at least one test chunk
    with pytest.raises(ValueError, match="none left for training"):
        make_split(2, 0.9, 0)
    with pytest.raises(ValueError, match=r"1 chunk: none can be held out.*--chunk-rows N.*test_fraction=0"):
        make_split(1, 0.1, 0)  # it used to train on every row and leave analyze nothing to evaluate
    assert make_split(1, 0.0, 0) == {"train_chunks": [0], "test_chunks": [], "seed": 0}


def test_epoch_sees_every_train_row_once(store):
    s = make_split(store.num_chunks, 0.25, seed=1)
    train_rows = {r for c in s["train_chunks"] for r in range(*store.chunk_bounds(c))}
    test_rows = {r for c in s["test_chunks"] for r in range(*store.chunk_bounds(c))}
    for epoch in (0, 1):
        batches = list(iter_batches(store, s["train_chunks"], 50, 3, seed=1, epoch=epoch))
        seen = rows_of(batches)
        assert sorted(seen) == sorted(train_rows) and not set(seen) & test_rows
        assert all(len(b) == 50 for b in batches[:-1]) and 0 < len(batches[-1]) <= 50
        assert batches[0].dtype == torch.float32 and batches[0].shape[1] == 3


def test_batch_order_depends_on_seed_and_epoch(store):
    chunks = list(range(store.num_chunks))
    a = rows_of(iter_batches(store, chunks, 32, 2, seed=0, epoch=0))
    assert a == rows_of(iter_batches(store, chunks, 32, 2, seed=0, epoch=0))
    assert a != rows_of(iter_batches(store, chunks, 32, 2, seed=1, epoch=0))
    assert a != rows_of(iter_batches(store, chunks, 32, 2, seed=0, epoch=1))
    assert a != sorted(a)  # shuffled inside the buffer


def test_float16_store_streams_float16_batches_of_the_same_rows(store, tmp_path):
    """A float16 store is shuffled and yielded as stored (half the bytes); the values are the float32
    reads of the same rows, and a resumed stream (rows carried over between buffers) matches too."""
    x = np.concatenate([store.read_chunk(c).acts for c in range(store.num_chunks)])  # [1000, 3]
    x[:, 0] = np.arange(1000) % 2048  # exact in float16
    half = write_vectors(str(tmp_path / "half"), x, dtype="float16", shard_rows=256, chunk_rows=64)
    chunks = list(range(half.num_chunks))
    full = [(b.clone(), r) for b, r in iter_rows(half, chunks, 48, 2, seed=3, epoch=0)]
    assert {b.dtype for b, _ in full} == {torch.float16}
    want = x.astype(np.float16).astype(np.float32)
    for b, r in full:
        np.testing.assert_array_equal(b.float().numpy(), want[r])
    tail = list(iter_batches(half, chunks, 48, 2, seed=3, epoch=0, start=7))
    assert all(torch.equal(a, b) for a, (b, _) in zip(tail, full[7:], strict=True))


def test_resume_position_and_rank_parts_give_the_same_batches(store):
    chunks = make_split(store.num_chunks, 0.2, seed=2)["train_chunks"]
    full = [(x.clone(), r) for x, r in iter_rows(store, chunks, 48, 2, seed=2, epoch=1)]
    assert [int(v) for x, r in full for v in x[:, 0]] == [int(v) for _, r in full for v in r]  # row ids
    for start in (0, 1, 5, 6, 13, len(full) - 1, len(full)):  # inside, at the start and end of buffers
        tail = list(iter_batches(store, chunks, 48, 2, seed=2, epoch=1, start=start))
        assert len(tail) == len(full) - start
        assert all(torch.equal(a, b) for a, (b, _) in zip(tail, full[start:], strict=True))
    for world in (2, 3):
        parts = [list(iter_batches(store, chunks, 48, 2, seed=2, epoch=1, part=(r, world)))
                 for r in range(world)]
        joined = [torch.cat(ps) for ps in zip(*parts, strict=True)]
        assert all(torch.equal(a, b) for a, (b, _) in zip(joined, full, strict=True))
        assert {len(p) for p in parts[0][:-1]} == {48 // world}


class CountingStore:
    """A store that records how many chunks were read whenever a batch is taken."""

    def __init__(self, inner):
        self.inner, self.reads, self.lock = inner, 0, threading.Lock()
        self.d, self.chunk_rows, self.chunk_bounds = inner.d, inner.chunk_rows, inner.chunk_bounds
        self.acts_dtype = inner.acts_dtype

    def read_acts(self, i, out=None):  # called from the stream's reader threads
        with self.lock:
            self.reads += 1
        return self.inner.read_acts(i, out)


def test_stream_reads_at_most_two_buffers_ahead(store):
    counting = CountingStore(store)
    chunks = list(range(store.num_chunks))
    reads = [counting.reads for _ in iter_batches(counting, chunks, 16, 2, seed=0, epoch=0)]
    assert store.num_chunks == 16 and reads[0] <= 4 and counting.reads == 16  # each chunk once per epoch
    # rows read but not yet yielded stay below two buffers (current + read ahead) + 1 chunk
    assert all(r * 64 - (b + 1) * 16 <= (2 * 2 + 1) * 64 for b, r in enumerate(reads))


def test_stream_shuffles_without_an_unshuffled_copy_of_the_buffer(tmp_path):
    """The buffer was read whole into a numpy array in plan order, then gathered into the shuffled torch
    buffer: three buffers in RAM with the one being consumed (1,050 MiB at buffer_chunks 128, float16,
    d = 256), not the two that docs/training.md promises. Chunks now go straight to their shuffled places:
    the numpy memory the stream allocates (tracemalloc traces numpy, not torch) stays below one buffer."""
    import tracemalloc

    x = np.random.default_rng(0).standard_normal((2048, 64)).astype(np.float32)
    s = write_vectors(str(tmp_path / "store"), x, shard_rows=256, chunk_rows=32)  # 64 chunks of 8 KiB
    buffer_bytes = 32 * 32 * 64 * 4  # buffer_chunks = 32: 256 KiB
    list(iter_batches(s, range(64), 100, 32, seed=0, epoch=1))  # first calls import and open what they use
    tracemalloc.start()
    try:
        got = torch.cat(list(iter_batches(s, range(64), 100, 32, seed=0, epoch=0)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < buffer_bytes  # it held a whole buffer in plan order (and more) before
    assert sorted(got[:, 0].tolist()) == sorted(x[:, 0].tolist())  # every row once


def test_steps_in_epoch_counts_the_short_last_batch(store):
    from actdict.train.data import steps_in_epoch

    chunks = list(range(store.num_chunks))
    assert steps_in_epoch(store, chunks, 48) == 21 == len(list(iter_batches(store, chunks, 48, 2, 0, 0)))
    assert steps_in_epoch(store, chunks, 100) == 10
    assert steps_in_epoch(store, [15], 10) == 4  # the last chunk: rows 960..999
    assert steps_in_epoch(store, chunks, 37) == 27  # 1000 = 27 x 37 + 1: no batch of one lone row
    for epoch in range(6):
        for buffer in (1, 2, 16):  # whichever buffer the lone row falls in
            sizes = [len(b) for b in iter_batches(store, chunks, 37, buffer, 0, epoch)]
            assert len(sizes) == 27 and min(sizes) >= 2 and sum(sizes) == 999
    x = np.random.default_rng(1).standard_normal((257, 3)).astype(np.float32)  # chunk 4 holds 1 row
    small = write_vectors(str(store.path) + "-257", x, shard_rows=256, chunk_rows=64)
    for epoch in range(8):  # the 1-row chunk is alone in the last buffer in some epochs (256 = 8 x 32)
        sizes = [len(b) for b in iter_batches(small, range(5), 32, 1, 0, epoch)]
        assert sizes == [32] * 8 == [32] * steps_in_epoch(small, range(5), 32)
    # an epoch of that one row alone is one batch of it (not 0 steps: a lone row sits out only beside others)
    lone = [len(b) for b in iter_batches(small, [4], 32, 1, 0, 0)]
    assert lone == [1] == [1] * steps_in_epoch(small, [4], 32)


def test_norm_stats(store):
    mean, scale = norm_stats(store, list(range(store.num_chunks)), n_chunks=100, seed=0)
    x = store.read_rows(0, len(store)).acts.astype(np.float64)
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-5)
    assert scale == pytest.approx(np.sqrt(((x - x.mean(0)) ** 2).sum(1).mean() / 3), rel=1e-6)


def test_norm_stats_of_constant_rows_is_a_config_error(tmp_path):
    from actdict.config import ConfigError

    const = write_vectors(str(tmp_path / "c"), np.ones((64, 3), np.float32), chunk_rows=16, shard_rows=64)
    with pytest.raises(ConfigError, match=r"the 32 rows of train chunks \[1, 2\] have scale 0.0 .* "
                                          r"set train.normalize=none"):
        norm_stats(const, [1, 2], n_chunks=4, seed=0)


def test_norm_stats_reads_n_chunks_picked_by_the_seed(store):
    """n_chunks < the chunks given: the statistics are those of n_chunks whole chunks of the list (row i has
    x[:, 0] == i, so the mean of x[:, 0] over chunks a and b of 64 rows is 32 (a + b) + 31.5), and the seed
    picks which (not always the first ones)."""
    chunks = [1, 4, 7, 9, 12]
    sums = {a + b for a in chunks for b in chunks if a < b}
    picked = set()
    for seed in range(6):
        mean, _ = norm_stats(store, chunks, n_chunks=2, seed=seed)
        pair = (float(mean[0]) - 31.5) / 32
        assert pair == pytest.approx(round(pair), abs=1e-4) and round(pair) in sums
        picked.add(round(pair))
    assert len(picked) > 1


def test_the_progress_bar_of_a_sweep_shows_its_loss_range(capsys):
    """The bar named every dictionary's loss: a sweep of 20 made a ~900-column postfix, which a terminal cut
    after the first two names, and the bar itself shrank to one column. Beyond 4 dictionaries it now shows
    their losses' range; up to 4, each by name as before."""
    import re

    x = torch.randn(256, 4) @ torch.randn(4, 4)  # [n, d]
    members = [Member(f"l1_lam1-{v}", make("sae_l1", 4, 6, lam1=v), 0.01) for v in (1e-3, 0.01, 0.1, 1, 9)]
    cfg, cpu = TrainConfig(dicts=[], epochs=1), torch.device("cpu")
    train(members, lambda e: x.split(64), cfg, cpu, progress=True)
    err = capsys.readouterr().err.splitlines()[-1]
    assert re.search(r"4step \[.*, loss of 5 dicts=\d[\d.]*\.\.\d[\d.]*\]$", err) and "l1_lam1" not in err
    train(members[:2], lambda e: x.split(64), cfg, cpu, progress=True)
    err = capsys.readouterr().err.splitlines()[-1]
    assert re.search(r", l1_lam1-0.001=[\d.]+, l1_lam1-0.01=[\d.]+\]$", err)
    from actdict.train.loop import postfix

    assert postfix(dict(zip("abcde", [3.0, 1.25, 9.0, 2.0, 123456.0], strict=True))) == {
        "loss of 5 dicts": "1.25..1.235e+05"}
    assert postfix({"a": 3.0, "b": 1.25}) == {"a": "3", "b": "1.25"}


def test_loop_reduces_loss_and_stops_on_nan():
    torch.manual_seed(0)
    x = torch.randn(512, 4) @ torch.randn(4, 4)  # [n, d]
    members = [Member("a", make("sae_l1", 4, 6, lam1=1e-3, lam2=1e-4), 0.01),
               Member("b", make("vaease", 4, 6, loggamma_init=-2.0), 0.01)]
    cfg = TrainConfig(dicts=[], epochs=8, t0=50)
    steps = train(members, lambda e: x.split(64), cfg, torch.device("cpu"), steps_per_epoch=8)
    assert steps == 64
    for m in members:
        assert len(m.history) == 8 and m.history[-1]["loss"] < m.history[0]["loss"]
    assert train([Member("c", make("sae_l1", 4, 6), 0.01)], lambda e: x.split(64),
                 TrainConfig(dicts=[], epochs=5, max_steps=3), torch.device("cpu")) == 3
    bad = x.clone()
    bad[70, 1] = float("nan")
    rows = torch.arange(512).split(64)
    batches = lambda e: zip(bad.split(64), (r.numpy() for r in rows), strict=True)  # noqa: E731
    with pytest.raises(TrainingError, match=r"batch at step 1 \(epoch 0, batch 1\); store rows \[64, 65"):
        train(members[:1], batches, cfg, torch.device("cpu"))
    broken = Member("a", make("sae_l1", 4, 6), 0.01)
    with torch.no_grad():
        broken.model.decoder.bias[2] = float("inf")
    with pytest.raises(TrainingError, match=r"'a' \(sae_l1\): loss.* not finite at step 0 \(epoch 0, batch"):
        train([broken], lambda e: x.split(64), cfg, torch.device("cpu"))


def test_rows_too_large_for_float32_squares_say_so():
    """Finite rows of size ~1e20 (a float32 or bfloat16 store holds them): the SSE overflows at step 0,
    before any lr acted, so "lower its lr" is no advice; the error says the rows are too large for float32
    and to normalise them. A non-finite loss on ordinary rows keeps the lr advice."""
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0)) * 1e20  # [n, d]
    cfg = TrainConfig(dicts=[], epochs=1)
    with pytest.raises(TrainingError, match=r"not finite at step 0 .* too large for float32 arithmetic .* "
                                            r"set train.normalize: mean_scale"):
        train([Member("a", make("sae_l1", 4, 6), 0.01)], lambda e: x.split(32), cfg, torch.device("cpu"))
    broken = Member("b", make("sae_l1", 4, 6), 0.01)
    with torch.no_grad():
        broken.model.decoder.bias[2] = float("inf")
    with pytest.raises(TrainingError, match=r"Lower its lr"):
        train([broken], lambda e: (x / 1e20).split(32), cfg, torch.device("cpu"))
    big = x / 1e3  # 1e17: finite squares, but a VAE's 1/gamma-weighted loss overflows at step 0 even at lr 0
    with pytest.raises(TrainingError, match=r"'v' \(vaease\): .*not finite at step 0 .* far from unit "
                                            r"scale \(their mean squared deviation from the batch mean is "
                                            r"\d\.\d+e\+34\).* set train.normalize: mean_scale"):
        train([Member("v", make("vaease", 4, 6), 0.0)], lambda e: big.split(32), cfg, torch.device("cpu"))


@pytest.mark.parametrize("variant", ["vae", "vaease"])
def test_a_step_logs_the_loggamma_its_loss_used_not_the_updated_one(variant):
    """The loss terms held loggamma as a view of the parameter, so the step's own update showed in its log
    (the terms of step t carried step t+1's loggamma; hnum's note)."""
    from actdict.train.loop import step

    m = Member("a", make(variant, 4, 6, seed=1, loggamma_init=-4.0), 0.1)
    m.setup(torch.device("cpu"))
    terms = step(m, 5 * torch.randn(64, 4), 0.1, torch.autocast("cpu", enabled=False), None)
    assert float(terms["loggamma"]) == -4.0 and float(m.model.loggamma.detach()) != -4.0


def test_grad_clip_bounds_the_gradient_norm_and_keeps_old_hashes():
    from actdict.train.identity import dict_hash
    from actdict.train.loop import step

    torch.manual_seed(0)
    x = 5 * torch.randn(64, 4)  # [B, d]

    def grad_norm(clip: float) -> float:
        m = Member("a", make("vaease", 4, 6, seed=1, loggamma_init=-4.0), 0.01)
        m.setup(torch.device("cpu"))
        before = [p.detach().clone() for p in m.model.parameters()]
        torch.manual_seed(2)  # the same noise draw for every call
        step(m, x, 0.01, torch.autocast("cpu", enabled=False), None, clip)
        assert any(not torch.equal(a, p) for a, p in zip(before, m.model.parameters(), strict=True))
        return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in m.model.parameters()])))

    free = grad_norm(0.0)
    assert free > 10  # 1/gamma-weighted reconstruction: a large gradient
    assert grad_norm(1.0) == pytest.approx(1.0, rel=1e-5)
    assert grad_norm(10 * free) == pytest.approx(free, rel=1e-6)  # above the norm: untouched
    common, dc = Common(run_dir="r", seed=0, store="s"), DictConfig("v", "vaease")
    args = ({"rows": 1}, {"train_chunks": [0]})
    h = {c: dict_hash(dc, TrainConfig(grad_clip=c), common, *args) for c in (0.0, 1.0)}
    assert dict_hash(dc, TrainConfig(), common, *args) == h[0.0] != h[1.0]
    # runs made before grad_clip existed keep their hash: it is left out of the hash at its default
    assert h[0.0] == "a259738e70cda69c"  # dict_hash of this config before grad_clip was added


def test_step_is_one_adam_step_on_fresh_gradients_then_after_step():
    """``loop.step`` = zero the gradients, backward, set this step's lr, Adam, ``after_step`` (here the unit
    renormalisation of TopK+AuxK's decoder rows), checked against those calls made by hand over two steps."""
    from contextlib import nullcontext

    from actdict.train.loop import step

    x = torch.randn(32, 6, generator=torch.Generator().manual_seed(0))  # [B, d]
    a = Member("a", make("sae_topk_auxk", 6, 16, seed=1, topk=3), 0.5)
    a.setup(torch.device("cpu"))
    b = make("sae_topk_auxk", 6, 16, seed=1, topk=3)
    opt = torch.optim.Adam(b.parameters(), lr=123.0)
    for lr in (0.01, 0.003):
        step(a, x, lr, nullcontext(), None)
        opt.zero_grad()
        b.loss_terms(x, b(x))["loss"].backward()
        for g in opt.param_groups:
            g["lr"] = lr
        opt.step()
        b.after_step()
    for (name, p), q in zip(a.model.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=name)
    torch.testing.assert_close(a.model.W_dec.norm(dim=1), torch.ones(16))
    assert a.opt.param_groups[0]["lr"] == 0.003


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


def test_schedules():
    lrs = [lr_at(s, 0.01, "cosine_restarts", 100, eta_min=1e-4, t0=3) for s in range(40)]
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.01)
    ref = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=3, T_mult=2, eta_min=1e-4)
    expect = []
    for _ in range(40):
        expect.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    assert lrs == expect  # exactly the paper's torch scheduler stepped per iteration
    warm = [lr_at(s, 1.0, "warmup_cosine", 110, warmup_steps=10, eta_min=0.0) for s in range(110)]
    assert warm[:10] == pytest.approx([(i + 1) / 10 for i in range(10)]) and warm[10] == 1.0
    assert warm[60] == pytest.approx(0.5) and warm[-1] == pytest.approx(0.0, abs=1e-3)
    assert all(a >= b for a, b in zip(warm[10:], warm[11:], strict=False))
    lin = [lr_at(s, 1.0, "linear_decay", 100, eta_min=0.0) for s in range(100)]
    assert lin[0] == 1.0 and lin[50] == pytest.approx(0.5) and lin[99] == pytest.approx(0.01)
    assert {lr_at(s, 0.3, "constant", 100) for s in range(100)} == {0.3}


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
    assert out.count("skipped") == 1 and "['s']" in out
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


def test_pinned_stream_yields_the_same_batches(store, monkeypatch):
    """pin=True (CUDA's page-locked buffers; the allocation is faked here so that the CPU runs the same
    code: shuffle into a torch tensor's memory, batches as its slices, the leftover carried over) gives
    exactly the batches of the plain stream."""
    chunks = list(range(store.num_chunks))
    plain = list(iter_rows(store, chunks, 48, 3, seed=5, epoch=1, start=2))
    made = []
    real_empty = torch.empty

    def fake_empty(*shape, pin_memory=False, **kw):
        made.append(pin_memory)
        return real_empty(*shape, **kw)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch, "empty", fake_empty)
    pinned = list(iter_rows(store, chunks, 48, 3, seed=5, epoch=1, start=2, pin=True))
    assert made and all(made)  # every buffer was asked for in page-locked memory
    assert len(pinned) == len(plain) == 1000 // 48 + 1 - 2
    for (x, rows), (y, rows_y) in zip(pinned, plain, strict=True):
        assert torch.equal(x, y) and np.array_equal(rows, rows_y)
        np.testing.assert_array_equal(x[:, 0].numpy(), rows)  # row i has x[:, 0] == i


def test_seed_step_draws_what_manual_seed_draws(device):
    """The loop's per-step seeding gives the random streams of ``torch.manual_seed`` on the CPU and on the
    step's device (VAE sampling noise: a run's numbers do not depend on which of the two seeded it)."""
    from actdict.train.loop import seed_step

    dev = torch.device(device)
    for s in (0, 2**62 + 12345):
        torch.manual_seed(s)
        want = torch.randn(7), torch.randn(7, device=dev)
        torch.manual_seed(s + 1)  # something else first
        torch.randn(3), torch.randn(3, device=dev)
        seed_step(s, dev)
        got = torch.randn(7), torch.randn(7, device=dev)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_loop_sets_each_steps_lr_seed_and_averages_the_epoch_history(monkeypatch):
    """Step s of a run of 2 epochs x 4 batches uses lr_at(s) over the run's 8 steps (warmup_cosine:
    lr (1 + cos(pi s / 8)) / 2 by hand), draws from the seed (seed, s, name), and each epoch's history is
    the mean of its steps' terms."""
    from actdict.train import loop
    from actdict.train.loop import step_seed

    seen = []

    def fake_step(m, x, lr, amp, weight, clip=0.0):  # records what the loop asks of the step
        seen.append((lr, torch.initial_seed()))
        return {"loss": torch.tensor(float(len(seen) - 1)), "sse": torch.tensor(2.0)}

    monkeypatch.setattr(loop, "step", fake_step)
    x = torch.zeros(8, 3)
    cfg = TrainConfig(dicts=[], epochs=2, schedule="warmup_cosine", eta_min=0.0)
    m = Member("a", make("sae_l1", 3, 4), 0.5)
    assert train([m], lambda e: x.split(2), cfg, torch.device("cpu"), steps_per_epoch=4, seed=9) == 8
    lrs, seeds = zip(*seen, strict=True)
    assert lrs == pytest.approx([0.5 * (1 + np.cos(np.pi * s / 8)) / 2 for s in range(8)], rel=1e-12)
    assert list(seeds) == [step_seed(9, s, "a") for s in range(8)] and len(set(seeds)) == 8
    assert m.history == [{"loss": 1.5, "sse": 2.0, "epoch": 0}, {"loss": 5.5, "sse": 2.0, "epoch": 1}]


def test_schedules_end_at_eta_min_and_stay_there():
    """warmup_cosine and linear_decay go from lr to eta_min (> 0 here) over the run, halfway at its middle,
    and a step past the planned end (a run given more epochs on resume) keeps eta_min: no cosine climbing
    back, no negative rate."""
    for sched in ("warmup_cosine", "linear_decay"):
        got = [lr_at(s, 1.0, sched, 100, eta_min=0.1) for s in (0, 50, 100, 130, 250)]
        assert got == pytest.approx([1.0, 0.55, 0.1, 0.1, 0.1]), sched


def test_schedule_warmup_shifts_every_schedule():
    """With warmup_steps w, step w + t of a run of T steps has the lr of step t of a run of T - w steps
    without warmup, for each schedule."""
    for sched in ("cosine_restarts", "warmup_cosine", "linear_decay"):
        for t in range(0, 40, 3):
            a = lr_at(10 + t, 0.1, sched, 50, warmup_steps=10, eta_min=1e-3, t0=4)
            assert a == pytest.approx(lr_at(t, 0.1, sched, 40, eta_min=1e-3, t0=4), rel=1e-12), (sched, t)
    assert lr_at(30, 1.0, "linear_decay", 110, warmup_steps=10, eta_min=0.0) == pytest.approx(0.8)


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


def test_split_note_warns_when_whole_chunks_miss_the_test_fraction():
    from actdict.train.data import split_note

    sizes = [4096, 904]  # 5,000 vectors imported with the default 4,096-row chunks
    note = split_note(sizes, {"test_chunks": [0], "train_chunks": [1]}, 0.2)
    assert note.startswith("the held-out chunks [0] hold 82% of the rows, not train.test_fraction=0.2")
    assert split_note(sizes, {"test_chunks": [1], "train_chunks": [0]}, 0.2) is None  # 18%: close
    assert split_note([64] * 49 + [32], {"test_chunks": [0, 1, 2, 3, 4]}, 0.1) is None  # 10.1%
    assert split_note([10] * 4, {"test_chunks": []}, 0.0) is None


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
    from actdict.train.loop import LEARNED_NOTHING
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
    from actdict.train.loop import Spread
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


def test_a_sweeps_training_names_its_dictionaries_in_one_short_line(store, tmp_path, capsys):
    """Training began by printing the list of its dictionaries' names: 600 characters for a sweep of 20, 1,300
    for 48; a rerun said each finished one was skipped, one line each. More than 3 are now named by their
    number, first and last, in one line; up to 3 as before."""
    from actdict.train.run import main

    sweep = [DictConfig(f"l1_lam1-{v}", "sae_l1", k=4, lr=0.01, params={"lam1": v}) for v in (0.1, 0.2, 1, 9)]
    for dicts, said in ((sweep, "4 dictionaries l1_lam1-0.1 ... l1_lam1-9 on 808 rows"),
                        (sweep[:2], "['l1_lam1-0.1', 'l1_lam1-0.2'] on 808 rows")):
        main(Common(run_dir=str(tmp_path / str(len(dicts))), seed=0, store=store.path),
             TrainConfig(dicts=dicts, epochs=1, batch_size=100, test_fraction=0.2, device="cpu"))
        assert f"train: {said} (" in capsys.readouterr().out
    main(Common(run_dir=str(tmp_path / "4"), seed=0, store=store.path),  # again: all finished, one line
         TrainConfig(dicts=sweep, epochs=1, batch_size=100, test_fraction=0.2, device="cpu"))
    said = "train: 4 dictionaries l1_lam1-0.1 ... l1_lam1-9: finished checkpoints with the same config exist"
    assert capsys.readouterr().out.splitlines() == [said + ", skipped"]


def test_a_resume_state_is_written_from_the_dictionaries_own_memory(tmp_path, monkeypatch):
    """Each checkpoint copied every dictionary's weights and Adam state before writing them: a sweep's
    whole state twice in memory at once (+271 MiB for 20 sae_l1 of k = 1,536 at d = 384). Tensors are now
    written from their own memory, and copied only where two share a storage (safetensors refuses that);
    the state reads back the same."""
    from contextlib import nullcontext

    from actdict.train import resume
    from actdict.train.loop import Position, step

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


def test_the_epoch_spread_is_exact_for_rows_far_from_zero():
    """The spread the "learned almost nothing" warning compares with (the SSE of predicting every row by the
    epoch's mean row) is E|x|^2 - |mean|^2: summed in float32, rows of mean 3e4 and variance ~2 per
    dimension lost it to rounding (negative: a dictionary of explained variance 0.98 was warned about)."""
    from actdict.train.dist import Dist
    from actdict.train.loop import Spread

    g = torch.Generator().manual_seed(0)
    x = (torch.randn(4096, 64, generator=g, dtype=torch.float64) + 3e4).float()  # [n, d]
    s = Spread()
    for b in x.split(256):
        s.add(b)
    x64 = x.double()
    want = float((x64 - x64.mean(0)).pow(2).sum(1).mean())  # ~64
    assert abs(s.end(Dist()) - want) < 1e-6 * want


def test_member_trains_with_plain_adam_over_many_steps():
    """``Member``'s optimizer is Adam with the usual constants (beta1 0.9, beta2 0.999, eps 1e-8), checked
    against Adam's update written out by hand over 30 steps (two steps cannot tell beta2 0.999 from 0.99:
    the first update is the gradient's sign whatever the betas)."""
    from contextlib import nullcontext

    from actdict.train.loop import step

    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(16, 5, generator=g) * (1 + i % 3) for i in range(30)]  # [B, d] each
    a = Member("a", make("sae_l1", 5, 8, seed=1), 0.01)
    a.setup(torch.device("cpu"))
    b = make("sae_l1", 5, 8, seed=1)
    params = list(b.parameters())
    m1 = [torch.zeros_like(p) for p in params]
    m2 = [torch.zeros_like(p) for p in params]
    for t, x in enumerate(xs, start=1):
        step(a, x, 0.01, nullcontext(), None)
        grads = torch.autograd.grad(b.loss_terms(x, b(x))["loss"], params)
        with torch.no_grad():
            for p, gr, u, v in zip(params, grads, m1, m2, strict=True):
                u.mul_(0.9).add_(0.1 * gr)
                v.mul_(0.999).add_(0.001 * gr * gr)
                p -= 0.01 * (u / (1 - 0.9**t)) / ((v / (1 - 0.999**t)).sqrt() + 1e-8)
    for (name, p), q in zip(a.model.named_parameters(), params, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)


def test_loop_hands_each_step_the_runs_schedule_clip_and_autocast(monkeypatch):
    """Every train setting that shapes a step reaches it: cosine_restarts after a 2-step warmup with t0=2 and
    eta_min=0.1 (by hand: warmup lr/2, lr; then cycles of 2 and 4 steps), grad_clip, bf16 autocast; each
    dictionary draws from its own seed. Under max_steps, warmup_cosine decays over the steps run (6), not
    over the epochs asked for."""
    from actdict.train import loop
    from actdict.train.loop import step_seed

    seen = []

    def fake_step(m, x, lr, amp, weight, clip=0.0):  # records what the loop asks of the step
        seen.append((m.name, lr, clip, amp, torch.initial_seed()))
        return {"loss": torch.tensor(1.0), "sse": torch.tensor(1.0)}

    monkeypatch.setattr(loop, "step", fake_step)
    x = torch.zeros(8, 3)
    cfg = TrainConfig(dicts=[], epochs=2, schedule="cosine_restarts", warmup_steps=2, t0=2, eta_min=0.1,
                      grad_clip=0.7, autocast=True)
    members = [Member("a", make("sae_l1", 3, 4), 1.0), Member("b", make("sae_l1", 3, 4), 1.0)]
    assert train(members, lambda e: x.split(2), cfg, torch.device("cpu"), steps_per_epoch=4, seed=9) == 8
    a = [s for s in seen if s[0] == "a"]
    c = np.cos(np.pi / 4)
    want = [0.5, 1.0, 1.0, 0.55, 1.0, 0.1 + 0.9 * (1 + c) / 2, 0.55, 0.1 + 0.9 * (1 - c) / 2]
    assert [lr for _, lr, *_ in a] == pytest.approx(want, rel=1e-12)
    assert {clip for _, _, clip, *_ in seen} == {0.7}
    assert all(isinstance(amp, torch.autocast) and amp.fast_dtype == torch.bfloat16 for *_, amp, _ in seen)
    seeds = {name: [s for n, *_, s in seen if n == name] for name in ("a", "b")}
    assert seeds["a"] == [step_seed(9, s, "a") for s in range(8)]
    assert all(sa != sb for sa, sb in zip(seeds["a"], seeds["b"], strict=True))  # not one noise for all
    seen.clear()
    cfg = TrainConfig(dicts=[], epochs=4, schedule="warmup_cosine", eta_min=0.0, max_steps=6)
    assert train(members[:1], lambda e: x.split(2), cfg, torch.device("cpu"), steps_per_epoch=4) == 6
    assert [lr for _, lr, *_ in seen] == pytest.approx([(1 + np.cos(np.pi * s / 6)) / 2 for s in range(6)])
    assert all(amp is not None and not isinstance(amp, torch.autocast) for *_, amp, _ in seen)
    cfg = TrainConfig(dicts=[], epochs=1, max_steps=100)  # max_steps only cuts a run short
    assert train(members[:1], lambda e: x.split(2), cfg, torch.device("cpu"), steps_per_epoch=4) == 4


def test_loop_saves_every_checkpoint_every_steps_and_keeps_the_last_epochs_baselines(monkeypatch):
    """The resume state is saved after steps 3 and 6 of 8 (checkpoint_every=3) at the position after that
    step; the ``diverged`` baselines are the last epoch's alone, computed by hand: the mean over its batches
    of the SSE of each batch's mean row, and the SSE of the epoch's mean row over all its rows."""
    from dataclasses import replace

    from actdict.train import loop

    monkeypatch.setattr(loop, "step", lambda m, x, *a, **k: {"loss": torch.tensor(0.0)})
    g = torch.Generator().manual_seed(0)
    data = [torch.randn(8, 3, generator=g, dtype=torch.float64).float(),  # [8, d] per epoch, epoch 1
            (torch.randn(8, 3, generator=g, dtype=torch.float64) * 3 + 5).float()]  # far from epoch 0's
    saved = []
    m = Member("a", make("sae_l1", 3, 4), 0.1)
    cfg = TrainConfig(dicts=[], epochs=2, checkpoint_every=3)
    assert train([m], lambda e: data[e].split(4), cfg, torch.device("cpu"), steps_per_epoch=2,
                 save=lambda pos: saved.append(replace(pos))) == 4
    assert [vars(p) for p in saved] == [{"epoch": 1, "batch": 1, "step": 3}]
    x = data[1].double().numpy()
    halves = [((b - b.mean(0)) ** 2).sum(1).mean() for b in (x[:4], x[4:])]
    assert m.baseline == pytest.approx(np.mean(halves), rel=1e-6)
    assert m.spread == pytest.approx(((x - x.mean(0)) ** 2).sum(1).mean(), rel=1e-6)
    saved.clear()
    cfg = TrainConfig(dicts=[], epochs=2, checkpoint_every=3)
    train([Member("b", make("sae_l1", 3, 4), 0.1)], lambda e: data[e].split(2), cfg, torch.device("cpu"),
          steps_per_epoch=4, save=lambda pos: saved.append(replace(pos)))
    assert [vars(p) for p in saved] == [{"epoch": 0, "batch": 3, "step": 3},
                                        {"epoch": 1, "batch": 2, "step": 6}]


def test_split_note_allows_exactly_a_tenth_off():
    """The note is for a held-out share more than 0.1 from test_fraction: 20% of the rows held out for
    test_fraction=0.1 is within it, 30% is not."""
    from actdict.train.data import split_note

    assert split_note([10] * 10, {"test_chunks": [0, 1]}, 0.1) is None
    assert split_note([10] * 10, {"test_chunks": [0, 1, 2]}, 0.1).startswith("the held-out chunks [0, 1, 2] "
                                                                            "hold 30% of the rows")


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


def test_normalized_wrapper_reads_and_rebuilds_raw_rows():
    """``checkpoint.Normalized`` = the inner model on (x - mean) / scale, its reconstructions (forward and
    decode) mapped back by * scale + mean, its loss the inner one in normalised units; it passes on what the
    loop and analysis ask of the inner variant (no reconstruction to train, batch statistics, active side)."""
    inner = make("sae_l1", 3, 4, seed=1)
    mean, scale = torch.tensor([1.0, -2.0, 30.0]), 2.5
    m = checkpoint.Normalized(inner, mean, scale)
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(0)) * 4 + mean  # [B, d] raw
    out, ref = m(x, sample=False), inner((x - mean) / scale, sample=False)
    torch.testing.assert_close(out.codes, ref.codes)
    torch.testing.assert_close(out.x_hat, ref.x_hat * scale + mean)
    torch.testing.assert_close(m.decode(out.codes), inner.decode(ref.codes) * scale + mean)
    loss = inner.loss_terms((x - mean) / scale, ref)["loss"]
    torch.testing.assert_close(m.loss_terms(x, out)["loss"], loss)
    lse, vae = (checkpoint.Normalized(make(v, 3, 4), mean, scale) for v in ("lse", "vae"))
    assert (lse.trains_reconstruction, lse.batch_loss, vae.active_side) == (False, True, "low")
    assert (m.trains_reconstruction, m.batch_loss, m.active_side) == (True, False, "high")


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


def test_each_epoch_reads_the_chunks_in_its_own_seeded_order(store):
    """Buffers of one chunk: the chunks are read in a permutation of (seed, epoch), not in store order, and
    another epoch reads them in another order (not only the rows inside a buffer are shuffled)."""

    class Recording(CountingStore):
        def read_acts(self, i, out=None):
            self.order.append(int(i))
            return self.inner.read_acts(i, out)

    def order(seed, epoch):
        s = Recording(store)
        s.order = []
        list(iter_batches(s, list(range(16)), 32, 1, seed=seed, epoch=epoch))
        return s.order

    orders = [order(0, e) for e in range(3)]
    assert all(sorted(o) == list(range(16)) for o in orders) and order(0, 1) == orders[1]
    assert orders[0] != list(range(16)) and len({tuple(o) for o in orders}) == 3


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

    seeds = []
    real = loop.seed_step
    monkeypatch.setattr(loop, "seed_step", lambda s, device: (seeds.append(s), real(s, device)))

    common = Common(run_dir=str(tmp_path / "run"), seed=11, store=store.path)
    main(common, TrainConfig(dicts=[DictConfig("a", "sae_l1", k=4, seed=2)], epochs=2, batch_size=100,
                             test_fraction=0.25, device="cpu"))
    assert seeds == [loop.step_seed(11, s, "a") for s in range(16)]  # 12 train chunks: 8 batches an epoch


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


def test_a_run_ending_just_after_a_warm_restart_is_told_so():
    """The demo's 1,408 steps end 133 steps after cosine_restarts' restart at step 1,275 (lr still 97 % of
    its maximum: docs/results.md E31); ending at the cycle's low point or late in a cycle is not noted."""
    from actdict.train.schedule import lr_at, restart_note

    note = restart_note(1408, "cosine_restarts", 5)
    assert "restarts at step 1,275 and the run ends 133 steps later, in a 1,280-step cycle" in note
    assert "still 97% of lr" in note and "train.max_steps=1275" in note and "2555 at the next" in note
    assert round(lr_at(1407, 1.0, "cosine_restarts", 1408, 0, 0.0, 5), 2) == 0.97
    assert [restart_note(t, "cosine_restarts", 5) is None for t in (1275, 1276, 1595, 1596, 2000, 99)] == [
        True, False, False, True, True, True]
    assert restart_note(1408, "constant", 5) is None and restart_note(1408, "warmup_cosine", 5) is None
    assert "restarts at step 1,285" in restart_note(1418, "cosine_restarts", 5, warmup_steps=10)


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
