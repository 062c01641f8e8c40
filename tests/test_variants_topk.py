"""TopK+AuxK, BatchTopK and JumpReLU against hand arithmetic: dead latents, thresholds, STE."""

import copy
import pickle

import numpy as np
import pytest
import torch

from actdict.train.protocol import make
from tests import variants_helpers
from tests.variants_helpers import _np, _relu, _topk_rows

xb = variants_helpers.xb  # a fixture: the tests below take it as an argument


def _nmse(r, t):
    return ((r - t) ** 2).mean() / ((t.mean(0, keepdims=True) - t) ** 2).mean()


def test_topk_auxk_loss_by_hand(xb):
    k = 40  # topk 2 of 40 latents on 8 rows: at most 16 fire, so some stale latents stay dead
    since = torch.tensor([0, 500] * 20)
    m = make("sae_topk_auxk", 6, k, seed=1, topk=2, k_aux=4, dead_tokens=100)
    with torch.no_grad():
        m.b_dec.copy_(torch.linspace(-0.5, 0.5, 6))
        m.b_enc.copy_(torch.linspace(-0.2, 0.3, k))
        m.dead.since.copy_(since)
    m.train()
    out = m(xb)
    x, We, be, Wd, bd = _np(xb), _np(m.W_enc), _np(m.b_enc), _np(m.W_dec), _np(m.b_dec)
    pre = (x - bd) @ We + be
    z = _relu(_topk_rows(pre, 2))
    x_hat = z @ Wd + bd
    fired = (z > 1e-3).any(0)
    dead = ~fired & (since.numpy() + 8 > 100)
    assert 0 < dead.sum() < 20
    z_aux = _relu(_topk_rows(pre * dead, 4))
    expected = _nmse(x_hat, x) + _nmse(z_aux @ Wd, x - x_hat) / 32
    terms = m.loss_terms(xb, out)
    assert terms["loss"].item() == pytest.approx(expected, rel=1e-5)
    assert terms["auxk"].item() > 0
    np.testing.assert_allclose(_np(out.codes), z, rtol=1e-5, atol=1e-6)
    assert torch.equal(m.dead.dead(100), torch.from_numpy(dead))
    assert (m.dead.since[torch.from_numpy(fired)] == 0).all()
    # every latent that did not fire waited one more batch of 8 rows (dead_tokens counts rows, not steps)
    assert torch.equal(m.dead.since, torch.where(torch.from_numpy(fired), 0, since + 8))
    terms["loss"].backward()  # the aux loss trains the dead latents' encoder columns
    assert m.W_enc.grad[:, torch.from_numpy(dead)].abs().sum() > 0


@pytest.mark.parametrize("how", ["built", "deepcopy", "pickle", "to_float64", "via_meta"])
def test_unit_norm_decoder_and_gradient_projection(xb, how):
    m = make("sae_topk_auxk", 6, 10, seed=2, topk=3)
    if how == "deepcopy":
        m = copy.deepcopy(m)
    elif how == "pickle":  # what DataParallel-style replication and torch.save of a module do
        m = pickle.loads(pickle.dumps(m))
    elif how == "to_float64":
        m = m.to(torch.float64).to(torch.float32)
    elif how == "via_meta":  # a move that replaces the Parameter objects (as some device moves do)
        state = m.state_dict()
        m = m.to("meta").to_empty(device="cpu")
        m.load_state_dict(state)
    torch.testing.assert_close(m.W_dec.norm(dim=1), torch.ones(10))
    torch.testing.assert_close(m.W_enc, m.W_dec.T)  # encoder init = decoder^T
    m.loss_terms(xb, m(xb))["loss"].backward()
    grad = m.W_dec.grad
    assert grad.abs().max() > 1e-3 and (grad * m.W_dec).sum(1).abs().max() < 1e-6  # none along the rows
    with torch.no_grad():
        m.W_dec.add_(torch.randn(10, 6))
    m.after_step()
    torch.testing.assert_close(m.W_dec.norm(dim=1), torch.ones(10))


UNIT = {"sae_topk_auxk": {"topk": 3}, "sae_batchtopk": {"topk": 3}, "sae_jumprelu": {}, "sae_gated": {}}


@pytest.mark.parametrize("variant", sorted(UNIT))
def test_every_backward_of_the_loop_sees_unit_decoder_rows(variant, monkeypatch, tmp_path):
    """``_tied._project_grad`` projects with g - <g, w> w, right for unit rows w only. The loop's steps from
    a fresh model (lr 0.05: each Adam step moves the rows off norm 1 before ``after_step``), under bf16
    autocast, and after a resume (``resume.save_state`` / ``load_state`` into a model of another seed) hand
    it rows of norm 1 to float32 rounding, and a float32 gradient."""
    from contextlib import nullcontext

    from actdict.train import resume
    from actdict.train.member import Member, Position
    from actdict.train.step import step
    from actdict.train.variants._tied import TiedSAE

    seen = []
    project = TiedSAE._project_grad

    def spy(self, g):
        seen.append(((self.W_dec.detach().norm(dim=1) - 1).abs().max().item(), g.dtype))
        return project(self, g)

    monkeypatch.setattr(TiedSAE, "_project_grad", spy)  # before make: the hook binds the class's function
    x = torch.randn(32, 6, generator=torch.Generator().manual_seed(0)) * 3  # [B, d]
    a = Member("a", make(variant, 6, 16, seed=1, **UNIT[variant]), 0.05)
    a.setup(torch.device("cpu"))
    bf16 = torch.autocast("cpu", dtype=torch.bfloat16)
    for amp in (nullcontext(), nullcontext(), bf16, bf16):
        step(a, x, 0.05, amp, None)
    a.opt.step()  # one more Adam step without after_step: how far a step moves the rows
    drift = (a.model.W_dec.detach().norm(dim=1) - 1).abs().max().item()
    a.model.after_step()
    path = resume.save_state(tmp_path / "state.safetensors", [a], {"a": "h"}, Position(0, 5, 5))
    b = Member("a", make(variant, 6, 16, seed=2, **UNIT[variant]), 0.05)
    b.setup(torch.device("cpu"))
    assert resume.load_state(path, [b], {"a": "h"}) == Position(0, 5, 5)
    step(b, x, 0.05, nullcontext(), None)
    assert len(seen) == 5 and {dtype for _, dtype in seen} == {torch.float32}
    assert max(off for off, _ in seen) < 1e-6 < 1e-3 < drift


def test_batchtopk_by_hand(xb):
    since = torch.tensor([0, 5, 5] * 10)  # 30 latents, at most 16 fire: some stale ones stay dead
    m = make("sae_batchtopk", 6, 30, seed=3, topk=2, n_batches_to_dead=2, k_aux=3, threshold_beta=0.9)
    with torch.no_grad():
        m.b_enc.fill_(0.1)
        m.b_dec.copy_(torch.linspace(-0.3, 0.3, 6))
        m.dead.since.copy_(since)
    m.train()
    out = m(xb)
    x, We, be, Wd, bd = _np(xb), _np(m.W_enc), _np(m.b_enc), _np(m.W_dec), _np(m.b_dec)
    acts = _relu((x - bd) @ We + be)  # [8, 30]
    flat = acts.ravel()
    keep = np.argsort(-flat)[:2 * 8]
    z = np.zeros_like(flat)
    z[keep] = flat[keep]
    z = z.reshape(acts.shape)
    assert (z > 0).sum() == 16  # k * B over the batch, not k per row
    x_hat = z @ Wd + bd
    fired = z.sum(0) > 0
    dead = ~fired & (since.numpy() + 1 >= 2)
    assert 3 < dead.sum() < 20
    a = acts[:, dead]
    x_aux = _topk_rows(a, min(3, dead.sum())) @ Wd[dead]  # no b_dec (official sae.py at b454c16)
    expected = ((x_hat - x) ** 2).mean() + ((x_aux - (x - x_hat)) ** 2).mean() / 32
    assert m.loss_terms(xb, out)["loss"].item() == pytest.approx(expected, rel=1e-5)
    theta1 = z[z > 0].min()
    assert m.threshold.item() == pytest.approx(theta1, rel=1e-6)  # first batch sets theta
    m(xb * 0.5)
    z2 = np.sort(_relu((0.5 * x - bd) @ We + be).ravel())[::-1][:16]
    assert m.threshold.item() == pytest.approx(0.9 * theta1 + 0.1 * z2[z2 > 0].min(), rel=1e-5)
    m.eval()  # inference: one threshold, per-row L0 varies
    ev = m(xb)
    np.testing.assert_allclose(_np(ev.codes), acts * (acts > m.threshold.item()), rtol=1e-5, atol=1e-7)


def test_topk_auxk_dead_means_more_than_dead_tokens_rows(xb):
    """Gao et al.: a latent is dead once it has not fired for more than ``dead_tokens`` tokens: after this
    batch of 8 rows, one idle for 92 rows before it has waited 100 (alive), one idle for 93 is dead."""
    m = make("sae_topk_auxk", 6, 40, seed=1, topk=2, k_aux=4, dead_tokens=100)
    with torch.no_grad():
        m.dead.since.copy_(torch.tensor([92, 93] * 20))
    m.train()
    out = m(xb)
    idle = m.dead.since > 0
    assert idle[0::2].any() and idle[1::2].any()
    assert torch.equal(m.dead.dead(100), idle & (m.dead.since == 101))
    assert m.loss_terms(xb, out)["dead"].item() == (idle & (m.dead.since == 101)).sum().item() > 0
    dead = _np(idle & (m.dead.since == 101)).astype(bool)  # AuxK reads exactly these latents
    pre = (_np(xb) - _np(m.b_dec)) @ _np(m.W_enc) + _np(m.b_enc)
    np.testing.assert_allclose(_np(out.extras["e_hat"]),  # the official decode: with b_pre
                               _relu(_topk_rows(pre * dead, 4)) @ _np(m.W_dec) + _np(m.b_dec), rtol=1e-5,
                               atol=1e-6)


def test_topk_auxk_moves_b_pre_as_the_official_loss(xb):
    """openai/sparse_autoencoder's AuxK is nmse(z_aux @ W_dec + b_pre, e + sg(b_pre)), e = x - sg(x_hat), on
    every step: with no latent dead (z_aux = 0) it still adds -2/(d S) mean_rows(e) / 32 to b_pre's gradient
    (S = the spread of e around its batch mean), and nothing to any other parameter."""
    grads, terms = {}, {}
    for coef in (1 / 32, 0.0):
        m = make("sae_topk_auxk", 6, 12, seed=1, topk=2, auxk_coef=coef)
        with torch.no_grad():
            m.b_dec.copy_(torch.linspace(-0.5, 0.5, 6))
        m.train()
        out = m(xb)
        terms[coef] = m.loss_terms(xb, out)
        terms[coef]["loss"].backward()
        grads[coef] = {n: p.grad.clone() for n, p in m.named_parameters()}
        e = _np(xb) - _np(out.x_hat)
    assert terms[1 / 32]["dead"].item() == 0
    spread = ((e.mean(0) - e) ** 2).mean()
    assert terms[1 / 32]["auxk"].item() == pytest.approx((e ** 2).mean() / spread, rel=1e-5)
    np.testing.assert_allclose(_np(grads[1 / 32]["b_dec"] - grads[0.0]["b_dec"]),
                               -2 / (6 * spread) * e.mean(0) / 32, rtol=1e-4, atol=1e-7)
    for n in grads[0.0]:
        if n != "b_dec":
            torch.testing.assert_close(grads[1 / 32][n], grads[0.0][n])


def test_topk_auxk_a_kept_latent_at_or_below_1e_3_has_not_fired(xb):
    """The official test of firing is z > 1e-3: a latent in every row's top k with z = 5e-4 stays idle."""
    m = make("sae_topk_auxk", 6, 10, seed=1, topk=2, dead_tokens=100)
    with torch.no_grad():
        m.W_enc[:, :2] = 0.0
        m.b_enc.copy_(torch.tensor([1.0, 5e-4] + [-100.0] * 8))  # pre = 1 and 5e-4 on every row (b_dec = 0)
        m.dead.since.fill_(50)
    m.train()
    z = m(xb).codes
    assert (z[:, 0] == 1).all() and torch.allclose(z[:, 1], torch.full((8,), 5e-4))
    assert m.dead.since[:2].tolist() == [0, 58]


@pytest.mark.parametrize("waited", [0, 1])
def test_batchtopk_latent_is_dead_after_n_batches_to_dead(xb, waited):
    """Official BatchTopK: a latent is dead when ``num_batches_not_active >= n_batches_to_dead``; with
    n_batches_to_dead = 2, a latent idle for 1 batch before this one is dead after it, one idle for 0 not."""
    m = make("sae_batchtopk", 6, 30, seed=3, topk=2, n_batches_to_dead=2, k_aux=3)
    with torch.no_grad():
        m.dead.since.fill_(waited)
    m.train()
    out = m(xb)
    idle = m.dead.since > 0  # the latents that did not fire on this batch
    assert torch.equal(m.dead.since, torch.where(idle, waited + 1, 0)) and 0 < idle.sum() < 30
    assert ("x_aux" in out.extras) == (waited == 1)
    assert (m.loss_terms(xb, out)["aux"].item() > 0) == (waited == 1)


def test_batchtopk_threshold_is_the_smallest_positive_kept_value(xb):
    """With fewer than k*B positive activations the batch's top k*B also keeps zeros; theta is set from the
    smallest positive kept value (official ``acts_topk[acts_topk > 0].min()``), not from a zero."""
    m = make("sae_batchtopk", 6, 30, seed=3, topk=2)
    with torch.no_grad():
        m.b_enc.fill_(-100.0)
        m.b_enc[:2] = 0.0  # only latents 0 and 1 can fire: at most 16 = k*B positives, fewer here
    m.train()
    m(xb)
    acts = torch.relu(xb @ m.W_enc + m.b_enc)  # b_dec = 0
    positive = acts[acts > 0]
    assert 0 < len(positive) < 16
    assert m.threshold.item() == pytest.approx(positive.min().item(), rel=1e-6)
    # the top k*B also kept zeros (of latents that cannot fire); only a positive kept value is a firing
    # (official: acts_topk.sum(0) > 0), so every latent without a positive activation waited one batch more
    fired = (acts > 0).any(0)
    assert torch.equal(m.dead.since, torch.where(fired, 0, 1)) and fired.sum() <= 2


def test_batchtopk_threshold_skip_steps_starts_theta_as_dictionary_learning_does(xb):
    """Default: the first batch sets theta, each later one moves it by the EMA. ``threshold_skip_steps`` 2:
    the batches of the first 2 optimizer steps leave theta at 0 and step 3's sets it (dictionary_learning's
    ``threshold_start_step`` start). Weights fixed (``after_step`` only, which counts the steps): with b_enc =
    b_dec = 0, batch xb * s keeps the same entries scaled by s, so its smallest kept value is s * m."""
    scales, beta = (1.0, 0.5, 2.0, 1.5), 0.5
    now = make("sae_batchtopk", 6, 30, seed=3, topk=2, threshold_beta=beta)
    later = make("sae_batchtopk", 6, 30, seed=3, topk=2, threshold_beta=beta, threshold_skip_steps=2)
    acts = torch.relu(xb @ now.W_enc).flatten()  # b_enc = b_dec = 0
    m = acts.topk(2 * len(xb)).values.min().item()
    assert m > 0
    seen = {}
    for model in (now, later):
        model.train()
        seen[model] = []
        for s in scales:
            model(xb * s)
            model.after_step()
            seen[model].append(model.threshold.item() / m)
    np.testing.assert_allclose(seen[now], [1.0, 0.75, 1.375, 1.4375], rtol=1e-5)
    np.testing.assert_allclose(seen[later], [0.0, 0.0, 2.0, 1.75], rtol=1e-5)
    assert later.state_dict()["steps"].item() == 4 and "steps" not in now.state_dict()


def test_batchtopk_threshold_note_counts_from_the_first_estimated_step():
    """The run note reads ``threshold_skip_steps``: its first value is step skip + 1's, and a run whose steps
    it covers (short ones too) never estimates theta (0: inference keeps every positive activation)."""
    from actdict.train.variants.sae_batchtopk import SAEBatchTopK, threshold_note

    assert threshold_note(0.999, 3000) is None  # 0.999 ** 2999 < 5% (test_train_stage: the skip-0 note)
    note = threshold_note(0.999, 3000, 1000)  # 0.999 ** 1999 = 14%
    assert ("at the end of this run's 3,000 steps its first value, from step 1,001's batch "
            "(threshold_skip_steps 1,000), still weighs 14% of it" in note)
    assert note.endswith("threshold_beta 0.998 or lower lets this run's later batches set it")
    assert 0.998 ** 1999 <= 0.05 < 0.999 ** 1999
    assert SAEBatchTopK.run_note({"threshold_skip_steps": 1000}, 3000) == note
    assert threshold_note(0.999, 1001, 1000) is None  # theta is the last batch's value alone: no lag
    for steps, skip in ((500, 500), (40, 60)):
        assert threshold_note(0.999, steps, skip) == (
            f"threshold_skip_steps {skip} leaves none of this run's {steps} steps to estimate the inference "
            "threshold (what analysis and exports use): it stays 0, so inference keeps every positive "
            f"activation (L0 far above topk); set threshold_skip_steps below {steps}")


def test_jumprelu_loss_and_ste_by_hand(xb):
    eps, lam = 0.8, 0.3
    m = make("sae_jumprelu", 6, 10, seed=4, lam=lam, bandwidth=eps, threshold_init=0.4)
    torch.testing.assert_close(m.log_threshold.exp(), torch.full((10,), 0.4))  # theta_0 = threshold_init
    with torch.no_grad():
        m.log_threshold.add_(torch.linspace(-0.5, 0.5, 10))
        m.b_dec.copy_(torch.linspace(-0.3, 0.3, 6))  # decodes only: pre = x W_enc + b_enc (the pseudo-code)
    out = m(xb)
    terms = m.loss_terms(xb, out)
    x, We, be, Wd, bd = _np(xb), _np(m.W_enc), _np(m.b_enc), _np(m.W_dec), _np(m.b_dec)
    theta = np.exp(_np(m.log_threshold))
    pre = _relu(x @ We + be)
    z = pre * (pre > theta)
    x_hat = z @ Wd + bd
    B = len(x)
    expected = ((x - x_hat) ** 2).sum(1).mean() + lam * (pre > theta).sum(1).mean()
    assert terms["loss"].item() == pytest.approx(expected, rel=1e-5)
    terms["loss"].backward()
    # straight-through gradient of log theta: theta * dL/dtheta with the rectangle kernel
    K = (np.abs(pre - theta) < eps / 2).astype(float)
    g_z = 2 * (x_hat - x) @ Wd.T / B  # dL/dz
    d_theta = (-(theta / eps) * K * g_z).sum(0) + lam * (-(1 / eps) * K).sum(0) / B
    assert K.sum() > 0
    np.testing.assert_allclose(_np(m.log_threshold.grad), theta * d_theta, rtol=1e-4, atol=1e-6)
    # the encoder learns from reconstruction only: d JumpReLU / d pre = H(pre - theta), d H / d pre = 0
    g_pre = g_z * (pre > theta)  # [B, k]; pre > theta > 0 implies the relu is open
    assert 0 < (pre > theta).sum() < (pre > 0).sum()  # some open relus are below their threshold
    np.testing.assert_allclose(_np(m.b_enc.grad), g_pre.sum(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(_np(m.W_enc.grad), x.T @ g_pre, rtol=1e-4, atol=1e-6)


def test_jumprelu_lam_warms_up_linearly_over_lam_warmup_steps(xb):
    """Gemma Scope's warm-up: the L0 term weighs lam * s / warm at optimizer step s, then lam; the count is
    a buffer of the state dict, present only when the warm-up is on (other checkpoints keep their keys);
    ``after_step`` still renormalises the decoder rows."""
    lam, warm = 0.3, 4
    m = make("sae_jumprelu", 6, 10, seed=4, lam=lam, bandwidth=0.8, threshold_init=0.4, lam_warmup_steps=warm)
    for step in range(6):
        out = m(xb)
        terms = m.loss_terms(xb, out)
        x, We, be, Wd, bd = _np(xb), _np(m.W_enc), _np(m.b_enc), _np(m.W_dec), _np(m.b_dec)
        pre = _relu(x @ We + be)
        theta = np.exp(_np(m.log_threshold))
        x_hat = (pre * (pre > theta)) @ Wd + bd
        weight = lam * min(1.0, step / warm)  # 0, 0.075, 0.15, 0.225, 0.3, 0.3
        l0 = (pre > theta).sum(1).mean()
        assert l0 > 0 and terms["lam"].item() == pytest.approx(weight, rel=1e-6)
        assert terms["loss"].item() == pytest.approx(((x - x_hat) ** 2).sum(1).mean() + weight * l0, rel=1e-5)
        with torch.no_grad():
            m.W_dec.mul_(2.0)
        m.after_step()
        torch.testing.assert_close(m.W_dec.norm(dim=1), torch.ones(10))
    assert m.state_dict()["steps"].item() == 6
    plain = make("sae_jumprelu", 6, 10, seed=4)
    assert "steps" not in plain.state_dict() and "lam" not in plain.loss_terms(xb, plain(xb))


def test_batchtopk_inference_keeps_only_activations_above_theta(xb):
    """Eval mode: z = acts * (acts > theta), strictly (the official code; the exported JumpReLU's test too):
    an activation equal to theta is off. Here acts = relu(b_enc) on every row."""
    m = make("sae_batchtopk", 6, 4, seed=3, topk=1)
    with torch.no_grad():
        m.W_enc.zero_()
        m.b_enc.copy_(torch.tensor([0.25, 0.5, 0.75, -1.0]))
        m.b_dec.copy_(torch.linspace(-0.5, 0.5, 6))
        m.threshold.fill_(0.5)
    m.eval()
    out = m(xb)
    z = np.array([0.0, 0.0, 0.75, 0.0])
    np.testing.assert_array_equal(_np(out.codes), np.broadcast_to(z, (8, 4)))
    x_hat = z @ _np(m.W_dec) + _np(m.b_dec)
    np.testing.assert_allclose(_np(out.x_hat), np.broadcast_to(x_hat, (8, 6)), rtol=1e-6, atol=1e-7)


def test_topk_auxk_attribution_path_applies_relu_to_the_kept_pre_activations(xb):
    """Eval mode with an input that wants its gradient (attribution) runs the dense composition: z =
    relu(TopK(pre)). Rows here have fewer positive pre-activations than topk = 4, so a kept negative one
    would show; the codes and x_hat equal those of the no-grad forward."""
    m = make("sae_topk_auxk", 6, 10, seed=1, topk=4).eval()
    with torch.no_grad():
        m.b_enc.copy_(torch.tensor([0.5, 0.5] + [-3.0] * 8))
        m.b_dec.copy_(torch.linspace(-0.5, 0.5, 6))
    x, We, be, Wd, bd = _np(xb), _np(m.W_enc), _np(m.b_enc), _np(m.W_dec), _np(m.b_dec)
    pre = (x - bd) @ We + be
    assert ((pre > 0).sum(1) < 4).any()
    z = _relu(_topk_rows(pre, 4))
    for inp in (xb, xb.clone().requires_grad_()):
        out = m(inp)
        np.testing.assert_allclose(_np(out.codes), z, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(_np(out.x_hat), z @ Wd + bd, rtol=1e-5, atol=1e-5)
