"""analyze.labels_field: the rows labelled by a field of their documents in the harvest's source (a review's
stars, the Pile's meta.pile_set_name, the demo corpus' source), read again from the source, as the texts."""

import json

import numpy as np
import pytest

from actdict.analyze import inputs
from actdict.analyze.config import AnalyzeConfig
from actdict.config import Common, ConfigError, build
from actdict.harvest.config import HarvestConfig
from actdict.harvest.run import main as harvest_main
from actdict.harvest.sources import SourceConfig, SourceError, iter_records
from actdict.harvest.store import open_store

WORDS = "river stone lantern quiet market winter bread engine violin harbor letter garden".split()


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    """A paragraph-embeddings store of 16 reviews (2 paragraphs each, one blank review the harvest skips),
    each with stars (one null) and a nested meta.shop; its rows' docs and the records, in source order."""
    root = tmp_path_factory.mktemp("rev")
    rng = np.random.default_rng(0)
    recs = []
    for i in range(17):
        text = "\n\n".join(" ".join(rng.choice(WORDS, size=int(rng.integers(3, 9)))) for _ in range(2))
        recs.append({"text": "  " if i == 5 else text, "stars": None if i == 9 else int(i % 3) + 1,
                     "meta": {"shop": f"<shop {i % 2}>"}})
    (root / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    cfg = build(HarvestConfig, {"mode": "embeddings", "model": "all-MiniLM-L6-v2", "batch_size": 8,
                                "source": {"kind": "files", "path": str(root / "r.jsonl")},
                                "embed": {"unit": "paragraph"}, "store_dtype": "float32", "shard_rows": 16,
                                "chunk_rows": 8, "max_tokens": None, "device": "cpu"})
    harvest_main(Common(run_dir=str(root)), cfg)
    (root / "split.json").write_text(json.dumps({"train_chunks": [0, 1], "test_chunks": [2, 3]}))
    kept = [r for r in recs if r["text"].strip()]  # the documents as the store numbers them
    return root, kept


def test_iter_records_pairs_each_document_with_its_field(reviews):
    root, kept = reviews
    src = SourceConfig(kind="files", path=str(root / "r.jsonl"))
    assert list(iter_records(src, "stars")) == [(r["text"].strip(), r["stars"]) for r in kept]
    assert [v for _, v in iter_records(src, "meta.shop")] == [r["meta"]["shop"] for r in kept]
    assert [v for _, v in iter_records(src)] == [None] * len(kept)
    with pytest.raises(SourceError, match=r"meta have no field 'city' \(fields: \['shop'\]\), so 'meta.c"):
        list(iter_records(src, "meta.city"))
    with pytest.raises(SourceError, match=r"field 'meta' holds dict values; a label is a string, a number"):
        list(iter_records(src, "meta"))


def test_rows_take_their_documents_labels(reviews):
    """Every evaluated row's class is its document's stars (a null: unlabelled), nested string fields too;
    the rows are the test chunks', in the pass's order."""
    root, kept = reviews
    store = open_store(str(root / "store"))
    rows = inputs.evaluated_rows(store, [2, 3])
    docs = np.concatenate([store.read_meta(*store.chunk_bounds(c))[1] for c in (2, 3)])
    idx, classes = inputs.source_labels(store, rows, "stars")
    assert classes == [1.0, 2.0, 3.0]  # a null among them: numbers read as floats, NaN unlabelled
    want = [kept[d]["stars"] for d in docs]
    assert [None if i < 0 else classes[i] for i in idx] == want and None in want
    idx, classes = inputs.source_labels(store, rows, "meta.shop")
    assert [classes[i] for i in idx] == [kept[d]["meta"]["shop"] for d in docs]


def test_analysis_reports_the_classes_of_a_source_field(reviews, monkeypatch, capsys):
    from actdict.analyze import run
    from actdict.train.protocol import make

    root, _ = reviews
    monkeypatch.setattr(run, "load_models", lambda *a: {"sae": make("sae_l1", 384, 6, seed=1)})
    run.main(Common(run_dir=str(root)), AnalyzeConfig(n_features=3, top_k=3, context=0, device="cpu",
                                                        labels_field="meta.shop"))
    s = json.loads((root / "summary.json").read_text())
    assert s["labels_field"] == "meta.shop" and s["labels"] is None
    m = s["models"]["sae"]
    assert [c["label"] for c in m["ad_class"]] == ["<shop 0>", "<shop 1>"]
    assert sum(c["n"] for c in m["ad_class"]) == s["n_test_rows"]
    assert [c["label"] for c in m["class_features"]] == ["<shop 0>", "<shop 1>"]
    capsys.readouterr()
    run.main(Common(run_dir=str(root)), AnalyzeConfig(n_features=3, top_k=3, context=0, device="cpu",
                                                        labels_field="stars"))
    m = json.loads((root / "summary.json").read_text())["models"]["sae"]
    left = m["ad_class_unlabelled"]
    assert left > 0 and "have no label (NaN or empty) in the source field 'stars'" in capsys.readouterr().out
    with pytest.raises(inputs.AnalyzeError, match=r"analyze.labels_field: 'colour': .*rows have no field .*"
                                                  r"\(analyze.labels_field= analyzes without labels\)$"):
        run.main(Common(run_dir=str(root)), AnalyzeConfig(device="cpu", labels_field="colour"))


def test_a_source_changed_since_the_harvest_or_a_store_of_vectors_is_refused(reviews, tmp_path):
    root, _ = reviews
    store = open_store(str(root / "store"))
    rows = inputs.evaluated_rows(store, [2])
    manifest = dict(store.manifest)
    src = tmp_path / "r.jsonl"
    src.write_text((root / "r.jsonl").read_text() + json.dumps({"text": "new", "stars": 5}) + "\n")
    store.manifest = manifest | {"harvest": manifest["harvest"] | {
        "source": manifest["harvest"]["source"] | {"path": str(src)}}}
    with pytest.raises(inputs.AnalyzeError, match=r"analyze.labels_field: 'stars': source files at .* "
                                                  r"changed .* since the harvest, so a row's doc may name"):
        inputs.source_labels(store, rows, "stars")
    store.manifest = {k: v for k, v in manifest.items() if k != "harvest"} | {"kind": "vectors"}
    with pytest.raises(inputs.AnalyzeError, match=r"this store \(vectors\) was harvested from none: give "
                                                  r"analyze.labels a .npy file"):
        inputs.source_labels(store, rows, "stars")
    with pytest.raises(ConfigError, match=r"analyze.labels \('l.npy'\) and analyze.labels_field \('stars'\) "
                                          "are both set"):
        AnalyzeConfig(labels="l.npy", labels_field="stars")


@pytest.mark.parametrize("family", ["encoder", "causal"])
def test_a_token_store_labels_each_token_by_its_document(family, reviews, tmp_path):
    """A token harvest (its manifest's kind is its model's: encoder, causal) of the same reviews: every row
    (token) takes its document's stars; analyze refused every token store ('harvested from none'), so
    configs/pythia70m_pile10k.yaml's meta.pile_set_name could never label a row."""
    from tests.tiny_models import make_tiny

    root, kept = reviews
    model = "all-MiniLM-L6-v2" if family == "encoder" else str(make_tiny("gpt2", tmp_path / "gpt2"))
    cfg = build(HarvestConfig, {"model": model, "hooks": ["blocks.0.hook_resid_post"], "ctx": 16,
                                "batch_size": 4, "source": {"kind": "files", "path": str(root / "r.jsonl")},
                                "store_dtype": "float32", "shard_rows": 64, "chunk_rows": 32,
                                "max_tokens": None, "device": "cpu"})
    harvest_main(Common(run_dir=str(tmp_path / "run")), cfg)
    store = open_store(str(tmp_path / "run" / "store"))
    assert store.manifest["kind"] == family
    chunks = list(range(store.num_chunks))
    rows = inputs.evaluated_rows(store, chunks)
    docs = np.concatenate([store.read_meta(*store.chunk_bounds(c))[1] for c in chunks])
    idx, classes = inputs.source_labels(store, rows, "stars")
    want = [kept[d]["stars"] if d >= 0 else None for d in docs]
    assert len(rows) > 100 and len({d for d in docs if d >= 0}) == len(kept)  # every document's tokens
    assert [None if i < 0 else classes[i] for i in idx] == want


def test_label_values_become_one_array_kind():
    """Strings with nulls: "" (unlabelled); numbers with nulls: NaN; bools with nulls: text, not 0.0 / 1.0;
    strings among numbers: all text."""
    assert inputs._as_array(["a", None]).tolist() == ["a", ""]
    assert np.isnan(inputs._as_array([1, None, 2])).tolist() == [False, True, False]
    assert inputs._as_array([True, None, False]).tolist() == ["True", "", "False"]
    assert inputs._as_array([True, False]).dtype == bool and inputs._as_array([1, 2]).dtype.kind == "i"
    assert inputs._as_array(["a", 3]).tolist() == ["a", "3"]


def test_an_embeddings_store_reads_its_source_once_for_labels_and_texts(reviews, monkeypatch):
    """analyze.labels_field on an embeddings store read the harvest's source twice: once for the labels
    before the pass, once more after it for the texts of the rows shown (for a hub dataset, two downloads).
    The labels' pass now keeps the evaluated rows' texts, so the source is read once; the labels and the
    texts are those of the two passes (kept as before when the texts pass texts.KEPT_MAX_CHARS)."""
    from actdict.analyze import run
    from actdict.analyze import texts as T
    from actdict.harvest import sources
    from actdict.train.protocol import make

    root, _ = reviews
    monkeypatch.setattr(run, "load_models", lambda *a: {"sae": make("sae_l1", 384, 6, seed=1)})
    real, reads = sources.iter_records, []

    def counted(*a, **kw):  # each read of the source, and the documents it yielded
        reads.append(0)
        for item in real(*a, **kw):
            reads[-1] += 1
            yield item

    monkeypatch.setattr(sources, "iter_records", counted)
    outputs = []
    for cap in (getattr(T, "KEPT_MAX_CHARS", 1 << 26), 0):  # 0: none kept, the texts read again
        monkeypatch.setattr(T, "KEPT_MAX_CHARS", cap, raising=False)
        reads.clear()
        run.main(Common(run_dir=str(root)), AnalyzeConfig(n_features=3, top_k=3, context=0, device="cpu",
                                                            labels_field="stars"))
        outputs.append((reads[:], json.loads((root / "summary.json").read_text()),
                        json.loads((root / "features" / "sae.json").read_text())))
    (once, s, f), (twice, s2, f2) = outputs
    assert len(once) == 1 and len(twice) == 2 and once[0] == twice[0]  # the same documents, read once
    assert f["texts"] and f["texts"] == f2["texts"]
    assert all(t in (r["text"] for r in _kept_units(root)) for t in f["texts"].values())
    drop = ("run_id",)
    assert {k: v for k, v in s.items() if k not in drop} == {k: v for k, v in s2.items() if k not in drop}
    assert [c["label"] for c in s["models"]["sae"]["ad_class"]] == [1.0, 2.0, 3.0]


def test_the_kept_texts_count_their_entries_against_the_cap(reviews, monkeypatch):
    """The texts the labels' pass keeps were capped by their characters alone (texts.KEPT_MAX_CHARS), so many
    short texts were kept whatever their entries held (a million of 20 characters: 20M of the 64M, ~200 MiB
    held). Each now counts texts.KEPT_ENTRY_CHARS more: under a cap of every unit's characters the
    evaluated rows' 16 were kept before (read once); with their entries they pass it (read again), and
    fit once the cap holds their entries too."""
    from actdict.analyze import run
    from actdict.analyze import texts as T
    from actdict.harvest import sources
    from actdict.train.protocol import make

    root, _ = reviews
    monkeypatch.setattr(run, "load_models", lambda *a: {"sae": make("sae_l1", 384, 6, seed=1)})
    real, reads = sources.iter_records, []

    def counted(*a, **kw):
        reads.append(0)
        yield from real(*a, **kw)

    monkeypatch.setattr(sources, "iter_records", counted)
    chars = sum(len(u["text"]) for u in _kept_units(root))  # every row's text: more than the 16 evaluated
    got = []
    for cap in (chars, chars + 16 * getattr(T, "KEPT_ENTRY_CHARS", 0)):
        monkeypatch.setattr(T, "KEPT_MAX_CHARS", cap)
        reads.clear()
        run.main(Common(run_dir=str(root)), AnalyzeConfig(n_features=3, top_k=3, context=0, device="cpu",
                                                            labels_field="stars"))
        got.append(len(reads))
    assert got == [2, 1]


def _kept_units(root) -> list[dict]:
    """The reviews' paragraphs as the rows hold them: {"text": clipped paragraph}."""
    from actdict.analyze.texts import clip

    out = []
    for line in (root / "r.jsonl").read_text().splitlines():
        text = json.loads(line)["text"].strip()
        out += [{"text": clip(p.strip())} for p in text.split("\n\n") if p.strip()]
    return out
