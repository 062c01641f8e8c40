"""Crash safety: a harvest killed with SIGKILL at any moment, rerun with the same command, ends with a store
byte-identical to an uninterrupted run; the window stream resumes exactly at any window's cursor."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from actdict.harvest.plan import RowStream, shard_work, spans
from actdict.harvest.store import open_store
from actdict.harvest.windows import token_windows

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
WORDS = ("the ferry leaves at nine rain or shine owls are quiet at night a tidy kitchen makes calm cook "
         "orchard full of apples this year lighthouse keeper writes letters to his sister").split()


def write_corpus(path: Path, n_docs: int = 160, seed: int = 0) -> Path:
    """Deterministic English-like documents of 1..60 words, with a few empty ones."""
    rng = random.Random(seed)
    lines = []
    for i in range(n_docs):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 60)))
        lines.append(json.dumps({"text": "" if i % 37 == 5 else text}))
    path.write_text("\n".join(lines) + "\n")
    return path


def write_config(tmp_path: Path, store: str, corpus: Path, **harvest) -> Path:
    h = {"model": "all-MiniLM-L6-v2", "hooks": HOOKS, "source": {"kind": "files", "path": str(corpus)},
         "ctx": 16, "batch_size": 4, "max_tokens": None, "dtype": "float32", "store_dtype": "float16",
         "shard_rows": 64, "chunk_rows": 32, "device": "cpu"} | harvest
    cfg = tmp_path / "h.yaml"
    cfg.write_text(json.dumps({"run_dir": str(tmp_path / "run"), "store": store, "seed": 0, "harvest": h}))
    return cfg


def tree(root: Path) -> dict[str, bytes]:
    """Every file of a store (relative path -> bytes)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def cli(cfg: Path, *extra: str) -> subprocess.Popen:
    env = os.environ | {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "actdict.cli", "harvest", str(cfg), *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def kill_when(proc: subprocess.Popen, ready, timeout: float = 300) -> tuple[bool, str]:
    """SIGKILL ``proc`` as soon as ``ready()``; (killed, its output); killed is False when it ended first."""
    t = time.monotonic()
    killed = False
    while proc.poll() is None and time.monotonic() - t < timeout:
        if ready():
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.002)
    out, _ = proc.communicate()
    return killed, out


def n_whole(store: Path) -> int:
    return sum(1 for p in store.glob("*/shards/[0-9]*"))


def n_tmp(store: Path) -> int:
    return sum(1 for p in store.glob("*/shards/.tmp-*"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus") / "docs.jsonl")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus):
    """An uninterrupted run through the command line."""
    tmp = tmp_path_factory.mktemp("ref")
    proc = cli(write_config(tmp, str(tmp / "store"), corpus))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return tmp / "store"


def test_sigkill_then_rerun_is_byte_identical(tmp_path, reference, corpus):
    ref = tree(reference)
    n_shards = sum(1 for k in ref if k.startswith(HOOKS[0]) and k.endswith("/zarr.json")
                   and k.count("/") == 3)
    assert n_shards >= 8  # enough shards to kill between them
    store = tmp_path / "store"
    cfg = write_config(tmp_path, str(store), corpus)
    # kill 1 early, mid-shard if it can catch a temporary shard on disk; kill 2 between shards (the two
    # hooks may then differ by one shard); the last run finishes. A busy machine may let run 2 end first.
    kills = [lambda: (n_tmp(store) > 0 and n_whole(store) >= 1) or n_whole(store) >= 4,
             lambda: n_whole(store) >= n_shards + 2, lambda: False]
    outs, partial = [], None
    for ready in kills:
        tmp_left = n_tmp(store) > 0
        killed, out = kill_when(cli(cfg), ready)
        outs.append(out)
        if len(outs) > 1 and "already complete" not in out:  # a rerun resumed, and cleaned up
            assert "resuming" in out and ("removed" in out) == tmp_left, out
        if len(outs) == 1:
            assert killed, out  # the first kill landed while the harvest was running
            partial = tree(store)
    assert partial != ref and json.loads(partial[f"{HOOKS[0]}/manifest.json"])["complete"] is False
    assert "Traceback" not in "".join(outs)
    got = tree(store)
    assert sorted(got) == sorted(ref)  # same files (no .tmp-* left) ...
    assert [k for k in ref if got[k] != ref[k]] == []  # ... with the same bytes
    for h in HOOKS:
        s = open_store(str(store), h)
        s.verify()
        assert len(s) == s.manifest["n_rows"] > 0


def test_sigterm_stops_the_harvest_after_its_shard_and_says_so(tmp_path, reference, corpus):
    """SIGTERM (a scheduler's time limit) killed the harvest as Python's default does (exit -15, no word,
    the shard being written lost); it now stops as Ctrl-C does: the shard being written is finished, no
    temporary shard is left, one line says so, exit 143; the same command then finishes the store, byte
    for byte the uninterrupted one."""
    store = tmp_path / "store"
    cfg = write_config(tmp_path, str(store), corpus)
    proc = cli(cfg)
    t = time.monotonic()
    while n_whole(store) < 3 and proc.poll() is None and time.monotonic() - t < 300:
        time.sleep(0.002)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 143, out
    said, ended = out.rstrip().splitlines()[-2:]  # then actdict.runlog's last line
    assert said == "actdict: terminated (SIGTERM) (completed shards and checkpoints are kept)", out
    assert ended.startswith("actdict: harvest ended with exit status 143 after "), out
    assert "Traceback" not in out and n_tmp(store) == 0 and 3 <= n_whole(store) < n_whole(reference)
    assert cli(cfg).wait(timeout=300) == 0
    assert tree(store) == tree(reference)


def test_a_resumed_harvests_bar_counts_the_whole_shards_it_skips(tmp_path, corpus, capsys):
    """A resumed harvest's bar began at the cursor of the last whole shard before the first missing one and
    counted only the rows it computed, so it ended short (the Pythia config killed after 2 of 4 shards:
    197k/262k, 75%, then 'wrote 262,144 rows') with a to-go time that counted the skipped shard too. It now
    begins at the rows of the whole shards: here shards 0, 1 and 3 of 8 kept, 5 rewritten, ending at 100%."""
    from actdict.harvest.inspect import main as store_cli

    store = tmp_path / "store"
    cfg = write_config(tmp_path, str(store), corpus, max_tokens=512)  # 8 shards of 64 rows
    out, _ = cli(cfg).communicate(timeout=300)
    assert "512/512" in out and "100%" in out, out
    for h in HOOKS:
        for s in (2, 4, 5, 6, 7):
            shutil.rmtree(store / h / "shards" / f"{s:05d}")
    assert store_cli([str(store), "--repair"]) == 0
    capsys.readouterr()
    proc = cli(cfg)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "resuming: 3 shard(s) whole in every hook" in out, out
    bars = [line for line in out.splitlines() if line.startswith("harvest:") and "%|" in line]
    assert bars[0].startswith("harvest:  38%|") and "192/512" in bars[0]  # 3 whole shards of 64 rows
    assert bars[-1].startswith("harvest: 100%|") and "512/512" in bars[-1], out


def test_a_manifest_write_cut_short_by_a_kill_leaves_no_file_behind(reference, tmp_path):
    """SIGKILL between a manifest's temporary file and its rename (``write_atomic``: the first manifest, or
    the last one, which marks the hook complete) leaves ``.manifest.json.tmp-*`` beside it; the rerun
    removes it with the temporary shards, so that the finished store is the uninterrupted one's, file for
    file."""
    store = tmp_path / "store"
    shutil.copytree(reference, store)
    cfg = tmp_path / "h.yaml"  # the reference's harvest config, with this store
    cfg.write_text(json.dumps(json.loads((reference.parent / "h.yaml").read_text()) | {"store": str(store)}))
    for h in HOOKS:  # what a kill at the last manifest write leaves: the old manifest and the new one's temp
        m = json.loads((store / h / "manifest.json").read_text())
        unfinished = json.dumps(m | {"complete": False}, indent=2, sort_keys=True)
        (store / h / "manifest.json").write_text(unfinished)
        (store / h / ".manifest.json.tmp-0badf00d").write_text(json.dumps(m, indent=2)[:100])
    proc = cli(cfg)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "resuming" in out, out
    assert ".manifest.json.tmp-0badf00d (left by a killed" in out
    assert tree(store) == tree(reference)


def test_rerun_of_a_complete_store_changes_nothing(reference, tmp_path):
    before = tree(reference)
    proc = cli(reference.parent / "h.yaml")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "already complete" in out
    assert tree(reference) == before


def test_repair_removes_damaged_shards_and_the_harvest_writes_only_them_again(reference, tmp_path, capsys):
    from actdict.harvest.inspect import main as store_cli

    store = tmp_path / "store"
    shutil.copytree(reference, store)
    ref = tree(store)
    cfg = tmp_path / "h.yaml"  # the reference's harvest config, with this store
    cfg.write_text(json.dumps(json.loads((reference.parent / "h.yaml").read_text()) | {"store": str(store)}))
    assert store_cli([str(store), "--repair"]) == 0 and capsys.readouterr().out.count(": intact") == 2
    assert tree(store) == ref  # an intact store is left as it is
    h0, h1 = (store / h / "shards" for h in HOOKS)
    flip = h0 / "00003" / "acts" / "c" / "0" / "0"
    blob = bytearray(flip.read_bytes())
    blob[10] ^= 0x40  # one bit: same size, only a re-read sees it
    flip.write_bytes(bytes(blob))
    short = h0 / "00001" / "doc" / "c" / "1"
    short.write_bytes(short.read_bytes()[:-5])
    shutil.rmtree(h1 / "00005")
    n = json.loads((store / HOOKS[1] / "manifest.json").read_text())["n_shards"]
    shutil.copytree(h1 / "00000", h1 / f"{n:05d}")  # a shard the manifest does not list
    assert store_cli([str(store), "--verify"]) == 2
    capsys.readouterr()
    assert store_cli([str(store), "--repair"]) == 0
    out = capsys.readouterr().out
    assert f"{HOOKS[0]}: 2 shard(s) to write again (00001: truncated or damaged: doc chunk 1 has" in out
    assert "00003: its 'acts' rows 0..31 (file acts/c/0/0) fail to read (checksum mismatch))" in out
    extra = f"{n:05d}: not in the manifest (it lists {n})"
    assert f"{HOOKS[1]}: 2 shard(s) to write again (00005: missing; {extra})" in out
    assert sorted(p.name for p in h0.iterdir())[:4] == ["00000", "00002", "00004", "00005"]
    assert all(json.loads((store / h / "manifest.json").read_text())["complete"] is False for h in HOOKS)
    assert store_cli([str(store), "--hook", HOOKS[0]]) == 0  # what is readable, and what is on disk
    out = capsys.readouterr().out
    n0 = json.loads((store / HOOKS[0] / "manifest.json").read_text())["n_shards"]
    assert ", 1 shards," in out and f"{n0 - 2} whole shards on disk, shard(s) 1, 3 missing" in out
    kept = {p: p.stat().st_mtime_ns for p in (h0 / "00002").rglob("*") if p.is_file()}
    proc = cli(cfg)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "resuming" in out, out
    assert tree(store) == ref  # the store of the uninterrupted harvest, byte for byte
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # the intact shards were not written again
    (store / HOOKS[1] / "manifest.json").write_text("{")
    assert store_cli([str(store), "--repair"]) == 2  # the bad manifest stops it before anything changes
    assert "manifest.json is unreadable (JSONDecodeError" in capsys.readouterr().err
    assert {k: v for k, v in tree(store).items() if k != f"{HOOKS[1]}/manifest.json"} == {
        k: v for k, v in ref.items() if k != f"{HOOKS[1]}/manifest.json"}


# ---------------------------------------------------------------------------------- pure stream functions


@pytest.mark.parametrize("mode", ["concat", "per_doc"])
@pytest.mark.parametrize("sep", [(), (7,), (7, 8)])
def test_windows_resume_exactly_at_any_window(mode, sep):
    rng = np.random.default_rng(3)
    docs = [list(rng.integers(10, 99, rng.integers(0, 23))) for _ in range(30)]  # some empty
    kw = {"ctx": 7, "mode": mode, "prefix": (1,), "suffix": (2,), "sep": sep, "pad_id": 0}
    full = list(token_windows(docs, **kw))
    assert len(full) > 20
    for k, w in enumerate(full):
        doc, off = w.start
        again = list(token_windows(docs[doc:], start=w.start, **kw))
        assert len(again) == len(full) - k
        for a, b in zip(again, full[k:], strict=True):
            for f in ("tokens", "doc", "pos", "keep"):
                np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
            assert a.start == b.start
        # the cursor names the first body token: a document token, or a separator before document doc
        assert (w.doc[1], w.pos[1]) == (doc, off) if off >= 0 else (w.doc[1] == -1 and w.tokens[1] in sep)


def test_shards_hold_consecutive_rows_and_split_by_rank():
    rng = np.random.default_rng(0)
    docs = [list(rng.integers(10, 99, rng.integers(1, 40))) for _ in range(40)]
    windows = list(token_windows(docs, ctx=9, prefix=(1,), suffix=(2,), sep=(3,)))

    def stream():
        return RowStream(windows, lambda w: np.flatnonzero(w.keep & (w.tokens % 5 != 0)), limit=300)

    def rows(work):  # (window index, position) of each row of a shard
        return [(it.index, int(p)) for it, a, b in work.pieces for p in it.rows[a:b]]

    one = {w.index: rows(w) for w in shard_work(stream(), 16, lambda s: True)}
    every = [(it.index, int(p)) for it in stream() for p in it.rows]
    assert len(every) == 300 and [r for s in sorted(one) for r in one[s]] == every
    assert all(len(v) == 16 for s, v in one.items() if s < max(one))
    for world in (2, 3):  # the ranks together write every shard once, each as one process would
        parts = [{w.index: rows(w) for w in shard_work(stream(), 16, lambda s, r=r, n=world: s % n == r)}
                 for r in range(world)]
        assert sorted(k for p in parts for k in p) == sorted(one)
        assert all(p[k] == one[k] for p in parts for k in p)
    assert spans(10, 40, 16) == [(0, 0, 6), (1, 6, 22), (2, 22, 30)] and spans(5, 5, 16) == []
    # rows ending exactly at a shard boundary touch no further shard (not even with an empty piece)
    assert spans(0, 32, 16) == [(0, 0, 16), (1, 16, 32)] and spans(20, 32, 16) == [(1, 0, 12)]


def test_row_stream_stops_at_a_limit_inside_a_window():
    """max_tokens falling inside a window: exactly that many rows, and the stream reads only one window past
    it (a small max_tokens on a large corpus ends at once instead of tokenizing all of it)."""
    seen = []

    def windows():
        for w in token_windows(([10 + i] * 5 for i in range(1000)), ctx=4, prefix=(1,)):
            seen.append(w)
            yield w

    stream = RowStream(windows(), lambda w: np.flatnonzero(w.keep), limit=7)  # 3 rows per window
    items = list(stream)
    assert [len(it.rows) for it in items] == [3, 3, 1] and [it.row for it in items] == [0, 3, 6]
    assert stream.end_row == 7 and len(seen) == 4


def test_a_shard_cursor_inside_a_separator_resumes_the_same_windows():
    """A shard whose first window begins inside the separator between two documents records a negative
    offset; resuming there gives the windows of the uninterrupted stream, separator included."""
    docs = [[11, 12, 13], [21, 22, 23, 24], [31, 32, 33, 34, 35]]
    kw = {"ctx": 4, "prefix": (1,), "sep": (7, 8)}  # stream 11 12 13 7 8 21 22 23 24 7 8 31 ..: bodies of 3
    full = list(token_windows(docs, **kw))
    cursors = [it.cursor for it in RowStream(full, lambda w: np.flatnonzero(w.keep))]
    inside = [c for c in cursors if c["offset"] < 0]
    assert [c["offset"] for c in inside] == [-2, -2]
    for c in inside:
        again = list(token_windows(docs[c["doc"]:], start=(c["doc"], c["offset"]), **kw))
        assert [w.tokens.tolist() for w in again] == [w.tokens.tolist() for w in full[c["window"]:]]
        assert again[0].tokens.tolist()[:3] == [1, 7, 8]


def test_finish_refuses_shards_whose_rows_disagree_with_the_stream(tmp_path):
    """The last step of a harvest marks the hook complete only when its shards hold the stream's rows."""
    from actdict.harvest.resume import HarvestError, finish
    from actdict.harvest.store import write_vectors

    s = write_vectors(str(tmp_path / "s"), np.zeros((45, 2), np.float32), shard_rows=16, chunk_rows=8)
    manifest = s.manifest | {"complete": False}
    with pytest.raises(HarvestError, match="shards hold 45 rows, the stream had 44"):
        finish(str(tmp_path / "s"), "vectors", manifest, 44, 16)  # the same 3 shards, one row fewer
    with pytest.raises(HarvestError, match=r"shards \[3\] are missing"):
        finish(str(tmp_path / "s"), "vectors", manifest, 49, 16)
    finish(str(tmp_path / "s"), "vectors", manifest, 45, 16)
    assert open_store(str(tmp_path / "s"), "vectors").manifest["complete"]


def test_resume_reads_but_does_not_tokenize_earlier_documents(corpus):
    from types import SimpleNamespace

    from actdict.config import build
    from actdict.harvest.config import HarvestConfig
    from actdict.harvest.sources import iter_documents
    from actdict.harvest.windows import model_windows

    seen = []

    def tokenizer(batch, add_special_tokens, verbose):  # a stand-in: ids from the words' lengths
        seen.extend(batch)
        return {"input_ids": [[10 + len(w) for w in t.split()] for t in batch]}

    lm = SimpleNamespace(kind="causal", bos_id=0, eos_id=1, pad_id=None, cls_id=None, sep_id=None,
                         name="fake", n_ctx=64, n_vocab=100, tokenizer=tokenizer)
    cfg = build(HarvestConfig, {"source": {"kind": "files", "path": str(corpus)}, "ctx": 16})
    full = list(model_windows(lm, cfg))
    docs = list(iter_documents(cfg.source))
    w = full[len(full) // 2]
    assert w.start[0] > 50
    seen.clear()
    again = list(model_windows(lm, cfg, w.start))
    assert seen == docs[w.start[0]:]  # the documents before the cursor were never tokenized
    assert [a.tokens.tolist() for a in again] == [b.tokens.tolist() for b in full[len(full) // 2:]]


@pytest.mark.parametrize("new, grows", [(51, True), (None, True), (50, False), (49, None), (1, None)])
def test_only_a_larger_max_tokens_grows_a_complete_store(new, grows):
    """growable: a complete store of the same config grows to a larger max_tokens (or to the whole source);
    the same max_tokens is not growth; any smaller one is refused (the store already holds more rows)."""
    from actdict.config import build
    from actdict.harvest.config import HarvestConfig
    from actdict.harvest.layout import FORMAT_VERSION
    from actdict.harvest.resume import HarvestError, growable
    from actdict.harvest.reuse import as_json

    old = as_json(build(HarvestConfig, {"max_tokens": 50}))
    manifests = {"h": {"complete": True, "format_version": FORMAT_VERSION, "harvest": old}}
    cfg = as_json(build(HarvestConfig, {"max_tokens": new}))
    if grows is None:
        with pytest.raises(HarvestError, match="smaller max_tokens"):
            growable(manifests, cfg)
    else:
        assert growable(manifests, cfg) is grows


@pytest.mark.parametrize("new, says", [(80, "would hold the same rows"), (70, "would hold the same rows"),
                                       (69, "smaller max_tokens")])
def test_a_number_at_or_above_a_whole_source_store_says_it_holds_the_same_rows(new, says):
    """A store of the whole source (max_tokens null, 70 rows) asked for max_tokens >= 70 holds exactly those
    rows already: the error says to keep null, not that the number is "smaller"; below 70 it is smaller."""
    from actdict.config import build
    from actdict.harvest.config import HarvestConfig
    from actdict.harvest.layout import FORMAT_VERSION
    from actdict.harvest.resume import HarvestError, growable
    from actdict.harvest.reuse import as_json

    old = as_json(build(HarvestConfig, {"max_tokens": None}))
    manifests = {"h": {"complete": True, "format_version": FORMAT_VERSION, "harvest": old, "n_rows": 70}}
    with pytest.raises(HarvestError, match=says):
        growable(manifests, as_json(build(HarvestConfig, {"max_tokens": new})))


def test_set_back_names_the_overrides_that_resume_or_grow_a_store_and_nothing_else():
    """An unfinished harvest resumes only with the hooks, run keys and max_tokens it began with: those that
    differ are named as overrides (JSON values: null, ["..."]); a complete store grows to a larger max_tokens
    only with its run keys; anything else that decides the rows (ctx) is no resume and no growth ('')."""
    from actdict.config import build
    from actdict.harvest.config import HarvestConfig
    from actdict.harvest.reuse import as_json, set_back

    def cfg(**kw):
        return as_json(build(HarvestConfig, {"max_tokens": 50, "batch_size": 3, "device": "cpu"} | kw))

    unfinished = {"complete": False, "harvest": cfg(hooks=["blocks.1.hook_resid_post"])}
    assert set_back(unfinished, cfg()) == """'harvest.hooks=["blocks.1.hook_resid_post"]'"""
    assert set_back(unfinished | {"harvest": cfg(max_tokens=None)}, cfg(batch_size=5)) == (
        "'harvest.batch_size=3' 'harvest.max_tokens=null'")
    assert set_back(unfinished, cfg(hooks=["blocks.1.hook_resid_post"], ctx=17)) == ""
    complete = {"complete": True, "harvest": cfg()}
    assert set_back(complete, cfg(max_tokens=60, batch_size=5)) == "'harvest.batch_size=3'"
    assert set_back(complete, cfg(max_tokens=None, device="auto")) == "'harvest.device=cpu'"
    assert set_back(complete, cfg(max_tokens=40, batch_size=5)) == ""  # smaller: not a growth
    assert set_back(complete, cfg(max_tokens=60, batch_size=5, ctx=17)) == ""  # other rows: not a growth


def test_a_store_lacking_one_of_the_hooks_is_not_complete(tmp_path):
    """complete_for: every hook the config names must be in the store, complete; a hook folder removed from
    a complete store of this config makes it incomplete (harvested again), not "already complete"."""
    from actdict.config import build
    from actdict.config_data import config_hash
    from actdict.harvest.config import HarvestConfig
    from actdict.harvest.reuse import as_json, complete_for
    from actdict.harvest.store import write_vectors

    cfg = build(HarvestConfig, {"mode": "vectors", "shard_rows": 8, "chunk_rows": 4})
    store = tmp_path / "store"
    for hook in ("a", "b"):
        write_vectors(str(store), np.ones((16, 3), np.float32), hook=hook, shard_rows=8, chunk_rows=4)
        manifest = store / hook / "manifest.json"
        manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {
            "config_hash": config_hash(cfg), "harvest": as_json(cfg)}))
    assert complete_for(str(store), ["a", "b"], cfg) and complete_for(str(store), ["a"], cfg)
    assert complete_for(str(store), ["[ab]"], cfg)  # a pattern, of this very config: complete as well
    shutil.rmtree(store / "b")
    assert complete_for(str(store), ["a"], cfg) and not complete_for(str(store), ["a", "b"], cfg)


def test_rows_view_keeps_only_what_decides_a_modes_rows():
    """rows_view: the run keys (batch size, device, the block_rows / group a mode reads with) and the keys a
    mode does not read are left out (a store differing only in them is reused); the rest is kept."""
    from actdict.config import build
    from actdict.harvest.config import HarvestConfig, rows_view
    from actdict.harvest.reuse import as_json

    def view(**kw):
        return rows_view(as_json(build(HarvestConfig, kw)))

    assert set(view(mode="vectors")) == {"mode", "vectors", "store_dtype", "shard_rows", "chunk_rows"}
    assert view(mode="vectors", vectors={"block_rows": 5}, model="m", ctx=9) == view(mode="vectors")
    assert view(mode="vectors", vectors={"key": "x"}) != view(mode="vectors")
    embeddings = view(mode="embeddings")
    assert view(mode="embeddings", ctx=9, hooks=["h"], embed={"group": 3}, batch_size=2) == embeddings
    assert view(mode="embeddings", embed={"prompt": "q: "}) != embeddings
    assert view(embed={"prompt": "q: "}, vectors={"key": "x"}, device="cpu") == view()
    assert view(ctx=9) != view() and "hooks" in view()
