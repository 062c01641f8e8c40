"""The Gated SAE (Rajamanoharan et al. 2024) against the paper's formulas, written out in numpy, and the
gradient routing its loss defines: the gate learns from the L1 and the frozen-decoder auxiliary term only,
the magnitudes from the reconstruction only, the decoder never from the auxiliary term."""

import numpy as np
import torch

from actdict.train.protocol import make


def _model(lam=0.7, d=6, k=9):
    m = make("sae_gated", d, k, seed=5, lam=lam)
    with torch.no_grad():  # every parameter off its init, so that each term of the formulas is exercised
        for name in ("b_enc", "b_dec", "r_mag", "b_mag"):
            p = getattr(m, name)
            p.add_(torch.linspace(-0.4, 0.4, p.numel()))
    return m


def _x():
    return torch.randn(16, 6, generator=torch.Generator().manual_seed(2)) * 1.5  # [B, d]


def test_forward_and_loss_by_hand():
    m, x = _model(), _x()
    w_gate, b_gate, r, b_mag, w_dec, b_dec = (getattr(m, n).detach().double().numpy()
                                              for n in ("W_enc", "b_enc", "r_mag", "b_mag", "W_dec", "b_dec"))
    xn = x.double().numpy()
    xc = xn - b_dec  # [B, d]
    pi_gate = xc @ w_gate + b_gate  # [B, k]
    pi_mag = xc @ (w_gate * np.exp(r)) + b_mag  # W_mag = exp(r_mag) (.) W_gate, column by column
    z = (pi_gate > 0) * np.maximum(pi_mag, 0)  # [B, k]
    x_hat = z @ w_dec + b_dec
    gate = np.maximum(pi_gate, 0)
    sse = ((xn - x_hat) ** 2).sum(1).mean()
    l1 = np.abs(gate).sum(1).mean()
    aux = ((xn - (gate @ w_dec + b_dec)) ** 2).sum(1).mean()
    out = m(x)
    terms = m.loss_terms(x, out)
    np.testing.assert_allclose(out.codes.detach().numpy(), z, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.x_hat.detach().numpy(), x_hat, rtol=1e-5, atol=1e-5)
    assert 0 < (z > 0).mean() < 1 and ((pi_gate > 0) & (pi_mag <= 0)).any()  # both ways a code is 0
    for name, want in (("sse", sse), ("l1", l1), ("aux", aux), ("loss", sse + 0.7 * l1 + aux)):
        np.testing.assert_allclose(float(terms[name].detach()), want, rtol=1e-5)


def _grads(m, x, term):
    """Which parameters one term of the variant's own loss graph reaches (aux: the loss less the others)."""
    m.zero_grad()
    out = m(x)
    sse, l1 = ((x - out.x_hat) ** 2).sum(1).mean(), out.extras["gate"].sum(1).mean()
    aux = m.loss_terms(x, out)["loss"] - sse - m.params["lam"] * l1
    {"sse": sse, "l1": l1, "aux": aux}[term].backward()
    return {n: (p.grad is not None and bool(p.grad.abs().sum() > 0)) for n, p in m.named_parameters()}


def test_each_term_reaches_exactly_the_parameters_the_paper_says():
    m, x = _model(), _x()
    assert _grads(m, x, "sse") == {"W_enc": True, "b_enc": False, "W_dec": True, "b_dec": True,
                                   "r_mag": True, "b_mag": True}  # the Heaviside gate passes nothing
    assert _grads(m, x, "l1") == {"W_enc": True, "b_enc": True, "W_dec": False, "b_dec": True,
                                  "r_mag": False, "b_mag": False}  # b_dec: through x - b_dec
    assert _grads(m, x, "aux") == {"W_enc": True, "b_enc": True, "W_dec": False, "b_dec": True,
                                   "r_mag": False, "b_mag": False}  # the decoder frozen: b_dec via x'


def test_decoder_rows_stay_unit_norm_through_training_steps():
    m, x = _model(), _x()
    opt = torch.optim.Adam(m.parameters(), lr=0.05)
    for _ in range(5):
        opt.zero_grad()
        m.loss_terms(x, m(x))["loss"].backward()
        opt.step()
        m.after_step()
    torch.testing.assert_close(m.W_dec.norm(dim=-1), torch.ones(9))
