"""The protocol contract, checked on every registered variant (a new variant is tested by registering it), on
the CPU and on the accelerator of the ``device`` fixture (conftest.py)."""

import copy

import pytest
import torch

from actdict.train import checkpoint, contract
from actdict.train.protocol import Forward, make, registry

# params valid at k = 5 (and at k = 16 for the training run); sae_jumprelu: a bandwidth wide enough that a
# random batch has pre-activations within eps/2 of theta, so log_threshold receives a gradient
SMALL = {"sae_topk": {"topk": 2}, "sae_topk_auxk": {"topk": 2, "k_aux": 3},
         "sae_batchtopk": {"topk": 2}, "sae_jumprelu": {"bandwidth": 2.0, "threshold_init": 0.5}}
# the authors' MLP-manifold bodies (models.py: MLP_Encoder / MLP_Encoder_SAE with BatchNorm, FCNDecoder of
# width 2d, the clipped log-variance), checked as cases of their own beside every registered variant
OFFICIAL = {"encoder": "resmlp_bn", "decoder": "mlp", "decoder_hidden": 14}
ARCHS = {"vaease+official": ("vaease", OFFICIAL | {"head": "clip"}), "sae_l1+official": ("sae_l1", OFFICIAL)}
VARIANTS = sorted(registry()) + sorted(ARCHS)


def variant_params(case):
    return ARCHS.get(case, (case, SMALL.get(case, {})))


def build(case, d=7, k=5, seed=3):
    variant, params = variant_params(case)
    return make(variant, d, k, seed=seed, **params)


def before_batchnorm(m):
    """Names of the biases of Linear layers followed by a BatchNorm, which removes them: their gradient is 0
    in exact arithmetic (rounding noise in floats)."""
    return {f"{name}.{i}.bias" if name else f"{i}.bias" for name, seq in m.named_modules()
            if isinstance(seq, torch.nn.Sequential)
            for i, (a, b) in enumerate(zip(seq, list(seq)[1:], strict=False))
            if isinstance(a, torch.nn.Linear) and isinstance(b, torch.nn.BatchNorm1d)}


@pytest.mark.parametrize("variant", VARIANTS)
def test_shapes_and_deterministic_path(variant):
    d, k, B = 7, 5, 6
    m = build(variant)
    assert m.variant == variant_params(variant)[0] and m.active_side in ("low", "high")
    x = torch.randn(B, d, generator=torch.Generator().manual_seed(1)) * 2  # [B, d]
    out = m(x)
    assert isinstance(out, Forward)
    assert out.x_hat.shape == (B, d) and out.codes.shape == (B, k) and out.activity.shape == (B, k)
    assert not torch.isnan(out.activity).any() and not torch.isposinf(out.activity).any()
    m.eval()
    with torch.no_grad():
        a, b = m(x, sample=False), m(x, sample=False)
        for f in ("x_hat", "codes", "activity"):
            assert torch.equal(getattr(a, f), getattr(b, f)), f
        # decode(codes) reproduces the deterministic reconstruction (analysis decodes edited codes)
        torch.testing.assert_close(m.decode(a.codes), a.x_hat, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_loss_finite_and_gradients_reach_every_parameter(variant):
    m = build(variant)
    x = torch.randn(6, 7, generator=torch.Generator().manual_seed(2)) * 2
    terms = m.loss_terms(x, m(x))
    assert terms["loss"].ndim == 0 and all(torch.isfinite(v).all() for v in terms.values())
    terms["loss"].backward()
    removed = before_batchnorm(m)
    assert len(removed) == (7 if variant in ARCHS else 0)  # the official body: its first and 2 per block
    total = torch.cat([p.grad.reshape(-1) for p in m.parameters()]).norm()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if name in removed:
            assert p.grad.norm() < 1e-5 * total, name
        else:
            assert p.grad.abs().sum() > 0, f"{variant}: no gradient reaches {name}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_logged_sse_is_the_batch_mean_of_the_rows_squared_error(variant):
    """terms["sse"] is what the loop's diverged / learned-nothing warnings compare with the batch's spread:
    for every variant, whatever its loss's own scaling (1/2 SSE, nmse, a mean over elements), the per-row
    sum of squared error over d of the forward's x_hat, averaged over the batch."""
    m = build(variant)
    x = torch.randn(6, 7, generator=torch.Generator().manual_seed(4)) * 2
    out = m(x)
    want = ((x - out.x_hat.detach()) ** 2).sum(1).mean()
    assert m.loss_terms(x, out)["sse"].item() == pytest.approx(want.item(), rel=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradients_reach_the_input_and_the_codes(variant):
    """A loaded (eval) dictionary differentiated with respect to its input (attribution, splicing into a
    model): x_hat's and the codes' gradients match finite differences (float64 gradcheck), whatever path
    the variant takes in training; a float16 input is read as the parameters' dtype."""
    m = build(variant).double().eval()
    x = (torch.randn(4, 7, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 2
         ).requires_grad_(True)  # [B, d]
    for field in ("x_hat", "codes"):
        assert torch.autograd.gradcheck(lambda x, f=field: getattr(m(x, sample=False), f), (x,), eps=1e-6,
                                        atol=1e-5), field
    out = m(x, sample=False)
    assert out.codes.requires_grad and out.x_hat.requires_grad
    m.float()
    with torch.no_grad():  # [B, d] float16 rows, as read_rows(raw=True) gives them
        got, want = (m(x.detach().half().to(dt), sample=False).x_hat for dt in (torch.float16, torch.float32))
    assert got.dtype == torch.float32 and torch.equal(got, want)
    with torch.no_grad():  # a float64 model takes float32 rows, also given by keyword
        assert m.double()(x=x.detach().float(), sample=False).x_hat.dtype == torch.float64


@pytest.mark.parametrize("variant", VARIANTS)
def test_save_load_round_trip(variant, tmp_path):
    m = build(variant)
    x = torch.randn(6, 7, generator=torch.Generator().manual_seed(3)) * 2
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)  # one step, so buffers (dead counts, thresholds) move
    m.loss_terms(x, m(x))["loss"].backward()
    opt.step()
    m.after_step()
    same_seed = build(variant)
    assert list(same_seed.state_dict()) == list(m.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(build(variant).state_dict().values(),
                                                  same_seed.state_dict().values(), strict=True))
    checkpoint.save(tmp_path / "ck", m, {"note": "test"})
    m2, cfg = checkpoint.load(tmp_path / "ck")
    assert cfg["variant"] == variant_params(variant)[0] and cfg["note"] == "test"
    assert (cfg["d"], cfg["k"]) == (7, 5)
    assert type(m2) is type(m) and m2.params == m.params
    for (na, a), (nb, b) in zip(m.state_dict().items(), m2.state_dict().items(), strict=True):
        assert na == nb and torch.equal(a, b), na
    m.eval()
    with torch.no_grad():
        a, b = m(x, sample=False), m2(x, sample=False)
    for f in ("x_hat", "codes", "activity"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f


@pytest.mark.parametrize("variant", VARIANTS)
def test_short_training_lowers_the_loss(variant):
    """train/contract.py's check (150 Adam steps on three 3-dim subspaces of R^20 lower the loss by 5 %), the
    one `actdict variants NAME --check` runs, on every variant and the official bodies."""
    assert contract.training(lambda d: build(variant, d, 16, seed=0)) == []


# bf16 pre-activations (8-bit mantissa) move codes near 0: the log penalty's gradient 1/(|z| + 1e-4) and
# AuxK's choice among dead latents follow them, so these two gradients differ more (docs/training.md); the
# official bodies' 11 Linear layers add bf16's rounding up layer after layer
AUTOCAST_GRAD_TOL = {"sae_log": 0.6, "sae_topk_auxk": 0.4, "sae_l1+official": 0.15, "vaease+official": 0.15}


@pytest.mark.parametrize("variant", VARIANTS)
def test_bf16_autocast_step_matches_float32(variant, device):
    """train.autocast (bf16 matmuls, float32 weights and losses) on the device: the loss and every gradient
    are finite, float32, and close to the float32 step's on the same device."""
    x = (torch.randn(64, 7, generator=torch.Generator().manual_seed(4)) * 2).to(device)  # [64, 7]
    grads, losses = [], []
    for amp in (False, True):
        m = build(variant, k=16).to(device)
        torch.manual_seed(0)  # the same sampling noise in both
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp):
            terms = m.loss_terms(x, m(x).float())  # as train.step.step
        assert terms["loss"].dtype == torch.float32 and torch.isfinite(terms["loss"])
        terms["loss"].backward()
        grads.append({n: p.grad for n, p in m.named_parameters()})
        losses.append(terms["loss"].detach())
        assert all(p.dtype == torch.float32 for p in m.parameters())
    torch.testing.assert_close(losses[1], losses[0], rtol=0.01, atol=1e-3)
    for n, g32 in grads[0].items():
        if n in before_batchnorm(m):  # 0 but for rounding: no relative error to compare
            continue
        g16 = grads[1][n]
        assert g16.dtype == torch.float32 and torch.isfinite(g16).all(), n
        err = (g16 - g32).norm() / g32.norm().clamp_min(1e-12)
        assert err < AUTOCAST_GRAD_TOL.get(variant, 0.05), f"{variant}: gradient of {n} off by {err:.3f}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_device_forward_loss_and_gradients_match_the_cpu(variant, device):
    """The same weights on the device give the CPU's deterministic forward, loss and gradients (float32); a
    sampled training step there is finite and keeps every parameter and buffer on the device."""
    x = torch.randn(64, 7, generator=torch.Generator().manual_seed(5)) * 2  # [64, 7]
    ref = build(variant, k=16)
    moved = copy.deepcopy(ref).to(device)
    got = []
    for m, xm in ((ref, x), (moved, x.to(device))):
        out = m(xm, sample=False)
        loss = m.loss_terms(xm, out)["loss"]
        loss.backward()
        got.append(({f: getattr(out, f).detach().cpu() for f in ("x_hat", "codes", "activity")},
                    loss.detach().cpu(), {n: p.grad.cpu() for n, p in m.named_parameters()}))
    (out_c, loss_c, grad_c), (out_d, loss_d, grad_d) = got
    for f, v in out_c.items():
        torch.testing.assert_close(out_d[f], v, rtol=1e-4, atol=1e-5, msg=f"{variant}: {f}")
    torch.testing.assert_close(loss_d, loss_c, rtol=1e-4, atol=1e-5)
    for n, g in grad_c.items():
        err = (grad_d[n] - g).norm() / g.norm().clamp_min(1e-12)
        assert err < 1e-3, f"{variant}: gradient of {n} off by {err:.2e} on {device}"
    opt = torch.optim.Adam(moved.parameters(), lr=1e-2)
    opt.zero_grad()
    xd = x.to(device)
    loss = moved.loss_terms(xd, moved(xd))["loss"]  # sampled (the device's generator)
    loss.backward()
    opt.step()
    moved.after_step()
    assert torch.isfinite(loss)
    kind = torch.device(device).type
    for n, t in moved.state_dict().items():
        assert t.device.type == kind and torch.isfinite(t).all(), n
