"""A store of several hooks (one harvest, many hook points): train learns the hook ``train.hook`` names, and
analysis and the lens read the hook the dictionaries were trained on."""

import json

import numpy as np
import pytest

from actdict.analyze.run import AnalyzeError, trained_hook, trained_records
from actdict.cli import check_train_hook, main
from actdict.config import ConfigError
from actdict.harvest.store import write_vectors


def _config(tmp_path, store, name: str = "s", hook: str = "") -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"""
run_dir: {tmp_path / 'run'}
store: {store}
train:
  hook: "{hook}"
  epochs: 1
  batch_size: 128
  test_fraction: 0.25
  device: cpu
  dicts: [{{name: {name}, variant: sae_l1, k: 8}}]
analyze:
  device: cpu
""")
    return str(path)


@pytest.fixture(scope="module")
def two_hooks(tmp_path_factory):
    """One store, hooks h.a (d 6) and h.b (d 4, scaled by 3), 1024 rows each in chunks of 64."""
    store = str(tmp_path_factory.mktemp("s") / "store")
    rng = np.random.default_rng(0)
    write_vectors(store, rng.standard_normal((1024, 6)).astype(np.float32), hook="h.a", shard_rows=512,
                  chunk_rows=64)
    write_vectors(store, 3 * rng.standard_normal((1024, 4)).astype(np.float32), hook="h.b", shard_rows=512,
                  chunk_rows=64)
    return store


def test_train_names_the_hook_and_analysis_follows_it(two_hooks, tmp_path, capsys):
    cfg = _config(tmp_path, two_hooks)
    assert main(["train", cfg]) == 2  # which hook? the store has two
    err = capsys.readouterr().err
    assert "holds 2 hooks" in err and "train.hook=HOOK, one of ['h.a', 'h.b']" in err
    assert main(["train", cfg, "train.hook=h.c"]) == 2
    assert "train.hook='h.c' is not one of them" in capsys.readouterr().err
    assert main(["train", cfg, "train.hook=h.b"]) == 0
    record = json.loads((tmp_path / "run" / "dicts" / "s" / "cfg.json").read_text())
    assert record["store"]["hook"] == "h.b" and record["store"]["d"] == 4 and record["train_rows"] == 768
    assert main(["analyze", cfg]) == 0  # no hook named: the dictionaries' own
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["hook"] == "h.b" and summary["d"] == 4 and summary["n_test_rows"] == 256
    assert summary["models"]["s"]["k"] == 8

    # a second dictionary of the same run folder trained on the other hook: analysis cannot mix them
    assert main(["train", _config(tmp_path, two_hooks, name="t", hook="h.a")]) == 0
    run = tmp_path / "run"
    assert trained_hook(trained_records(run, ["t"])) == "h.a"
    assert trained_hook(trained_records(run, ["s"])) == "h.b"
    with pytest.raises(AnalyzeError, match="different hooks.*comparing layers: actdict compare"):
        trained_hook(trained_records(run, []))
    assert main(["analyze", cfg, "analyze.dicts=[t]"]) == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["d"] == 6


@pytest.mark.parametrize("hooks, hook, ok", [
    (["blocks.0.hook_resid_post"], "", True),
    (["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"], "", False),
    (["all"], "", False),
    (["blocks.*.hook_resid_post"], "", False),
    (["blocks.?.hook_resid_post"], "", False),  # a glob of ? or [...] is a pattern too
    (["blocks.[12].hook_resid_post"], "", False),
    (["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"], "blocks.1.hook_resid_post", True),
    (["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"], "blocks.2.hook_resid_post", False),
    (["blocks.*.hook_resid_post"], "blocks.2.hook_resid_post", True),
    (["all"], "blocks.2.hook_resid_post", True),
    (["all"], "blocks.2.hook_mlp_out", False),  # found only after the whole harvest, before 2026-12-05
    (["all"], "block.2.hook_resid_post", False),
    (["blocks.*.hook_mlp_out"], "blocks.2.hook_resid_post", False),
    (["blocks.*.hook_mlp_out", "blocks.0.hook_resid_post"], "blocks.0.hook_resid_post", True),
])
def test_run_checks_train_hook_against_the_harvest(hooks, hook, ok):
    if ok:
        check_train_hook(hooks, hook)
    else:
        with pytest.raises(ConfigError, match="train.hook"):
            check_train_hook(hooks, hook)


def test_a_run_folder_without_dictionaries_says_so_not_which_hook(two_hooks, tmp_path, capsys):
    """Analysis (and the lens) of a run folder that holds no dictionary yet, on a store of two hooks: the
    missing dictionaries are named, not the store's hooks (which the dictionaries would have chosen)."""
    cfg = _config(tmp_path, two_hooks, hook="h.b")
    assert main(["analyze", cfg]) == 2
    err = capsys.readouterr().err
    assert f"no trained dictionaries in {tmp_path / 'run' / 'dicts'}: run actdict train first" in err
    assert "name one of" not in err
    assert main(["train", cfg]) == 0
    capsys.readouterr()
    assert main(["analyze", cfg, "analyze.dicts=[t]"]) == 2  # a name the folder lacks: the names it has
    err = capsys.readouterr().err
    assert "dictionaries ['t'] not found in" in err and "available: ['s']" in err


def test_analysis_refuses_dictionaries_of_another_split(two_hooks, tmp_path, capsys):
    """A run with another seed in a folder of finished dictionaries is refused before it trains; a folder
    holding dictionaries of two splits all the same (made by hand, or before that refusal): analysis refuses
    the one whose held-out chunks differ (it learned some of the rows it would be scored on) and analyzes
    the other."""
    import shutil

    cfg_s, cfg_t = (_config(tmp_path, two_hooks, name=n, hook="h.a") for n in ("s", "t"))
    assert main(["train", cfg_s]) == 0
    split_s = json.loads((tmp_path / "run" / "split.json").read_text())["test_chunks"]
    capsys.readouterr()
    assert main(["train", cfg_t, "seed=1"]) == 2
    assert "finished dictionaries ['s'] trained with other held-out chunks" in capsys.readouterr().err
    assert main(["train", cfg_t, "seed=1", f"run_dir={tmp_path / 'run2'}"]) == 0
    shutil.copytree(tmp_path / "run2" / "dicts" / "t", tmp_path / "run" / "dicts" / "t")
    shutil.copy(tmp_path / "run2" / "split.json", tmp_path / "run" / "split.json")
    split_t = json.loads((tmp_path / "run" / "split.json").read_text())["test_chunks"]
    assert split_t != split_s  # the later run's split is on disk now
    capsys.readouterr()
    assert main(["analyze", cfg_s, "seed=1"]) == 2
    assert "['s'] were trained with another split" in capsys.readouterr().err
    assert main(["analyze", cfg_s, "seed=1", "analyze.dicts=[t]"]) == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["test_chunks"] == split_t


def test_run_of_a_config_without_a_harvest_section_trains_and_analyzes_its_store(two_hooks, tmp_path,
                                                                                   monkeypatch):
    """Bring-your-own vectors: `actdict run` skips the harvest it has no section for (a default harvest
    would refuse the store of vectors written without a config)."""
    from actdict import cli

    ran, prepare = [], cli.prepare

    def recorded(stage, data):
        cfg, _ = prepare(stage, data)
        return cfg, lambda **kw: ran.append(stage)

    monkeypatch.setattr(cli, "prepare", recorded)
    assert main(["run", _config(tmp_path, two_hooks, hook="h.a")]) == 0 and ran == ["train", "analyze"]


def test_analysis_names_dictionaries_an_unfinished_retraining_holds(two_hooks, tmp_path, capsys):
    """A retraining with another config, interrupted (its resume state in the run folder), leaves the earlier
    finished checkpoint, which analysis reads: it says so, naming the dictionary and the state's step; a
    state of the checkpoint's own config (a kill after the final saves) says nothing."""
    import torch
    from safetensors.torch import save_file

    cfg = _config(tmp_path, two_hooks, hook="h.a")
    assert main(["train", cfg]) == 0
    run = tmp_path / "run"
    done = json.loads((run / "dicts" / "s" / "cfg.json").read_text())["config_hash"]
    for hash_, said in (("0123456789abcdef", True), (done, False)):
        meta = {"members": {"s": {"config_hash": hash_}}, "position": {"epoch": 0, "batch": 3, "step": 3}}
        save_file({"x": torch.zeros(1)}, str(run / "train_state.safetensors"),
                  metadata={"actdict_train_state": json.dumps(meta)})
        capsys.readouterr()
        assert main(["analyze", cfg]) == 0
        out = capsys.readouterr().out
        note = (f"analyze: note: {run / 'train_state.safetensors'} holds an unfinished training of s "
                "with another config (step 3); this analysis reads their earlier, finished checkpoints")
        assert (note in out) == said, out
