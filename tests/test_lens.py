"""``actdict lens``: the rows it reads for a text are the rows the harvest stored for that text, and each
token's features are exactly its active latents (the ones AD / L0 count), largest |code| first."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from actdict.analyze.lens import feature_labels, main, text_rows, token_features
from actdict.analyze.metrics import active_mask
from actdict.analyze.run import load_models
from actdict.cli import main as cli
from actdict.config import load_experiment, section
from actdict.harvest.config import HarvestConfig
from actdict.harvest.models import load_model
from actdict.harvest.sources import iter_documents
from actdict.harvest.store import open_store

TEXTS = Path(__file__).parent / "data" / "texts"
HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A whole tiny run (harvest per_doc in float32, two dictionaries, analyze): (config path, run dir)."""
    root = tmp_path_factory.mktemp("lens")
    cfg = root / "lens.yaml"
    cfg.write_text(f"""
run_dir: {root / 'run'}
seed: 0
harvest:
  hooks: [{HOOK}]
  source: {{kind: files, path: {TEXTS}}}
  ctx: 16
  window_mode: per_doc
  batch_size: 4
  max_tokens: null
  store_dtype: float32
  shard_rows: 32
  chunk_rows: 16
  device: cpu
train:
  epochs: 3
  batch_size: 16
  test_fraction: 0.25
  t0: 5
  dicts:
    - {{name: sae, variant: sae_l1, k: 24, params: {{lam1: 0.01, lam2: 0.001}}}}
    - {{name: vaease, variant: vaease, k: 24, params: {{loggamma_init: -3}}}}
analyze: {{n_features: 4, top_k: 3, context: 2}}
""")
    assert cli(["run", str(cfg)]) == 0
    return cfg, root / "run"


def _harvest_cfg(cfg: Path) -> HarvestConfig:
    return section(load_experiment(str(cfg), []), "harvest", HarvestConfig)


def test_rows_of_a_text_are_the_stored_rows_of_that_document(run):
    cfg_path, run_dir = run
    cfg = _harvest_cfg(cfg_path)
    store = open_store(str(run_dir / "store"))
    rows = store.read_rows(0, len(store))
    docs = list(iter_documents(cfg.source))
    d = int(np.bincount(rows.doc).argmax())  # the longest document: several windows of 16
    mine = np.flatnonzero(rows.doc == d)
    assert len(mine) > 2 * (cfg.ctx - 2)
    ids, x = text_rows(load_model(cfg.model, dtype=cfg.dtype), cfg, HOOK, docs[d])
    order = mine[np.argsort(rows.pos[mine])]
    np.testing.assert_array_equal(ids, rows.token_ids[order])
    np.testing.assert_allclose(x.numpy(), rows.acts[order], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["sae", "vaease"])
def test_features_are_the_active_latents_by_size(run, name):
    _, run_dir = run
    store = open_store(str(run_dir / "store"))
    model = load_models(run_dir, [name], store.d)[name].eval()
    x = torch.as_tensor(store.read_rows(0, len(store)).acts)  # [n, d]
    feats, codes, n_active = token_features(model, x, top=model.k)  # [n, k] x2, [n]
    with torch.no_grad():
        out = model(x, sample=False)
    active = active_mask(out.activity, model.active_side)  # [n, k]
    assert torch.equal(n_active, active.sum(1)) and 0 < n_active.float().mean() < model.k
    for r in range(len(x)):
        a = int(n_active[r])
        assert set(feats[r, :a].tolist()) == set(torch.nonzero(active[r])[:, 0].tolist())
        assert (feats[r, a:] == -1).all() and (codes[r, a:] == 0).all()
        assert torch.equal(codes[r, :a], out.codes[r, feats[r, :a]])
        assert (codes[r, :a].abs().diff() <= 0).all()  # largest |code| first
    if name == "sae":
        assert torch.equal(active, out.codes != 0)  # an SAE's active latents are its nonzero codes
    few, _, _ = token_features(model, x, top=2)
    assert few.shape == (len(x), 2) and torch.equal(few, feats[:, :2])


def test_cli_prints_and_writes_each_tokens_features(run, tmp_path, capsys):
    cfg_path, run_dir = run
    text = "The ferry leaves at nine, rain or shine."
    assert main([str(cfg_path), text, "--top", "3", "--json", str(tmp_path / "l.json")]) == 0
    res = json.loads((tmp_path / "l.json").read_text())
    tok = load_model("all-MiniLM-L6-v2").tokenizer
    assert res["token_ids"] == tok(text, add_special_tokens=False)["input_ids"]
    assert list(res["dicts"]) == ["sae", "vaease"] and res["hook"] == HOOK
    negative_labelled = 0
    for name, r in res["dicts"].items():
        assert len(r["features"]) == len(r["active"]) == len(res["tokens"])
        assert all(len(f) == min(3, a) for f, a in zip(r["features"], r["active"], strict=True))
        labels = feature_labels(run_dir / "features" / f"{name}.json")
        assert len(labels) == 24  # analyze ran: every feature has its corpus tokens (maybe none)
        for feats in r["features"]:
            for f in feats:
                top, bottom = labels[f["i"]]
                assert f["top_tokens"] == (bottom if f["code"] < 0 else top)  # the code's own side
                negative_labelled += f["code"] < 0 and bool(bottom)
    assert negative_labelled > 0  # VAEase codes are signed: some are labelled by their bottom contexts
    printed = capsys.readouterr().out
    assert printed.count("\n  ") == 2 * len(res["tokens"]) and "'ferry'" in printed
    for name, variant in (("sae", "sae_l1"), ("vaease", "vaease")):  # k as actdict feature and compare say it
        assert f"\n{name} ({variant}, k 24): token, active latents, top features" in printed
    assert main([str(cfg_path), text, "--dict", "vaease", "--json", str(tmp_path / "v.json")]) == 0
    assert list(json.loads((tmp_path / "v.json").read_text())["dicts"]) == ["vaease"]


def test_followed_features_give_their_code_and_active_flag_on_every_token(run, tmp_path, capsys):
    """--feature I (repeatable) follows features of one dictionary over the text: the code and active flag
    of each on every token are the dictionary's own on the rows the harvest would store; several
    dictionaries without --dict, or an index beyond k, are refused with one line."""
    cfg_path, run_dir = run
    text = "The ferry leaves at nine, rain or shine."
    store = open_store(str(run_dir / "store"))
    model = load_models(run_dir, ["sae"], store.d)["sae"].eval()
    _, x = text_rows(load_model("all-MiniLM-L6-v2"), _harvest_cfg(cfg_path), HOOK, text)
    with torch.no_grad():
        out = model(x, sample=False)
    active = active_mask(out.activity, model.active_side)  # [n, k]
    a, b = active.sum(0).argsort(descending=True, stable=True)[:2].tolist()  # the text's most active two
    assert main([str(cfg_path), text, "--dict", "sae", "--feature", str(a), "--feature", str(b),
                 "--feature", str(a), "--json", str(tmp_path / "f.json")]) == 0  # a named twice: once
    res = json.loads((tmp_path / "f.json").read_text())
    got = res["dicts"]["sae"]["followed"]
    assert [f["i"] for f in got] == [a, b] and active[:, a].any()
    for f in got:
        assert f["codes"] == pytest.approx(out.codes[:, f["i"]].tolist(), abs=1e-4)
        assert f["active"] == active[:, f["i"]].tolist()
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.startswith("  '")]
    assert len(rows) == len(res["tokens"]) and f"followed: #{a}" in printed
    assert sum(line.count("*") for line in rows) == int(active[:, [a, b]].sum())
    assert main([str(cfg_path), text, "--feature", "3"]) == 2
    assert "one dictionary; 2 are read (sae, vaease): name one with --dict" in capsys.readouterr().err
    assert main([str(cfg_path), text, "--dict", "sae", "--feature", "24"]) == 2
    assert "--feature 24: the dictionary has features 0..23" in capsys.readouterr().err


def test_cli_errors_name_the_problem(run, capsys):
    cfg_path, _ = run
    assert main([str(cfg_path), "   "]) == 2
    assert "no tokens" in capsys.readouterr().err
    assert main([str(cfg_path), "--dict", "nope", "x"]) == 2  # options before the text too
    err = capsys.readouterr().err
    assert "nope" in err and "available: ['sae', 'vaease']" in err
    assert main([str(cfg_path), "x", "--set", "run_dir=/nonexistent/elsewhere"]) == 2  # overrides apply
    assert "no trained dictionaries in /nonexistent/elsewhere/dicts" in capsys.readouterr().err
    bad = cfg_path.with_name("bad.yaml")
    bad.write_text(cfg_path.read_text().replace("  ctx: 16", "  ctx: 16\n  ctxx: 3"))
    assert main([str(bad), "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("actdict lens: config error:") and "ctxx" in err
    for typo in ("train.epochss=3", "analyze.topk=3"):  # sections the lens does not read: checked alike
        assert main([str(cfg_path), "x", "--set", typo]) == 2
        assert typo.split("=")[0].split(".")[1] in capsys.readouterr().err
    hint = "overrides go after --set here: --set run_dir=/a"
    for args, said in ((["--file", "/nonexistent/text.txt"], "--file /nonexistent/text.txt: No such file"),
                       (["x", "run_dir=/a"], hint), (["run_dir=/a", "x"], hint),
                       (["--file", "-", "run_dir=/a"], hint)):
        with pytest.raises(SystemExit) as e:
            main([str(cfg_path), *args])
        assert e.value.code == 2 and said in capsys.readouterr().err


def test_labels_of_another_training_are_not_used(run, tmp_path, capsys):
    """analyze records the checkpoint's config_hash in each features file; a features file of another
    training of the dictionary (retrained since, analyze not rerun) gives no labels and a note saying to rerun
    analyze, instead of labelling features with another dictionary's tokens; so does a missing one."""
    import shutil

    cfg_path, run_dir = run
    for name in ("sae", "vaease"):
        feats = json.loads((run_dir / "features" / f"{name}.json").read_text())
        cfg = json.loads((run_dir / "dicts" / name / "cfg.json").read_text())
        assert feats["config_hash"] == cfg["config_hash"] and len(cfg["config_hash"]) == 16
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    stale = json.loads((copy / "features" / "sae.json").read_text()) | {"config_hash": "0123456789abcdef"}
    (copy / "features" / "sae.json").write_text(json.dumps(stale))
    (copy / "features" / "vaease.json").unlink()
    text = "The ferry leaves."
    assert main([str(cfg_path), text, "--set", f"run_dir={copy}", "--json", str(tmp_path / "l.json")]) == 0
    res = json.loads((tmp_path / "l.json").read_text())
    for r in res["dicts"].values():
        assert sum(len(f) for f in r["features"]) > 0
        assert all(f["top_tokens"] == [] for feats in r["features"] for f in feats)
    assert "another training of sae" in res["dicts"]["sae"]["labels_note"]
    assert "0123456789abcdef" in res["dicts"]["sae"]["labels_note"]
    assert "not found (run actdict analyze)" in res["dicts"]["vaease"]["labels_note"]
    out = capsys.readouterr().out
    assert out.count("rerun actdict analyze") == 1 and out.count("(run actdict analyze)") == 1
    assert main([str(cfg_path), text, "--json", str(tmp_path / "ok.json")]) == 0
    ok = json.loads((tmp_path / "ok.json").read_text())["dicts"]
    assert all(r["labels_note"] == "" for r in ok.values())


def test_a_damaged_features_file_is_one_line_saying_to_rerun_analyze(run, tmp_path, capsys):
    """A truncated features file (an analysis killed while writing it) stops the lens with one line naming
    the file and the fix, not a JSONDecodeError traceback; summary.json, which the lens does not read, may be
    damaged without harm."""
    import shutil

    cfg_path, run_dir = run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / "summary.json").write_text('{"version": 2, "mod')
    over = ["--set", f"run_dir={copy}"]
    assert main([str(cfg_path), "The ferry.", *over]) == 0
    capsys.readouterr()
    path = copy / "features" / "vaease.json"
    path.write_bytes(path.read_bytes()[:1000])
    assert main([str(cfg_path), "The ferry.", *over]) == 2
    err = capsys.readouterr().err
    said = rf"actdict lens: OutputError: {re.escape(str(path))} is truncated or corrupt \(not valid JSON: "
    line = err.split("\n")[-2]  # the last line; the model's load draws progress bars before it
    assert re.fullmatch(said + r"\w.* \(char 1000\)\): rerun `actdict analyze` to rewrite it", line), err
    assert err.endswith(line + "\n") and "Traceback" not in err


def test_folders_in_dicts_that_hold_no_dictionary_are_named(run, tmp_path, capsys):
    """A dicts/ folder with no finished checkpoint and a SAELens export put in dicts/ are each named in a note
    on stderr (stdout is the lens) and skipped; the lens reads the dictionaries beside them."""
    import shutil

    from actdict.train.export import export_saelens

    cfg_path, run_dir = run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / "dicts" / "half").mkdir()
    export_saelens(copy / "dicts" / "sae", copy / "export")  # refused inside dicts/; moved there by hand
    (copy / "export").rename(copy / "dicts" / "sae_export")
    res = tmp_path / "l.json"
    assert main([str(cfg_path), "The ferry.", "--set", f"run_dir={copy}", "--json", str(res)]) == 0
    assert list(json.loads(res.read_text())["dicts"]) == ["sae", "vaease"]
    out, err = capsys.readouterr()
    notes = [line for line in err.split("\n") if "note:" in line]
    dicts = copy / "dicts"
    assert notes == [f"actdict lens: note: skipped {dicts / 'half'}: it has no finished checkpoint (no "
                     "cfg.json: its training stopped before its first save); rerun actdict train to finish "
                     "it, or remove the folder",
                     f"actdict lens: note: skipped {dicts / 'sae_export'}: it holds a SAELens export "
                     "(sae_weights.safetensors + cfg.json, made by actdict export), not a checkpoint of this "
                     "run: it does not belong in dicts/; export into a folder outside it"]
    assert "note:" not in out


@pytest.fixture(scope="module")
def embedded_run(tmp_path_factory):
    """A whole tiny run on paragraph embeddings (harvest.mode: embeddings): (config path, run dir, docs)."""
    root = tmp_path_factory.mktemp("lens_emb")
    words = "river stone lantern quiet market winter bread engine violin harbor letter garden".split()
    rng = np.random.default_rng(0)
    docs = ["\n\n".join(" ".join(rng.choice(words, size=6)) for _ in range(3)) for _ in range(16)]
    (root / "d.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    cfg = root / "emb.yaml"
    cfg.write_text(f"""
run_dir: {root / 'run'}
harvest:
  mode: embeddings
  source: {{kind: files, path: {root / 'd.jsonl'}}}
  embed: {{unit: paragraph}}
  max_tokens: null
  batch_size: 16
  store_dtype: float32
  shard_rows: 16
  chunk_rows: 8
  device: cpu
train:
  epochs: 2
  batch_size: 8
  test_fraction: 0.25
  dicts:
    - {{name: sae, variant: sae_l1, k: 16, params: {{lam1: 0.01, lam2: 0.001}}}}
analyze: {{n_features: 4, top_k: 3, context: 0}}
""")
    assert cli(["run", str(cfg)]) == 0
    return cfg, root / "run", docs


def test_embeddings_lens_reads_each_paragraph_as_the_harvest_did(embedded_run, tmp_path, capsys):
    """With harvest.mode: embeddings the lens embeds each paragraph of the text as the harvest embedded the
    corpus (the rows equal the stored ones), lists each paragraph's active latents by |code|, and labels them
    with the first words of the corpus texts they fire on most."""
    from actdict.analyze.lens import lens, unit_rows
    from actdict.config import common_of

    cfg_path, run_dir, docs = embedded_run
    hcfg = _harvest_cfg(cfg_path)
    store = open_store(str(run_dir / "store"), "embedding")
    rows = store.read_rows(0, len(store))
    name, units, x = unit_rows(hcfg, docs[5])  # [3], [3, d]
    assert name == "all-MiniLM-L6-v2" and units == docs[5].split("\n\n")
    np.testing.assert_allclose(x.numpy(), rows.acts[rows.doc == 5], atol=2e-5, rtol=0)
    assert main([str(cfg_path), docs[5], "--top", "2", "--json", str(tmp_path / "e.json")]) == 0
    res = json.loads((tmp_path / "e.json").read_text())
    assert res["unit"] == "paragraph" and res["tokens"] == units and res["token_ids"] == [-1, -1, -1]
    model = load_models(run_dir, ["sae"], store.d)["sae"]
    feats, codes, n_active = token_features(model, x, top=2)
    r = res["dicts"]["sae"]
    assert r["active"] == n_active.tolist() and r["labels_note"] == ""
    assert [[f["i"] for f in u] for u in r["features"]] == [[i for i in f if i >= 0] for f in feats.tolist()]
    texts = json.loads((run_dir / "features" / "sae.json").read_text())["texts"]
    labelled = [t for u in r["features"] for f in u for t in f["top_tokens"]]
    assert labelled and all(any(s.startswith(t.rstrip("\u2026")) for s in texts.values()) for t in labelled)
    out = capsys.readouterr().out
    assert "all-MiniLM-L6-v2 embedding: 3 paragraphs" in out and f"{units[0]!r}" in out
    common = common_of(load_experiment(str(cfg_path), []))
    with pytest.raises(Exception, match="no paragraph to embed"):
        lens(common, hcfg, "  \n\n ", [])


def test_labels_skip_rows_without_a_string(tmp_path):
    """An embedded row whose text could not be read (token id -1, no string) gives no label, not an empty one;
    a row with its text is labelled by its first words."""
    hits = [[2.0, 7, 0, 0, [-1], 0], [1.0, 8, 0, 1, [-1], 0]]
    data = {"k": 1, "tokens": {"-1": ""}, "features": [{"i": 0, "top": hits, "bottom": []}]}
    (tmp_path / "f.json").write_text(json.dumps(data))
    assert feature_labels(tmp_path / "f.json") == {0: ([], [])}
    (tmp_path / "f.json").write_text(json.dumps(data | {"texts": {"8": "A quiet harbor at dawn, " * 3}}))
    assert feature_labels(tmp_path / "f.json") == {0: (["A quiet harbor at dawn, A quiet\u2026"], [])}


def test_whitespace_tokens_are_labels_made_visible(tmp_path):
    """A feature whose top tokens are a tab, a newline and an indent (Pythia's tokenizer has whitespace-run
    tokens) had no label: each was stripped to "" and skipped, so `actdict feature` listed it with a blank
    'top tokens' column (a random-init Pythia's VAEase #134, whose top hits are tabs); they are now shown
    with the report's newline mark (↵), ⇥ and ␣. A token with text keeps its stripped string."""
    def hit(act, tok):  # [act, row, doc, pos, token ids, index of the row's token]
        return [act, 0, 0, 1, [9, tok], 1]

    data = {"k": 1, "tokens": {"1": "\t", "2": "\n\n", "3": "    ", "4": " the\n", "9": "x"},
            "features": [{"i": 0, "top": [hit(5.0, 1), hit(4.0, 2), hit(3.0, 3), hit(2.0, 4)],
                          "bottom": [hit(-1.0, 3)]}]}
    (tmp_path / "f.json").write_text(json.dumps(data))
    assert feature_labels(tmp_path / "f.json", n=4) == {
        0: (["\u21e5", "\u21b5\u21b5", "\u2423" * 4, "the"], ["\u2423" * 4])}


def test_a_json_path_that_cannot_be_written_is_refused_first(tmp_path, capsys):
    from actdict.analyze.lens import main as lens_main

    for bad in (tmp_path / "no-such-folder" / "x.json", tmp_path):  # a missing folder; a folder itself
        with pytest.raises(SystemExit) as e:
            lens_main(["configs/demo.yaml", "hi", "--json", str(bad)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and f"--json {bad}: not a file in an existing folder" in err


def test_labels_are_the_first_distinct_tokens_of_each_side(tmp_path):
    """A feature's labels: the first n distinct (stripped) token strings of its top hits, strongest first,
    and apart those of its most negative ones; a token id missing from the strings is shown as #id."""
    def hit(act, tok):  # [act, row, doc, pos, token ids, index of the row's token]
        return [act, 0, 0, 1, [9, tok], 1]

    top = [hit(5.0, 1), hit(4.0, 2), hit(3.0, 1), hit(2.0, 3), hit(1.5, 7), hit(1.0, 4)]
    data = {"k": 2, "tokens": {"1": " the", "2": "the ", "3": " cat", "4": " dog", "9": "x"},
            "features": [{"i": 1, "top": top, "bottom": [hit(-2.0, 7), hit(-1.0, 3)]}]}
    (tmp_path / "f.json").write_text(json.dumps(data))
    assert feature_labels(tmp_path / "f.json") == {1: (["the", "cat", "#7"], ["#7", "cat"])}
    assert feature_labels(tmp_path / "f.json", n=1) == {1: (["the"], ["#7"])}


def test_labels_of_a_features_file_of_another_k_are_not_used(tmp_path):
    """A features file whose k is not the checkpoint's is of another dictionary, even when neither records
    a config_hash (an older analysis): no labels, a note naming both."""
    from actdict.analyze.lens import dict_labels

    (tmp_path / "features").mkdir()
    hits = [[1.0, 0, 0, 0, [1], 0]]
    data = {"k": 8, "tokens": {"1": "a"}, "features": [{"i": 0, "top": hits, "bottom": []}]}
    (tmp_path / "features" / "d.json").write_text(json.dumps(data))
    assert dict_labels(tmp_path, "d", 8) == ({0: (["a"], [])}, "")
    labels, note = dict_labels(tmp_path, "d", 16)
    assert labels == {} and "another training of d" in note and "k 8" in note and "k 16" in note


def test_every_active_latent_is_listed_with_top_k_and_another_hook_is_refused(run, tmp_path, capsys):
    """With --top k each token lists all its active latents, latent 0 included (the padding -1 is what is
    left out, not index 0); --hook naming another hook than the dictionaries learned is refused."""
    cfg_path, _ = run
    text = "The ferry leaves at nine, rain or shine."
    assert main([str(cfg_path), text, "--top", "24", "--json", str(tmp_path / "l.json")]) == 0
    res = json.loads((tmp_path / "l.json").read_text())
    for r in res["dicts"].values():
        assert [len(f) for f in r["features"]] == r["active"]
    assert any(f["i"] == 0 for r in res["dicts"].values() for feats in r["features"] for f in feats)
    capsys.readouterr()
    assert main([str(cfg_path), text, "--hook", "blocks.0.hook_resid_post"]) == 2
    err = capsys.readouterr().err
    assert f"--hook blocks.0.hook_resid_post: the dictionaries were trained on {HOOK}" in err


def test_labels_of_an_older_features_file_without_config_hash_are_not_used_for_a_hashed_checkpoint(tmp_path):
    """A features file of an analysis before features files recorded the checkpoint's config_hash (same k),
    beside a checkpoint that records one: the checkpoint may have been retrained since (a changed config
    retrains without analysing), so its labels would name another training's features. No labels, a note
    saying it is from an older actdict and to rerun analyze (they were used in silence)."""
    from actdict.analyze.lens import dict_labels

    (tmp_path / "features").mkdir()
    (tmp_path / "dicts" / "d").mkdir(parents=True)
    (tmp_path / "dicts" / "d" / "cfg.json").write_text(json.dumps({"finished": True, "k": 8,
                                                                   "config_hash": "0123456789abcdef"}))
    hits = [[1.0, 0, 0, 0, [1], 0]]
    data = {"k": 8, "tokens": {"1": "a"}, "features": [{"i": 0, "top": hits, "bottom": []}]}  # no config_hash
    (tmp_path / "features" / "d.json").write_text(json.dumps(data))
    labels, note = dict_labels(tmp_path, "d", 8)
    assert labels == {} and "older actdict" in note and "rerun actdict analyze" in note
    (tmp_path / "features" / "d.json").write_text(json.dumps(data | {"config_hash": "0123456789abcdef"}))
    assert dict_labels(tmp_path, "d", 8) == ({0: (["a"], [])}, "")


@pytest.mark.parametrize("features", [[{"i": 0, "top": [[1, 2]]}], [{"top": []}], 5,
                                      [{"i": 0, "top": [[1.0, 0, 0, 0, [5], 0]]}]])
def test_a_features_file_whose_records_are_not_analyzes_is_one_error(tmp_path, features):
    """A features file of a shared run folder that is JSON but not analyze's records (an edit, another
    program's) was an IndexError, KeyError, TypeError or AttributeError traceback in actdict lens."""
    from actdict.analyze.outputs import OutputError

    (tmp_path / "f.json").write_text(json.dumps({"k": 1, "tokens": [], "features": features}))
    with pytest.raises(OutputError, match=r"f.json is corrupt \(its features are not analyze's records: "):
        feature_labels(tmp_path / "f.json")


def test_a_followed_feature_is_labelled_on_the_side_of_its_largest_active_code():
    """--feature's labels: the corpus side of the feature's largest active |code| in the text (a VAE's signed
    codes: its most negative contexts when that code is negative), the top side when it is active nowhere."""
    from actdict.analyze.lens import side

    codes = torch.tensor([0.5, -2.0, 3.0, 1.0])
    assert side(codes, torch.tensor([True, True, False, False])) == -2.0  # 3.0 is not active
    assert side(codes, torch.tensor([False, True, True, False])) == 3.0
    assert side(codes, torch.zeros(4, dtype=torch.bool)) == 1.0
    assert side(torch.zeros(0), torch.zeros(0, dtype=torch.bool)) == 1.0


def test_a_json_that_cannot_be_written_is_one_line(run, tmp_path, full_disk, capsys):
    """lens --json F on a full disk ended in an OSError traceback and left F empty: one WriteError line."""
    cfg_path, _ = run
    full_disk(str(tmp_path))
    out = tmp_path / "l.json"
    assert main([str(cfg_path), "The ferry.", "--json", str(out)]) == 2
    assert capsys.readouterr().err == (f"actdict lens: WriteError: could not write {out}: No space left on "
                                       f"device ({out} is as it was)\n")
    assert list(tmp_path.iterdir()) == []


def test_a_run_folder_without_a_store_reads_the_store_its_dictionaries_learned(run, tmp_path, capsys):
    """`actdict lens CONFIG TEXT --set run_dir=runs/other` stopped on 'no activation store at
    runs/other/store' when that run's training read a store elsewhere (a shared store), unless --set store=
    was given too. The dictionaries' cfg.json records the store they learned: the lens reads it, and says
    so; when it is gone too, the error says to give it with --set store=PATH."""
    cfg_path, run_dir = run
    other = tmp_path / "other"
    for folder in ("dicts", "features"):
        shutil.copytree(run_dir / folder, other / folder)
    text = "The ferry leaves at nine."
    assert main([str(cfg_path), text, "--json", str(tmp_path / "a.json")]) == 0
    capsys.readouterr()
    assert main([str(cfg_path), text, "--set", f"run_dir={other}", "--json", str(tmp_path / "b.json")]) == 0
    said = capsys.readouterr()
    learned = json.loads((other / "dicts" / "sae" / "cfg.json").read_text())["store"]["path"]
    assert Path(learned) == run_dir / "store"
    assert said.err == (f"actdict lens: note: {other / 'store'} holds no store: reading {learned}, the "
                        f"store the dictionaries of {other} learned (their cfg.json); --set store=PATH reads "
                        "another\n")
    assert json.loads((tmp_path / "b.json").read_text()) == json.loads((tmp_path / "a.json").read_text())
    assert main([str(cfg_path), text, "--set", f"run_dir={other}", "--set", f"store={learned}"]) == 0
    assert capsys.readouterr().err == ""  # the store given: read as it is, nothing to say
    for name in ("sae", "vaease"):  # the store they learned moved away too
        record = other / "dicts" / name / "cfg.json"
        data = json.loads(record.read_text())
        record.write_text(json.dumps(data | {"store": data["store"] | {"path": str(tmp_path / "gone")}}))
    assert main([str(cfg_path), text, "--set", f"run_dir={other}"]) == 2
    assert capsys.readouterr().err == (
        f"actdict lens: LensError: no store at {other / 'store'} for the dictionaries of {other} (they "
        f"learned {tmp_path / 'gone'}, which is not there either): give the store they learned with --set "
        "store=PATH\n")


def test_the_lens_runs_the_forward_in_the_dtype_the_store_was_harvested_in(run, tmp_path, monkeypatch):
    """harvest.dtype auto picks by the machine: on one with native bf16 (patched here) it would pick bfloat16,
    while the store was harvested in float32 (its numerics say so). The lens makes its rows as the store's
    were: float32 (it loaded the model in what auto picked on the lens' machine)."""
    from actdict.analyze.lens import harvest_dtype
    from actdict.harvest import models

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    cfg_path, run_dir = run
    store = open_store(str(run_dir / "store"), HOOK)
    assert store.manifest["numerics"] == "forward float32 on cpu, stored float32"
    asked, real = [], models.load_model
    monkeypatch.setattr(models, "load_model", lambda *a, **k: asked.append(k["dtype"]) or real(*a, **k))
    out = tmp_path / "l.json"
    assert main([str(cfg_path), "The ferry leaves.", "--set", "harvest.dtype=auto", "--json", str(out)]) == 0
    assert asked == ["float32"] and json.loads(out.read_text())["hook"] == HOOK
    assert harvest_dtype("encode bfloat16 on cuda, stored float32", "float32", "cpu") == "bfloat16"
    assert harvest_dtype(None, "auto", "cpu") == "bfloat16"  # no record: auto as it picks here


def test_a_hook_of_a_head_the_checkpoint_lacks_is_refused(run):
    """MiniLM's checkpoint is a bare BertModel: the bridge draws its masked-LM head at random at each load,
    so the lens of a store harvested from ln_final.hook_normalized (before the harvest refused it) would
    read the text through another random head than the store's. Refused, as the harvest refuses it."""
    from actdict.harvest.models import HookError

    cfg_path, _ = run
    lm = load_model("all-MiniLM-L6-v2")
    with pytest.raises(HookError, match="ln_final.hook_normalized.*trained weights"):
        text_rows(lm, _harvest_cfg(cfg_path), "ln_final.hook_normalized", "The ferry leaves.")
    ids, x = text_rows(lm, _harvest_cfg(cfg_path), "mlm_head.hook_in", "The ferry leaves.")  # the encoder's
    assert x.shape == (len(ids), 384)  # output, kept


def test_a_store_of_another_model_than_the_dictionaries_learned_is_refused(run, tmp_path, capsys):
    """The lens checked the store's hook (the one the dictionaries were trained on) and d, and the store's
    model against the config's, never against the model the dictionaries learned (their cfg.json): another
    model's store of the same hook and d, with the config naming that model, was read silently, the text's
    rows of one model run through dictionaries of another. Refused now, naming what differs; a store grown
    since (other rows, another config_hash) is still theirs."""
    cfg_path, run_dir = run
    other = tmp_path / "other"
    for folder in ("dicts", "features"):
        shutil.copytree(run_dir / folder, other / folder)
    text, store = "The ferry leaves at nine.", str(run_dir / "store")
    for name in ("sae", "vaease"):  # as if they had learned another model's store of this hook and d
        record = other / "dicts" / name / "cfg.json"
        data = json.loads(record.read_text())
        record.write_text(json.dumps(data | {"store": data["store"] | {"model": "other/model", "rows": 7,
                                                                       "config_hash": "grown"}}))
    assert main([str(cfg_path), text, "--set", f"run_dir={other}", "--set", f"store={store}"]) == 2
    assert capsys.readouterr().err == (
        f"actdict lens: LensError: the store at {store} is not the one ['sae', 'vaease'] learned (sae: "
        "store.model: 'other/model' -> 'all-MiniLM-L6-v2'; vaease: store.model: 'other/model' -> "
        "'all-MiniLM-L6-v2'): give the store they learned with --set store=PATH\n")
    for name in ("sae", "vaease"):  # their model again: rows and config_hash of a grown store do not count
        record = other / "dicts" / name / "cfg.json"
        data = json.loads(record.read_text())
        record.write_text(json.dumps(data | {"store": data["store"] | {"model": "all-MiniLM-L6-v2"}}))
    assert main([str(cfg_path), text, "--set", f"run_dir={other}", "--set", f"store={store}"]) == 0
