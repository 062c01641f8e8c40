"""The walking pipeline end to end through the command line: harvest (MiniLM, offline Debian corpus) ->
train (VAEase + SAE-l1) -> analyze, on a few thousand real activations; plus the CLI's error contract."""

import json
from pathlib import Path

import numpy as np
import pytest

from actdict.analyze.tables import summary_lines
from actdict.cli import main
from actdict.harvest.store import open_store
from actdict.harvest.tokens import token_decoder

HOOK = "blocks.3.hook_resid_post"


def _write_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(f"""
run_dir: {tmp_path / 'run'}
seed: 0
harvest:
  model: all-MiniLM-L6-v2
  hooks: [{HOOK}]
  source: {{kind: debian, shuffle_buffer: 4096}}
  ctx: 64
  batch_size: 16
  max_tokens: 6144
  dtype: float32
  shard_rows: 2048
  chunk_rows: 512
train:
  epochs: 3
  batch_size: 256
  test_fraction: 0.25
  dicts:
    - {{name: vaease, variant: vaease, k: 64, params: {{loggamma_init: -3}}}}
    - {{name: sae_l1, variant: sae_l1, k: 64}}
analyze:
  n_features: 5
  top_k: 3
  context: 4
""")
    return cfg


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("pipeline")
    assert main(["run", str(_write_config(tmp_path))]) == 0
    return tmp_path / "run"


def test_store_manifest_and_rows(run):
    store = open_store(str(run / "store"), HOOK)
    m = store.manifest
    assert len(store) == 6144 and store.d == 384 and store.num_shards == 3 and store.num_chunks == 12
    for key in ("model", "revision", "hook", "dtype", "d", "numerics", "tokenizer", "corpus", "config_hash"):
        assert key in m, key
    assert m["hook"] == HOOK and m["d"] == 384
    record = json.loads((run / "dicts" / "sae_l1" / "cfg.json").read_text())["store"]  # what trained it
    assert (record["model"], record["hook"], record["rows"], record["d"]) == (m["model"], HOOK, 6144, 384)
    rows = store.read_rows(0, len(store))
    assert np.isfinite(rows.acts).all() and (rows.token_ids >= 0).all()
    # positions count up inside each document; documents only move forward
    assert (np.diff(rows.doc) >= 0).all()
    same = np.diff(rows.doc) == 0
    assert (np.diff(rows.pos)[same] > 0).all()


def test_summary_numbers_and_top_tokens(run):
    s = json.loads((run / "summary.json").read_text())
    split = json.loads((run / "split.json").read_text())
    assert s["n_test_rows"] == 512 * len(split["test_chunks"]) == 1536
    store = open_store(str(run / "store"), HOOK)
    decode = token_decoder(store.manifest)
    for name, k in (("vaease", 64), ("sae_l1", 64)):
        m = s["models"][name]
        assert 0 < m["re_det"] < float("inf") and 0 < m["re_sample"]
        assert 0 <= m["ad"] <= k and 0 <= m["dead"] <= k
        assert m["ev"] == pytest.approx(1 - m["fvu"], abs=1e-5) and m["ev"] > 0
        assert sum(m["ad_hist"]["counts"]) == s["n_test_rows"]
        assert 1 <= len(m["features"]) <= 5
        for f in m["features"]:
            acts = [h["act"] for h in f["top"]]
            assert acts == sorted(acts, reverse=True) and len(acts) <= 3
            for h in f["top"]:
                row = store.read_rows(h["row"], h["row"] + 1)
                assert row.doc[0] == h["doc"] and row.pos[0] == h["pos"] and row.token_ids[0] == h["token_id"]
                assert h["token"] == decode([h["token_id"]])[0]
                assert h["row"] // 512 in split["test_chunks"]
    html = (run / "report.html").read_text()
    assert "plotly" in html.lower() and "vaease" in html and "sae_l1" in html


def test_printed_summary_table_holds_the_summary_numbers(run):
    s = json.loads((run / "summary.json").read_text())
    lines = summary_lines(s)
    assert lines[0] == f"analyze: 1,536 held-out rows of {HOOK} (d 384)"
    assert lines[1].split() == ["model", "RE", "det", "RE", "1-sample", "AD", "L0", "EV", "dead"]
    for line, (name, m) in zip(lines[2:4], s["models"].items(), strict=True):
        cells = line.split()
        assert cells[0] == name and float(cells[1]) == pytest.approx(m["re_det"], rel=1e-3)
        assert float(cells[3]) == pytest.approx(m["ad"], abs=0.006) and cells[6] == f"{m['dead']}/64"
    sim = {(a, b): p for a, m in s["models"].items() for b, p in m["similar"].items()}
    pair = [f"{a} in {b} {sim[a, b]['mmcs']:.3f} ({sim[a, b]['matched']:.0%})"
            for a, b in (("sae_l1", "vaease"), ("vaease", "sae_l1"))]  # in summary.json's order
    head = "analyze: shared decoder directions (MMCS; share of live features within cosine 0.9): "
    assert lines[5] == head + "; ".join(pair)
    with_ce = s | {"ce": {"ce_clean": 3.0}, "models": {"x": s["models"]["sae_l1"] | {"ce_recovered": 0.8766,
                                                                                      "kl": 0.01234}}}
    lines = summary_lines(with_ce)
    assert lines[1].split()[-2:] == ["rec.", "KL"] and lines[2].split()[-2:] == ["0.877", "0.0123"]


def test_rerun_skips_harvest_and_reuses_store(run, capsys):
    cfg = run.parent / "tiny.yaml"
    before = (run / "store").stat().st_mtime_ns
    assert main(["harvest", str(cfg)]) == 0
    assert "already complete" in capsys.readouterr().out.lower()
    assert (run / "store").stat().st_mtime_ns == before


def test_cli_errors_are_one_line_with_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run_dir: x\ntrain: {epochs: 1, epoch: 2}\n")
    assert main(["train", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "unknown key(s) ['epoch']" in err and "Traceback" not in err
    nostore = tmp_path / "nostore.yaml"
    nostore.write_text(f"run_dir: {tmp_path / 'empty'}\ntrain: {{epochs: 1}}\n")
    assert main(["train", str(nostore)]) == 2
    assert "StoreError" in capsys.readouterr().err


@pytest.mark.parametrize("rank", [0, 1])
def test_cli_errors_under_torchrun_once_or_with_the_rank(tmp_path, capsys, monkeypatch, rank):
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", "2")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run_dir: x\ntrain: {epochs: 1, epoch: 2}\n")
    assert main(["train", str(bad)]) == 2  # the same on every rank: rank 0 says it
    assert ("unknown key(s) ['epoch']" in capsys.readouterr().err) == (rank == 0)
    from actdict.errors import print_error
    from actdict.harvest.store import StoreError

    assert print_error("actdict", StoreError("shard 00003 is truncated")) == 2  # may be one rank's own
    assert capsys.readouterr().err == f"actdict (rank {rank} of 2): StoreError: shard 00003 is truncated\n"
