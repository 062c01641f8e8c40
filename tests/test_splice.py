"""Splicing a dictionary into a causal LM (random-init Pythia-70m shape): identity -> CE recovered 1 and
KL 0 exactly; a zero dictionary -> the zero-ablation CE; a real dictionary in between."""

import numpy as np
import pytest
import torch

from actdict.analyze.splice import (
    SpliceError,
    Windows,
    ce_caveat,
    ce_recovered,
    heldout_windows,
    next_token_ce,
    splice_eval,
)
from actdict.harvest.store import StoreWriter, open_store
from actdict.train.protocol import Dictionary, Forward, make

HOOK = "blocks.2.hook_resid_post"


class Identity(Dictionary):
    variant = "test_identity"

    def forward(self, x, sample=True):
        return Forward(x, x, torch.zeros_like(x), {})


class Zero(Dictionary):
    variant = "test_zero"

    def forward(self, x, sample=True):
        return Forward(torch.zeros_like(x), x, torch.zeros_like(x), {})


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    g = np.random.default_rng(0)
    n = 300
    ids = g.integers(0, 50000, n).astype(np.int32)
    ids[:7] = -1  # rows without tokens are skipped
    path = str(tmp_path_factory.mktemp("s") / "store")
    with StoreWriter(path, {"hook": HOOK}, 4, "float32", 128, 64) as w:
        w.append(g.standard_normal((n, 4)).astype(np.float32), ids, np.arange(n) // 50, np.arange(n) % 50)
    return open_store(path), ids


def test_heldout_windows(store, monkeypatch):
    """Windows are the harvest's text: stretches of adjacent chunks (64 rows each; the store's documents are
    50 rows long), the harvest's separator back between documents and left unspliced, as the BOS is, and
    the end of each stretch in a right-padded window. Only the rows' token ids are read, not their acts
    (read_chunk read them, d floats a row, before the pass read them again)."""
    st, ids = store
    monkeypatch.setattr(st, "read_rows", lambda *a, **k: pytest.fail("the acts were read"))
    sep = np.array([99])
    w = heldout_windows(st, [2, 0], n_windows=3, ctx=10, prefix=(7,))  # chunk 2 (rows 128..191)
    assert w.tokens.shape == w.spliced.shape == w.real.shape == (3, 11) and len(w) == 3
    assert (w.tokens[:, 0] == 7).all() and not w.spliced[:, 0].any() and w.real.all()
    assert w.tokens[:, 1:].tolist() == ids[128:158].reshape(3, 10).tolist() and w.spliced[:, 1:].all()
    w = heldout_windows(st, [2], n_windows=3, ctx=10, prefix=(7,), sep=(99,))  # doc 3 begins at row 150
    assert w.tokens[:, 1:].flatten().tolist() == np.concatenate([ids[128:150], sep, ids[150:157]]).tolist()
    assert (~w.spliced).flatten().nonzero()[:, 0].tolist() == [0, 11, 22, 25]  # 3 BOS, the separator
    # adjacent chunks 0 and 1 are one stretch (rows 0..6 have no token id): documents break at rows 50, 100
    w = heldout_windows(st, [0, 1], n_windows=100, ctx=10, sep=(99,), pad_id=5)
    stream = np.concatenate([ids[7:50], sep, ids[50:100], sep, ids[100:128]])  # 123 tokens: 12 windows + 3
    assert len(w) == 13 and w.tokens[:12].flatten().tolist() == stream[:120].tolist()
    assert w.tokens[12].tolist() == [*stream[120:], *[5] * 7]  # padded with pad_id
    assert w.real[12].tolist() == [True] * 3 + [False] * 7
    assert (w.real & ~w.spliced).sum() == 2 and w.real[:12].all()  # the two separators
    # chunks 0 and 2 are not adjacent: no window joins them; each stretch ends in a padded window
    w = heldout_windows(st, [0, 2], n_windows=100, ctx=10)
    assert [int(r.sum()) for r in w.real] == [10] * 5 + [7] + [10] * 6 + [4]
    assert w.tokens[5, :7].tolist() == ids[57:64].tolist() and w.tokens[6].tolist() == ids[128:138].tolist()
    w = heldout_windows(st, [0, 1], n_windows=100, ctx=10, join_docs=False)  # per_doc: one document each
    starts = [(a, min(10, b - a)) for lo, hi in ((7, 50), (50, 100), (100, 128)) for a in range(lo, hi, 10)
              for b in [hi]]
    assert [w.tokens[i, :n].tolist() for i, (a, n) in enumerate(starts)] == [ids[a:a + n].tolist()
                                                                              for a, n in starts]
    assert len(w) == len(starts) == 13


def test_heldout_windows_cut_where_the_harvest_left_rows_out(tmp_path):
    """A gap in a document's positions (a skipped special token), a document missing whole, a document not
    starting at position 0: no window spans them; a real document boundary gets the separator."""
    docs = [(0, range(0, 10)), (0, range(11, 20)), (2, range(0, 10)), (3, range(3, 10)), (4, range(0, 5))]
    doc = np.concatenate([[d] * len(p) for d, p in docs])
    pos = np.concatenate([list(p) for _, p in docs])
    ids = np.arange(len(doc)) + 1000
    with StoreWriter(str(tmp_path / "s"), {"hook": HOOK}, 2, "float32", 64, 64) as wr:
        wr.append(np.zeros((len(doc), 2), np.float32), ids, doc, pos)
    w = heldout_windows(open_store(str(tmp_path / "s")), [0], n_windows=100, ctx=20, sep=(99,))
    got = [w.tokens[i][w.real[i]].tolist() for i in range(len(w))]
    assert got == [ids[0:10].tolist(), ids[10:19].tolist(), ids[19:29].tolist(),
                   [*ids[29:36], 99, *ids[36:41]]]
    # a stretch's last token alone predicts nothing: it makes no window, unless a prefix comes before it
    w = heldout_windows(open_store(str(tmp_path / "s")), [0], n_windows=100, ctx=9, sep=(99,))
    assert [int(r.sum()) for r in w.real] == [9, 9, 9, 9, 4]  # stretches of 10, 9, 10, 13 tokens
    w = heldout_windows(open_store(str(tmp_path / "s")), [0], n_windows=100, ctx=9, prefix=(7,), sep=(99,))
    assert [int(r.sum()) for r in w.real] == [10, 2, 10, 10, 2, 10, 5]
    with StoreWriter(str(tmp_path / "v"), {"hook": HOOK}, 2, "float32", 64, 64) as wr:
        wr.append(np.zeros((8, 2), np.float32), np.full(8, -1), np.arange(8), np.zeros(8))
    with pytest.raises(SpliceError, match="no token ids"):
        heldout_windows(open_store(str(tmp_path / "v")), [0], n_windows=1, ctx=4)
    with pytest.raises(SpliceError, match=r"two tokens .*ce_ctx=1, no BOS before them\): raise analyze"):
        heldout_windows(open_store(str(tmp_path / "s")), [0], n_windows=1, ctx=1)  # one token a window


def test_ce_by_hand():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [1 / 3, 1 / 3, 1 / 3]]]))
    tokens = torch.tensor([[0, 1, 2]])
    ce = next_token_ce(logits, tokens)  # predicts token 1 with p=.25, then token 2 with p=.1
    assert ce[0].tolist() == pytest.approx([-np.log(0.25), -np.log(0.1)], rel=1e-6)
    assert ce_recovered(2.0, 5.0, 2.0) == 1.0 and ce_recovered(2.0, 5.0, 5.0) == 0.0
    assert ce_recovered(2.0, 5.0, 3.5) == pytest.approx(0.5)


def test_ce_recovered_is_flagged_where_zero_ablation_costs_nothing():
    """A random-init model's residual stream costs ~nothing when zeroed (the Pythia config on a random-init
    Pythia-70m shape: clean 10.9712, zero ablation 10.9347): CE recovered, 1.15 for a dictionary whose CE
    is worse than clean, then says nothing, and analyze's table and report say so; a trained model's
    ablation (nats) gets no note."""
    from actdict.analyze.report_sections import ce_line
    from actdict.analyze.tables import summary_lines

    random_init = {"ce_clean": 10.9712, "ce_zero": 10.9347, "n_tokens": 2048, "windows": 16, "ctx": 128}
    assert ce_recovered(10.9712, 10.9347, 10.9767) == pytest.approx(1.1507, abs=1e-4)  # worse than clean
    note = ce_caveat(random_init, HOOK)
    assert note.startswith(f"zero-ablating {HOOK} changes the CE by -0.0365 nats (clean 10.971, zero "
                           "ablation 10.935), under 1% of the clean CE")
    assert ce_caveat(random_init | {"ce_zero": 10.98}) is not None  # +0.009 nats: under 1% too
    assert ce_caveat({"ce_clean": 3.3, "ce_zero": 9.1}) is None and ce_caveat(None) is None
    assert ce_caveat({"ce_clean": 3.0}) is None
    m = {"re_det": 1.0, "re_sample": 1.0, "ad": 2.0, "l0": 2.0, "ev": 0.5, "dead": 0, "k": 4,
         "ce_recovered": 1.1507, "kl": 0.02}
    summary = {"n_test_rows": 10, "hook": HOOK, "d": 4, "ce": random_init, "models": {"sae": m}}
    assert f"analyze: note: {note}" in summary_lines(summary)
    assert not any("note: zero-ablating" in ln
                   for ln in summary_lines(summary | {"ce": random_init | {"ce_zero": 12.0}}))
    assert "under 1% of the clean CE" in ce_line(random_init)
    assert f"Note: zero-ablating {HOOK} changes" in ce_line(random_init, HOOK)  # the report names the hook
    assert "Note" not in ce_line(random_init | {"ce_zero": 12.0})


def test_identity_zero_and_real_dictionary(lm):
    g = torch.Generator().manual_seed(0)
    windows = torch.cat([torch.full((2, 1), lm.bos_id), torch.randint(0, 50000, (2, 16), generator=g)], 1)
    d = lm.d_model
    real = make("sae_l1", d, 64, seed=0)
    spliced = torch.ones(windows.shape, dtype=torch.bool)
    spliced[:, 0] = False  # the BOS
    win = Windows(windows, spliced, torch.ones(windows.shape, dtype=torch.bool))
    res = splice_eval(lm.bridge, win, HOOK, {"id": Identity(d, d), "zero": Zero(d, d), "sae": real},
                      batch_size=1)
    assert res["n_tokens"] == 2 * 16
    assert res["ce_zero"] != res["ce_clean"]
    m = res["models"]
    assert m["id"]["ce_recovered"] == 1.0 and m["id"]["kl"] == 0.0 and m["id"]["ce"] == res["ce_clean"]
    assert m["zero"]["ce"] == pytest.approx(res["ce_zero"], abs=1e-9) and m["zero"]["ce_recovered"] == 0.0
    assert m["zero"]["kl"] > 0 and m["sae"]["kl"] > 0 and m["sae"]["ce"] != res["ce_clean"]
    # the clean CE equals the bridge's own loss on the same windows
    with torch.no_grad():
        loss = lm.bridge(windows, return_type="loss")
        assert res["ce_clean"] == pytest.approx(float(loss), rel=1e-5)
        # padding (window 1 ends after 12 tokens) is in no prediction: the CE of the unpadded texts
        real = torch.ones(windows.shape, dtype=torch.bool)
        real[1, 12:] = False
        res = splice_eval(lm.bridge, Windows(windows, spliced & real, real), HOOK, {"id": Identity(d, d)})
        short = [float(lm.bridge(t, return_type="loss")) for t in (windows[:1], windows[1:, :12])]
        assert res["n_tokens"] == 16 + 11 and res["models"]["id"]["ce_recovered"] == 1.0
        assert res["ce_clean"] == pytest.approx((16 * short[0] + 11 * short[1]) / 27, rel=1e-5)


def test_a_dictionary_named_zero_or_clean_leaves_the_baselines_alone(lm):
    """The dictionaries' sums are kept apart from the clean and zero-ablation runs' (a dictionary named
    "zero" added its CE into the zero ablation's)."""
    g = torch.Generator().manual_seed(0)
    w = torch.cat([torch.full((2, 1), lm.bos_id), torch.randint(0, 50000, (2, 16), generator=g)], 1)
    spliced = torch.ones(w.shape, dtype=torch.bool)
    spliced[:, 0] = False
    win, d = Windows(w, spliced, torch.ones(w.shape, dtype=torch.bool)), lm.d_model
    base = splice_eval(lm.bridge, win, HOOK, {})
    for name in ("zero", "clean"):
        res = splice_eval(lm.bridge, win, HOOK, {name: Identity(d, d)})
        assert (res["ce_clean"], res["ce_zero"]) == (base["ce_clean"], base["ce_zero"])
        assert res["models"][name]["ce"] == base["ce_clean"] and res["models"][name]["ce_recovered"] == 1.0


def test_padding_and_unspliced_positions_count_in_no_number(lm):
    """A dictionary of zeros (named apart from the clean and zero runs) is the zero ablation exactly: both
    replace the spliced positions only, the BOS kept. With window 1 padded after 12 tokens, every number,
    the KL included, is that of the unpadded texts evaluated one by one (weighted by their predictions)."""
    g = torch.Generator().manual_seed(1)
    windows = torch.cat([torch.full((2, 1), lm.bos_id), torch.randint(0, 50000, (2, 16), generator=g)], 1)
    d = lm.d_model
    real = torch.ones(windows.shape, dtype=torch.bool)
    real[1, 12:] = False
    spliced = real.clone()
    spliced[:, 0] = False  # the BOS
    models = {"zeros": Zero(d, d), "sae": make("sae_l1", d, 64, seed=0)}
    res = splice_eval(lm.bridge, Windows(windows, spliced, real), HOOK, models)
    assert res["models"]["zeros"]["ce"] == pytest.approx(res["ce_zero"], abs=1e-9)
    assert res["models"]["zeros"]["ce_recovered"] == pytest.approx(0.0, abs=1e-9)
    parts = [splice_eval(lm.bridge, Windows(t, s, torch.ones(t.shape, dtype=torch.bool)), HOOK, models)
             for t, s in ((windows[:1], spliced[:1]), (windows[1:, :12], spliced[1:, :12]))]
    n = [p["n_tokens"] for p in parts]
    assert n == [16, 11] and res["n_tokens"] == 27

    def weighted(first: float, second: float) -> float:
        return (n[0] * first + n[1] * second) / 27

    for key in ("ce_clean", "ce_zero"):
        assert res[key] == pytest.approx(weighted(parts[0][key], parts[1][key]), rel=1e-5)
    for name in models:
        for key in ("ce", "kl"):
            one, two = (p["models"][name][key] for p in parts)
            assert res["models"][name][key] == pytest.approx(weighted(one, two), rel=1e-4)
    assert res["models"]["sae"]["kl"] > 0 and res["models"]["zeros"]["kl"] > 0


def _run_main(run_dir, monkeypatch, models):
    import json

    from actdict.analyze import run
    from actdict.analyze.config import AnalyzeConfig
    from actdict.config import Common

    monkeypatch.setattr(run, "load_models", lambda *a: models)
    monkeypatch.setattr(run, "resolve_decoder", lambda m: lambda ids: [str(i) for i in ids])
    cfg = AnalyzeConfig(ce_loss=True, ce_windows=3, ce_ctx=12, ce_batch_size=2, device="cpu")
    run.main(Common(run_dir=str(run_dir)), cfg)
    return json.loads((run_dir / "summary.json").read_text())


def test_analyze_stage_reports_ce(lm, lm_run, monkeypatch):
    """The hand-made variants have no decode(): the analysis says, once each, that they get no curve."""
    from actdict.errors import ActdictWarning

    d = lm.d_model
    with pytest.warns(ActdictWarning) as said:
        s = _run_main(lm_run(str(lm.path), HOOK, d), monkeypatch, {"id": Identity(d, d), "zero": Zero(d, d)})
    assert sorted(str(w.message) for w in said) == [
        f"test_{v} has no decode(): no masked-dimensions curve (summary.json masked_curve null)"
        for v in ("identity", "zero")]
    assert s["ce"]["windows"] == 3 and s["ce"]["n_tokens"] == 3 * 12  # BOS + 12 tokens: 12 predictions
    assert "models" not in s["ce"]  # each model's CE is in its own entry, not twice
    assert s["models"]["id"]["ce_recovered"] == 1.0 and s["models"]["id"]["kl"] == 0.0
    assert s["models"]["zero"]["ce_recovered"] == pytest.approx(0.0, abs=1e-6)
    assert s["models"]["zero"]["ce"] == pytest.approx(s["ce"]["ce_zero"], rel=1e-6)


def test_the_ce_evaluation_shows_its_progress(lm, lm_run, monkeypatch, capsys):
    """The CE/KL runs (2 + one per dictionary full forwards per window) have a bar of their own: after the
    pass's bar, over a minute of silence for the Pythia config on 2 CPU cores before it had one."""
    from actdict.errors import ActdictWarning

    d = lm.d_model
    with pytest.warns(ActdictWarning, match="test_identity has no decode"):  # (test_analyze_stage_reports_ce)
        _run_main(lm_run(str(lm.path), HOOK, d), monkeypatch, {"id": Identity(d, d)})
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("CE/KL:")]
    assert lines and "3/3" in lines[-1] and "window" in lines[-1]


def test_ce_loss_refuses_an_encoder(lm_run, monkeypatch):
    from actdict.analyze.run import AnalyzeError

    with pytest.raises(AnalyzeError, match="encoder.*ce_loss=false"):
        _run_main(lm_run("all-MiniLM-L6-v2", HOOK, 384), monkeypatch, {"id": Identity(384, 384)})


@pytest.mark.parametrize("made", [{}, {"join_with_eos": False}, {"prepend_bos": False},
                                  {"window_mode": "per_doc"}])
def test_windows_are_the_text_the_harvest_fed(lm, tmp_path, made):
    """A real harvest (random Pythia; one literal <|endoftext|> in a text, whose row skip_special leaves out)
    under each way of joining and starting windows: the CE windows of the analysis (``splice_setup``, which
    reads the store's manifest) are its documents as the harvest fed them: the window prefix (BOS) as the
    harvest's, the separator between documents when it joined them with one, cut at the left-out token and,
    per_doc, at every document, each stretch's end in a padded window."""
    import json

    from actdict.analyze.config import AnalyzeConfig
    from actdict.analyze.run import causal_lm, splice_setup
    from actdict.config import Common, build
    from actdict.harvest.config import HarvestConfig
    from actdict.harvest.run import main as harvest
    from actdict.harvest.sources import iter_documents

    texts = ["The ferry leaves at nine, rain or shine, and the gulls follow it out.", "Owls are quiet at "
             "night <|endoftext|> and loud at dawn in the old barn.", "A tidy kitchen makes a calm cook; "
             "the orchard is full of apples.", "Rain again: the river rises over the low road by noon."]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    cfg = build(HarvestConfig, {"model": str(lm.path), "hooks": [HOOK], "ctx": 12, "chunk_rows": 16,
                                "shard_rows": 32, "max_tokens": None, "device": "cpu",
                                "store_dtype": "float32",
                                "source": {"kind": "files", "path": str(tmp_path / "docs.jsonl")}} | made)
    common = Common(run_dir=str(tmp_path / "run"))
    harvest(common, cfg)
    st = open_store(common.store_path)
    eos = lm.eos_id  # Pythia: BOS = EOS = <|endoftext|>
    docs = [lm.tokenizer(t, add_special_tokens=False)["input_ids"] for t in iter_documents(cfg.source)]
    cut = docs[1].index(eos)  # the literal, left out of the store
    d0, d1a, d1b, d2, d3 = docs[0], docs[1][:cut], docs[1][cut + 1:], docs[2], docs[3]
    prefix, sep = [eos] if cfg.prepend_bos else [], [eos] if cfg.join_with_eos else []
    stretches = [d0, d1a, d1b, d2, d3] if cfg.window_mode == "per_doc" else [d0 + sep + d1a,
                                                                                d1b + sep + d2 + sep + d3]
    ctx = 5
    want = [prefix + t[a:a + ctx] for t in stretches for a in range(0, len(t), ctx)]
    acfg = AnalyzeConfig(ce_windows=100, ce_ctx=ctx, ce_loss=True)
    _, w = splice_setup(causal_lm(st, torch.device("cpu"), acfg), acfg, st, list(range(st.num_chunks)))
    assert st.num_chunks > 2 and [w.tokens[i][w.real[i]].tolist() for i in range(len(w))] == want
    held = w.tokens[w.real & ~w.spliced]  # the prefixes and the separators: never spliced; every EOS is one
    assert held.tolist() == [eos] * int((w.tokens[w.real] == eos).sum()) and len(held) >= len(prefix) * len(w)


def test_heldout_windows_keep_token_id_0_and_see_documents_at_chunk_edges(tmp_path):
    """Token id 0 is a real token (GPT-2's "!"), only -1 marks a row without one; a document that begins
    exactly at a chunk boundary still gets the separator, and one missing whole there still cuts."""
    doc = np.repeat([0, 1, 3], 8)  # 3 documents of 8 rows = chunks 0, 1, 2; document 2 left out whole
    ids = np.arange(24) % 12  # ids 0 at rows 0 and 12
    with StoreWriter(str(tmp_path / "s"), {"hook": HOOK}, 2, "float32", 64, 8) as wr:
        wr.append(np.zeros((24, 2), np.float32), ids, doc, np.tile(np.arange(8), 3))
    w = heldout_windows(open_store(str(tmp_path / "s")), [0, 1, 2], n_windows=10, ctx=40, sep=(99,))
    got = [w.tokens[i][w.real[i]].tolist() for i in range(len(w))]
    assert got == [[*ids[:8], 99, *ids[8:16]], ids[16:].tolist()]


def test_kl_is_clean_to_spliced_by_hand():
    from actdict.analyze.splice import kl_per_position

    g = torch.Generator().manual_seed(0)
    clean, other = torch.randn(2, 3, 5, generator=g), 3 * torch.randn(2, 3, 5, generator=g)  # [W, T, V]
    p, q = clean[:, :-1].softmax(-1).double(), other[:, :-1].softmax(-1).double()
    want = (p * (p / q).log()).sum(-1)  # KL(p_clean || p_spliced) [W, T-1]
    torch.testing.assert_close(kl_per_position(clean, other).double(), want, rtol=1e-5, atol=1e-6)


def test_a_window_longer_than_the_models_context_is_refused(lm, lm_run):
    """analyze.ce_ctx past the model's context (with the BOS before each window) was taken: a rotary model
    (Pythia) read on past what it learned and the CE was reported as if it had not, a model of learned
    positions died in its forward. The windows now fit, or the analysis says what fits."""
    from actdict.analyze.config import AnalyzeConfig
    from actdict.analyze.run import AnalyzeError, splice_setup

    st = open_store(str(lm_run(str(lm.path), HOOK, lm.d_model) / "store"))
    assert lm.n_ctx == 2048
    for ctx in (2048, 3000):
        said = (rf"^analyze.ce_ctx={ctx} \(\+ 1 BOS: windows of {ctx + 1} tokens\) exceeds the context of .* "
                r"\(2048 tokens\): set analyze.ce_ctx=2047 or less$")
        with pytest.raises(AnalyzeError, match=said):
            splice_setup(lm, AnalyzeConfig(ce_loss=True, ce_ctx=ctx), st, [2, 3])
    _, windows = splice_setup(lm, AnalyzeConfig(ce_loss=True, ce_ctx=2047), st, [2, 3])
    assert windows.tokens.shape == (1, 2048)  # BOS + the 128 test rows, padded to the window
