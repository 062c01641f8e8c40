"""A layer added to a complete store (harvest/added.py): the same harvest config but for its hooks keeps the
store's hooks untouched and writes the hooks it lacks beside them, byte for byte what one harvest of all
of them writes; rows that are not the store's (a source file edited in place) are refused before the shard
is written."""

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from test_harvest import TEXTS, harvest
from test_resume import HOOKS, kill_when, n_whole, tree, write_config, write_corpus
from test_resume import cli as harvest_cli

from actdict.cli import main as cli
from actdict.harvest.run import HarvestError
from actdict.harvest.store import open_store

L1, L3 = "blocks.1.hook_resid_post", "blocks.3.hook_resid_post"


def _hook_tree(store: str, hook: str) -> dict[str, bytes]:
    return tree(Path(store) / hook)


def test_a_layer_added_later_is_what_one_harvest_of_both_writes(tmp_path, capsys):
    common, _ = harvest(tmp_path / "a", hooks=[L1])  # the whole source: 95 rows, shards of 64 and 31
    store, first = common.store_path, _hook_tree(common.store_path, L1)
    n = len(open_store(store, L1))
    assert n == 95 and len(list((Path(store) / L1 / "shards").iterdir())) == 2
    capsys.readouterr()
    harvest(tmp_path / "a", hooks=[L1, L3])
    out = capsys.readouterr().out
    assert (f"harvest: store {store} holds this harvest's 95 rows in {L1} (complete, harvested with "
            f"hooks [{L1}]): adding {L3} beside them, each shard's rows checked against theirs") in out
    assert f"hooks {L3} (d 384) stop_at_layer 4" in out  # block 1 is not stored again
    assert _hook_tree(store, L1) == first  # untouched

    both, _ = harvest(tmp_path / "b", hooks=[L1, L3])  # one harvest of both layers
    assert _hook_tree(store, L3) == _hook_tree(both.store_path, L3)  # shards and manifest, byte for byte
    added = json.loads((Path(store) / L3 / "manifest.json").read_text())
    assert added["complete"] and added["n_rows"] == n and added["harvest"]["hooks"] == [L1, L3]

    a1, a3 = open_store(store, L1), open_store(store, L3)  # rows paired, as training and compare read them
    np.testing.assert_array_equal(a1.read_meta(0, n)[0], a3.read_meta(0, n)[0])
    capsys.readouterr()
    before = tree(Path(store))
    harvest(tmp_path / "a", hooks=[L1, L3])  # now complete for this config
    assert "is already complete for this config" in capsys.readouterr().out and tree(Path(store)) == before
    harvest(tmp_path / "a", hooks=[L3])  # and for each of its hooks alone
    assert tree(Path(store)) == before


def test_the_dry_run_says_which_hooks_it_adds(tmp_path, capsys):
    cfg = tmp_path / "x.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\nharvest:\n  hooks: [{L1}]\n  max_tokens: 40\n  ctx: 16\n"
                   f"  source: {{kind: files, path: {TEXTS}}}\n")
    assert cli(["harvest", str(cfg)]) == 0
    capsys.readouterr()
    assert cli(["harvest", str(cfg), f"harvest.hooks=[{L1}, {L3}]", "--dry-run"]) == 0
    store = tmp_path / "run" / "store"
    assert capsys.readouterr().out.startswith(
        f"harvest: adds {L3} to store {store} beside {L1} (complete, this harvest's 40 rows; each "
        "added shard's rows checked against theirs): all-MiniLM-L6-v2")
    assert not (store / L3).exists()


def test_rows_that_are_not_the_stores_are_refused_before_the_shard_is_written(tmp_path):
    texts = tmp_path / "texts"
    shutil.copytree(TEXTS, texts)
    src = {"kind": "files", "path": str(texts)}
    common, _ = harvest(tmp_path / "run", hooks=[L1], source=src)
    first = sorted(p for p in texts.iterdir())[0]
    words = first.read_text()
    stat = first.stat()
    edited = words.replace(words.split()[0], "Q" * len(words.split()[0]), 1)  # same size, other tokens
    assert len(edited.encode()) == len(words.encode()) and edited != words
    first.write_text(edited)
    os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the fingerprint (size, time) as it was

    with pytest.raises(HarvestError) as e:
        harvest(tmp_path / "run", hooks=[L1, L3], source=src)
    msg = str(e.value)
    store = common.store_path
    assert msg.startswith(f"store {store}: ['{L3}'] cannot be added: its row 0 would be doc 0, position 0, "
                          "token id ") and f"but hook '{L1}' holds doc 0, position 0, token id" in msg
    assert msg.endswith(f"delete {store}/{L3} (the hooks being added) and harvest them into another store "
                        f"(set store / run_dir), or delete {store} to harvest every hook again")
    assert not any((Path(common.store_path) / L3 / "shards").iterdir())  # its shard 0 was not written


def test_an_addition_killed_then_rerun_is_the_store_one_harvest_of_both_writes(tmp_path):
    """SIGKILL while hook 1 is being added beside hook 0 (test_resume's corpus, shards of 64 rows), then the
    same command again: the store is byte for byte test_resume's uninterrupted harvest of both, but for
    hook 0's manifest, which records the config that harvested it (hooks [hook 0])."""
    corpus = write_corpus(tmp_path / "docs.jsonl")
    reference = tmp_path / "ref" / "store"
    reference.parent.mkdir()
    assert cli(["harvest", str(write_config(tmp_path / "ref", str(reference), corpus))]) == 0
    store = tmp_path / "store"
    one = harvest_cli(write_config(tmp_path, str(store), corpus, hooks=HOOKS[:1]))
    assert one.wait(timeout=300) == 0
    cfg = write_config(tmp_path, str(store), corpus)  # both hooks
    killed, out = kill_when(harvest_cli(cfg), lambda: n_whole(store) >= n_whole(reference) // 2 + 3)
    assert killed, out
    assert not json.loads((store / HOOKS[1] / "manifest.json").read_text())["complete"]
    rerun = harvest_cli(cfg)
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0 and "adding blocks.1.hook_resid_post " in out and "resuming" in out, out
    got, want = tree(store), tree(reference)
    assert sorted(got) == sorted(want)
    assert [k for k in want if got[k] != want[k]] == [f"{HOOKS[0]}/manifest.json"]
    kept, one = (json.loads(t[f"{HOOKS[0]}/manifest.json"]) for t in (got, want))
    assert kept["harvest"] == one["harvest"] | {"hooks": HOOKS[:1]}
    assert {k for k in one if kept[k] != one[k]} == {"harvest", "config_hash"}


def test_a_store_with_an_added_layer_grows_into_one_harvest_of_both(tmp_path):
    """After a layer was added (its hooks' manifests then name other hooks), a larger max_tokens naming
    every hook of the store grows them all: the store is then byte for byte one harvest of both with the
    larger max_tokens, manifests included (each takes the growing config)."""
    common, _ = harvest(tmp_path / "a", hooks=[L1], max_tokens=40)
    harvest(tmp_path / "a", hooks=[L1, L3], max_tokens=40)
    both = r"add 'harvest.hooks=\[\"blocks.1.hook_resid_post\", \"blocks.3.hook_resid_post\"\]' to the"
    with pytest.raises(HarvestError, match=both):  # growing one hook would leave the other short
        harvest(tmp_path / "a", hooks=[L3], max_tokens=80)
    harvest(tmp_path / "a", hooks=[L1, L3], max_tokens=80)
    both, _ = harvest(tmp_path / "b", hooks=[L1, L3], max_tokens=80)
    assert tree(Path(common.store_path)) == tree(Path(both.store_path))


def test_a_layer_is_not_added_beside_hooks_of_another_model_revision(tmp_path):
    """The held hooks' manifests record the model's revision (and the source files' fingerprint): hooks of
    another revision of the model are not the rows this one computes, and nothing is added."""
    common, _ = harvest(tmp_path / "a", hooks=[L1], max_tokens=40)
    manifest = Path(common.store_path) / L1 / "manifest.json"
    m = json.loads(manifest.read_text())
    manifest.write_text(json.dumps(m | {"revision": "0123abc"}))
    with pytest.raises(HarvestError) as e:
        harvest(tmp_path / "a", hooks=[L1, L3], max_tokens=40)
    store = common.store_path
    assert str(e.value) == (
        f"store {store} hook '{L1}' was harvested from other files (revision: store '0123abc', this run "
        f"{m['revision']!r}), so ['{L3}'] cannot be added beside it: harvest them into another store (set "
        f"store / run_dir), or delete {store} to harvest every hook again")
    assert not (Path(store) / L3).exists()


def test_a_pattern_that_added_hooks_skips_the_store_the_next_time(tmp_path, capsys):
    """A pattern (``blocks.[13].hook_resid_post``) that added L3 beside a harvest of L1 is complete for the
    store the next time: skipped as such, not 'adding' and 'resuming' L3 again (which loaded the model, ran
    a forward and waited for the store's trainings to end, to rewrite the same manifest)."""
    common, _ = harvest(tmp_path / "a", hooks=[L1], max_tokens=40)
    harvest(tmp_path / "a", hooks=["blocks.[13].hook_resid_post"], max_tokens=40)
    before = tree(Path(common.store_path))
    capsys.readouterr()
    harvest(tmp_path / "a", hooks=["blocks.[13].hook_resid_post"], max_tokens=40)
    out = capsys.readouterr().out  # the pattern is matched against the loaded model's hooks
    loading, said = out.splitlines()
    assert loading == "harvest: loading the model all-MiniLM-L6-v2 (device cpu, float32)"
    complete = f"harvest: store {common.store_path} is already complete for this config (config hash "
    assert said.startswith(complete) and (
        "skipping" in out and "adding" not in out and "resuming" not in out), out
    assert tree(Path(common.store_path)) == before


@pytest.mark.parametrize("added", [True, False])  # L3 added beside L1, or both harvested at once
def test_a_growth_killed_between_two_hooks_reopens_grows_on_the_same_command(tmp_path, added):
    """A growth reopens its hooks one by one (``resume.reopen``); killed after the first, the store held one
    unfinished hook of the larger config beside a complete one of the smaller, and the same command (and
    every other) refused it as 'a harvest with another config (max_tokens: 40 -> 80)'. It now reopens the
    rest and grows into one harvest of both with the larger max_tokens, byte for byte."""
    from actdict.config_data import config_hash
    from actdict.harvest.resume import reopen
    from actdict.harvest.reuse import as_json

    common, _ = harvest(tmp_path / "a", hooks=[L1] if added else [L1, L3], max_tokens=40)
    _, cfg = harvest(tmp_path / "a", hooks=[L1, L3], max_tokens=40)
    grown = replace(cfg, max_tokens=80)
    reopen(common.store_path, L1, config_hash(grown), as_json(grown))  # then killed before L3's
    harvest(tmp_path / "a", hooks=[L1, L3], max_tokens=80)
    both, _ = harvest(tmp_path / "b", hooks=[L1, L3], max_tokens=80)
    assert tree(Path(common.store_path)) == tree(Path(both.store_path))


def test_a_repair_of_both_the_held_and_the_added_hook_is_finished_by_their_two_commands(tmp_path, capsys):
    """``actdict store --repair`` of a damaged shard in L1 (harvested alone) and one in L3 (added beside it)
    leaves both unfinished, each with its own config. The config of both used to name L1's config for the
    rerun and L1's config L3's, so no command finished the store: L1's config now resumes L1 and leaves L3
    to its own, which then resumes L3 beside it; the store is again what it was, byte for byte."""
    common, _ = harvest(tmp_path / "a", hooks=[L1])  # 95 rows, shards 0 and 1
    harvest(tmp_path / "a", hooks=[L1, L3])
    store = Path(common.store_path)
    before = tree(store)
    for hook, shard in ((L1, "00000"), (L3, "00001")):
        shard_dir = store / hook / "shards" / shard / "acts" / "c"
        chunk = next(p for p in sorted(shard_dir.rglob("*")) if p.is_file())
        flipped = bytearray(chunk.read_bytes())
        flipped[10] ^= 0xFF
        chunk.write_bytes(bytes(flipped))
    capsys.readouterr()
    assert cli(["store", str(store), "--repair"]) == 0
    said = capsys.readouterr().out.splitlines()
    l1, l3 = (json.loads((store / h / "manifest.json").read_text())["config_hash"] for h in (L1, L3))
    assert said[-2:] == [  # which command writes which hook's shards again, in the order that works
        f'{L1}: written by the config with hooks ["{L1}"] ({l1}): run that one for it, those naming fewer '
        "hooks first",
        f'{L3}: written by the config with hooks ["{L1}", "{L3}"] ({l3}): run that one for it, those naming '
        "fewer hooks first"]
    with pytest.raises(HarvestError, match=r"add 'harvest.hooks=\[\"blocks.1.hook_resid_post\"\]' to the"):
        harvest(tmp_path / "a", hooks=[L1, L3])
    capsys.readouterr()
    harvest(tmp_path / "a", hooks=[L1])
    assert "resuming: 1 shard(s) whole in every hook" in capsys.readouterr().out
    assert not json.loads((store / L3 / "manifest.json").read_text())["complete"]  # left to its own config
    harvest(tmp_path / "a", hooks=[L1, L3])
    assert f"adding {L3} beside them" in capsys.readouterr().out
    assert tree(store) == before


def test_the_dry_run_after_a_repair_of_both_hooks_says_which_one_it_continues(tmp_path, capsys):
    """After ``actdict store --repair`` of both L1 (harvested alone) and L3 (added beside it), L1's config
    continues L1 only and leaves L3 to the config that wrote it; its dry run said it continued both. Once L1
    is whole again, the dry run and the harvest said the store was 'harvested with hooks [L1, L3]' (L3's
    config, not L1's) and nothing of L3: both now name the config L3 is left to."""
    from actdict.harvest.reuse import plan

    common, one = harvest(tmp_path / "a", hooks=[L1])
    harvest(tmp_path / "a", hooks=[L1, L3])
    store = Path(common.store_path)
    for hook in (L1, L3):
        shutil.rmtree(store / hook / "shards" / "00001")  # what --repair leaves of a damaged shard
        m = json.loads((store / hook / "manifest.json").read_text())
        (store / hook / "manifest.json").write_text(json.dumps(m | {"complete": False}))
    l3 = json.loads((store / L3 / "manifest.json").read_text())["config_hash"]
    left = (f"; hook '{L3}' (unfinished) is left to the config that wrote it (hooks "
            f'[{L1}, {L3}], config hash {l3}): run that one for it')
    what = f"all-MiniLM-L6-v2 hooks {L1} on the files {TEXTS}, max_tokens null (the whole source)"
    said = plan(common, one)
    assert said.lines == [f"harvest: continues the unfinished harvest in {store} ({L1} (unfinished); its "
                          f"whole shards are kept): {what}{left}"] and said.writes and not said.stops
    capsys.readouterr()
    harvest(tmp_path / "a", hooks=[L1])  # as said: L1 continued, L3 left
    assert "resuming: 1 shard(s) whole in every hook" in capsys.readouterr().out
    assert json.loads((store / L1 / "manifest.json").read_text())["complete"]
    assert not json.loads((store / L3 / "manifest.json").read_text())["complete"]
    l1 = json.loads((store / L1 / "manifest.json").read_text())["config_hash"]
    said = plan(common, one)
    assert said.lines == [f"harvest: store {store} is already complete for this config (config hash {l1}): "
                          f"skipped{left}"] and not said.writes and not said.stops
    harvest(tmp_path / "a", hooks=[L1])
    assert f"store {store} is already complete for this config (config hash {l1}); skipping{left}\n" in (
        capsys.readouterr().out)


def test_a_store_with_an_added_layer_that_cannot_grow_so_says_and_how_it_would(tmp_path):
    """A larger max_tokens with hooks [all], or with another batch_size, was refused as 'a harvest with
    another config (hooks: ... -> ['all']; max_tokens: 40 -> 80); delete' the store: it now names the
    settings that grow it; hooks added with another batch_size than the held ones' cannot grow, and the
    refusal says so and how to use the store."""
    common, _ = harvest(tmp_path / "a", hooks=[L1], max_tokens=40)
    harvest(tmp_path / "a", hooks=[L1, L3], max_tokens=40)
    store = common.store_path
    before = tree(Path(store))
    how = (f"store {store} holds hooks ['{L1}', '{L3}'] harvested by configs naming other hooks (a layer "
           "added): it grows to max_tokens=80 with a config naming each of them by name, and no other, with "
           "the settings they began with (add other hooks once it has grown): add ")
    with pytest.raises(HarvestError) as e:
        harvest(tmp_path / "a", hooks=["all"], max_tokens=80)
    assert str(e.value) == how + f"'harvest.hooks=[\"{L1}\", \"{L3}\"]' to the command"
    with pytest.raises(HarvestError) as e:
        harvest(tmp_path / "a", hooks=[L1, L3], max_tokens=80, batch_size=5)
    assert str(e.value) == how + "'harvest.batch_size=3' to the command"
    assert tree(Path(store)) == before

    other, _ = harvest(tmp_path / "b", hooks=[L1], max_tokens=40)
    harvest(tmp_path / "b", hooks=[L1, L3], max_tokens=40, batch_size=5)  # rows as the held hook's
    with pytest.raises(HarvestError) as e:
        harvest(tmp_path / "b", hooks=[L1, L3], max_tokens=80)
    assert str(e.value) == (
        f"store {other.store_path} cannot grow: its hooks were harvested with different batch_size ({L1}: "
        f"batch_size 3; {L3}: batch_size 5), and a growth continues every hook with the settings it began "
        "with: use it with harvest.max_tokens=40, or set run_dir / store to another folder to harvest more "
        "rows")


def test_adding_and_growing_at_once_says_to_grow_first(tmp_path):
    """A config naming a hook more and a larger max_tokens was refused as another config, to be deleted; it
    says how to do it in two harvests, and they give one harvest of both at the larger max_tokens."""
    common, _ = harvest(tmp_path / "a", hooks=[L1], max_tokens=40)
    with pytest.raises(HarvestError) as e:
        harvest(tmp_path / "a", hooks=[L1, L3], max_tokens=80)
    assert str(e.value) == (
        f"store {common.store_path} (hook '{L1}') holds max_tokens=40 of this harvest with hooks ['{L1}']: "
        f"growing it and adding hooks are two harvests: first grow it, adding 'harvest.hooks=[\"{L1}\"]' to "
        "this command, then run this command as it is to add the others")
    harvest(tmp_path / "a", hooks=[L1], max_tokens=80)
    harvest(tmp_path / "a", hooks=[L1, L3], max_tokens=80)
    both, _ = harvest(tmp_path / "b", hooks=[L1, L3], max_tokens=80)
    assert _hook_tree(common.store_path, L3) == _hook_tree(both.store_path, L3)


def test_a_token_harvest_into_a_store_of_imported_vectors_says_the_mode_first(tmp_path):
    """The refusal listed every differing key in order (ctx, hooks, ..., mode, model, ...), the one that
    says why buried among them: a store of another kind (mode) is now said first."""
    np.save(tmp_path / "v.npy", np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32))
    common, _ = harvest(tmp_path / "a", mode="vectors", vectors={"path": str(tmp_path / "v.npy")})
    with pytest.raises(HarvestError) as e:
        harvest(tmp_path / "a", hooks=[L1])
    assert str(e.value).startswith(f"store {common.store_path} holds a harvest with another config (hook "
                                   "'vectors': mode: 'vectors' -> 'tokens'; ")
    assert sorted(p.name for p in Path(common.store_path).iterdir() if p.name[0] != ".") == ["vectors"]


def test_the_config_whose_hook_a_layer_was_added_beside_is_told_of_its_own_hook(tmp_path, capsys):
    """A store of L1 (config A) with L3 added beside it (config B, hooks [L1, L3]), both complete: A's
    harvest and dry run said the store 'was harvested with hooks [L1, L3]' (B's, the whole store's), where
    A wrote L1 itself; they say nothing of it now, and a config of L3 alone names the config that wrote L3
    only."""
    from actdict.config_data import config_hash
    from actdict.harvest.reuse import plan

    common, one = harvest(tmp_path / "a", hooks=[L1], max_tokens=40)
    harvest(tmp_path / "a", hooks=[L1, L3], max_tokens=40)
    store = common.store_path
    said = f"harvest: store {store} is already complete for this config (config hash {config_hash(one)})"
    assert plan(common, one).lines == [f"{said}: skipped"]
    capsys.readouterr()
    harvest(tmp_path / "a", hooks=[L1], max_tokens=40)
    assert capsys.readouterr().out == f"{said}; skipping\n"
    three = replace(one, hooks=[L3])
    how = f"; it was harvested with hooks [{L1}, {L3}]"  # L3's config, not L1's too
    assert plan(common, three).lines == [
        f"harvest: store {store} is already complete for this config (config hash {config_hash(three)}"
        f"{how}): skipped"]
    harvest(tmp_path / "a", hooks=[L3], max_tokens=40)
    assert capsys.readouterr().out == f"harvest: store {store} is already complete for this config (" \
                                      f"config hash {config_hash(three)}{how}); skipping\n"


def test_the_first_config_skips_beside_an_unfinished_added_layer_without_the_model(tmp_path, capsys,
                                                                                     monkeypatch):
    """L1 (config A) complete and L3 (config B, added beside it) unfinished, as a kill leaves it: A's dry run
    says 'skipped', and A's harvest skips as it says, before it asks for the model (an unavailable model
    would stop it, a loaded one cost tens of seconds, for nothing). A guard: it passes before and after."""
    from actdict.config_data import config_hash
    from actdict.harvest import run
    from actdict.harvest.reuse import plan

    common, one = harvest(tmp_path / "a", hooks=[L1], max_tokens=40)
    harvest(tmp_path / "a", hooks=[L1, L3], max_tokens=40)
    store = Path(common.store_path)
    manifest = store / L3 / "manifest.json"
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"complete": False}))
    shutil.rmtree(store / L3 / "shards" / "00000")  # what a kill during the addition leaves
    said = f"harvest: store {store} is already complete for this config (config hash {config_hash(one)})"
    left = (f"; hook '{L3}' (unfinished) is left to the config that wrote it (hooks [{L1}, {L3}], "
            f"config hash {json.loads(manifest.read_text())['config_hash']}): run that one for it")
    assert plan(common, one).lines == [f"{said}: skipped{left}"]

    def no_model(*args, **kwargs):
        raise AssertionError("the model was asked for")

    monkeypatch.setattr(run, "available", no_model)
    monkeypatch.setattr(run, "load_model", no_model)
    before = tree(store)
    capsys.readouterr()
    harvest(tmp_path / "a", hooks=[L1], max_tokens=40)
    assert capsys.readouterr().out == f"{said}; skipping{left}\n"
    assert tree(store) == before
