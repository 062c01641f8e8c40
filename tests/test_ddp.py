"""``torchrun --nproc-per-node 2 -m actdict.cli train`` on 2 CPU ranks (gloo) ends where a single process
does: the ranks split every global batch and average their gradients weighted by rows, so only the
summation order differs (float32 rounding, hence a tolerance rather than bit equality). BatchTopK selects
over the global batch and keeps global dead counts and threshold (train/dist.py), so it matches too, its
aux loss included; TopK+AuxK normalises its MSEs by the global batch's spread. The VAEs' noise is the
global batch's, each rank keeping its rows (train/dist.py ``noise_like``); sae_kl's rho_hat is the global
batch mean, and lse's batch variance, correlation and summed LSE term are the global batch's. Every
registered variant is trained."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from actdict.config import common_of, load_experiment, section
from actdict.harvest.store import write_vectors
from actdict.train import checkpoint
from actdict.train.config import TrainConfig
from actdict.train.log import log_path, read_log
from actdict.train.protocol import make, registry
from actdict.train.run import main

ENTRIES = {  # name -> its train.dicts entry
    "l1": "{name: l1, variant: sae_l1, k: 16, lr: 0.01, params: {lam1: 0.05, lam2: 0.001}}",
    "topk": "{name: topk, variant: sae_topk, k: 16, lr: 0.01, params: {topk: 4}}",
    "batchtopk": "{name: batchtopk, variant: sae_batchtopk, k: 16, lr: 0.01, "
                 "params: {topk: 1, n_batches_to_dead: 1, k_aux: 4}}",
    "auxk": "{name: auxk, variant: sae_topk_auxk, k: 16, lr: 0.01, "
            "params: {topk: 2, k_aux: 4, dead_tokens: 66}}",
    "vae": "{name: vae, variant: vae, k: 16, lr: 0.01}",
    "vaease": "{name: vaease, variant: vaease, k: 16, lr: 0.01}",
    "kl": "{name: kl, variant: sae_kl, k: 16, lr: 0.01, params: {beta: 3.0}}",
    "lse": "{name: lse, variant: lse, k: 16, lr: 0.01}",
    # eps 0.1: with the default 1e-4, the 1/(|z| + eps) gradient of near-zero codes magnifies the float32
    # summation-order difference of the two ranks' averaged gradients to ~50% in 60 steps (0.1: 2e-6)
    "log": "{name: log, variant: sae_log, k: 16, lr: 0.01, params: {eps: 0.1}}",
    "jumprelu": "{name: jumprelu, variant: sae_jumprelu, k: 16, lr: 0.01}",
    "gated": "{name: gated, variant: sae_gated, k: 16, lr: 0.01}",
    "decnorm": "{name: decnorm, variant: sae_l1_decnorm, k: 16, lr: 0.01}",
    "sosae": "{name: sosae, variant: sosae, k: 16, lr: 0.01}",
}
DICTS = tuple(ENTRIES)


def _config(tmp_path: Path, store: str, run: str, names: tuple[str, ...] = DICTS,
            buffer_chunks: int | None = 2) -> Path:
    """The two runs' config: ``names`` of ``ENTRIES``; ``buffer_chunks`` None: train's default."""
    cfg = tmp_path / f"{run}.yaml"
    dicts = "".join(f"    - {ENTRIES[n]}\n" for n in names)
    buffer = f"\n  buffer_chunks: {buffer_chunks}" if buffer_chunks else ""
    cfg.write_text(f"""
run_dir: {tmp_path / run}
seed: 1
store: {store}
train:
  epochs: 2
  batch_size: 33      # odd: the ranks get 16 and 17 rows; the epoch's last batch is short{buffer}
  test_fraction: 0.2
  checkpoint_every: 10  # resume states are written on the way (a collective of the ranks' row moments)
  log_every: 7  # log records inside the epochs too (measured: eval_*), not only at their short last batch
  probe_rows: 101  # held-out rows measured every interval (held_*): 50 on one rank, 51 on the other
  device: cpu
  dicts:
{dicts}""")
    return cfg


TORCHRUN = Path(sys.executable).with_name("torchrun")
needs_torchrun = pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed next to the "
                                    "interpreter")


def _torchrun(cfg: Path, ranks: int) -> str:
    """``actdict train cfg`` under torchrun on ``ranks`` CPU ranks; its stdout (it must succeed)."""
    cmd = [str(TORCHRUN), "--standalone", "--nproc-per-node", str(ranks), "-m", "actdict.cli", "train",
           str(cfg)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@needs_torchrun
def test_torchrun_two_ranks_match_one_process(tmp_path):
    x = np.random.default_rng(3).standard_normal((1200, 8)).astype(np.float32)
    store = write_vectors(str(tmp_path / "store"), x, shard_rows=512, chunk_rows=64).path
    single = load_experiment(_config(tmp_path, store, "single"))
    cfg = section(single, "train", TrainConfig)
    own = {n for n, c in registry().items() if c.__module__.startswith("actdict.")}  # installed plugins aside
    assert {dc.variant for dc in cfg.dicts} == own  # a new variant must join this test
    main(common_of(single), cfg)

    assert _torchrun(_config(tmp_path, store, "ddp"), 2).count("train: saved") == len(DICTS)  # rank 0 writes
    for name in DICTS:
        a, ma = checkpoint.load(tmp_path / "single" / "dicts" / name)
        b, mb = checkpoint.load(tmp_path / "ddp" / "dicts" / name)
        assert mb["world_size"] == 2 and ma["world_size"] == 1 and ma["steps"] == mb["steps"] > 40
        for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            torch.testing.assert_close(vb, va, rtol=1e-4, atol=1e-5, msg=f"{name}.{k}")
        assert mb["history"][-1]["loss"] == pytest.approx(ma["history"][-1]["loss"], rel=1e-4)
        (ha, la), (hb, lb) = (read_log(log_path(tmp_path / r, name)) for r in ("single", "ddp"))
        assert hb == ha and [r["step"] for r in lb] == [r["step"] for r in la]  # rank 0 wrote it, once
        assert [r["loss"] for r in lb] == pytest.approx([r["loss"] for r in la], rel=1e-4)
        assert [("eval_ev" in r) for r in lb] == [("eval_ev" in r) for r in la] and "eval_ev" in la[0]
        assert all("held_ev" in r for r in la + lb)
        for key in ("eval_ev", "eval_l0", "eval_ad", "eval_live",  # the global batch's, summed over ranks
                    "held_ev", "held_l0", "held_ad", "held_live"):  # and the 101 held-out rows', alike
            got, want = ([r[key] for r in rs if key in r] for rs in (lb, la))
            assert got == pytest.approx(want, rel=1e-3, abs=0.02), key
        if name == "batchtopk":  # the aux loss ran (dead latents) and theta moved, the same on both
            theta = next(v for k, v in b.state_dict().items() if k.endswith("threshold"))
            assert max(h["aux"] for h in ma["history"]) > 0 and float(theta) > 0
        if name == "auxk":  # AuxK ran on dead latents; its nmse divides by the global batch's spread
            assert max(h["dead"] for h in ma["history"]) > 0 and max(h["auxk"] for h in ma["history"]) > 0
        init = make(a.variant, 8, 16, seed=1, **a.params).state_dict()
        moved = max(float((v.double() - init[k].double()).abs().max()) for k, v in a.state_dict().items())
        pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
        assert moved > 100 * max(float((va.double() - vb.double()).abs().max()) for va, vb in pairs)


@needs_torchrun
def test_a_rank_with_no_rows_of_a_short_last_batch(tmp_path):
    """497 train rows = 15 x 33 + 2: the last batch of each epoch has 2 rows, so on 3 ranks one rank's part
    of it is empty (its means are 0/0): it weighs 0, the run matches one process. (A last batch of one
    row is not made at all: ``data.last_batches``.)"""
    x = np.random.default_rng(3).standard_normal((625, 8)).astype(np.float32)
    store = write_vectors(str(tmp_path / "store"), x, shard_rows=512, chunk_rows=64).path
    names = ("l1", "vaease", "lse", "kl")
    single = load_experiment(_config(tmp_path, store, "single", names, buffer_chunks=None))
    main(common_of(single), section(single, "train", TrainConfig))
    _torchrun(_config(tmp_path, store, "ddp", names, buffer_chunks=None), 3)
    for name in names:
        a, ma = checkpoint.load(tmp_path / "single" / "dicts" / name)
        b, mb = checkpoint.load(tmp_path / "ddp" / "dicts" / name)
        assert mb["world_size"] == 3 and ma["steps"] == mb["steps"] == 32  # 16 batches per epoch
        for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            torch.testing.assert_close(vb, va, rtol=1e-4, atol=1e-5, msg=f"{name}.{k}")


def test_a_lone_last_row_waits_for_the_next_epoch():
    from actdict.train.data import last_batches

    assert [last_batches(n, 33) for n in (1, 32, 33, 34, 35, 66, 67)] == [1, 1, 1, 1, 2, 2, 2]


def test_average_grads_weighs_by_rows_and_keeps_missing_grads_missing(tmp_path):
    """``dist.average_grads`` in a process group of one rank (gloo): the all-reduce is the identity, so each
    gradient comes back times this rank's weight (its share of the global batch), in its parameter's memory
    layout (a transposed weight stays transposed), and a parameter no rank has a gradient for keeps None."""
    import torch.distributed as tdist

    from actdict.train.dist import average_grads

    model = torch.nn.Linear(3, 4)
    model.weight = torch.nn.Parameter(torch.randn(3, 4).T)  # [4, 3] a transposed view (sae_topk's decoder)
    spare = torch.nn.Parameter(torch.ones(2))
    model.register_parameter("spare", spare)  # no gradient on any rank
    model(torch.randn(5, 3)).pow(2).sum().backward()
    want = {n: p.grad.clone() * 0.25 for n, p in model.named_parameters() if p.grad is not None}
    tdist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        average_grads(model, 0.25)
    finally:
        tdist.destroy_process_group()
    assert model.spare.grad is None and set(want) == {"weight", "bias"}
    for n, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(p.grad, want[n], rtol=0, atol=0)
            assert p.grad.stride() == p.stride()


REINIT = """
import time

import torch

from actdict.harvest.dist import init_ranks
from actdict.train import dist

ranks = init_ranks()  # the harvest's group, as in `actdict run`, then its end
ranks.barrier()
ranks.close()
if ranks.rank == 0:
    time.sleep(3)  # rank 1 makes the training's group first
d = dist.from_env()
dist.init(d, torch.device("cpu"))
dist.barrier(d)
print("barrier passed", flush=True)
dist.close(d)
"""


@needs_torchrun
def test_the_training_group_after_a_harvest_group_does_not_hang(tmp_path):
    """`torchrun ... -m actdict.cli run` hung after 'harvest: wrote ...' about one run in three: the
    training's group, made after the harvest's was destroyed, took the same names in torchrun's store, so a
    rank that came first read the other's old address and waited at the first barrier forever (here: every
    time)."""
    import signal

    (tmp_path / "reinit.py").write_text(REINIT)
    cmd = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", str(tmp_path / "reinit.py")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks
        proc.communicate()
        pytest.fail("the training's process group hung at its first barrier")
    assert proc.returncode == 0 and out.count("barrier passed") == 2, err[-3000:]
