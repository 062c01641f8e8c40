"""Vectors through a config (harvest.mode: vectors): reimports, retraining, train, analyze and texts."""

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actdict.cli import main as actdict_main
from actdict.harvest.store import open_store, write_vectors
from actdict.harvest.vectors import cli
from actdict.harvest.writer import chunk_rows_for
from tests.vectors_helpers import N, _vectors_config, _x


def test_config_mode_vectors_runs_train_and_analyze(tmp_path, capsys):
    rng = np.random.default_rng(0)
    basis = rng.standard_normal((4, 24)).astype(np.float32)  # vectors on a 4-dim subspace of R^24
    x = rng.standard_normal((2048, 4)).astype(np.float32) @ basis  # [2048, 24]
    np.save(tmp_path / "v.npy", x)
    cfg = tmp_path / "v.yaml"
    cfg.write_text(f"""
run_dir: {tmp_path / 'run'}
harvest:
  mode: vectors
  vectors: {{path: {tmp_path / 'v.npy'}, hook: emb}}
  store_dtype: float32
  shard_rows: 1024
  chunk_rows: 256
train:
  epochs: 2
  batch_size: 256
  test_fraction: 0.25
  dicts: [{{name: sae_l1, variant: sae_l1, k: 16}}]
analyze: {{n_features: 3, top_k: 2, context: 0}}
""")
    assert actdict_main(["run", str(cfg)]) == 0
    s = open_store(str(tmp_path / "run" / "store"), "emb")
    np.testing.assert_array_equal(s.read_rows(0, len(s)).acts, x)
    assert s.manifest["config_hash"] and s.manifest["harvest"]["mode"] == "vectors"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["n_test_rows"] == 512 and 0 < summary["models"]["sae_l1"]["re_det"] < float("inf")
    capsys.readouterr()  # the lens of a token config pointed at this store: no model to read a text with
    demo = Path(__file__).parents[1] / "configs" / "demo.yaml"
    assert actdict_main(["lens", str(demo), "x", "--set", f"run_dir={tmp_path / 'run'}"]) == 2
    assert "holds vectors of no model: the store holds vectors brought" in capsys.readouterr().err
    assert actdict_main(["harvest", str(cfg)]) == 0  # same config again: complete, skipped
    unread = ["harvest.ctx=7", "harvest.model=x", "harvest.max_tokens=5", "harvest.vectors.block_rows=100",
              "harvest.window_mode=per_doc", "harvest.embed.unit=paragraph"]  # no vectors import reads them
    capsys.readouterr()
    assert actdict_main(["harvest", str(cfg), *unread]) == 0 and "already complete" in capsys.readouterr().out
    assert actdict_main(["harvest", str(cfg), "harvest.vectors.key=x"]) == 2  # another config: refused
    for other in ("harvest.chunk_rows=64", "harvest.store_dtype=float16"):  # what the import does read
        assert actdict_main(["harvest", str(cfg), other]) == 2 and "another config" in capsys.readouterr().err
    with pytest.MonkeyPatch.context() as mp:  # under torchrun every rank would write the whole hook
        mp.setenv("WORLD_SIZE", "2")
        mp.setenv("RANK", "0")
        capsys.readouterr()
        assert actdict_main(["harvest", str(cfg), f"run_dir={tmp_path / 'run3'}"]) == 2
        assert "harvest.mode vectors runs in one process: torchrun splits token harvests only" in (
            capsys.readouterr().err) and not (tmp_path / "run3" / "store" / "emb").exists()
        assert actdict_main(["harvest", str(cfg)]) == 0  # a complete store: skipped under torchrun too
        assert "already complete" in capsys.readouterr().out
    assert cli([str(tmp_path / "v.npy"), str(tmp_path / "run4" / "store"), "--hook", "emb"]) == 0
    capsys.readouterr()  # an import of the same file without a config: train uses it, a harvest refuses
    assert actdict_main(["run", str(cfg), f"run_dir={tmp_path / 'run4'}"]) == 2
    assert "holds vectors written without a config (python -m actdict" in capsys.readouterr().err
    fresh = [f"run_dir={tmp_path / 'run2'}", "harvest.shard_rows=2048"]
    capsys.readouterr()
    assert actdict_main(["run", str(cfg), *fresh, "harvest.chunk_rows=2048"]) == 2  # one chunk: refused
    assert "holds 2048 vectors" in capsys.readouterr().err and not (tmp_path / "run2").exists()  # before
    assert actdict_main(["run", str(cfg), *fresh, "train.test_fraction=0"]) == 2  # analysis would find none
    assert "train.test_fraction=0 holds no chunks out, and the analysis" in capsys.readouterr().err
    assert not (tmp_path / "run2").exists()
    assert chunk_rows_for(2048, 2048) == 256 and chunk_rows_for(1000, 65536) == 64  # the import, not after
    assert chunk_rows_for(1000, 96) == 32 and chunk_rows_for(5, 4096) == 1


def test_analyze_refuses_a_store_its_dictionaries_did_not_learn(tmp_path, capsys):
    """Other vectors written over the store after training (its test chunks are then other rows, or out of
    range): analysis stops with one line naming what changed; the same vectors written again pass."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1024, 8)).astype(np.float32)
    store = str(tmp_path / "store")
    write_vectors(store, x, chunk_rows=128, shard_rows=512)
    cfg = tmp_path / "v.yaml"
    cfg.write_text(f"""
run_dir: {tmp_path / 'run'}
store: {store}
threads: 1
train: {{epochs: 1, batch_size: 128, test_fraction: 0.25, dicts: [{{name: l1, variant: sae_l1, k: 8}}]}}
analyze: {{n_features: 2, top_k: 1, context: 0}}
""")
    assert actdict_main(["train", str(cfg)]) == 0
    write_vectors(store, x, chunk_rows=128, shard_rows=512, overwrite=True)  # the same rows: analysed
    assert actdict_main(["analyze", str(cfg)]) == 0
    shutil.copytree(store, tmp_path / "moved")  # the same rows in another folder: its path is not compared
    assert actdict_main(["analyze", str(cfg), f"store={tmp_path / 'moved'}"]) == 0
    capsys.readouterr()
    write_vectors(store, x[:512], chunk_rows=64, shard_rows=512, overwrite=True)  # other rows, other chunks
    assert actdict_main(["analyze", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"the store {store} is not the one ['l1'] learned (l1: store.content: " in err
    assert "store.rows: 1024 -> 512" in err and "point `store` at the store they learned" in err


def _train_cfg(tmp_path, store) -> str:
    cfg = tmp_path / "t.yaml"
    cfg.write_text(f"""
run_dir: {tmp_path / 'run'}
store: {store}
train:
  epochs: 1
  batch_size: 8
  test_fraction: 0.2
  dicts: [{{name: s, variant: sae_l1, k: 4}}]
""")
    return str(cfg)


def test_vectors_imported_over_a_store_retrain_its_dictionaries(tmp_path, capsys):
    """The same shape imported again with other numbers is another store: its dictionaries are retrained
    (they were skipped as finished when the store was known by its path, rows and d alone)."""
    store, record = str(tmp_path / "s"), tmp_path / "run" / "dicts" / "s" / "cfg.json"
    contents = []
    for i, seed in enumerate((1, 1, 2)):
        np.save(tmp_path / "v.npy", _x(seed))
        assert cli([str(tmp_path / "v.npy"), store, "--chunk-rows", "8", "--overwrite"]) == 0
        assert actdict_main(["train", _train_cfg(tmp_path, store)]) == 0
        out = capsys.readouterr().out
        content = open_store(store).manifest["content"]
        assert json.loads(record.read_text())["store"]["content"] == content and len(content) == 16
        assert ("skipped" in out) == (i == 1)  # the same vectors again: finished; other vectors: retrained
        if i == 2:
            assert f"store.content: '{contents[0]}' -> '{content}'" in out
        contents.append(content)
    assert contents[0] == contents[1] != contents[2]


def test_config_mode_vectors_reimports_a_changed_file(tmp_path, capsys):
    cfg = _vectors_config(tmp_path)
    assert actdict_main(["harvest", str(cfg)]) == 0
    assert actdict_main(["harvest", str(cfg)]) == 0
    chash = json.loads((tmp_path / "run" / "store" / "vectors" / "manifest.json").read_text())["config_hash"]
    store = tmp_path / "run" / "store"
    assert capsys.readouterr().out.endswith(f"harvest: store {store} is already complete for this config "
                                            f"(config hash {chash}); skipping\n")
    np.save(tmp_path / "v.npy", _x(2))  # the file changed (another mtime): imported again
    assert actdict_main(["harvest", str(cfg)]) == 0
    assert "changed since it was imported" in capsys.readouterr().out
    s = open_store(str(tmp_path / "run" / "store"))
    np.testing.assert_array_equal(s.read_rows(0, N).acts, _x(2))
    assert s.manifest["source_fingerprint"] and s.manifest["n_rows"] == N


def test_a_replacement_stopped_by_a_kill_leaves_no_staging_folder(tmp_path):
    """A vectors import over an existing hook stages the new one in ``.replacing-<hook>/`` and swaps it in;
    SIGKILL between the old hook's removal and the swap leaves the store with the staged hook only. The
    rerun imports it again and removes the staging folder: the store is the uninterrupted one, file for
    file (before, a whole copy of the hook stayed there for good)."""
    cfg = _vectors_config(tmp_path)
    assert actdict_main(["harvest", str(cfg)]) == 0
    store = tmp_path / "run" / "store"
    before = {str(p.relative_to(store)): p.read_bytes() for p in store.rglob("*") if p.is_file()}
    (store / ".replacing-vectors").mkdir()
    (store / "vectors").rename(store / ".replacing-vectors" / "vectors")  # the kill's moment
    assert actdict_main(["harvest", str(cfg)]) == 0
    assert not (store / ".replacing-vectors").exists()
    assert {str(p.relative_to(store)): p.read_bytes() for p in store.rglob("*") if p.is_file()} == before


def test_harvest_of_a_config_without_a_harvest_section_says_so(tmp_path, capsys):
    """A bring-your-own-vectors config has no harvest section: `actdict harvest` refuses (it had run the
    default token harvest), `actdict run` skips the stage."""
    cfg = tmp_path / "byo.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\ntrain: {{dicts: [{{name: a, variant: sae_l1, k: 4}}]}}\n")
    assert actdict_main(["harvest", str(cfg)]) == 2
    assert "has no harvest section: nothing to harvest" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_analyze_texts_shows_each_vectors_row_its_text_from_a_parquet_column(tmp_path, capsys):
    """A store of your own vectors has no source to read texts from: analyze.texts names a file of one text
    per row (the parquet the vectors came from), and the features file, summary.json and report show them,
    HTML-escaped; a file of another row count, column or store is one line, before the pass."""
    x = np.random.default_rng(0).standard_normal((512, 8)).astype(np.float32)
    texts = [f"<b>review {i}</b> & more" for i in range(512)]
    pq.write_table(pa.table({"text": texts, "vec": list(x)}), tmp_path / "v.parquet")
    (tmp_path / "v.txt").write_text("\n".join(texts) + "\n")
    cfg = tmp_path / "v.yaml"
    cfg.write_text(f"""
run_dir: {tmp_path / 'run'}
harvest:
  mode: vectors
  vectors: {{path: {tmp_path / 'v.parquet'}, key: vec}}
  store_dtype: float32
  chunk_rows: 64
train: {{epochs: 1, batch_size: 64, test_fraction: 0.25, dicts: [{{name: sae_topk, variant: sae_topk, k: 8,
        params: {{topk: 2}}}}]}}
analyze: {{n_features: 3, top_k: 2, context: 0, texts: {tmp_path / 'v.parquet'}}}
""")
    assert actdict_main(["run", str(cfg)]) == 0
    run = tmp_path / "run"
    feats = json.loads((run / "features" / "sae_topk.json").read_text())
    shown = {h[1] for f in feats["features"] for h in f["top"]}
    got = {int(r): t for r, t in feats["texts"].items()}  # the rows shown: top, bottom, sampled
    assert shown and shown <= set(got) and all(t == texts[r] for r, t in got.items())
    top = json.loads((run / "summary.json").read_text())["models"]["sae_topk"]["features"][0]["top"][0]
    assert top["text"] == texts[top["row"]]
    page = (run / "report.html").read_text()  # the overview's top contexts: the texts, escaped
    assert f"&lt;b&gt;review {top['row']}&lt;/b&gt; &amp; more" in page and "<b>review" not in page
    assert actdict_main(["analyze", str(cfg), f"analyze.texts={tmp_path / 'v.txt'}"]) == 0
    assert json.loads((run / "features" / "sae_topk.json").read_text())["texts"] == feats["texts"]
    pq.write_table(pa.table({"text": texts[:500]}), tmp_path / "short.parquet")
    capsys.readouterr()
    short = f"analyze.texts={tmp_path / 'short.parquet'}"
    for bad, msg in ((short, "holds 500 texts, the store has 512 rows"),
                     ("analyze.texts_column=vec", "no string column 'vec' (its string columns: ['text']"),
                     ("analyze.texts_column=body", "no string column 'body' (its string columns: ['text']; "
                                                   "all its columns: ['text', 'vec'])")):
        assert actdict_main(["analyze", str(cfg), bad]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1
