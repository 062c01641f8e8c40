"""``actdict compare`` (analyze/pair.py): two dictionaries' features matched by co-activation on the rows
both held out and by decoder direction, across two hooks of one store."""

import json

import numpy as np
import pytest
import torch

from actdict.analyze import pair
from actdict.cli import main as cli
from actdict.harvest.store import StoreWriter
from actdict.train.checkpoint import load, save
from actdict.train.protocol import make

N, D, K = 128, 6, 10


def _store(path, hooks=("blocks.0.h", "blocks.1.h"), config_hash="harvest-1"):
    """One harvest's store: ``hooks`` over the same 128 rows (4 chunks of 32); hook 1's rows are hook 0's
    times 2 (so a dictionary of hook 0 scaled fits hook 1 exactly)."""
    x = np.random.default_rng(0).standard_normal((N, D)).astype(np.float32)
    for h, scale in zip(hooks, (1.0, 2.0), strict=False):
        with StoreWriter(str(path), {"hook": h, "config_hash": config_hash}, D, "float32", 64, 32) as w:
            w.append(x * scale, np.arange(N), np.arange(N) // 16, np.arange(N) % 16)
    return x


def _record(path, hook, test_chunks, config_hash="harvest-1"):
    return {"config_hash": f"dict-{hook}", "test_chunks": test_chunks,
            "store": {"path": str(path), "hook": hook, "rows": N, "d": D, "config_hash": config_hash}}


def _pair(tmp_path, perm, chunks_a=(2, 3), chunks_b=(2, 3), hash_b="harvest-1"):
    """Dictionary A (sae_l1, hook 0) and B = A with its features permuted by ``perm`` and its encoder halved
    (hook 1's rows are twice hook 0's: B fires on exactly A's rows, its feature perm[i] where A's i)."""
    _store(tmp_path / "store")
    a = make("sae_l1", D, K, seed=3)
    b = make("sae_l1", D, K, seed=3)
    with torch.no_grad():
        b.encoder.weight.copy_(a.encoder.weight[np.argsort(perm)] / 2)
        b.encoder.bias.copy_(a.encoder.bias[np.argsort(perm)])
        b.decoder.weight.copy_(a.decoder.weight[:, np.argsort(perm)] * 2)
    save(tmp_path / "ra" / "dicts" / "a", a, _record(tmp_path / "store", "blocks.0.h", list(chunks_a)))
    save(tmp_path / "rb" / "dicts" / "b", b,
         _record(tmp_path / "store", "blocks.1.h", list(chunks_b), hash_b) | {"config_hash": "dict-b"})
    return str(tmp_path / "ra" / "dicts" / "a"), str(tmp_path / "rb" / "dicts" / "b")


def test_a_permuted_copy_on_the_next_hook_is_matched_feature_for_feature(tmp_path):
    perm = np.random.default_rng(1).permutation(K)
    da, db = _pair(tmp_path, perm)
    out = pair.compare(da, db, n=2)
    co = out["cofire"]
    assert co["rows"] == 64 and co["chunks"] == [2, 3]
    live_a = [i for i in range(K) if out["a"]["fires"][i] > 0]
    assert live_a and co["a_in_b"] == {"mean_jaccard": 1.0, "matched": 1.0, "live": len(live_a)}
    for i in live_a:
        j, jac, both = out["a"]["cofire"][i][0]
        assert (j, jac, both) == (perm[i], 1.0, out["a"]["fires"][i])
        assert out["b"]["fires"][perm[i]] == out["a"]["fires"][i]
        j, cos = out["a"]["direction"][i]
        assert j == perm[i] and cos == pytest.approx(1, abs=1e-5)
    assert out["directions"]["a_in_b"]["mmcs"] == pytest.approx(1.0, abs=1e-5)


def test_the_counts_equal_a_brute_force_count_of_both_active_splits(tmp_path):
    """Two unrelated dictionaries: each feature's partners and Jaccard equal a brute-force computation."""
    from actdict.analyze.metrics import active_mask
    from actdict.harvest.store import open_store

    da, db = _pair(tmp_path, np.arange(K))
    save(db, make("sae_l1", D, K, seed=9), _record(tmp_path / "store", "blocks.1.h", [2, 3]))
    out = pair.compare(da, db, n=3)
    ma, mb = load(da)[0].eval(), load(db)[0].eval()
    st = [open_store(str(tmp_path / "store"), h) for h in ("blocks.0.h", "blocks.1.h")]
    act = []
    for m, s in zip((ma, mb), st, strict=True):
        x = torch.as_tensor(np.concatenate([s.read_chunk(c).acts for c in (2, 3)]))  # the held-out rows
        with torch.no_grad():
            act.append(active_mask(m(x, sample=False).activity, m.active_side).double())  # [64, K]
    both = act[0].T @ act[1]  # [ka, kb]
    fa, fb = act[0].sum(0), act[1].sum(0)
    jac = both / (fa[:, None] + fb[None] - both).clamp(min=1)
    for i in range(K):
        got = out["a"]["cofire"][i]
        want = sorted((j for j in range(K) if both[i, j] > 0), key=lambda j: (-float(jac[i, j]), j))[:3]
        assert [g[0] for g in got] == want
        assert [g[1] for g in got] == pytest.approx([float(jac[i, j]) for j in want], abs=1e-4)
        assert [g[2] for g in got] == [int(both[i, j]) for j in want]


def test_other_rows_or_no_common_held_out_chunk_skip_the_co_activation(tmp_path):
    da, db = _pair(tmp_path, np.arange(K), hash_b="another-harvest")
    out = pair.compare(da, db)
    assert out["cofire"] is None and "trained on different stores (config_hash differ)" in out["notes"][0]
    assert out["directions"]["a_in_b"]["mmcs"] == pytest.approx(1.0, abs=1e-5)  # directions still compared
    save(db, load(db)[0], {"store": {"hook": "blocks.1.h"}})  # as an import records it: a hook at most
    assert "records no store it was trained on (an import?): name one with --store" in \
        pair.compare(da, db)["notes"][0]
    out = pair.compare(da, db, store=str(tmp_path / "store"))  # named: every chunk but A's training rows
    assert out["cofire"]["chunks"] == [2, 3] and out["cofire"]["a_in_b"]["mean_jaccard"] == 1.0
    da2, db2 = _pair(tmp_path / "3", np.arange(K))
    out = pair.compare(da2, db2, max_mib=K * K * 4 / 2**20 / 2)  # half what the counts need
    assert out["cofire"] is None and "would pass --max-mib" in out["notes"][0]
    assert out["directions"]["a_in_b"]["mmcs"] == pytest.approx(1.0, abs=1e-5)
    # --rows past 2^31 - 1: the counts become int64 (CoFire), twice what int32's fit; priced so
    out = pair.compare(da2, db2, limit=2 ** 31, max_mib=K * K * 4 / 2**20 * 1.5)
    assert out["cofire"] is None and f"its counts ({K:,} x {K:,} int64, " in out["notes"][0]
    da, db = _pair(tmp_path / "2", np.arange(K), chunks_a=(0,), chunks_b=(3,))
    out = pair.compare(da, db)
    assert out["cofire"] is None and "no chunk in common" in out["notes"][0]


def test_the_command_prints_the_table_and_writes_every_partner(tmp_path, capsys, monkeypatch):
    from actdict.files import WriteError

    perm = np.roll(np.arange(K), 1)
    da, db = _pair(tmp_path, perm)
    assert cli(["compare", da, db, "--top", "3", "--json", str(tmp_path / "c.json")]) == 0
    text = capsys.readouterr().out
    assert "co-activation on 64 rows both held out" in text and "A in B 1.000 (100.0% of" in text
    rows = [line.split() for line in text.splitlines() if line.lstrip().startswith("#")]
    assert len(rows) == 3 and all(r[2] == f"#{perm[int(r[0][1:])]}" and r[3] == "1.000" for r in rows)
    assert ("compare: note: no labels for A and B: no features file of this training in its run folder "
            "(actdict analyze there writes it)") in text.splitlines()  # not analysed: the columns are blank
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["a"]["cofire"] == [[[int(j), float(v), c] for j, v, c in f] for f in saved["a"]["cofire"]]
    assert cli(["compare", da, str(tmp_path / "nothing")]) == 2
    assert "nothing" in capsys.readouterr().err

    def full(path, text):  # a full disk where --json goes: a WriteError traceback after the whole pass
        raise WriteError(f"could not write {path}: No space left on device ({path} is as it was)")

    monkeypatch.setattr(pair, "write_atomic", full)
    assert cli(["compare", da, db, "--json", str(tmp_path / "c2.json")]) == 2
    assert capsys.readouterr().err == (f"actdict: WriteError: could not write {tmp_path}/c2.json: No space "
                                       f"left on device ({tmp_path}/c2.json is as it was)\n")


def test_two_dictionaries_with_nothing_to_compare_print_the_notes_and_no_empty_table(tmp_path, capsys):
    da, _ = _pair(tmp_path, np.arange(K))
    other = tmp_path / "rc" / "dicts" / "c"  # another d, another harvest: neither measure applies
    save(other, make("sae_l1", D + 2, K, seed=0), _record(tmp_path / "store", "blocks.0.h", [2, 3], "h2"))
    assert cli(["compare", da, str(other)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2:] == ["compare: note: no co-activation: they were trained on different stores "
                         "(config_hash differ)",
                         f"compare: note: no decoder directions compared: d {D} and {D + 2}"]


def test_json_in_a_missing_folder_is_refused_before_the_pass(tmp_path, capsys):
    """compare and summary wrote --json after their work: a WriteError / FileNotFoundError traceback."""
    da, db = _pair(tmp_path, np.arange(K))
    for argv in (["compare", da, db], ["summary", str(tmp_path)]):
        with pytest.raises(SystemExit) as e:
            cli([*argv, "--json", str(tmp_path / "no" / "c.json")])
        assert e.value.code == 2
        err = capsys.readouterr().err.splitlines()
        path = tmp_path / "no" / "c.json"
        assert err[-1].endswith(f"error: --json {path}: not a file in an existing folder")
    assert not (tmp_path / "no").exists()


def test_the_table_prints_no_terminal_control_codes(tmp_path, capsys):
    """A corpus token of the features file (or an imported SAE's hook) printed as it is: ESC ] 0 sets the
    terminal's title, as actdict lens and summary do not let it."""
    da, db = _pair(tmp_path, np.arange(K))
    hits = [[1.0, 0, 0, 0, [7], 0]]
    (tmp_path / "ra" / "features").mkdir()
    (tmp_path / "ra" / "features" / "a.json").write_text(json.dumps(
        {"config_hash": "dict-blocks.0.h", "k": K, "tokens": {"7": "\x1b]0;title\x07x"},
         "features": [{"i": i, "top": hits} for i in range(K)]}))
    assert cli(["compare", da, db, "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "<U+001B>]0;title<U+0007>" in out  # a token's label, as the report's
    features = tmp_path / "ra" / "features" / "a.json"  # another training's (k 5): its labels name others
    features.write_text(json.dumps(json.loads(features.read_text()) | {"k": K + 1}))
    assert cli(["compare", da, db, "--top", "2"]) == 0
    assert "title" not in capsys.readouterr().out


def test_the_table_labels_an_embeddings_run_by_its_texts_and_names_a_damaged_file(tmp_path, capsys):
    """An embeddings run's features file has token ids -1 and the rows' texts: the tokens column was empty.
    A damaged one (a hit cut short) stopped with an IndexError traceback."""
    da, db = _pair(tmp_path, np.arange(K))
    (tmp_path / "ra" / "features").mkdir()
    path = tmp_path / "ra" / "features" / "a.json"
    data = {"config_hash": "dict-blocks.0.h", "k": K, "tokens": {}, "texts": {"5": "Kernel panics at boot"},
            "features": [{"i": i, "top": [[1.0, 5, 0, 0, [-1], 0]]} for i in range(K)]}
    path.write_text(json.dumps(data))
    assert cli(["compare", da, db, "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line.lstrip().startswith("#")]
    assert len(rows) == 2 and all("Kernel panics at boot" in r for r in rows)
    head = next(line for line in lines if line.split()[:2] == ["A", "fires"]).split()
    assert head[2] == "texts" and head[6] == "tokens"  # A's labels are texts, B has no features file
    assert [ln for ln in lines if "no labels" in ln] == [
        "compare: note: no labels for B: no features file of this training in its run folder (actdict "
        "analyze there writes it)"]
    data["features"][0]["top"] = [[1.0, 5]]
    path.write_text(json.dumps(data))
    assert cli(["compare", da, db]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"actdict: OutputError: {path} is corrupt") and "Traceback" not in err


def test_a_device_torch_cannot_use_is_one_line(tmp_path, capsys, monkeypatch):
    """--device gpu, auto (as every stage's device takes it) and cuda without a GPU were tracebacks."""
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    da, db = _pair(tmp_path, np.arange(K))
    assert cli(["compare", da, db, "--device", "gpu"]) == 2
    assert capsys.readouterr().err.startswith("actdict: ConfigError: --device: not a torch device: 'gpu' (")
    assert cli(["compare", da, db, "--device", "cuda"]) == 2
    assert capsys.readouterr().err.startswith("actdict: ConfigError: --device=cuda, but this torch (")
    assert cli(["compare", da, db, "--device", "auto"]) == 0
    assert "co-activation on 64 rows" in capsys.readouterr().out


def test_a_store_path_relative_to_another_folder_names_where_it_comes_from(tmp_path, capsys, monkeypatch):
    """Run from another folder than the training, the cfg.json's relative store path is not found: the line
    said 'run the harvest first', of a path the command line never named. It is now also looked for from
    the dictionaries' run folders and the folders above them (``storepath.located``, as the lens looks),
    read from there with a note; where it is in none of them, the error names where the path comes from."""
    monkeypatch.chdir(tmp_path)
    da, db = _pair(tmp_path, np.arange(K))
    for d, hook in ((da, "blocks.0.h"), (db, "blocks.1.h")):
        save(d, load(d)[0], _record("store", hook, [2, 3]))  # the path as a run from tmp_path records it
    assert cli(["compare", da, db]) == 0
    monkeypatch.chdir(tmp_path / "ra")  # was: no activation store at store
    capsys.readouterr()
    assert cli(["compare", da, db]) == 0
    assert capsys.readouterr().out.count(  # one note for A's and B's
        f"compare: note: the store store (cfg.json: relative to the folder the training ran in) is not in "
        f"this folder: read from {tmp_path / 'store'}\n") == 1
    _store(tmp_path / "x" / "elsewhere")  # from a folder that is not above the run folders: not found there
    for d, hook in ((da, "blocks.0.h"), (db, "blocks.1.h")):
        save(d, load(d)[0], _record("elsewhere", hook, [2, 3]))
    monkeypatch.chdir(tmp_path / "x")
    assert cli(["compare", da, db]) == 0
    monkeypatch.chdir(tmp_path / "ra")
    assert cli(["compare", da, db]) == 2
    err = capsys.readouterr().err
    assert err.startswith("actdict: StoreError: no activation store at elsewhere")
    assert err.endswith(f"(the store {da}/cfg.json records; name another with --store)\n")
    assert cli(["compare", da, db, "--store", str(tmp_path / "store")]) == 0


def test_an_import_without_a_hook_is_told_how_to_name_one(tmp_path):
    """An SAELens cfg.json without hook_name imports with no store hook: compare --store refused it with no
    way on; 'actdict import --hook' is the one."""
    from actdict.analyze.inputs import AnalyzeError

    da, db = _pair(tmp_path, np.arange(K))
    save(db, load(db)[0], {})  # as an import of an SAE that names no hook records it
    with pytest.raises(AnalyzeError, match=r"b records no store hook: it cannot be read from a store \(an "
                                           r"import: 'actdict import --overwrite --hook HOOK' names it\)$"):
        pair.compare(da, db, store=str(tmp_path / "store"))
    for x, y in ((da, db), (db, da)):  # without --store: the note, no KeyError traceback (either side)
        assert pair.compare(x, y)["notes"][0] == ("no co-activation: a dictionary records no store it was "
                                                  "trained on (an import?): name one with --store")


def test_a_store_harvested_again_at_the_recorded_path_is_noted_and_still_counted(tmp_path):
    """Another harvest written over the store both learned: co-activation is counted on its rows (both read
    the same ones) with a note per side naming what changed; the store they learned gives no note."""
    da, db = _pair(tmp_path, np.arange(K))
    assert not [n for n in pair.compare(da, db)["notes"] if "is not the one" in n]
    import shutil
    shutil.rmtree(tmp_path / "store")
    _store(tmp_path / "store", config_hash="harvest-2")
    out = pair.compare(da, db)
    notes = [n for n in out["notes"] if "is not the one" in n]
    assert len(notes) == 2 and out["cofire"]["a_in_b"]["mean_jaccard"] == 1.0
    assert "blocks.0.h is not the one A learned (store.config_hash: 'harvest-1' -> 'harvest-2')" in notes[0]
    assert "hook blocks.1.h is not the one B learned" in notes[1] and "max_tokens" in notes[1]


def test_rows_limit_dead_features_and_other_widths(tmp_path):
    """--rows bounds the rows counted (both hooks cut alike); a dead feature is not live; two widths compare
    no directions, saying so."""
    da, db = _pair(tmp_path, np.arange(K))
    b = load(db)[0]
    with torch.no_grad():
        b.encoder.bias[4] = -1e6  # feature 4 of B never fires
    save(db, b, _record(tmp_path / "store", "blocks.1.h", [2, 3]) | {"config_hash": "dict-b"})
    out = pair.compare(da, db, limit=40, batch=16)
    assert out["cofire"]["rows"] == 40 and out["cofire"]["chunks"] == [2, 3]
    from actdict.analyze.metrics import active_mask
    from actdict.harvest.store import open_store

    st = open_store(str(tmp_path / "store"), "blocks.0.h")
    x = torch.as_tensor(np.concatenate([st.read_chunk(c).acts for c in (2, 3)])[:40])  # the first 40 held out
    with torch.no_grad():
        want = active_mask(load(da)[0].eval()(x, sample=False).activity, "high").sum(0)  # [K]
    assert out["a"]["fires"] == want.tolist()
    assert sum(out["a"]["fires"]) < sum(pair.compare(da, db)["a"]["fires"])  # every held-out row: more
    live_b = sum(f > 0 for f in out["b"]["fires"])
    assert out["b"]["fires"][4] == 0 and out["cofire"]["b_in_a"]["live"] == live_b < K
    other = make("sae_l1", D + 1, K, seed=3)
    save(tmp_path / "rc" / "dicts" / "c", other, {"store": {"path": "elsewhere", "hook": "h", "rows": 5,
                                                            "d": D + 1, "config_hash": "x"}})
    out = pair.compare(da, str(tmp_path / "rc" / "dicts" / "c"))
    assert out["directions"] is None and f"no decoder directions compared: d {D} and {D + 1}" in out["notes"]


def test_a_dictionary_without_a_recorded_hook_is_named_without_none():
    """compare's first lines said 'b (v, k 4, None)' of a dictionary whose cfg.json records no hook (an
    import, an older checkpoint): Python's None, where the line names the hook."""
    out = {"a": {"path": "r/dicts/a", "variant": "v", "k": 4, "hook": "h"},
           "b": {"path": "r/dicts/b", "variant": "v", "k": 4, "hook": None},
           "cofire": None, "directions": None, "notes": []}
    assert pair.report_lines(out, 3, ({}, {}))[:2] == ["compare: A = r/dicts/a: a (v, k 4, h)",
                                                      "compare: B = r/dicts/b: b (v, k 4, hook not recorded)"]


def test_a_side_keeps_real_partners_and_matches_at_one_half():
    """side(): partners -1 are left out of each feature's list; a best Jaccard of exactly 0.5 is matched."""
    counts = torch.tensor([[2, 0], [0, 0]], dtype=torch.int32)  # A0 and B0 share 2 rows
    fa, fb = torch.tensor([2, 3]), torch.tensor([4, 1])  # J(A0, B0) = 2 / (2 + 4 - 2) = 0.5
    summary, per = pair.side(counts, fa, fb, 2)
    assert per == [[[0, 0.5, 2]], []]
    assert summary == {"mean_jaccard": 0.25, "matched": 0.5, "live": 2}  # A1 fires with nothing: 0


def test_the_table_lists_the_most_active_live_features_first():
    """A's live features by fires, most first (dead ones left out), each count with thousands separators
    as analyze and actdict feature write them (it read 4691 beside their 20,480)."""
    out = {"a": {"path": "r/dicts/a", "variant": "v", "k": 4, "hook": "h", "fires": [3, 0, 12345, 3],
                 "cofire": [[[1, 0.5, 2]], [], [[0, 1.0, 9]], [[2, 0.25, 1]]]},
           "b": {"path": "r/dicts/b", "variant": "v", "k": 4, "hook": "h"},
           "cofire": {"rows": 10, "a_in_b": {}, "b_in_a": {}}, "directions": None, "notes": []}
    rows = [line.split() for line in pair.report_lines(out, 3, ({}, {})) if line.lstrip().startswith("#")]
    assert [r[:4] for r in rows] == [["#2", "12,345", "#0", "1.000"], ["#0", "3", "#1", "0.500"],
                                     ["#3", "3", "#2", "0.250"]]  # dead #1 not listed
    assert len(pair.report_lines(out, 9, ({}, {}))) == len(pair.report_lines(out, 3, ({}, {})))
    out["a"]["fires"][2] = 12345678  # --rows of millions: the column widens, its heading over the counts
    head, first = [line for line in pair.report_lines(out, 3, ({}, {})) if line.lstrip()[:1] in "A#"][:2]
    assert head.index("fires") + len("fires") == first.index("12,345,678") + len("12,345,678")


def test_one_note_for_both_sides_on_one_changed_hook_and_none_of_growth_for_vectors(tmp_path):
    """A compared with itself (or B on A's hook) over a store harvested again: one note for both, not two
    alike; a store of vectors (no harvest config_hash) does not grow, and its note says nothing of it."""
    import shutil

    da, _ = _pair(tmp_path, np.arange(K))
    shutil.rmtree(tmp_path / "store")
    _store(tmp_path / "store", config_hash="harvest-2")
    notes = [n for n in pair.compare(da, da)["notes"] if "is not the one" in n]
    assert len(notes) == 1 and "is not the one A and B learned" in notes[0] and "max_tokens" in notes[0]
    rec = _record(tmp_path / "store", "blocks.0.h", [2, 3])
    rec["store"] = {k: v for k, v in rec["store"].items() if k != "config_hash"} | {"content": "old-digest"}
    save(da, load(da)[0], rec)  # as a vectors import records its store: the rows' digest
    notes = [n for n in pair.compare(da, da, store=str(tmp_path / "store"))["notes"] if "is not the one" in n]
    assert len(notes) == 1 and "max_tokens" not in notes[0] and notes[0].endswith("rows A and B learned")


def _harvest(path, hook, config_hash, ctx=16, tokens=None, d=D, scale=1.0, source="f1", rows=N,
             max_tokens=None):
    """A store at ``path`` holding ``hook`` of a harvest (its manifest's ``harvest`` config names its hooks:
    two such stores of one corpus differ in config_hash, and hold the same rows), of its first ``rows``
    rows (its max_tokens, unless the source ended before ``max_tokens``)."""
    x = np.random.default_rng(0).standard_normal((N, D)).astype(np.float32)[:rows, :d] * scale
    harvest = {"mode": "tokens", "model": "m", "hooks": [hook], "ctx": ctx, "max_tokens": max_tokens or rows}
    extra = {"hook": hook, "config_hash": config_hash, "harvest": harvest, "source_fingerprint": source}
    tokens = np.arange(N) if tokens is None else tokens
    with StoreWriter(str(path), extra, d, "float32", 64, 32) as w:
        w.append(x, tokens[:rows], np.arange(rows) // 16, np.arange(rows) % 16)


def test_a_later_layer_in_a_store_of_its_own_is_counted_row_for_row(tmp_path, capsys):
    """docs/harvest.md advises a later layer its own store: the same rows, another config_hash (its hooks),
    and compare said 'no co-activation: they were trained on different stores (config_hash differ)'."""
    perm = np.random.default_rng(1).permutation(K)
    da, db = _pair(tmp_path, perm)
    other = np.arange(N)[::-1]  # other tokens
    for name, hook, ctx, tokens in (("s0", "blocks.0.h", 16, None), ("s1", "blocks.1.h", 16, None),
                                    ("s2", "blocks.1.h", 8, None), ("s3", "blocks.1.h", 16, other),
                                    ("s4", "blocks.1.h", 16, None)):
        _harvest(tmp_path / name, hook, f"harvest-{name}", ctx, tokens, scale=1.0 if name == "s0" else 2.0,
                 source="f2" if name == "s4" else "f1")  # s4: its source files changed since
    ma, ra = load(da)
    mb, rb = load(db)
    save(da, ma, {**ra, "store": ra["store"] | {"path": str(tmp_path / "s0"), "config_hash": "harvest-s0"}})
    for name in ("s1", "s2", "s3", "s4"):
        save(db, mb, {**rb, "store": rb["store"] | {"path": str(tmp_path / name),
                                                    "config_hash": f"harvest-{name}"}})
        if name == "s3":  # claims one harvest's rows, holds others: refused, not counted
            with pytest.raises(pair.AnalyzeError, match=r"the rows of A's and B's stores differ in chunk 2 "):
                pair.compare(da, db, n=2)
            continue
        out = pair.compare(da, db, n=2)
        if name in ("s2", "s4"):  # another ctx, another source: other rows
            assert out["cofire"] is None and out["notes"] == [
                "no co-activation: they were trained on different stores (config_hash differ)"]
            continue
        co = out["cofire"]
        assert (co["store"], co["store_b"]) == (str(tmp_path / "s0"), str(tmp_path / "s1"))
        assert out["cofire"]["a_in_b"]["matched"] == 1.0 and out["cofire"]["rows"] == 64
        live = [i for i in range(K) if out["a"]["fires"][i] > 0]
        assert live and all(out["a"]["cofire"][i][0][:2] == [perm[i], 1.0] for i in live)
    save(db, mb, {**rb, "store": rb["store"] | {"path": str(tmp_path / "s0"), "hook": "blocks.0.h",
                                                "config_hash": "harvest-old"}})
    assert pair.compare(da, db, n=2)["notes"][0] == (  # one path, two harvests: the store was made again
        "no co-activation: they were trained on different stores (config_hash differ)")


def test_two_hooks_of_one_store_of_other_widths_are_counted(tmp_path):
    """A residual hook (d 6) and a narrower one (d 4) of one harvest: compare said 'different stores (d
    differ)'; the rows are one, so co-activation is counted, and no directions compared."""
    _harvest(tmp_path / "s", "blocks.0.h", "harvest-1")
    _harvest(tmp_path / "s", "blocks.0.mlp", "harvest-1", d=4)
    store = {"path": str(tmp_path / "s"), "rows": N, "config_hash": "harvest-1"}
    for name, d, hook in (("a", D, "blocks.0.h"), ("b", 4, "blocks.0.mlp")):
        save(tmp_path / name, make("sae_l1", d, K, seed=d),
             {"test_chunks": [2, 3], "store": store | {"hook": hook, "d": d}})
    out = pair.compare(str(tmp_path / "a"), str(tmp_path / "b"), n=2)
    assert out["cofire"]["rows"] == 64 and out["directions"] is None
    assert out["notes"] == ["no decoder directions compared: d 6 and 4"]


@pytest.mark.parametrize("bad", [["--max-mib", "-1"], ["--max-mib", "nan"], ["--rows", "0"], ["--top", "-1"]])
def test_a_bad_number_on_the_command_line_is_a_usage_error(capsys, bad):
    """--max-mib -1 (or nan) was taken: a note that the counts 'would pass --max-mib -1', or, nan, the counts
    made whatever their size; now a usage error, as --rows 0 is (before any dictionary is read)."""
    from actdict.analyze.pair import main

    with pytest.raises(SystemExit) as e:
        main(["runs/none/dicts/a", "runs/none/dicts/b", *bad])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith("--rows and --partners must be >= 1, --top and "
                                                             "--max-mib >= 0")


def test_a_later_layer_in_a_store_of_its_own_recorded_relative_to_another_folder_is_named(tmp_path,
                                                                                           monkeypatch):
    """Two stores of one harvest recorded as relative paths, compared from another folder: neither opens,
    and the note said only 'trained on different stores (config_hash differ)', of twins it counts where
    they were trained."""
    da, db = _pair(tmp_path, np.arange(K))
    monkeypatch.chdir(tmp_path)
    for name, hook in (("s0", "blocks.0.h"), ("s1", "blocks.1.h")):
        _harvest(tmp_path / name, hook, f"harvest-{name}", scale=1.0 if name == "s0" else 2.0)
    for d, name in ((da, "s0"), (db, "s1")):
        m, r = load(d)
        save(d, m, {**r, "store": r["store"] | {"path": name, "config_hash": f"harvest-{name}"}})
    assert pair.compare(da, db, n=2)["cofire"]["rows"] == 64  # where they were trained: counted
    monkeypatch.chdir(tmp_path / "ra")  # from elsewhere: found above the run folders (storepath.located)
    out = pair.compare(da, db, n=2)
    assert out["cofire"]["rows"] == 64 and out["cofire"]["store"] == str(tmp_path / "s0")
    assert out["notes"][0] == (f"the store s0 (cfg.json: relative to the folder the training ran in) is not "
                               f"in this folder: read from {tmp_path / 's0'}")
    (tmp_path / "x").mkdir()
    for name in ("s0", "s1"):  # in a folder that is not above the run folders: not found from elsewhere
        (tmp_path / name).rename(tmp_path / "x" / name)
    out = pair.compare(da, db, n=2)
    assert out["cofire"] is None and out["notes"][0] == (
        "no co-activation: they were trained on different stores (config_hash differ); A's store s0 does not "
        "open from this folder (nor from its run folder or above), so whether the two hold one harvest's "
        "rows (a later layer in a store of its own) is not known: run actdict compare from the folder they "
        "were trained in")


def test_a_layer_added_to_the_store_is_counted_row_for_row(tmp_path):
    """Two hooks of one store whose manifests record two configs of one harvest but for their hooks (a layer
    added later, harvest/added.py): compare said 'trained on different stores (config_hash differ)'; their
    rows are one harvest's, and the co-activation is counted (each row's token checked as it is read)."""
    perm = np.random.default_rng(1).permutation(K)
    da, db = _pair(tmp_path, perm)
    _harvest(tmp_path / "s", "blocks.0.h", "harvest-first")
    _harvest(tmp_path / "s", "blocks.1.h", "harvest-added", scale=2.0)
    for d, hook, chash in ((da, "blocks.0.h", "harvest-first"), (db, "blocks.1.h", "harvest-added")):
        m, r = load(d)
        held = {"path": str(tmp_path / "s"), "hook": hook, "config_hash": chash}
        save(d, m, {**r, "store": r["store"] | held})
    out = pair.compare(da, db, n=2)
    assert out["notes"] == [] and out["cofire"]["store"] == str(tmp_path / "s")
    assert "store_b" not in out["cofire"]
    assert out["cofire"]["a_in_b"]["matched"] == 1.0 and out["cofire"]["rows"] == 64
    live = [i for i in range(K) if out["a"]["fires"][i] > 0]
    assert live and all(out["a"]["cofire"][i][0][:2] == [perm[i], 1.0] for i in live)


def test_twin_stores_of_which_one_holds_more_rows_are_counted_on_the_rows_both_hold(tmp_path):
    """A later layer in a store of its own harvested with a larger max_tokens (or grown since): compare
    said 'no co-activation: they were trained on different stores', though the first rows of the larger
    are the rows of the smaller; they are counted on those (held out by both), and the note says so."""
    perm = np.random.default_rng(1).permutation(K)
    da, db = _pair(tmp_path, perm)
    _harvest(tmp_path / "s0", "blocks.0.h", "harvest-s0")  # 128 rows: chunks of 32
    _harvest(tmp_path / "s1", "blocks.1.h", "harvest-s1", scale=2.0, rows=80)  # 64 + 16 rows: chunks 0..2
    _harvest(tmp_path / "s2", "blocks.1.h", "harvest-s2", scale=2.0, rows=80, ctx=8)  # other rows
    _harvest(tmp_path / "s3", "blocks.1.h", "harvest-s3", scale=2.0, max_tokens=500)  # the source ended
    ma, ra = load(da)
    mb, rb = load(db)
    save(da, ma, {**ra, "store": ra["store"] | {"path": str(tmp_path / "s0"), "config_hash": "harvest-s0"}})
    for name in ("s1", "s2", "s3"):
        rows = 128 if name == "s3" else 80
        save(db, mb, {**rb, "test_chunks": [1, 2], "store": rb["store"] | {
            "path": str(tmp_path / name), "rows": rows, "config_hash": f"harvest-{name}"}})
        out = pair.compare(da, db, n=2)
        if name == "s3":  # as many rows: all of them, as twins of one max_tokens
            assert out["notes"] == [] and out["cofire"]["rows"] == 32 and out["cofire"]["chunks"] == [2]
            continue
        if name == "s2":
            assert out["cofire"] is None and out["notes"] == [
                "no co-activation: they were trained on different stores (config_hash, rows differ)"]
            continue
        assert out["notes"] == [
            f"A's store {tmp_path / 's0'} holds 128 rows and B's {tmp_path / 's1'} 80 (one harvest, with a "
            "larger max_tokens or grown since): co-activation counted on the first 80, the rows both hold, "
            "each row's token checked"]
        co = out["cofire"]
        assert co["chunks"] == [2] and co["rows"] == 16  # chunk 2: rows 64..79, A's held out and B's
        assert co["a_in_b"]["matched"] == 1.0 and co["b_in_a"]["matched"] == 1.0
        live = [i for i in range(K) if out["a"]["fires"][i] > 0]
        assert live and all(out["a"]["cofire"][i][0][:2] == [perm[i], 1.0] for i in live)


def test_two_trainings_on_one_store_that_grew_between_them_are_counted_on_the_rows_both_learned(tmp_path):
    """A trained on a store of 80 rows, B on the same path and hook after it grew to 128 (a larger
    harvest.max_tokens): compare said 'no co-activation: they were trained on different stores (config_hash,
    rows differ)'. A's record is the store's config but for max_tokens (its hash recomputed) and its first
    rows: counted on the first 80, in the chunks both held out (A's chunk 2 was 16 rows, now 32)."""
    import hashlib

    from actdict.analyze.metrics import active_mask
    from actdict.harvest.store import open_store

    def data_hash(harvest):  # as config_hash hashes a harvest config
        return hashlib.sha256(json.dumps(harvest, sort_keys=True).encode()).hexdigest()[:16]

    hook, perm = "blocks.0.h", np.random.default_rng(1).permutation(K)
    config = {"mode": "tokens", "model": "m", "hooks": [hook], "ctx": 16}
    now, was = (data_hash(config | {"max_tokens": n}) for n in (N, 80))
    _harvest(tmp_path / "s", hook, now)  # the store as it is now: 128 rows, chunks of 32
    a = make("sae_l1", D, K, seed=3)
    b = make("sae_l1", D, K, seed=3)  # A's features in another order
    with torch.no_grad():
        b.encoder.weight.copy_(a.encoder.weight[np.argsort(perm)])
        b.encoder.bias.copy_(a.encoder.bias[np.argsort(perm)])
        b.decoder.weight.copy_(a.decoder.weight[:, np.argsort(perm)])
    store = {"path": str(tmp_path / "s"), "hook": hook, "d": D, "source_fingerprint": "f1"}
    da, db = str(tmp_path / "ra" / "dicts" / "a"), str(tmp_path / "rb" / "dicts" / "b")
    earlier = {"config_hash": "dict-a", "test_chunks": [2], "store": store | {"rows": 80, "config_hash": was}}
    save(da, a, earlier)  # A's split of 3 chunks (its last of 16 rows), B's of 4
    later = {"config_hash": "dict-b", "test_chunks": [2, 3], "store": store | {"rows": N, "config_hash": now}}
    save(db, b, later)
    for x, y, rows in ((da, db, (80, N)), (db, da, (N, 80))):  # either side the earlier
        out = pair.compare(x, y, n=2)
        assert out["notes"] == [
            f"the store {tmp_path / 's'} hook {hook} grew between the two trainings (A learned {rows[0]:,} "
            f"rows, B {rows[1]:,}, it holds {N}: a larger harvest.max_tokens keeps the first rows): "
            "co-activation counted on the first 80, the rows both learned"]
        co = out["cofire"]
        assert co["chunks"] == [2] and co["rows"] == 16  # rows 64..79: held out by both, not 80..95
        assert co["a_in_b"]["matched"] == 1.0 and co["b_in_a"]["matched"] == 1.0
    x = torch.as_tensor(open_store(str(tmp_path / "s"), hook).read_rows(64, 80).acts)
    with torch.no_grad():
        want = active_mask(a.eval()(x, sample=False).activity, "high").sum(0)  # [K]
    out = pair.compare(da, db, n=2)
    assert out["a"]["fires"] == want.tolist() and sum(want) > 0
    live = [i for i in range(K) if want[i] > 0]
    assert all(out["a"]["cofire"][i][0][:2] == [perm[i], 1.0] for i in live)

    for change, differ in (({"config_hash": data_hash(config | {"ctx": 8, "max_tokens": 80})}, ""),  # ctx
                           ({"source_fingerprint": "f2"}, ", source_fingerprint"),  # other files
                           ({"rows": 81}, "")):  # more rows than its max_tokens
        save(da, a, earlier | {"store": earlier["store"] | change})
        out = pair.compare(da, db, n=2)
        assert out["cofire"] is None and out["notes"] == [
            f"no co-activation: they were trained on different stores (config_hash, rows{differ} differ)"]
