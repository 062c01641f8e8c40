"""The text-embedding harvest across encoder families (tests/tiny_encoders.py: random-init tiny
sentence-transformers folders, offline): every stored row is sentence-transformers' own ``encode`` of its
document, whatever the batch it was padded in, for every pooling mode with and without a Normalize module;
the model's own prompts (default, or named by ``prompt_name``) are applied and the manifest says which;
documents cut at ``max_seq_length`` are counted."""

import json
from pathlib import Path

import numpy as np
import pytest
from tiny_encoders import FAMILIES, WORDS, make_encoder

from actdict.config import Common, ConfigError, build
from actdict.harvest.config import HarvestConfig
from actdict.harvest.run import main as harvest_main
from actdict.harvest.store import open_store
from actdict.rng import kept_rng

NATURAL = {"bert": "mean", "distilbert": "mean", "mpnet": "mean", "roberta": "mean", "xlmr": "mean",
           "modernbert": "mean", "t5": "mean", "qwen2": "lasttoken"}
"""The pooling each family's embedders use (MiniLM / MPNet / ModernBERT-embed / sentence-t5: mean;
GTE-Qwen: the last token)."""
POOLINGS = ("cls", "mean", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
PROMPTS = {"document": "search_document: ", "query": "search_query: "}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """(family, pooling, normalize, padding_side, default prompt) -> its folder, each built once."""
    made: dict[tuple, Path] = {}

    def get(family: str, pooling: str = "", normalize: bool = False, side: str = "right",
            default: str | None = None) -> Path:
        key = (family, pooling or NATURAL[family], normalize, side, default)
        if key not in made:
            made[key] = make_encoder(family, tmp_path_factory.mktemp(family), pooling=key[1],
                                     normalize=normalize, padding_side=side, prompts=PROMPTS,
                                     default_prompt=default)
        return made[key]

    return get


@kept_rng()
def _docs(path: Path, n: int = 7) -> tuple[Path, list[str]]:
    """n documents of 1..20 words, the third of 70 (past the tiny models' 64 tokens: cut)."""
    rng = np.random.default_rng(1)
    sizes = [70 if i == 2 else int(rng.integers(1, 20)) for i in range(n)]
    texts = [" ".join(rng.choice(WORDS, size=k)) + "." for k in sizes]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path, texts


def _harvest(tmp_path: Path, model: Path, **embed) -> tuple[np.ndarray, dict, list[str]]:
    """Harvest ``_docs`` with ``model`` (batches of 2, groups of 3: a short document padded beside a long
    one); (rows [n, d], the manifest, the documents)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    src, texts = _docs(tmp_path / "docs.jsonl")
    cfg = build(HarvestConfig, {"mode": "embeddings", "model": str(model), "batch_size": 2,
                                "source": {"kind": "files", "path": str(src)}, "store_dtype": "float32",
                                "shard_rows": 4, "chunk_rows": 2, "device": "cpu",
                                "embed": {"group": 3} | embed})
    harvest_main(Common(run_dir=str(tmp_path / "run")), cfg)
    store = open_store(str(tmp_path / "run" / "store"), "embedding")
    return store.read_rows(0, len(store)).acts, store.manifest, texts


def _reference(model: Path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model), device="cpu", local_files_only=True)


CASES = ([(f, NATURAL[f], f in ("bert", "t5"), "right") for f in FAMILIES]
         + [("qwen2", "lasttoken", True, "left")]
         + [("bert", p, n, "right") for p in POOLINGS if p != "mean" for n in (False, True)]
         + [("modernbert", p, False, "right") for p in ("cls", "max")])


@pytest.mark.parametrize("family, pooling, normalize, side", CASES)
def test_rows_are_sentence_transformers_encode_of_each_document_alone(tmp_path, folders, family, pooling,
                                                                       normalize, side):
    model = folders(family, pooling, normalize, side)
    rows, manifest, texts = _harvest(tmp_path, model)
    ref = _reference(model)
    assert ref.tokenizer.padding_side == side
    alone = np.stack([ref.encode([t])[0] for t in texts])  # [n, d]: no padding at all
    assert rows.shape == alone.shape == (7, 24 if family == "t5" else 32)
    np.testing.assert_allclose(rows, ref.encode(texts), atol=2e-6, rtol=0)  # its own batching
    np.testing.assert_allclose(rows, alone, atol=2e-6, rtol=0)  # padded beside longer documents
    assert np.abs(rows).max() > 0.05  # not rows of zeros
    if normalize:
        np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    about = manifest["embedding"]
    assert about["pooling"] == pooling and about["model_normalizes"] is normalize
    assert about["max_seq_length"] == 64 and about["truncated"] == 1 and about["prompt"] == ""


def test_the_models_default_prompt_is_applied_and_the_manifest_says_it(tmp_path, folders):
    """A model whose config_sentence_transformers.json names a default prompt: sentence-transformers puts it
    before every text when encode is given none, so the harvest's rows had it, but the manifest said
    prompt ''."""
    model = folders("bert", default="document")
    rows, manifest, texts = _harvest(tmp_path, model)
    ref = _reference(model)
    want = ref.encode([PROMPTS["document"] + t for t in texts], prompt="")  # [n, d]
    np.testing.assert_allclose(rows, want, atol=2e-6)
    assert not np.allclose(rows, ref.encode(texts, prompt=""), atol=1e-3)  # the prompt changed the rows
    assert manifest["embedding"]["prompt"] == "search_document: "
    assert manifest["embedding"]["prompt_name"] == "document"


def test_a_prompt_is_named_by_prompt_name_and_an_unknown_name_is_refused(tmp_path, folders):
    model = folders("modernbert")
    rows, manifest, texts = _harvest(tmp_path / "a", model, prompt_name="query")
    np.testing.assert_allclose(rows, _reference(model).encode(texts, prompt_name="query"), atol=2e-6)
    about = manifest["embedding"]
    assert (about["prompt"], about["prompt_name"]) == ("search_query: ", "query")
    assert manifest["harvest"]["embed"]["prompt_name"] == "query"
    rows, manifest, _ = _harvest(tmp_path / "b", model, prompt="passage: ", prompt_name="query")  # text wins
    np.testing.assert_allclose(rows, _reference(model).encode(texts, prompt="passage: "), atol=2e-6)
    assert (manifest["embedding"]["prompt"], manifest["embedding"]["prompt_name"]) == ("passage: ", None)
    with pytest.raises(ConfigError, match=r"^harvest.embed.prompt_name='passage' is not one of the model's "
                                          r"prompts \('document', 'query'\): name one of those"):
        _harvest(tmp_path / "c", model, prompt_name="passage")
    assert not (tmp_path / "c" / "run" / "store" / "embedding").exists()


def test_a_named_empty_prompt_overrides_the_models_default(tmp_path):
    """prompt_name naming one of the model's prompts whose text is '' (its way to ask for none) on a model
    with a default prompt: the rows had the default put before them (encode was given prompt None, so it
    fell back to the default), while the manifest said prompt ''."""
    model = make_encoder("bert", tmp_path / "m", prompts=PROMPTS | {"plain": ""}, default_prompt="document")
    rows, manifest, texts = _harvest(tmp_path / "h", model, prompt_name="plain")
    ref = _reference(model)
    np.testing.assert_allclose(rows, ref.encode(texts, prompt=""), atol=2e-6)
    assert not np.allclose(rows, ref.encode(texts), atol=1e-3)  # encode's default would have changed them
    assert (manifest["embedding"]["prompt"], manifest["embedding"]["prompt_name"]) == ("", "plain")


def test_truncated_documents_are_counted_and_said(tmp_path, folders, capsys):
    """Documents longer than max_seq_length were cut by sentence-transformers without a word."""
    _, manifest, texts = _harvest(tmp_path / "a", folders("xlmr"), max_seq_length=22)
    out = capsys.readouterr().out
    tok = _reference(folders("xlmr")).tokenizer
    assert [len(tok(t)["input_ids"]) for t in texts] == [22, 19, 111, 30, 35, 4, 6]  # <s> ... </s>, uncut
    about = manifest["embedding"]
    assert about["truncated"] == 3 and about["max_seq_length"] == 22  # the one of 22 tokens is whole
    assert ("harvest: 3 of 7 documents (42.9%) were longer than max_seq_length = 22 tokens and were "
            "embedded from their first 22 only") in out
    _, manifest, _ = _harvest(tmp_path / "b", folders("xlmr"), prompt="x " * 70)  # the prompt counts
    assert manifest["embedding"]["truncated"] == 7


def test_a_store_harvested_before_prompt_name_existed_stays_its_configs():
    from actdict.harvest.config import rows_view
    from actdict.harvest.reuse import as_json

    new = as_json(build(HarvestConfig, {"mode": "embeddings", "model": "m"}))
    old = json.loads(json.dumps(new))
    del old["embed"]["prompt_name"]
    assert rows_view(old) == rows_view(new)
    named = json.loads(json.dumps(new))
    named["embed"]["prompt_name"] = "query"
    assert rows_view(named) != rows_view(new)


@pytest.mark.parametrize("family", ["roberta", "xlmr", "mpnet", "distilbert"])
def test_max_seq_length_is_held_to_the_positions_after_the_padding_index(folders, family):
    """RoBERTa's, XLM-R's and MPNet's tables of 66 learned positions start after their padding index (1):
    64 of them hold tokens, as DistilBERT's 64."""
    from actdict.harvest.embed import load_encoder

    assert load_encoder(str(folders(family)), max_seq_length=64).model.max_seq_length == 64
    said = r"max_seq_length=65 exceeds the context of .* \(64 positions\): set it to 64 or less"
    with pytest.raises(ConfigError, match=said):
        load_encoder(str(folders(family)), max_seq_length=65)
