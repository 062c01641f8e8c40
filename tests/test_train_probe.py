"""The training log's measurements of each dictionary on an interval's last batch (``actdict.train.probe``):
the analysis' own metrics of that batch at that step, and nothing of the training changed by taking them."""

import copy

import numpy as np
import pytest
import torch

from actdict.analyze import metrics as M
from actdict.train.config import TrainConfig
from actdict.train.log import append_record, read_log, start_log
from actdict.train.loop import Interrupted, train
from actdict.train.member import Member, Position
from actdict.train.probe import measure
from actdict.train.protocol import make, registry
from tests.test_variant_contract import ARCHS, variant_params

CASES = sorted(registry()) + sorted(ARCHS)


def _batches(n=6, b=32, d=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, d, generator=g) * torch.linspace(0.2, 2.0, d) + 0.5 for _ in range(n)]


def _members(case, k=16):
    variant, params = variant_params(case)
    return [Member(name="m", model=make(variant, 7, k, seed=1, **params), lr=0.01)]


def _expected(model, x):  # what the analysis reports of the batch x, with its own functions
    model.eval()
    with torch.no_grad():
        out = model(x, sample=False)
    model.train()
    mask = M.active_mask(out.activity, model.active_side)  # [b, k]
    return {"eval_ad": float(M.active_dims(out.activity, model.active_side).double().mean()),
            "eval_l0": M.l0(out.codes), "eval_ev": M.explained_variance(x, out.x_hat),
            "eval_live": float(mask.any(0).double().mean())}


@pytest.mark.parametrize("case", CASES)
def test_each_record_holds_the_analysis_metrics_of_the_intervals_last_batch_at_that_step(case):
    batches = _batches()
    members, got, want = _members(case), [], []

    def log(recs):  # called at the step that closes the interval: the model is as it was then
        got.append(recs["m"])
        want.append(_expected(members[0].model, batches[(recs["m"]["step"] - 1) % len(batches)]))

    cfg = TrainConfig(epochs=2, log_every=4, batch_size=32, device="cpu")
    train(members, lambda e, s=0: iter(batches[s:]), cfg, torch.device("cpu"), len(batches), seed=0,
          progress=False, log=log, probe=True)
    assert [r["step"] for r in got] == [4, 6, 8, 12]  # every 4 steps and each epoch's end
    for r, w in zip(got, want, strict=True):
        assert {k: r[k] for k in w} == pytest.approx(w, rel=1e-6, abs=1e-9), (case, r["step"])
        assert 0 <= r["eval_ad"] <= 16 and 0 < r["eval_live"] <= 1 and r["eval_ev"] <= 1
    assert got[0]["eval_ev"] != got[2]["eval_ev"]  # measured as the model moved (step 8 sees step 4's batch)


@pytest.mark.parametrize("case", CASES)
def test_measuring_changes_nothing_of_the_training(case):
    runs = []
    for probe in (False, True):
        members = _members(case)
        train(members, lambda e, s=0: iter(_batches()[s:]), TrainConfig(epochs=2, log_every=2, batch_size=32,
                                                                                 device="cpu"),
              torch.device("cpu"), 6, seed=0, progress=False, log=lambda recs: None, probe=probe)
        runs.append(members[0])
    a, b = runs
    assert b.model.training  # left in training mode
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(va, vb), (case, k)  # buffers too: BatchTopK's threshold, dead counters, BatchNorm
    sa, sb = a.opt.state_dict()["state"], b.opt.state_dict()["state"]
    assert all(torch.equal(sa[i][key], sb[i][key]) for i in sa for key in sa[i])
    assert a.history == b.history


def test_a_batch_whose_latents_never_fire_counts_them_dead_and_an_empty_part_adds_nothing():
    m = make("sae_l1", 4, 6, seed=0)
    with torch.no_grad():
        m.encoder.weight[3:] = 0.0  # latents 3-5: pre-activation = bias
        m.encoder.bias[3:] = -1.0  # always negative: never fire
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((50, 4)).astype(np.float32))
    rec = measure({"m": m}, x, on=False)["m"]
    assert rec["eval_live"] <= 0.5 and rec == pytest.approx(_expected(m, x))
    assert measure({"m": m}, x[:0], on=False) == {"m": {}}
    m2 = copy.deepcopy(m).eval()
    assert measure({"m": m2}, x, on=False)["m"] == rec and not m2.training  # mode kept


def test_a_batch_of_identical_rows_has_no_ev_and_shifted_rows_keep_theirs():
    """eval_ev's spread is summed about the batch's mean row: 112 identical rows give NaN (logged null: no
    variance to explain), not 1 - SSE over sum(x^2) - sum(x)^2 / n's rounding residue (-7e15 here); a batch
    moved by a constant keeps its EV (what the analysis reports of it)."""
    m = make("sae_l1", 3, 8, seed=0)
    same = torch.tensor([1000.3, 3.3, -0.7]).expand(112, 3).contiguous()  # [112, 3]
    assert np.isnan(measure({"m": m}, same, on=False)["m"]["eval_ev"])
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((112, 3)).astype(np.float32)) + same
    assert measure({"m": m}, x, on=False)["m"]["eval_ev"] == pytest.approx(_expected(m, x)["eval_ev"])


@pytest.mark.parametrize("case", CASES)
def test_the_measurements_on_the_device_match_the_cpus(case, device):
    """On a GPU machine (the ``device`` fixture; the CPU against itself elsewhere): the same values, up to
    float32 rounding of the forward (AD and L0 are counts; a code at the edge of a split may move one)."""
    x = _batches(n=1, b=64)[0]
    cpu = measure({"m": _members(case)[0].model}, x, on=False)["m"]
    on = measure({"m": _members(case)[0].model.to(device)}, x.to(device), on=False)["m"]
    assert on["eval_ev"] == pytest.approx(cpu["eval_ev"], abs=1e-4)
    for key in ("eval_ad", "eval_l0", "eval_live"):
        assert on[key] == pytest.approx(cpu[key], abs=0.05), key


class _Killed(Exception):
    pass


@pytest.mark.parametrize("stop_at,kill_at,max_steps", [(6, 0, 0), (0, 8, 0), (5, 0, 5)])
def test_a_run_stopped_at_an_epochs_last_batch_or_at_max_steps_resumes_to_the_same_log(tmp_path, stop_at,
                                                                                        kill_at, max_steps):
    cfg = TrainConfig(epochs=2, log_every=4, checkpoint_every=6, max_steps=max_steps, batch_size=32,
                      device="cpu")
    path, saved = tmp_path / "m.jsonl", {}

    def run(members, start=None, stop=lambda: False):
        start_log(path, {"config_hash": "h"}, start.step if start else 0, "h")

        def save(pos):  # the resume state: a copy of the members (weights, Adam, open interval) and position
            saved.update(members=copy.deepcopy(members), pos=Position(**vars(pos)))
        train(members, lambda e, s=0: iter(_batches()[s:]), cfg, torch.device("cpu"), 6, seed=0, start=start,
              save=save, stop=stop, progress=False, probe=True,
              log=lambda recs: append_record(path, recs["m"]))
        return read_log(path)[1]

    full = run(_members("sae_l1"))
    calls = iter(range(1, 100))

    def stop():  # SIGTERM at step stop_at (a resume state saved); a SIGKILL at step kill_at (none saved)
        n = next(calls)
        if n == kill_at:
            raise _Killed
        return n == stop_at
    with pytest.raises((Interrupted, _Killed)):
        run(_members("sae_l1"), stop=stop)
    assert saved["pos"].step == (6 if kill_at else stop_at)  # a checkpoint at the epoch's last batch
    resumed = run(saved["members"], start=saved["pos"])
    assert [r["step"] for r in full] == ([4, 5] if max_steps else [4, 6, 8, 12])
    assert resumed == full and all("eval_ad" in r for r in resumed)  # no record lost, doubled or unmeasured


def test_an_epochs_short_last_batch_is_not_measured():
    """An interval ending on an epoch's last batch of fewer than half a batch's rows (15 of 32) has no eval_*:
    a few rows measure nothing (1 row: no variance to explain); one of half a batch or more is measured."""
    for last, measured in ((15, False), (16, True)):
        batches = _batches(n=3)[:2] + [_batches(n=1, b=last, seed=9)[0]]
        got = []
        cfg = TrainConfig(epochs=1, log_every=2, batch_size=32, device="cpu")
        train(_members("sae_l1"), lambda e, s=0, b=batches: iter(b[s:]), cfg, torch.device("cpu"), 3, seed=0,
              progress=False, log=lambda recs, g=got: g.append(recs["m"]), probe=True)
        assert [r["step"] for r in got] == [2, 3] and "eval_ad" in got[0]
        assert ("eval_ad" in got[1]) is measured and got[1]["steps"] == 1


@pytest.mark.parametrize("case", ["sae_topk", "vaease", "sae_batchtopk"])
def test_held_out_rows_are_measured_every_interval_and_change_nothing(case):
    """``held`` (train.probe_rows' rows): each record's held_* are the analysis' metrics of those rows at
    that step, beside the last batch's eval_*; the weights end as without them."""
    batches, held = _batches(), _batches(n=1, b=50, seed=9)[0]
    runs = []
    for rows in (None, held):
        members, got, want = _members(case), [], []

        def log(recs, members=members, got=got, want=want):
            got.append(recs["m"])
            want.append({"held" + k[4:]: v for k, v in _expected(members[0].model, held).items()})

        cfg = TrainConfig(epochs=2, log_every=4, batch_size=32, device="cpu")
        train(members, lambda e, s=0: iter(batches[s:]), cfg, torch.device("cpu"), len(batches), seed=0,
              progress=False, log=log, probe=True, held=rows)
        runs.append(members[0])
        if rows is None:
            assert not any(k.startswith("held_") for r in got for k in r)
            continue
        assert [r["step"] for r in got] == [4, 6, 8, 12]
        for r, w in zip(got, want, strict=True):
            assert {k: r[k] for k in w} == pytest.approx(w, rel=1e-6, abs=1e-9), (case, r["step"])
            assert "eval_ev" in r and r["held_ev"] != r["eval_ev"]
    for va, vb in zip(runs[0].model.state_dict().values(), runs[1].model.state_dict().values(), strict=True):
        assert torch.equal(va, vb)


def test_probe_rows_are_spread_over_evenly_spaced_held_out_chunks(tmp_path):
    """train.probe_rows' rows: the first rows of up to 16 test chunks, evenly spaced, first and last among
    them; fewer where the chunks hold fewer."""
    from actdict.harvest.store import write_vectors
    from actdict.train.data import held_out_rows, probe_chunks

    spread = probe_chunks(list(range(0, 80, 2)))  # 40 test chunks: 16, every 2.6th, the ends among them
    gaps = np.diff(spread)
    assert len(spread) == 16 and spread[0] == 0 and spread[-1] == 78 and gaps.min() >= 4 and gaps.max() <= 6
    assert probe_chunks([3, 9]) == [3, 9] and probe_chunks([5]) == [5] and probe_chunks([]) == []
    x = np.arange(40 * 10 * 2, dtype=np.float32).reshape(400, 2)  # 40 chunks of 10 rows: row r = [2r, 2r+1]
    store = write_vectors(str(tmp_path / "s"), x, chunk_rows=10, shard_rows=40)
    test = list(range(0, 40, 2))  # 20 test chunks: 16 read
    rows = held_out_rows(store, test, 40)  # 3 each (ceil 40 / 16), the first 40
    want = [10 * c + i for c in probe_chunks(test) for i in range(3)][:40]
    assert rows.dtype == np.float32 and rows[:, 0].tolist() == [2.0 * r for r in want]
    assert len(held_out_rows(store, test, 1000)) == 160  # 16 whole chunks of 10: fewer than asked


def test_a_short_held_out_chunk_leaves_its_share_to_the_others(tmp_path):
    """The store's last chunk is short (4,100 rows in chunks of 256: 4 rows) and held out: train.probe_rows
    600 of the 516 held-out rows of chunks 3, 9, 16 read 404 of them (200 + 200 + 4), and its note said the
    chunks held 404 rows; 500 read 404 too. The other chunks now make up the short one's share."""
    from actdict.harvest.store import write_vectors
    from actdict.train.data import held_out_rows

    x = np.arange(4100 * 2, dtype=np.float32).reshape(4100, 2)  # row r = [2r, 2r+1]
    store = write_vectors(str(tmp_path / "s"), x, chunk_rows=256, shard_rows=1024)
    assert len(held_out_rows(store, [3, 9, 16], 600)) == 516  # every held-out row
    rows = held_out_rows(store, [3, 9, 16], 500)  # 248 + 248 + 4, each chunk's first rows
    want = [*range(768, 768 + 248), *range(2304, 2304 + 248), *range(4096, 4100)]
    assert rows[:, 0].tolist() == [2.0 * r for r in want]
