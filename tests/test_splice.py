"""Splicing a dictionary into a causal LM (random-init Pythia-70m shape): identity -> CE recovered 1 and
KL 0 exactly; a zero dictionary -> the zero-ablation CE; a real dictionary in between."""

import numpy as np
import pytest
import torch

from actdict.analyze.splice import SpliceError, ce_recovered, heldout_windows, next_token_ce, splice_eval
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
def lm(tmp_path_factory):
    from actdict.harvest.models import load_model, make_random_pythia

    path = make_random_pythia(tmp_path_factory.mktemp("pythia") / "rand", seed=0)
    lm = load_model(str(path))
    lm.path = path
    return lm


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


def test_heldout_windows(store):
    """Windows are the harvest's text: stretches of adjacent chunks (64 rows each; the store's documents are
    50 rows long), the harvest's separator back between documents and left unspliced, as the BOS is."""
    st, ids = store
    sep = np.array([99])
    win, spliced = heldout_windows(st, [2, 0], n_windows=3, ctx=10, bos_id=7)  # chunk 2 (rows 128..191)
    assert win.shape == spliced.shape == (3, 11) and (win[:, 0] == 7).all() and not spliced[:, 0].any()
    assert win[:, 1:].tolist() == ids[128:158].reshape(3, 10).tolist() and spliced[:, 1:].all()
    win, spliced = heldout_windows(st, [2], n_windows=3, ctx=10, bos_id=7, sep_id=99)  # doc 3 at row 150
    assert win[:, 1:].flatten().tolist() == np.concatenate([ids[128:150], sep, ids[150:157]]).tolist()
    assert (~spliced).flatten().nonzero()[:, 0].tolist() == [0, 11, 22, 25]  # 3 BOS, the separator
    # adjacent chunks 0 and 1 are one stretch (rows 0..6 have no token id): documents break at rows 50, 100
    win, spliced = heldout_windows(st, [0, 1], n_windows=100, ctx=10, bos_id=None, sep_id=99)
    stream = np.concatenate([ids[7:50], sep, ids[50:100], sep, ids[100:128]])  # 123 tokens: 12 windows
    assert win.flatten().tolist() == stream[:120].tolist() and (~spliced).sum() == 2
    # chunks 0 and 2 are not adjacent: no window joins them; what is left of chunk 0 (7 of 57) is dropped
    win, _ = heldout_windows(st, [0, 2], n_windows=100, ctx=10, bos_id=None)
    assert win.tolist() == [*ids[7:57].reshape(5, 10).tolist(), *ids[128:188].reshape(6, 10).tolist()]
    win, _ = heldout_windows(st, [0, 1], n_windows=100, ctx=10, bos_id=None, join_docs=False)  # per_doc
    assert win.tolist() == [ids[a:a + 10].tolist() for a in (7, 17, 27, 37, 50, 60, 70, 80, 90, 100, 110)]
    with pytest.raises(SpliceError, match="ce_ctx"):
        heldout_windows(st, [0], n_windows=1, ctx=1000, bos_id=None)


def test_ce_by_hand():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [1 / 3, 1 / 3, 1 / 3]]]))
    tokens = torch.tensor([[0, 1, 2]])
    ce = next_token_ce(logits, tokens)  # predicts token 1 with p=.25, then token 2 with p=.1
    assert ce[0].tolist() == pytest.approx([-np.log(0.25), -np.log(0.1)], rel=1e-6)
    assert ce_recovered(2.0, 5.0, 2.0) == 1.0 and ce_recovered(2.0, 5.0, 5.0) == 0.0
    assert ce_recovered(2.0, 5.0, 3.5) == pytest.approx(0.5)


def test_identity_zero_and_real_dictionary(lm):
    g = torch.Generator().manual_seed(0)
    windows = torch.cat([torch.full((2, 1), lm.bos_id), torch.randint(0, 50000, (2, 16), generator=g)], 1)
    d = lm.d_model
    real = make("sae_l1", d, 64, seed=0)
    spliced = torch.ones(windows.shape, dtype=torch.bool)
    spliced[:, 0] = False  # the BOS
    res = splice_eval(lm.bridge, windows, HOOK, {"id": Identity(d, d), "zero": Zero(d, d), "sae": real},
                      batch_size=1, spliced=spliced)
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


def _run_main(tmp_path, monkeypatch, model_name, d, models):
    import json

    from actdict.analyze import run
    from actdict.analyze.config import AnalyzeConfig
    from actdict.config import Common

    g = np.random.default_rng(1)
    n = 256
    with StoreWriter(str(tmp_path / "store"), {"hook": HOOK, "model": model_name}, d, "float32", 64, 64) as w:
        w.append(g.standard_normal((n, d)).astype(np.float32), g.integers(0, 50000, n), np.zeros(n),
                 np.arange(n))
    (tmp_path / "split.json").write_text(json.dumps({"train_chunks": [0, 1], "test_chunks": [2, 3]}))
    monkeypatch.setattr(run, "load_models", lambda *a: models)
    monkeypatch.setattr(run, "resolve_decoder", lambda m: lambda ids: [str(i) for i in ids])
    cfg = AnalyzeConfig(ce_loss=True, ce_windows=3, ce_ctx=12, ce_batch_size=2, device="cpu")
    run.main(Common(run_dir=str(tmp_path)), cfg)
    return json.loads((tmp_path / "summary.json").read_text())


def test_analyze_stage_reports_ce(lm, tmp_path, monkeypatch):
    d = lm.d_model
    s = _run_main(tmp_path, monkeypatch, str(lm.path), d, {"id": Identity(d, d), "zero": Zero(d, d)})
    assert s["ce"]["windows"] == 3 and s["ce"]["n_tokens"] == 3 * 12  # BOS + 12 tokens: 12 predictions
    assert s["models"]["id"]["ce_recovered"] == 1.0 and s["models"]["id"]["kl"] == 0.0
    assert s["models"]["zero"]["ce_recovered"] == pytest.approx(0.0, abs=1e-6)
    assert s["models"]["zero"]["ce"] == pytest.approx(s["ce"]["ce_zero"], rel=1e-6)


def test_ce_loss_refuses_an_encoder(tmp_path, monkeypatch):
    from actdict.analyze.run import AnalyzeError

    with pytest.raises(AnalyzeError, match="encoder.*ce_loss=false"):
        _run_main(tmp_path, monkeypatch, "all-MiniLM-L6-v2", 384, {"id": Identity(384, 384)})


def test_windows_are_the_text_the_harvest_fed(lm, tmp_path):
    """A real harvest (random Pythia, documents joined with EOS, one literal <|endoftext|> in a text whose
    row skip_special leaves out): the CE windows over every chunk are the harvest's token stream, its window
    bodies one after the other (BOS prefixes and padding off), cut at the left-out token."""
    import json

    from actdict.config import Common, build
    from actdict.harvest.config import HarvestConfig
    from actdict.harvest.run import main as harvest
    from actdict.harvest.sources import iter_documents, token_windows

    texts = ["The ferry leaves at nine, rain or shine, and the gulls follow it out.", "Owls are quiet at "
             "night <|endoftext|> and loud at dawn in the old barn.", "A tidy kitchen makes a calm cook; "
             "the orchard is full of apples.", "Rain again: the river rises over the low road by noon."]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    cfg = build(HarvestConfig, {"model": str(lm.path), "hooks": [HOOK], "ctx": 12, "chunk_rows": 16,
                                "shard_rows": 32, "max_tokens": None, "device": "cpu",
                                "store_dtype": "float32",
                                "source": {"kind": "files", "path": str(tmp_path / "docs.jsonl")}})
    common = Common(run_dir=str(tmp_path / "run"))
    harvest(common, cfg)
    st = open_store(common.store_path)
    docs = [lm.tokenizer(t, add_special_tokens=False)["input_ids"] for t in iter_documents(cfg.source)]
    eos = lm.eos_id
    stream = np.concatenate([w.tokens[1:len(w.tokens) - w.n_pad]  # the body the model read after its BOS
                             for w in token_windows(docs, 12, "concat", (eos,), (), (eos,), eos)])
    cut_at = int(np.flatnonzero(stream == eos)[1])  # EOS 0, 2 and 3 separate the documents, 1 is the literal
    assert (stream == eos).sum() == 4 and cut_at < len(stream)
    ctx = 5
    win, spliced = heldout_windows(st, range(st.num_chunks), 100, ctx, eos, eos)
    before, after = stream[:cut_at], stream[cut_at + 1:]
    whole = [s[:len(s) // ctx * ctx] for s in (before, after)]  # each stretch's whole windows
    want = np.concatenate(whole).reshape(-1, ctx)
    assert st.num_chunks > 2 and win[:, 1:].tolist() == want.tolist()
    assert spliced[:, 1:].tolist() == (want != eos).tolist() and (want == eos).sum() == 3  # the separators
