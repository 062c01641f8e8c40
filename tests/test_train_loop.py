"""The training loop and its step: losses, Adam, clipping, lr schedules, seeds, the normalising wrapper."""

import numpy as np
import pytest
import torch

from actdict.config import Common
from actdict.train import checkpoint
from actdict.train.config import DictConfig, TrainConfig
from actdict.train.loop import train
from actdict.train.member import Member
from actdict.train.protocol import make
from actdict.train.schedule import lr_at
from actdict.train.step import TrainingError


def test_the_progress_bar_of_a_sweep_shows_its_loss_range(capsys):
    """The bar named every dictionary's loss: a sweep of 20 made a ~900-column postfix, which a terminal cut
    after the first two names, and the bar itself shrank to one column. Beyond 4 dictionaries it now shows
    their losses' range; up to 4, each by name as before. Both are headed 'loss' (up to 4 they read
    'l1_lam1-0.001=0.5', of what unsaid)."""
    import re

    x = torch.randn(256, 4) @ torch.randn(4, 4)  # [n, d]
    members = [Member(f"l1_lam1-{v}", make("sae_l1", 4, 6, lam1=v), 0.01) for v in (1e-3, 0.01, 0.1, 1, 9)]
    cfg, cpu = TrainConfig(dicts=[], epochs=1), torch.device("cpu")
    train(members, lambda e: x.split(64), cfg, cpu, progress=True)
    err = capsys.readouterr().err.splitlines()[-1]
    assert re.search(r"4step \[.*, loss of 5 dicts \d[\d.]*\.\.\d[\d.]*\]$", err) and "l1_lam1" not in err
    train(members[:2], lambda e: x.split(64), cfg, cpu, progress=True)
    err = capsys.readouterr().err.splitlines()[-1]
    assert re.search(r", loss l1_lam1-0.001 [\d.]+, l1_lam1-0.01 [\d.]+\]$", err)
    from actdict.train.loop import postfix

    assert postfix(dict(zip("abcde", [3.0, 1.25, 9.0, 2.0, 123456.0], strict=True))) == (
        "loss of 5 dicts 1.25..1.235e+05")
    assert postfix({"a": 3.0, "b": 1.25}) == "loss a 3, b 1.25"


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


def test_a_gradient_that_overflows_is_named_at_its_step():
    """A finite loss whose gradient overflows float32 (a latent of 1e22 times a residual of 1e18): its update
    made the weights NaN, and the error named the next step; the step's grad_norm names this one."""
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))  # [n, d]
    broken = Member("a", make("sae_l1", 4, 6), 0.01)
    with torch.no_grad():
        broken.model.encoder.bias[0], broken.model.decoder.bias[:] = 1e22, -1e18
        broken.model.decoder.weight[:, 0] = 0.0  # latent 0 adds nothing to the loss: it stays finite
    with pytest.raises(TrainingError, match=r"^dictionary 'a' \(sae_l1\): grad_norm not finite at step 0 "
                                            r"\(epoch 0, batch 0\); terms \{'loss': 4\.8\d*e\+36, .* Its "
                                            r"loss is finite, but its gradient overflows float32\. Lower"):
        train([broken], lambda e: x.split(32), TrainConfig(dicts=[], epochs=1), torch.device("cpu"))


def test_gradients_beyond_float32_squares_train_and_log_their_norm():
    """Rows of scale 1e9: gradient entries near 1e19, whose squares pass float32's range; Adam trains on them
    (it is scale-free), and the logged grad_norm is their norm (summed in float64), not inf. Under
    train.grad_clip, torch's clipping scaled them by clip / inf = 0, silently: that stops the run."""
    x = torch.randn(256, 16, generator=torch.Generator().manual_seed(0)) * 1e9  # [n, d]
    m = Member("a", make("sae_jumprelu", 16, 32, seed=0), 0.01)
    train([m], lambda e: x.split(32), TrainConfig(dicts=[], epochs=2), torch.device("cpu"))
    assert 1e18 < m.history[-1]["grad_norm"] < 1e20 and m.history[-1]["loss"] < m.history[0]["loss"]
    clipped = Member("a", make("sae_jumprelu", 16, 32, seed=0), 0.01)
    with pytest.raises(TrainingError, match=r"grad_norm not finite at step 0 .* gradient overflows float32"):
        train([clipped], lambda e: x.split(32), TrainConfig(dicts=[], epochs=2, grad_clip=1.0),
              torch.device("cpu"))


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
    from actdict.train.step import step

    m = Member("a", make(variant, 4, 6, seed=1, loggamma_init=-4.0), 0.1)
    m.setup(torch.device("cpu"))
    terms = step(m, 5 * torch.randn(64, 4), 0.1, torch.autocast("cpu", enabled=False), None)
    assert float(terms["loggamma"]) == -4.0 and float(m.model.loggamma.detach()) != -4.0


def test_grad_clip_bounds_the_gradient_norm_and_keeps_old_hashes():
    from actdict.train.identity import dict_hash
    from actdict.train.step import step

    torch.manual_seed(0)
    x = 5 * torch.randn(64, 4)  # [B, d]

    def grad_norm(clip: float) -> float:
        m = Member("a", make("vaease", 4, 6, seed=1, loggamma_init=-4.0), 0.01)
        m.setup(torch.device("cpu"))
        before = [p.detach().clone() for p in m.model.parameters()]
        torch.manual_seed(2)  # the same noise draw for every call
        terms = step(m, x, 0.01, torch.autocast("cpu", enabled=False), None, clip)
        assert any(not torch.equal(a, p) for a, p in zip(before, m.model.parameters(), strict=True))
        logged.append(float(terms["grad_norm"]))  # the gradient's norm before clipping
        return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in m.model.parameters()])))

    logged = []
    free = grad_norm(0.0)
    assert logged == [pytest.approx(free, rel=1e-6)]
    assert free > 10  # 1/gamma-weighted reconstruction: a large gradient
    assert grad_norm(1.0) == pytest.approx(1.0, rel=1e-5)
    assert grad_norm(10 * free) == pytest.approx(free, rel=1e-6)  # above the norm: untouched
    assert logged == [pytest.approx(free, rel=1e-6)] * 3
    common, dc = Common(run_dir="r", seed=0, store="s"), DictConfig("v", "vaease")
    args = ({"rows": 1}, {"train_chunks": [0]})
    h = {c: dict_hash(dc, TrainConfig(grad_clip=c), common, *args) for c in (0.0, 1.0)}
    assert dict_hash(dc, TrainConfig(), common, *args) == h[0.0] != h[1.0]
    # runs made before grad_clip existed keep their hash: it is left out of the hash at its default
    assert h[0.0] == "a259738e70cda69c"  # dict_hash of this config before grad_clip was added


def test_step_is_one_adam_step_on_fresh_gradients_then_after_step():
    """``step.step`` = zero the gradients, backward, set this step's lr, Adam, ``after_step`` (here the unit
    renormalisation of TopK+AuxK's decoder rows), checked against those calls made by hand over two steps."""
    from contextlib import nullcontext

    from actdict.train.step import step

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


def test_seed_step_draws_what_manual_seed_draws(device):
    """The loop's per-step seeding gives the random streams of ``torch.manual_seed`` on the CPU and on the
    step's device (VAE sampling noise: a run's numbers do not depend on which of the two seeded it)."""
    from actdict.train.step import seed_step

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
    from actdict.train.step import step_seed

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


def test_the_epoch_spread_is_exact_for_rows_far_from_zero():
    """The spread the "learned almost nothing" warning compares with (the SSE of predicting every row by the
    epoch's mean row) is E|x|^2 - |mean|^2: summed in float32, rows of mean 3e4 and variance ~2 per
    dimension lost it to rounding (negative: a dictionary of explained variance 0.98 was warned about)."""
    from actdict.train.dist import Dist
    from actdict.train.member import Spread

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

    from actdict.train.step import step

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
    from actdict.train.step import step_seed

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
