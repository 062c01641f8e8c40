"""``actdict STAGE CONFIG --dry-run``: what each stage would do (the store; every dictionary of a sweep,
skipped, replaced or new; the resume state), with nothing run, written or removed."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from actdict.cli import main as cli
from actdict.harvest.store import write_vectors
from actdict.train import run as train_run


def _config(tmp_path: Path, lr: float = 0.01, extra: str = "") -> str:
    cfg = tmp_path / f"exp_{lr}.yaml"
    cfg.write_text(f"""
run_dir: {tmp_path / 'run'}
store: {tmp_path / 'store'}
seed: 3
train:
  epochs: 2
  batch_size: 32
  test_fraction: 0.25
{extra}  dicts:
    - {{name: vaease, variant: vaease, k: 8, lr: {lr}}}
    - {{name: l1, variant: sae_l1, k: 8, params: {{lam2: 0.2}}, sweep: {{params: {{lam1: [0.1, 1.0]}}}}}}
analyze:
  top_k: 2
  context: 1
""")
    return str(cfg)


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")} if root.is_dir() else {}


def _states(out: str) -> dict[str, str]:
    """The train plan's rows: name -> its state (the text under the header's 'state')."""
    lines = [line for line in out.splitlines() if line.startswith("  ")]
    at = lines[0].index(" state") + 1
    return {line.split()[0]: line[at:] for line in lines[1:]}


def test_the_plan_names_each_dictionary_of_a_sweep_and_what_training_would_do(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = _config(tmp_path)
    assert cli(["run", cfg, "--dry-run"]) == 2  # no store, and no harvest section to write it
    out = capsys.readouterr().out
    assert "train: would stop: no activation store at" in out
    assert _states(out) == {n: "not trained: the training stops"
                            for n in ("vaease", "l1_lam1-0.1", "l1_lam1-1.0")}
    assert out.splitlines()[-1] == "analyze: not run: the train above stops"  # as run stops at the training
    assert cli(["run", cfg, f"run_dir={tmp_path / 'real'}"]) == 2  # and it does
    assert "no activation store at" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()

    x = np.random.default_rng(0).standard_normal((512, 6)).astype(np.float32)
    write_vectors(str(tmp_path / "store"), x, shard_rows=128, chunk_rows=64)
    assert cli(["train", cfg, "--dry-run"]) == 0
    head, _, *rows = capsys.readouterr().out.splitlines()
    assert head == (f"train: 3 dictionaries on 384 rows of vectors (6 of 8 chunks, d 6) in "
                    f"{tmp_path / 'run'}; 2 epoch(s) of 12 steps (batch 32): 24 steps")
    assert [r.split() for r in rows] == [
        ["vaease", "vaease", "8", "0.01", "-", "new"],
        ["l1_lam1-0.1", "sae_l1", "8", "0.005", "lam1=0.1,", "lam2=0.2", "new"],
        ["l1_lam1-1.0", "sae_l1", "8", "0.005", "lam1=1.0,", "lam2=0.2", "new"]]
    assert not (tmp_path / "run").exists()  # nothing written: no run folder, no split, no lock
    assert cli(["train", cfg, "train.hook=nope", "--dry-run"]) == 2  # the store is there: training stops
    out = capsys.readouterr().out
    assert out.splitlines()[0] == (f"train: would stop: store {tmp_path / 'store'} has no hook 'nope'; valid "
                                   "hooks: ['vectors']")
    assert set(_states(out).values()) == {"not trained: the training stops"}

    assert cli(["train", cfg, "train.max_steps=20", "train.snapshot_every=8", "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith(
        "; 2 epoch(s) of 12 steps (batch 32): 20 steps (train.max_steps); a snapshot every 8 steps")
    assert cli(["train", cfg, "train.batch_size=400", "run_dir=" + str(tmp_path / "big")]) == 0
    assert ("train: note: train.batch_size=400 exceeds the train split's 384 rows: each epoch is one step of "
            "them all (2 steps in all)") in capsys.readouterr().out  # it said only 'learned almost nothing'
    assert cli(["train", cfg]) == 0
    capsys.readouterr()
    before = _files(tmp_path / "run")
    assert cli(["run", _config(tmp_path, lr=0.02), "train.epochs=2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    skipped = "finished with this config: skipped"
    assert _states(out) == {"vaease": "replaces its finished checkpoint (dict.lr: 0.01 -> 0.02)",
                            "l1_lam1-0.1": skipped, "l1_lam1-1.0": skipped}
    run = tmp_path / "run"
    assert out.splitlines()[-1] == (f"analyze: l1_lam1-0.1, l1_lam1-1.0, vaease on every held-out row -> "
                                    f"{run / 'summary.json'}, {run / 'report.html'}, {run / 'report'}/, "
                                    f"{run / 'features'}/")
    assert _files(tmp_path / "run") == before  # nothing trained, written or touched


def test_the_plan_says_whether_the_resume_state_is_continued(tmp_path, capsys, monkeypatch):
    """A run stopped after its last step, before its checkpoints, leaves its step-20 state: the same config
    continues it; another lr is another run's, which training refuses; train.resume=false starts over."""
    x = np.random.default_rng(1).standard_normal((512, 6)).astype(np.float32)
    write_vectors(str(tmp_path / "store"), x, shard_rows=128, chunk_rows=64)
    every = "  checkpoint_every: 10\n"
    cfg = _config(tmp_path, extra=every)

    def killed(*_a, **_k):
        raise KeyboardInterrupt  # after the last step, before the first checkpoint: the state stays

    monkeypatch.setattr(train_run, "save_finished", killed)
    assert cli(["train", cfg]) == 130
    monkeypatch.undo()
    state = tmp_path / "run" / "train_state.safetensors"
    assert state.is_file()
    capsys.readouterr()
    held, other = "step 20 of l1_lam1-0.1, l1_lam1-1.0, vaease", _config(tmp_path, 0.02, every)
    for argv, said in (([cfg], f"train: continues the resume state {state} at step 20"),
                       ([other], f"train: the resume state {state} ({held}) is another "
                        "run's: training stops (ResumeConflict) until its command finishes it, or "
                        "train.resume=false starts over"),
                       ([cfg, "train.resume=false"], f"train: train.resume=false: the resume state "
                        f"{state} ({held}) is not used, and this run's replaces it")):
        assert cli(["train", *argv, "--dry-run"]) == (2 if argv == [other] else 0)  # it stops on another's
        assert capsys.readouterr().out.splitlines()[-1] == said
    assert cli(["run", other, "--dry-run"]) == 2  # run goes no further than the training that stops
    assert capsys.readouterr().out.splitlines()[-1] == "analyze: not run: the train above stops"
    kept = state.read_bytes()
    assert cli(["train", cfg]) == 0  # and training does continue it
    assert "resumed at step 20" in capsys.readouterr().out
    state.write_bytes(kept)  # a kill between the last checkpoint and the state's removal: stale, removed
    more = "train.dicts.l1.sweep={params: {lam1: [0.1, 1.0, 3.0]}}"  # and one more dictionary to train
    assert cli(["train", cfg, more, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "resume state" not in out and _states(out) == {
        "vaease": "finished with this config: skipped", "l1_lam1-0.1": "finished with this config: skipped",
        "l1_lam1-1.0": "finished with this config: skipped", "l1_lam1-3.0": "new"}


@pytest.mark.parametrize("then", ["same", "grow", "other"])
def test_the_harvest_plan_reads_the_store_as_the_harvest_would(tmp_path, capsys, monkeypatch, then):
    """No store: a new one; the store of this config complete: skipped; a larger max_tokens: grown; another
    ctx: refused, as the harvest refuses it. The model is not loaded (it is not needed to decide)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    src = tmp_path / "docs"
    src.mkdir()
    (src / "a.txt").write_text("the cat sat on the mat. " * 60)
    cfg = tmp_path / "h.yaml"
    cfg.write_text(f"""
run_dir: {tmp_path / 'run'}
harvest:
  model: all-MiniLM-L6-v2
  source: {{kind: files, path: {src}}}
  ctx: 16
  max_tokens: 64
  shard_rows: 64
  chunk_rows: 16
  batch_size: 4
train:
  epochs: 1
  dicts: [{{name: a, variant: sae_topk, k: 8, params: {{topk: 2}}}}]
""")
    assert cli(["harvest", str(cfg), "--dry-run"]) == 0
    store = tmp_path / "run" / "store"
    what = f"all-MiniLM-L6-v2 hooks blocks.3.hook_resid_post on the files {src}"
    assert capsys.readouterr().out == f"harvest: a new store {store}: {what}, max_tokens 64\n"
    assert not (tmp_path / "run").exists()
    assert cli(["harvest", str(cfg)]) == 0
    capsys.readouterr()
    override = {"same": [], "grow": ["harvest.max_tokens=96"], "other": ["harvest.ctx=8"]}[then]
    assert cli(["harvest", str(cfg), *override, "--dry-run"]) == (2 if then == "other" else 0)
    out = capsys.readouterr().out
    if then == "other":
        assert out == (f"harvest: would stop: store {store} holds a harvest with another config (hook "
                       f"'blocks.3.hook_resid_post': ctx: 16 -> 8); delete {store}, or set run_dir / store "
                       "to another folder\n")
    elif then == "grow":
        assert out == f"harvest: grows store {store} to max_tokens 96: {what}, max_tokens 96\n"
    else:
        assert out.startswith(f"harvest: store {store} is already complete for this config (config hash ")
        assert out.endswith("): skipped\n")
    if then != "other":  # under run, the training is judged on the store the harvest leaves
        assert cli(["run", str(cfg), *override, "--dry-run"]) == 0
        assert capsys.readouterr().out.splitlines()[1] == (
            "train: once the harvest above has written the store; 1 epoch(s)" if then == "grow" else
            f"train: 1 dictionary on 48 rows of blocks.3.hook_resid_post (3 of 4 chunks, d 384) in "
            f"{tmp_path / 'run'}; 1 epoch(s) of 1 step (batch 2,048): 1 step")
    assert os.listdir(tmp_path / "run" / "store" / "blocks.3.hook_resid_post" / "shards") == ["00000"]
    if then == "same":  # its hook spelled as a pattern: the model decides (it skips), nothing is continued
        pattern = "harvest.hooks=['blocks.[3].hook_resid_post']"
        assert cli(["harvest", str(cfg), pattern, "--dry-run"]) == 0
        assert capsys.readouterr().out.startswith(
            f"harvest: store {store} is a complete harvest of this config with hooks "
            "blocks.3.hook_resid_post: skipped if it holds every hook blocks.[3].hook_resid_post "
            "names on all-MiniLM-L6-v2")
        assert cli(["harvest", str(cfg), pattern]) == 0
        loading, said = capsys.readouterr().out.splitlines()  # the model loaded for the pattern; its skip
        assert loading.startswith("harvest: loading the model all-MiniLM-L6-v2 ")
        assert said.startswith(f"harvest: store {store} is already complete for this")
    if then == "same":  # an unfinished harvest (a kill): continued, its whole shards kept
        manifest = store / "blocks.3.hook_resid_post" / "manifest.json"
        manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"complete": False}))
        assert cli(["run", str(cfg), "--dry-run"]) == 0
        assert capsys.readouterr().out.splitlines()[:2] == [
            f"harvest: continues the unfinished harvest in {store} (blocks.3.hook_resid_post (unfinished); "
            f"its whole shards are kept): {what}, max_tokens 64",
            "train: once the harvest above has written the store; 1 epoch(s)"]


def test_a_dry_run_piped_into_head_exits_quietly(tmp_path):
    """`actdict train CONFIG --dry-run | head -1` on a sweep of 900 (more lines than a pipe holds): the
    reader leaves early: exit 141 and nothing on stderr (a BrokenPipeError traceback, as the tools had before
    they exited 141 too)."""
    from tests.pipes import into_head

    cfg = _config(tmp_path)
    lams = ", ".join(f"{i / 1000:g}" for i in range(1, 901))
    Path(cfg).write_text(Path(cfg).read_text().replace("lam1: [0.1, 1.0]", f"lam1: [{lams}]"))
    r = into_head("train", cfg, "--dry-run")
    assert r.stdout.startswith("train: would stop: no activation store") and r.stdout.count("\n") == 1
    assert r.stderr.strip() == "rc 141"


def test_the_plan_says_the_training_stops_on_another_split_of_the_run_folder(tmp_path, capsys):
    """A finished dictionary left out of train.dicts, held out other chunks than a new seed's split: the
    training refuses the run (one split per run folder), and the plan says so instead of 'replaces'."""
    x = np.random.default_rng(0).standard_normal((512, 6)).astype(np.float32)
    write_vectors(str(tmp_path / "store"), x, shard_rows=128, chunk_rows=64)
    cfg = _config(tmp_path)
    assert cli(["train", cfg, "train.epochs=1"]) == 0
    one = ["train.dicts=[{name: vaease, variant: vaease, k: 8, lr: 0.01}]", "seed=4"]
    capsys.readouterr()
    assert cli(["train", cfg, *one, "--dry-run"]) == 2
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith(f"train: would stop: {tmp_path / 'run'} holds finished "
                                          "dictionaries ['l1_lam1-0.1', 'l1_lam1-1.0'] trained with other "
                                          "held-out chunks")
    assert _states(out) == {"vaease": "not trained: the training stops"}
    assert cli(["train", cfg, *one]) == 2  # as the training does
    assert "holds finished dictionaries ['l1_lam1-0.1', 'l1_lam1-1.0']" in capsys.readouterr().err
    assert cli(["run", cfg, *one, "--dry-run"]) == 2  # run goes no further than the training that stops
    assert capsys.readouterr().out.splitlines()[-1] == "analyze: not run: the train above stops"


def test_a_dictionary_renamed_in_case_only_stops_the_training_and_its_plan_leaving_the_other(tmp_path,
                                                                                               capsys):
    """'SAE' renamed 'sae': on macOS' case-insensitive disk dicts/sae is dicts/SAE, and the plan said the
    training 'replaces its finished checkpoint (dict.name ...)' and wrote over SAE's files; on Linux it
    made a run folder with both, which such a disk cannot hold. The plan and the training now stop on every
    platform in one line saying why and what to do; dicts/SAE is left as it was."""
    x = np.random.default_rng(0).standard_normal((512, 6)).astype(np.float32)
    write_vectors(str(tmp_path / "store"), x, shard_rows=128, chunk_rows=64)
    cfg = _config(tmp_path)
    one = "train.dicts=[{{name: {}, variant: sae_l1, k: 8, params: {{lam1: 0.1}}}}]"
    assert cli(["train", cfg, "train.epochs=1", one.format("SAE")]) == 0
    before = _files(tmp_path / "run" / "dicts")
    capsys.readouterr()
    assert cli(["train", cfg, "train.epochs=1", one.format("sae"), "--dry-run"]) == 2
    out = capsys.readouterr().out
    why = (f"train.dicts[sae]: {tmp_path / 'run' / 'dicts'} holds 'SAE', a name that differs only in case, "
           "which a case-insensitive file system (macOS', Windows' default) takes for the same folder: "
           "training 'sae' would write over the dictionary 'SAE' there. A dictionary's name is part of its "
           "training, so a rename trains it again: name it 'SAE' as before to keep it, or move "
           f"{tmp_path / 'run' / 'dicts' / 'SAE'} out of the run folder (or set run_dir) to train 'sae'")
    assert out.splitlines()[0] == f"train: would stop: {why}"
    assert _states(out) == {"sae": "not trained: the training stops"}
    assert cli(["train", cfg, "train.epochs=1", one.format("sae")]) == 2  # as the training does
    assert capsys.readouterr().err == f"actdict: config error: {why}\n"
    assert _files(tmp_path / "run" / "dicts") == before
    assert cli(["train", cfg, "train.epochs=1", one.format("SAE")]) == 0  # its own name: skipped
    assert "SAE: finished checkpoint with the same config exists, skipped" in capsys.readouterr().out


def test_the_plan_of_a_vectors_import_says_whether_it_is_skipped_imported_again_or_refused(tmp_path, capsys):
    """harvest.mode: vectors: the store of this file, unchanged: skipped; the file changed since (its
    fingerprint): imported again, and the training judged after it; another file: refused, as the import
    does (the plan said only that the import 'checks it against this config')."""
    rng = np.random.default_rng(0)
    for name in ("v1", "v2"):
        np.save(tmp_path / f"{name}.npy", rng.standard_normal((512, 6)).astype(np.float32))
    cfg = tmp_path / "v.yaml"
    cfg.write_text(f"""
run_dir: {tmp_path / 'run'}
harvest: {{mode: vectors, vectors: {{path: {tmp_path / 'v1.npy'}}}, shard_rows: 128, chunk_rows: 64}}
train:
  epochs: 1
  batch_size: 32
  dicts: [{{name: a, variant: sae_topk, k: 8, params: {{topk: 2}}}}]
""")
    assert cli(["run", str(cfg), "analyze.ce_loss=false", "analyze.logit_effects=0"]) == 0
    store = tmp_path / "run" / "store"
    capsys.readouterr()
    assert cli(["run", str(cfg), "--dry-run"]) == 0
    head, train, *_ = capsys.readouterr().out.splitlines()
    complete = f"harvest: store {store} is already complete for this config (config hash "
    assert head.startswith(complete) and head.endswith("): skipped") and train.startswith(
        "train: 1 dictionary on 448 rows")
    assert cli(["harvest", str(cfg), "harvest.vectors.path=" + str(tmp_path / "v2.npy"), "--dry-run"]) == 2
    assert capsys.readouterr().out.startswith(f"harvest: would stop: store {store} holds a harvest with "
                                              "another config (hook 'vectors': vectors.path: ")
    assert cli(["run", str(cfg), "harvest.vectors.path=" + str(tmp_path / "v2.npy"), "--dry-run"]) == 2
    assert capsys.readouterr().out.splitlines()[1:] == [  # run stops there: nothing trained or analysed
        "train: not run: the harvest above stops", "analyze: not run: the harvest above stops"]
    os.utime(tmp_path / "v1.npy", ns=(1, 1))  # the file changed since its import
    before = _files(tmp_path / "run")
    assert cli(["run", str(cfg), "--dry-run"]) == 0
    head, train, _, row, *_ = capsys.readouterr().out.splitlines()
    assert row.endswith(" to train (once the store is harvested)")
    assert head.startswith(f"harvest: writes store {store} again ({tmp_path / 'v1.npy'} changed since it was "
                           "imported: source_fingerprint ")
    assert train == "train: once the harvest above has written the store; 1 epoch(s)"
    assert _files(tmp_path / "run") == before
    assert cli(["run", str(cfg), "analyze.ce_loss=false", "analyze.logit_effects=0"]) == 0
    out = capsys.readouterr().out
    assert "changed since it was imported" in out and "its finished checkpoint will be replaced" in out


def test_the_plan_of_an_import_of_a_missing_or_unknown_vectors_file_says_it_stops(tmp_path, capsys):
    """The import stops at once on a vectors file that is not there, or of no known format; the plan said
    'a new store ...: your own vectors' and went on to the training and the analysis."""
    cfg = tmp_path / "v.yaml"
    cfg.write_text(f"""
run_dir: {tmp_path / 'run'}
harvest: {{mode: vectors, vectors: {{path: {tmp_path / 'gone.npy'}}}, shard_rows: 128, chunk_rows: 64}}
train: {{epochs: 1, dicts: [{{name: a, variant: sae_l1, k: 8}}]}}
""")
    assert cli(["run", str(cfg), "--dry-run"]) == 2
    assert capsys.readouterr().out.splitlines() == [
        f"harvest: would stop: vectors file '{tmp_path / 'gone.npy'}' does not exist",
        "train: not run: the harvest above stops", "analyze: not run: the harvest above stops"]
    assert cli(["run", str(cfg)]) == 2  # as the import does
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "v.txt").write_text("1 2 3\n")
    assert cli(["harvest", str(cfg), f"harvest.vectors.path={tmp_path / 'v.txt'}", "--dry-run"]) == 2
    assert capsys.readouterr().out.startswith(f"harvest: would stop: {tmp_path / 'v.txt'}: unknown vectors "
                                              "format '.txt'")
    assert not (tmp_path / "run").exists()


def test_the_analysis_plan_says_it_stops_on_a_store_the_dictionaries_did_not_learn(tmp_path, capsys):
    """actdict analyze --dry-run with store= another store (rewritten, or another harvest's): the analysis
    refuses it, and its plan said it would score them."""
    rng = np.random.default_rng(0)
    for name in ("store", "other"):
        write_vectors(str(tmp_path / name), rng.standard_normal((512, 6)).astype(np.float32), shard_rows=128,
                      chunk_rows=64)
    cfg = _config(tmp_path)
    assert cli(["train", cfg, "train.epochs=1"]) == 0
    capsys.readouterr()
    assert cli(["analyze", cfg, "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("analyze: l1_lam1-0.1, l1_lam1-1.0, vaease on every held-out")
    assert cli(["analyze", cfg, f"store={tmp_path / 'other'}", "--dry-run"]) == 2
    said = capsys.readouterr().out
    assert said.startswith(f"analyze: would stop: the store {tmp_path / 'other'} is not the one "
                           "['l1_lam1-0.1', 'l1_lam1-1.0', 'vaease'] learned (l1_lam1-0.1: store.content: ")
    assert cli(["analyze", cfg, f"store={tmp_path / 'other'}"]) == 2
    assert capsys.readouterr().err.split(": ", 2)[2] == said.split(": ", 2)[2]


def test_the_analysis_plan_of_a_run_folder_without_dictionaries_says_it_stops(tmp_path, capsys):
    """actdict analyze with no dictionary trained (none in <run_dir>/dicts) stops with an error (exit 2);
    its plan said 'holds no dictionary yet: nothing to analyse', as if it had nothing to do."""
    x = np.random.default_rng(0).standard_normal((512, 6)).astype(np.float32)
    write_vectors(str(tmp_path / "store"), x, shard_rows=128, chunk_rows=64)
    cfg = _config(tmp_path)
    (tmp_path / "run" / "dicts").mkdir(parents=True)
    assert cli(["analyze", cfg, "--dry-run"]) == 2
    said = capsys.readouterr().out
    assert said == (f"analyze: would stop: no trained dictionaries in {tmp_path / 'run' / 'dicts'}: run "
                    "actdict train first, or set run_dir to the run folder that holds them\n")
    (tmp_path / "run" / "split.json").write_text(json.dumps({"test_chunks": [0]}))
    assert cli(["analyze", cfg]) == 2
    assert capsys.readouterr().err.split(": ", 2)[2] == said.split(": ", 2)[2]


def test_a_dry_run_under_torchrun_says_its_plan_once(tmp_path, capsys, monkeypatch):
    """torchrun starts the command once per rank: rank 0 says the plan, as the training's rank 0 alone says
    what it does (every rank printed it: the plan twice on 2 ranks)."""
    cfg = _config(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank, lines in (("0", 6), ("1", 0)):
        monkeypatch.setenv("RANK", rank)
        assert cli(["run", cfg, "--dry-run"]) == 2
        assert len(capsys.readouterr().out.splitlines()) == lines
    monkeypatch.delenv("WORLD_SIZE")  # one process, a RANK left in its environment: it says its plan
    assert cli(["run", cfg, "--dry-run"]) == 2
    assert len(capsys.readouterr().out.splitlines()) == 6


def test_the_plan_names_the_dictionaries_whose_progress_resume_drop_drops(tmp_path, capsys, monkeypatch):
    """A run stopped at step 20, continued without two of its dictionaries (train.resume_drop): the plan
    says their progress goes, as the training says it (it said only 'continues the resume state')."""
    x = np.random.default_rng(1).standard_normal((512, 6)).astype(np.float32)
    write_vectors(str(tmp_path / "store"), x, shard_rows=128, chunk_rows=64)
    cfg = _config(tmp_path, extra="  checkpoint_every: 10\n")

    def killed(*_a, **_k):
        raise KeyboardInterrupt  # after the last step, before the first checkpoint: the state stays

    monkeypatch.setattr(train_run, "save_finished", killed)
    assert cli(["train", cfg]) == 130
    monkeypatch.undo()
    capsys.readouterr()
    one = ["train.dicts=[{name: vaease, variant: vaease, k: 8, lr: 0.01}]",
           "train.resume_drop=[l1_lam1-0.1, l1_lam1-1.0]"]
    assert cli(["train", cfg, *one, "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"train: continues the resume state {tmp_path / 'run' / 'train_state.safetensors'} at step 20 "
        "without l1_lam1-0.1, l1_lam1-1.0 (train.resume_drop): their progress in it is dropped")
    assert cli(["train", cfg, *one]) == 0
    assert ("train: resuming without l1_lam1-0.1, l1_lam1-1.0 (train.resume_drop): their progress in "
            "the resume state is dropped") in capsys.readouterr().out


def test_the_plan_of_an_embeddings_harvest_names_its_unit(tmp_path, capsys):
    """harvest.embed.unit: paragraph embeds one row per paragraph; the plan said 'one row per document'."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("One paragraph.\n\nAnother.\n")
    cfg = tmp_path / "e.yaml"
    cfg.write_text(f"""
run_dir: {tmp_path / 'run'}
harvest: {{mode: embeddings, source: {{kind: files, path: {tmp_path / 'docs'}}}, embed: {{unit: paragraph}}}}
""")
    assert cli(["harvest", str(cfg), "--dry-run"]) == 0
    assert capsys.readouterr().out == (f"harvest: a new store {tmp_path / 'run' / 'store'}: all-MiniLM-L6-v2 "
                                       f"on the files {tmp_path / 'docs'}, one row per paragraph\n")


@pytest.mark.parametrize("name, shown", [("a\x1b[2Jb", "a\\x1b[2Jb"), ("a\nb", "a\\nb")])
def test_the_plans_escape_terminal_control_codes(tmp_path, capsys, name, shown):
    """A folder name holding ESC [ 2J (clear the screen) is printed escaped by every stage's plan (the
    harvest's and the analysis' lines were printed as they were); one holding a newline is written \\n, each
    plan line one line (it split the harvest's and the analysis' lines in two, the second headed by no
    stage)."""
    odd = tmp_path / name
    odd.mkdir()
    np.save(odd / "v.npy", np.random.default_rng(0).standard_normal((512, 6)).astype(np.float32))
    cfg = tmp_path / "v.yaml"
    cfg.write_text(f"""
run_dir: {json.dumps(str(odd / 'run'))}
harvest:
  mode: vectors
  vectors: {{path: {json.dumps(str(odd / 'v.npy'))}}}
  shard_rows: 128
  chunk_rows: 64
train:
  dicts: [{{name: a, variant: sae_topk, k: 8, params: {{topk: 2}}}}]
""")
    assert cli(["run", str(cfg), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    heads = [line.split(":")[0] for line in out if not line.startswith("  ")]
    assert heads == ["harvest", "train", "analyze"]
    assert "\x1b" not in "".join(out) and all(shown in out[i] for i in (0, len(out) - 1))


def test_the_analysis_plan_says_it_stops_on_a_dictionary_analyze_dicts_names_that_is_not_there(tmp_path,
                                                                                               capsys):
    """actdict analyze with analyze.dicts naming a dictionary not trained stops (exit 2, 'dictionaries
    ['nope'] not found ...'); its plan said 'analyze: nope on every held-out row -> ...'."""
    x = np.random.default_rng(0).standard_normal((512, 6)).astype(np.float32)
    write_vectors(str(tmp_path / "store"), x, shard_rows=128, chunk_rows=64)
    cfg = _config(tmp_path)
    assert cli(["train", cfg, "train.epochs=1"]) == 0
    capsys.readouterr()
    assert cli(["analyze", cfg, "analyze.dicts=[vaease, nope]", "--dry-run"]) == 2
    said = capsys.readouterr().out
    assert said == (f"analyze: would stop: dictionaries ['nope'] not found in {tmp_path / 'run' / 'dicts'}; "
                    "available: ['l1_lam1-0.1', 'l1_lam1-1.0', 'vaease']\n")
    assert cli(["analyze", cfg, "analyze.dicts=[vaease, nope]"]) == 2
    assert capsys.readouterr().err.split(": ", 2)[2] == said.split(": ", 2)[2]
    assert cli(["analyze", cfg, "analyze.dicts=[vaease]", "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("analyze: vaease on every held-out row -> ")


@pytest.mark.parametrize("mode", ["tokens", "embeddings"])
def test_the_plan_of_a_harvest_whose_model_folder_is_gone_says_it_stops(tmp_path, capsys, mode):
    """A harvest (or embedding) of a model folder that is not there stops at once ('ModelError: model folder
    ... does not exist'); the plan said 'a new store ...' and went on to the training and the analysis."""
    (tmp_path / "docs.jsonl").write_text('{"text": "a b c"}\n')
    cfg = tmp_path / "h.yaml"
    cfg.write_text(f"""
run_dir: {tmp_path / 'run'}
harvest: {{mode: {mode}, model: {tmp_path / 'gone'}, hooks: [blocks.0.hook_resid_post],
           source: {{kind: files, path: {tmp_path / 'docs.jsonl'}}}}}
train: {{epochs: 1, dicts: [{{name: a, variant: sae_l1, k: 8}}]}}
""")
    assert cli(["run", str(cfg), "--dry-run"]) == 2
    said = capsys.readouterr().out
    assert said.splitlines() == [f"harvest: would stop: model folder '{tmp_path / 'gone'}' does not exist",
                                 "train: not run: the harvest above stops",
                                 "analyze: not run: the harvest above stops"]
    assert cli(["run", str(cfg)]) == 2  # as the harvest does
    assert capsys.readouterr().err.split(": ", 2)[2] == said.splitlines()[0].split(": ", 2)[2] + "\n"


def test_the_plan_of_a_harvest_of_a_hub_model_not_cached_offline_says_it_stops(tmp_path, capsys, monkeypatch):
    """HF_HUB_OFFLINE and a hub model not in the local cache: the harvest stops at once (ModelError), and
    the plan said 'a new store ...' and went on to the training and the analysis."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    (tmp_path / "docs.jsonl").write_text('{"text": "a b c"}\n')
    cfg = tmp_path / "h.yaml"
    cfg.write_text(f"""
run_dir: {tmp_path / 'run'}
harvest: {{model: pythia-70m-deduped, source: {{kind: files, path: {tmp_path / 'docs.jsonl'}}}}}
train: {{epochs: 1, dicts: [{{name: a, variant: sae_l1, k: 8}}]}}
""")
    assert cli(["run", str(cfg), "--dry-run"]) == 2
    said = capsys.readouterr().out.splitlines()
    assert said[0].startswith("harvest: would stop: model 'EleutherAI/pythia-70m-deduped': HF_HUB_OFFLINE is "
                              "set and it is not in the local Hugging Face cache; ")
    assert said[1:] == [f"{s}: not run: the harvest above stops" for s in ("train", "analyze")]
    assert cli(["run", str(cfg)]) == 2  # as the harvest does
    assert capsys.readouterr().err.split(": ", 2)[2] == said[0].split(": ", 2)[2] + "\n"


def test_the_plan_of_a_harvest_whose_source_cannot_be_read_says_it_stops(tmp_path, capsys, monkeypatch):
    """No files at the source's path, or a hub dataset with the hub unreachable: the harvest stops at once
    (SourceError), and the plan said 'a new store ...' and went on to the training and the analysis."""
    from actdict.harvest import sources

    cfg = tmp_path / "h.yaml"
    cfg.write_text(f"""
run_dir: {tmp_path / 'run'}
harvest: {{source: {{kind: files, path: {tmp_path / 'nothere'}}}}}
train: {{epochs: 1, dicts: [{{name: a, variant: sae_l1, k: 8}}]}}
""")
    assert cli(["run", str(cfg), "--dry-run"]) == 2
    said = capsys.readouterr().out.splitlines()
    where = tmp_path / "nothere"
    assert said[0] == f"harvest: would stop: no .json/.jsonl/.parquet/.text/.txt files at '{where}'"
    assert said[1:] == [f"{s}: not run: the harvest above stops" for s in ("train", "analyze")]

    def loaded(*a, **k):
        raise AssertionError("the model was loaded before the source was found unreadable")

    monkeypatch.setattr("actdict.harvest.run.load_model", loaded)  # the harvest asks the source first (it
    monkeypatch.setattr("actdict.harvest.embed.load_encoder", loaded)  # loaded the model, ~10 s, before)
    assert cli(["run", str(cfg)]) == 2  # as the harvest does
    assert capsys.readouterr().err.split(": ", 2)[2] == said[0].split(": ", 2)[2] + "\n"
    assert cli(["harvest", str(cfg), "harvest.mode=embeddings"]) == 2  # and the embeddings harvest
    assert capsys.readouterr().err.split(": ", 2)[2] == said[0].split(": ", 2)[2] + "\n"
    monkeypatch.setattr(sources, "hub_reachable", lambda: False)
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):  # online: the hub is probed
        monkeypatch.delenv(var, raising=False)
    hub = ["harvest.source={kind: hub, name: NeelNanda/pile-10k}"]
    assert cli(["harvest", str(cfg), *hub, "--dry-run"]) == 2
    assert capsys.readouterr().out.startswith("harvest: would stop: hub dataset 'NeelNanda/pile-10k': "
                                              "huggingface.co:443 is unreachable; point the source at")


@pytest.mark.parametrize("where", ["datasets/NeelNanda___pile-10k/default/0.0.0/abc",
                                   "hub/datasets--NeelNanda--pile-10k/snapshots",
                                   "modules/datasets_modules/datasets/NeelNanda--pile-10k"])
def test_the_plan_of_a_hub_dataset_offline_looks_for_it_in_the_caches(tmp_path, capsys, monkeypatch, where):
    """HF_DATASETS_OFFLINE and a hub dataset no cache holds: the harvest stopped ('offline mode, not in the
    local cache') and the plan said 'a new store ...'. The plan now says so in the harvest's words, both
    from the cache folders of HF_HOME (datasets not imported); a folder that may hold it (the datasets
    cache's, the hub's, the modules') leaves it to the harvest."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    for var in ("HF_DATASETS_CACHE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_MODULES_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    cfg = tmp_path / "h.yaml"
    cfg.write_text(f"""
run_dir: {tmp_path / 'run'}
harvest: {{source: {{kind: hub, name: NeelNanda/pile-10k}}, max_tokens: 64, chunk_rows: 8}}
train: {{epochs: 1, dicts: [{{name: a, variant: sae_l1, k: 8}}]}}
""")
    assert cli(["run", str(cfg), "--dry-run"]) == 2
    said = capsys.readouterr().out.splitlines()
    hf = tmp_path / "hf"
    assert said[0] == (
        "harvest: would stop: hub dataset 'NeelNanda/pile-10k' (offline mode, not in the local cache: none "
        f"of {hf}/datasets/NeelNanda___pile-10k, {hf}/modules/datasets_modules/datasets/NeelNanda--pile-10k, "
        f"{hf}/hub/datasets--NeelNanda--pile-10k exists); point the source at local files: add "
        "harvest.source.kind=files harvest.source.path=PATH to the command (a .jsonl/.json/.parquet file or "
        "folder with a `text` field, or .txt; a dataset downloaded elsewhere with `hf download NAME "
        "--repo-type dataset --local-dir PATH` is such a folder), use harvest.source.kind=debian for the "
        "offline demo corpus, or run on a machine with access to the hub or with a filled Hugging Face cache "
        "(HF_DATASETS_OFFLINE=1 then reads only the cache)")
    assert said[1:] == [f"{s}: not run: the harvest above stops" for s in ("train", "analyze")]
    assert cli(["harvest", str(cfg)]) == 2  # as the harvest does
    assert capsys.readouterr().err.split(": ", 2)[2] == said[0].split(": ", 2)[2] + "\n"
    (hf / where).mkdir(parents=True)
    assert cli(["harvest", str(cfg), "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith(f"harvest: a new store {tmp_path / 'run' / 'store'}: ")


def test_the_plan_of_hook_patterns_over_a_complete_store_whose_model_is_gone(tmp_path, capsys):
    """A complete store of hooks: [all] and another batch_size, its model folder since gone: the plan said
    'decided once the model is loaded' and the harvest stopped on the missing model; the store's manifests
    spell the same patterns, so both skip it without the model. Patterns spelled otherwise still need the
    model to expand them: the plan says the harvest stops, as it does."""
    from actdict.harvest.models import resolve_model

    (tmp_path / "model").symlink_to(resolve_model("all-MiniLM-L6-v2")[2])
    (tmp_path / "a.txt").write_text("the cat sat on the mat. " * 40)
    cfg = tmp_path / "h.yaml"
    cfg.write_text(f"""
run_dir: {tmp_path / 'run'}
harvest: {{model: {tmp_path / 'model'}, hooks: [all], source: {{kind: files, path: {tmp_path / 'a.txt'}}},
           ctx: 16, max_tokens: 32, shard_rows: 32, chunk_rows: 8, batch_size: 4}}
train: {{hook: blocks.2.hook_resid_post, epochs: 1, dicts: [{{name: a, variant: sae_l1, k: 8}}]}}
""")
    assert cli(["harvest", str(cfg)]) == 0
    (tmp_path / "model").unlink()
    capsys.readouterr()
    store = tmp_path / "run" / "store"
    assert cli(["run", str(cfg), "harvest.batch_size=8", "--dry-run"]) == 0
    said = capsys.readouterr().out.splitlines()[0]
    assert said.startswith(f"harvest: store {store} is already complete for this config (config hash ")
    assert said.endswith("; it was harvested with batch_size 4): skipped")
    assert cli(["harvest", str(cfg), "harvest.batch_size=8"]) == 0  # as the harvest does
    assert "; it was harvested with batch_size 4); skipping" in capsys.readouterr().out
    other = "harvest.hooks=['blocks.[0-5].hook_resid_post']"
    assert cli(["run", str(cfg), other, "--dry-run"]) == 2
    said = capsys.readouterr().out.splitlines()
    assert said == [f"harvest: would stop: model folder '{tmp_path / 'model'}' does not exist",
                    "train: not run: the harvest above stops", "analyze: not run: the harvest above stops"]
    assert cli(["harvest", str(cfg), other]) == 2
    assert capsys.readouterr().err.split(": ", 2)[2] == said[0].split(": ", 2)[2] + "\n"


def test_each_plan_stops_where_its_stage_cannot_write(tmp_path, capsys, read_only):
    """A store or run folder this user may not write in (chmod a-w, another user's): each stage refuses it
    before its work ('FolderNotWritable: cannot write in ...'), and its --dry-run planned the work and exited
    0; now it says 'would stop' in the stage's words, found without writing anything."""
    np.save(tmp_path / "v.npy", np.random.default_rng(0).standard_normal((256, 6)).astype(np.float32))
    cfg = tmp_path / "v.yaml"
    cfg.write_text(f"""
run_dir: {tmp_path / 'run'}
harvest: {{mode: vectors, vectors: {{path: {tmp_path / 'v.npy'}}}, shard_rows: 128, chunk_rows: 64}}
train: {{epochs: 1, batch_size: 32, dicts: [{{name: a, variant: sae_l1, k: 8}}]}}
""")
    (tmp_path / "run" / "store").mkdir(parents=True)
    read_only("run/store")

    def both(stage: str, *overrides: str) -> tuple[str, str]:
        assert cli([stage, str(cfg), *overrides, "--dry-run"]) == 2
        planned = capsys.readouterr().out.splitlines()[0]
        assert cli([stage, str(cfg), *overrides]) == 2
        return planned, capsys.readouterr().err.strip()

    planned, said = both("harvest")
    why = (f"cannot write in {tmp_path / 'run' / 'store'} (Permission denied), where the store's manifests "
           "and shards go: make it writable, or set store to another folder")
    assert planned == f"harvest: would stop: {why}" and said == f"actdict: FolderNotWritable: {why}"
    read_only("nothing")  # the store is imported and the dictionary trained; then the run folder is closed
    assert cli(["run", str(cfg)]) == 0
    read_only(str(tmp_path / "run"))
    capsys.readouterr()
    planned, said = both("analyze")
    why = (f"cannot write in {tmp_path / 'run'} (Permission denied), where the summary, feature files and "
           "report go: make it writable, or set run_dir to another folder")
    assert planned == f"analyze: would stop: {why}" and said == f"actdict: FolderNotWritable: {why}"
    assert cli(["train", str(cfg), "--dry-run"]) == 0  # finished: skipped, nothing to write
    assert "finished with this config: skipped" in capsys.readouterr().out
    planned, said = both("train", "train.epochs=2")  # another config: it would be trained again
    why = (f"cannot write in {tmp_path / 'run'} (Permission denied), where the checkpoints, resume states "
           "and training logs go: make it writable, or set run_dir to another folder")
    assert planned == f"train: would stop: {why}" and said == f"actdict: FolderNotWritable: {why}"
