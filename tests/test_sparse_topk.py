"""The sparse TopK paths (``train/variants/_sparse.py``) against the dense computation they replace.

Each reference below is the variant's former dense forward (scatter the kept values into z [B, k], then
z @ W_dec) written out with the model's own parameters, so the W_dec gradient-projection hooks apply to both.
x_hat, the codes, the loss terms and every parameter's gradient must agree to float rounding.
"""

import pytest
import torch

from actdict.train import checkpoint
from actdict.train.protocol import Forward, make
from actdict.train.variants._sparse import Pattern, gather_linear, sparse_decode
from actdict.train.variants.sae_topk_auxk import nmse

B, D, K = 24, 10, 48
TOL = {torch.float32: {"rtol": 1e-5, "atol": 1e-6}, torch.float64: {"rtol": 1e-10, "atol": 1e-12}}


def _x(dtype, seed=0):
    return (torch.randn(B, D, generator=torch.Generator().manual_seed(seed)) * 1.5).to(dtype)


def _grads(m, loss):
    m.zero_grad(set_to_none=True)
    loss.backward()
    out = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad(set_to_none=True)
    return out


def _scatter(like, idx, vals):
    return torch.zeros_like(like).scatter(-1, idx, vals)


def ref_topk(m, x):
    enc, dec = m.encoder, m.decoder
    z = torch.relu(x @ enc.weight.T + enc.bias)
    top = z.topk(int(m.params["topk"]), dim=-1)
    z = _scatter(z, top.indices, top.values)
    x_hat = z @ dec.weight.T + dec.bias
    wd = dec.weight.pow(2).sum() + dec.bias.pow(2).sum()
    return z, x_hat, (x - x_hat).pow(2).sum(-1).mean() + m.params["lam2"] * wd


def ref_auxk(m, x, since):
    p = m.params
    pre = (x - m.b_dec) @ m.W_enc + m.b_enc
    top = pre.topk(int(p["topk"]), dim=-1)
    v = torch.relu(top.values)
    z = _scatter(pre, top.indices, v)
    fired = torch.zeros(K, dtype=torch.bool)
    fired[top.indices[v > 1e-3]] = True
    dead = ~fired & (since + len(x) > p["dead_tokens"])
    x_hat = z @ m.W_dec + m.b_dec
    z_aux = torch.zeros_like(pre)  # no dead latent: the official decode of nothing is b_pre alone
    if dead.any():
        a = (pre * dead).topk(min(int(p["k_aux"]), K), dim=-1)
        z_aux = _scatter(pre, a.indices, torch.relu(a.values))
    aux = nmse(z_aux @ m.W_dec + m.b_dec, x - x_hat.detach() + m.b_dec.detach())  # official train.py
    return z, x_hat, nmse(x_hat, x) + p["auxk_coef"] * aux, dead


def ref_batchtopk(m, x, since):
    p = m.params
    acts = torch.relu((x - m.b_dec) @ m.W_enc + m.b_enc)
    flat = acts.flatten()
    top = flat.topk(int(p["topk"]) * len(x))
    z = torch.zeros_like(flat).scatter(-1, top.indices, top.values).reshape(acts.shape)
    dead = ~(z.sum(0) > 0) & (since + 1 > p["n_batches_to_dead"] - 1)
    x_hat = z @ m.W_dec + m.b_dec
    aux = torch.zeros((), dtype=x.dtype)
    if dead.any():
        a = acts[:, dead]
        ta = a.topk(min(int(p["k_aux"]), int(dead.sum())), dim=-1)
        x_aux = _scatter(a, ta.indices, ta.values) @ m.W_dec[dead]  # official sae.py (b454c16): no b_dec
        aux = p["aux_penalty"] * (x_aux - (x - x_hat)).pow(2).mean()
    return z, x_hat, (x_hat - x).pow(2).mean() + aux, dead


def _compare(m, x, z_ref, x_hat_ref, loss_ref, dtype):
    tol = TOL[dtype]
    g_ref = _grads(m, loss_ref)
    out = m(x)
    assert isinstance(out, Forward)
    loss = m.loss_terms(x, out)["loss"]
    g = _grads(m, loss)
    torch.testing.assert_close(out.x_hat, x_hat_ref, **tol)
    torch.testing.assert_close(loss, loss_ref, **tol)
    assert set(g) == set(g_ref)
    for name in g:
        assert g[name].abs().sum() > 0, name
        torch.testing.assert_close(g[name], g_ref[name], **tol, msg=lambda s, n=name: f"grad {n}: {s}")
    codes = out.codes
    assert codes.shape == (len(x), K) and not codes.requires_grad
    torch.testing.assert_close(codes, z_ref.detach(), **tol)
    assert torch.equal(codes != 0, z_ref != 0)
    assert torch.equal(out.activity, codes.abs().log())  # exactly what the dense path gave analysis
    with torch.no_grad():
        torch.testing.assert_close(m.decode(codes), out.x_hat.detach(), **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sae_topk_sparse_equals_dense(dtype):
    m = make("sae_topk", D, K, seed=1, topk=5, lam2=0.01).to(dtype)
    with torch.no_grad():
        m.encoder.bias.add_(0.3)
    x = _x(dtype)
    z, x_hat, loss = ref_topk(m, x)
    _compare(m, x, z, x_hat, loss, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sae_topk_auxk_sparse_equals_dense(dtype):
    m = make("sae_topk_auxk", D, K, seed=2, topk=4, k_aux=6, dead_tokens=100).to(dtype)
    with torch.no_grad():
        m.b_dec.copy_(torch.linspace(-0.5, 0.5, D))
        m.b_enc.copy_(torch.linspace(-0.2, 0.3, K))
        m.dead.since.copy_(torch.tensor([0, 500] * (K // 2)))
    m.train()
    x = _x(dtype, 1)
    z, x_hat, loss, dead = ref_auxk(m, x, m.dead.since.clone())
    assert 0 < dead.sum() < K // 2  # the AuxK term is exercised
    _compare(m, x, z, x_hat, loss, dtype)
    assert torch.equal(m.dead.dead(100), dead)
    m.dead.since.zero_()  # and with no latent dead
    z, x_hat, loss, dead = ref_auxk(m, x, m.dead.since.clone())
    assert not dead.any()
    _compare(m, x, z, x_hat, loss, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sae_batchtopk_sparse_equals_dense(dtype):
    m = make("sae_batchtopk", D, K, seed=3, topk=3, n_batches_to_dead=2, k_aux=5).to(dtype)
    with torch.no_grad():
        m.b_enc.fill_(0.05)
        m.dead.since.copy_(torch.tensor([0, 5, 5] * (K // 3)))
    m.train()
    x = _x(dtype, 2)
    x[3] = m.b_dec.detach()  # pre = b_enc = 0.05 everywhere: below the batch's top k*B, keeps none
    z, x_hat, loss, dead = ref_batchtopk(m, x, m.dead.since.clone())
    per_row = (z != 0).sum(1)
    assert per_row[3] == 0 and per_row.max() > 3  # variable rows, one of them empty
    assert 0 < dead.sum() < K
    _compare(m, x, z, x_hat, loss, dtype)
    assert torch.equal(m.dead.dead(1), dead)


def test_eval_mode_and_normalized_wrapper_see_dense_codes():
    m = make("sae_topk_auxk", D, K, seed=4, topk=4).eval()
    x = _x(torch.float32, 3)
    w = checkpoint.Normalized(m, torch.full((D,), 0.2), 1.5)
    with torch.no_grad():
        out, inner = w(x), m((x - 0.2) / 1.5)
        z, x_hat, _, _ = ref_auxk(m, (x - 0.2) / 1.5, m.dead.since.clone())
    torch.testing.assert_close(out.codes, z)
    torch.testing.assert_close(inner.codes, z)
    torch.testing.assert_close(out.x_hat, x_hat * 1.5 + 0.2)
    assert torch.equal(out.activity, z.abs().log())


def test_forward_lazy_fields_are_computed_once():
    calls = []

    def codes():
        calls.append(1)
        return torch.ones(2, 3)

    out = Forward(torch.zeros(2, 4), codes, lambda: torch.zeros(2, 3), {})
    assert not calls
    copy = out.replace(x_hat=torch.ones(2, 4))
    assert out.codes is out.codes is copy.codes and len(calls) == 1
    assert torch.equal(copy.activity, torch.zeros(2, 3)) and torch.equal(copy.x_hat, torch.ones(2, 4))
    with pytest.raises(TypeError):
        out.replace(nope=1)


def test_sparse_functions_gradcheck():
    """gather_linear and sparse_decode against autograd's numerical Jacobian, on a pattern with an empty row
    and rows of different lengths (BatchTopK), in float64."""
    g = torch.Generator().manual_seed(7)
    b, d, k = 5, 4, 7
    pos = torch.tensor([0, 3, 6, 15, 16, 17, 18, 19, 33, 34])  # rows 0, 2, 4 (1 and 3 empty)
    pat = Pattern.from_flat(pos[torch.randperm(len(pos), generator=g)], b, k)
    assert pat.crow.tolist() == [0, 3, 3, 8, 8, 10]
    x = torch.randn(b, d, generator=g, dtype=torch.float64, requires_grad=True)
    c = torch.randn(d, generator=g, dtype=torch.float64, requires_grad=True)
    W = torch.randn(k, d, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(k, generator=g, dtype=torch.float64, requires_grad=True)

    def enc(x, c, W, bias):
        with torch.no_grad():
            pre = (x - c) @ W.T + bias
        return gather_linear(x, c, W, bias, pre, pat)

    torch.testing.assert_close(enc(x, c, W, bias), pat.take((x - c) @ W.T + bias))
    assert torch.autograd.gradcheck(enc, (x, c, W, bias))
    vals = torch.randn(len(pos), generator=g, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(sparse_decode(vals, W, pat), pat.dense(vals) @ W)
    assert torch.autograd.gradcheck(lambda v, W: sparse_decode(v, W, pat), (vals, W))
    assert torch.autograd.gradcheck(lambda v, W: sparse_decode(v, W.T, pat), (vals, W.T.detach().clone()
                                                                              .requires_grad_()))
    dense = pat.dense(vals)
    assert torch.equal(pat.log_abs(vals), dense.abs().log()) and not dense.requires_grad


def test_topk_decoder_is_latent_major_and_saves_as_before(tmp_path):
    """sae_topk keeps decoder.weight [d, k] in [k, d] storage (the sparse decode reads latent rows without a
    copy per step); Adam steps end exactly where the contiguous layout's do, and a checkpoint round trip
    keeps values and layout."""
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(1))
    ends = []
    for latent_major in (True, False):
        m = make("sae_topk", 6, 10, seed=2, topk=3)
        w = m.decoder.weight
        assert w.shape == (6, 10) and w.t().is_contiguous() and not w.is_contiguous()
        if not latent_major:
            m.decoder.weight = torch.nn.Parameter(w.detach().contiguous())
        opt = torch.optim.Adam(m.parameters(), lr=1e-2, fused=True)
        for _ in range(4):
            opt.zero_grad()
            m.loss_terms(x, m(x))["loss"].backward()
            opt.step()
        ends.append(m)
    for (k, a), b in zip(ends[0].state_dict().items(), ends[1].state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    checkpoint.save(tmp_path / "c", ends[0], {"variant": "sae_topk", "d": 6, "k": 10, "params": {"topk": 3}})
    back, _ = checkpoint.load(tmp_path / "c")
    w = back.decoder.weight
    assert torch.equal(w, ends[0].decoder.weight) and w.t().is_contiguous()


def test_pattern_offsets_equal_bincounts():
    """The row pointers and column starts (counted without ``bincount``'s device sync) are the bincount
    ones, for TopK patterns (m per row) and BatchTopK ones (uneven rows, some empty, unused columns)."""
    g = torch.Generator().manual_seed(3)
    B, k = 9, 20
    idx = torch.stack([torch.randperm(k, generator=g)[:4] for _ in range(B)])  # [B, 4]
    flat = torch.randperm(B * k, generator=g)[:17]  # [17] of the flattened [B, k]
    flat = flat[flat // k != 2]  # row 2 empty
    for pat in (Pattern.from_topk(idx, k), Pattern.from_flat(flat, B, k)):
        zero = torch.zeros(1, dtype=torch.long)
        crow = torch.cat([zero, torch.bincount(pat.rows, minlength=B).cumsum(0)])
        starts = torch.cat([zero, torch.bincount(pat.cols, minlength=k).cumsum(0)])
        assert torch.equal(pat.crow, crow) and torch.equal(pat.col_start, starts[:-1])
        assert torch.equal(pat.cols[pat.by_col], pat.cols[pat.by_col].sort().values)  # grouped by column
    assert pat.crow[3] == pat.crow[2]  # the empty row
