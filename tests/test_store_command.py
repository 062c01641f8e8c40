"""The `actdict store` command: describe, --verify, --repair, damaged manifests, links, safe output."""

import json
import os
import re

import numpy as np
import pytest

from actdict.harvest.layout import shard_problem
from actdict.harvest.store import StoreError, StoreWriter, open_store
from tests.store_helpers import CHUNK, MANIFEST, SHARD, D, _data, _write


def test_store_command_describes_and_verifies(tmp_path, capsys):
    from actdict.cli import main

    _write(tmp_path, hook="blocks.1.hook_resid_post")
    _write(tmp_path, hook="blocks.3.hook_resid_post", dtype="float16")
    assert main(["store", str(tmp_path), "--verify"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("blocks.1.hook_resid_post: 45 rows x d 3 float32, 3 shards, 12 chunks of 4, ")
    assert out[0].endswith("; complete") and out[1] == "  model toy; float32 forward"
    assert out[3] == "  verify: ok" and out[4].startswith("blocks.3.hook_resid_post: 45 rows x d 3 float16")
    chunk = tmp_path / "blocks.3.hook_resid_post" / "shards" / "00001" / "acts" / "c" / "2" / "0"
    blob = bytearray(chunk.read_bytes())
    blob[1] ^= 0xFF
    chunk.write_bytes(bytes(blob))
    assert main(["store", str(tmp_path), "--verify", "--json", "--hook", "blocks.3.hook_resid_post"]) == 2
    info = json.loads(capsys.readouterr().out)
    assert len(info) == 1 and info[0]["rows"] == 45 and info[0]["shards"] == 3 and info[0]["complete"]
    assert "shards/00001 is corrupted" in info[0]["verified"]
    files = (tmp_path / "blocks.3.hook_resid_post").rglob("*")
    assert info[0]["bytes"] == sum(f.stat().st_size for f in files if f.is_file())
    assert main(["store", str(tmp_path / "nothing")]) == 2
    said = capsys.readouterr()  # the error on stderr: stdout holds the report (--json: a JSON document)
    assert "no activation store" in said.err and said.out == ""


def test_verify_shows_its_shards_on_a_terminal_only(tmp_path, capsys, monkeypatch):
    """--verify re-reads every shard (~15 s a GB) in silence; a terminal now sees a bar of the shards, a log
    file nothing more than before."""
    import io
    import sys

    from actdict.cli import main

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    _write(tmp_path)
    assert main(["store", str(tmp_path), "--verify"]) == 0 and capsys.readouterr().err == ""
    monkeypatch.setattr(sys, "stderr", tty := Tty())
    assert main(["store", str(tmp_path), "--verify"]) == 0
    drawn = tty.getvalue().split("\r")  # the bar over the 3 shards, cleared when done (the report follows)
    assert drawn[1].startswith("verify blocks.0.hook_resid_post: ") and "/3 [" in drawn[1]
    assert not drawn[-1].strip()


def test_store_command_lists_each_hook_and_its_shards_once(tmp_path, capsys):
    """Every hook, named by --hook (even twice) or found in the store, is described (and verified, and
    repaired) once, with the shard count of its folders."""
    from actdict.cli import main

    _write(tmp_path, hook="a")
    _write(tmp_path, hook="b")
    shards = len(list((tmp_path / "a" / "shards").iterdir()))
    for args in ([], ["--hook", "a", "--hook", "b", "--hook", "a"]):
        assert main(["store", str(tmp_path), "--verify", *args]) == 0
        out = capsys.readouterr().out.splitlines()
        heads = [line.split(":")[0] for line in out if not line.startswith(" ")]
        assert heads == ["a", "b"] and sum(line == "  verify: ok" for line in out) == 2
        assert all(f", {shards} shards, " in line for line in out if not line.startswith(" "))
        assert main(["store", str(tmp_path), "--json", *args]) == 0
        assert [h["shards"] for h in json.loads(capsys.readouterr().out)] == [shards, shards]
    assert main(["store", str(tmp_path), "--repair", "--hook", "b", "--hook", "b"]) == 0
    assert capsys.readouterr().out.splitlines() == ["b: intact"]
    assert main(["store", str(tmp_path / "b"), "--verify"]) == 0  # a hook's own folder: that hook
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"b: 45 rows x d {D} ")  # _write: 7 + 20 + 18 rows
    assert out[-1] == "  verify: ok" and len(out) == 4
    assert main(["store", str(tmp_path / "b"), "--hook", "b", "--repair"]) == 0  # named too: the same
    assert capsys.readouterr().out.splitlines() == ["b: intact"]
    assert not (tmp_path / "b" / ".actdict-lock").exists()  # the lock is the store's, not inside the hook
    assert main(["store", str(tmp_path / "b"), "--hook", "a"]) == 2
    assert "is the folder of hook 'b' alone, not of ['a']" in capsys.readouterr().err


def test_store_command_describes_an_unfinished_harvest(tmp_path, capsys):
    from actdict.cli import main

    x, tok, doc, pos = _data()
    w = StoreWriter(str(tmp_path), MANIFEST | {"hook": "h"}, d=D, shard_rows=SHARD, chunk_rows=CHUNK)
    w.append(x[:40], tok[:40], doc[:40], pos[:40])  # 2 full shards written, 8 rows buffered, never closed
    assert main(["store", str(tmp_path)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("h: 32 rows x d 3 float16, 2 shards") and "INCOMPLETE" in first


@pytest.mark.parametrize("manifest", ["[]", '"x"', '{"hook": "h"}'])
def test_a_manifest_of_the_wrong_shape_is_one_line(tmp_path, capsys, manifest):
    """A hand-made manifest.json that is valid JSON but no manifest (not an object, or lacking the keys a
    repair needs): `actdict store`, --verify and --repair answer in one line, status 2."""
    from actdict.cli import main as cli

    (tmp_path / "s" / "h").mkdir(parents=True)
    (tmp_path / "s" / "h" / "manifest.json").write_text(manifest)
    for flag in ([], ["--verify"], ["--repair"]):
        assert cli(["store", str(tmp_path / "s"), *flag]) == 2, flag
        said = "".join(capsys.readouterr())  # stdout and stderr
        assert said.count("\n") == 1 and said.startswith("actdict store: "), (flag, said)


def test_store_command_names_shard_folders_not_yet_whole(tmp_path, capsys):
    """An object store writes a shard in place: a shard folder without its done record is not counted, and
    the listing says it is not whole yet (not that a shard below it is missing)."""
    from actdict.cli import main

    x, tok, doc, pos = _data()
    w = StoreWriter(str(tmp_path), MANIFEST | {"hook": "h"}, d=D, shard_rows=SHARD, chunk_rows=CHUNK)
    w.append(x[:40], tok[:40], doc[:40], pos[:40])  # 2 full shards written, never closed
    (tmp_path / "h" / "shards" / "00002").mkdir()  # begun in place, its done-record not written yet
    assert main(["store", str(tmp_path)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("h: 32 rows x d 3 float16, 2 shards") and "missing" not in first
    assert first.endswith("; 1 more shard folder(s) on disk are not whole (being written, or cut short by a "
                          "kill): the harvest command rewrites them")


def test_repair_reads_every_manifest_before_it_changes_anything(tmp_path, capsys):
    from actdict.cli import main

    _write(tmp_path, hook="a")
    _write(tmp_path, hook="b")
    chunk = tmp_path / "a" / "shards" / "00001" / "acts" / "c" / "2" / "0"
    blob = bytearray(chunk.read_bytes())
    blob[1] ^= 0xFF
    chunk.write_bytes(bytes(blob))
    (tmp_path / "b" / "manifest.json").write_text("{")
    before = {p: p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()}
    assert main(["store", str(tmp_path), "--repair"]) == 2
    assert "manifest.json is unreadable" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()} == before  # a: untouched


def test_shard_numbers_from_a_manifest_or_a_folder_name_are_never_walked(tmp_path, capsys):
    """A shared store's manifest may list 10**12 shards and a stray folder be named '²³' or 10**14: the
    first missing shards are named with their count, found without walking 0 .. n - 1, and a folder that
    is not ASCII digits is no shard."""
    from actdict.cli import main as cli
    from actdict.harvest.layout import shard_gaps

    assert shard_gaps({0, 2, 4}, 6) == ([1, 3, 5], 3)
    assert shard_gaps(set(range(5)), 10**12) == (list(range(5, 13)), 10**12 - 5)
    assert shard_problem(["00000", "00002", "00030"], 20).startswith(
        "missing shard(s) 00001, 00003, 00004, 00005, 00006, 00007, 00008, 00009, ... (18 in all); "
        "unexpected shard(s) 00030 (the manifest lists 20: 00000..00019)")
    _write(tmp_path)  # 45 rows: shards 00000..00002
    (tmp_path / "blocks.0.hook_resid_post" / "shards" / "²³").mkdir()
    assert cli(["store", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("blocks.0.hook_resid_post: 45 rows x d 3 float32, 3 shards")
    manifest = tmp_path / "blocks.0.hook_resid_post" / "manifest.json"
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"n_shards": 20}))
    assert cli(["store", str(tmp_path), "--repair"]) == 0
    assert capsys.readouterr().out.startswith(
        "blocks.0.hook_resid_post: 8 shard(s) to write again (00003: missing; 00004: missing; 00005: "
        "missing; 00006: missing; 00007: missing; 00008: missing; 00009: missing; 00010: missing, and 9 more "
        "after it)")
    assert sorted(os.listdir(manifest.parent / "shards")) == ["00000", "00001", "00002", "²³"]


@pytest.mark.parametrize(("edit", "said"), [({"d": "3x"}, "d '3x'"), ({"chunk_rows": 0}, "chunk_rows 0"),
                                            ({"dtype": "int64"}, "dtype 'int64' (not one of"),
                                            ({"n_rows": None, "d": None}, "d None, n_rows None")])
def test_a_manifest_with_layout_values_of_the_wrong_kind_is_one_line_and_repairs_nothing(
        tmp_path, capsys, edit, said):
    """A shared store's manifest.json edited by hand: its layout values were read as they are (a ValueError,
    KeyError or ZeroDivisionError traceback); now every command says which are damaged, and --repair
    removes no shard."""
    from actdict.cli import main as cli

    _write(tmp_path)
    manifest = tmp_path / "blocks.0.hook_resid_post" / "manifest.json"
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) | edit))
    with pytest.raises(StoreError, match=re.escape(f"its manifest.json is damaged: {said}")):
        open_store(str(tmp_path))
    for flag in ([], ["--verify"], ["--repair"]):
        assert cli(["store", str(tmp_path), *flag]) == 2, flag
        out = "".join(capsys.readouterr())
        assert out.count("\n") == 1 and f"its manifest.json is damaged: {said}" in out, (flag, out)
    assert sorted(os.listdir(manifest.parent / "shards")) == ["00000", "00001", "00002"]


@pytest.mark.parametrize(("edit", "said"), [({"d": 4}, "d 4, its shards' 3"),
                                            ({"chunk_rows": 2}, "chunk_rows 2, its shards' 4"),
                                            ({"dtype": "bfloat16"}, "dtype bfloat16, its shards' float32")])
def test_repair_removes_no_shard_when_the_manifest_is_what_disagrees(tmp_path, capsys, edit, said):
    """A manifest of another layout than its shards' own metadata (edited, or copied from another store) made
    every shard fail its check, and --repair removed them all; it now names the manifest and removes none."""
    from actdict.cli import main as cli

    _write(tmp_path)
    manifest = tmp_path / "blocks.0.hook_resid_post" / "manifest.json"
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) | edit))
    assert cli(["store", str(tmp_path), "--repair"]) == 2
    out = capsys.readouterr().err
    assert f"its manifest.json does not describe its shards ({said}): the manifest is damaged" in out
    assert "nothing removed" in out and sorted(os.listdir(manifest.parent / "shards")) == ["00000", "00001",
                                                                                           "00002"]


def test_strings_from_shared_files_reach_the_terminal_without_control_codes(tmp_path, capsys):
    """A store's manifest, a checkpoint's name or warning and a corpus token come from someone else: their
    ESC / BEL / CR were printed as they are (ESC ] 52 sets a terminal's clipboard, ESC [ 2J clears it); they
    are now printed as escapes, newlines and tabs of the output kept."""
    from actdict.analyze.lens import format_lens
    from actdict.analyze.tables import summary_lines
    from actdict.cli import main as cli
    from actdict.errors import ActdictError, print_error

    evil = "web\x1b]52;c;ZWNobyBwd25lZA==\x07\x1b[2J\r\x9b"
    _write(tmp_path)
    manifest = tmp_path / "blocks.0.hook_resid_post" / "manifest.json"
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"corpus": evil}))
    assert cli(["store", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "  corpus web\\x1b]52;c;ZWNobyBwd25lZA==\\x07\\x1b[2J\\x0d\\x9b\n" in out and out.count("\n") == 3
    m = {"k": 8, "dead": 3, "re_det": 2.5, "re_sample": 2.5, "ad": 1.0, "l0": 2.0, "ev": 0.5,
         "training_warning": evil}
    lines = summary_lines({"n_test_rows": 1, "hook": "h", "d": 4, "ce": None, "models": {evil: m}})
    assert not any(c in "".join(lines) for c in "\x1b\x07\r\x9b") and "\\x1b]52" in lines[-1]
    feats = [[{"i": 3, "code": 1.5, "top_tokens": [evil]}]]
    res = {"model": "m", "hook": "h", "tokens": [" a"],
           "dicts": {"d": {"variant": "sae_l1", "k": 8, "active": [1], "features": feats}}}
    said = format_lens(res)
    assert "#3 1.5 [web\\x1b]52;c;" in said and not any(c in said for c in "\x1b\x07\r\x9b")
    assert print_error("actdict", ActdictError(f"hook {evil}")) == 2
    assert capsys.readouterr().err == ("actdict: ActdictError: hook web\\x1b]52;c;ZWNobyBwd25lZA==\\x07"
                                       "\\x1b[2J\\x0d\\x9b\n")


def test_a_store_whose_hook_or_shards_are_links_is_not_written_through_them(tmp_path, capsys):
    """A shared store may hold <hook> or <hook>/shards as links to a folder of the reader's: a harvest wrote
    its manifest and shards there (seen with a token harvest), a repair would remove what fails its check
    there. Writing a hook (the harvests, the vectors command) and --repair refuse such a link in one line."""
    from actdict.cli import main as cli
    from actdict.harvest.vectors import cli as vectors

    mine = tmp_path / "mine"
    (mine / "00007").mkdir(parents=True)  # a folder of the reader's that a repair took for a damaged shard
    (mine / "00007" / "notes.txt").write_text("mine")
    np.save(tmp_path / "v.npy", np.ones((16, 3), np.float32))
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "vectors").symlink_to(mine)
    assert vectors([str(tmp_path / "v.npy"), str(tmp_path / "s"), "--chunk-rows", "4"]) == 2
    assert "s/vectors is a symbolic link (to " in capsys.readouterr().err
    _write(tmp_path / "t")
    hook = tmp_path / "t" / "blocks.0.hook_resid_post"
    (hook / "shards").rename(tmp_path / "real")
    (hook / "shards").symlink_to(mine)
    assert cli(["store", str(tmp_path / "t"), "--repair"]) == 2
    assert "shards is a symbolic link (to " in capsys.readouterr().err
    assert [p.name for p in mine.rglob("*")] == ["00007", "notes.txt"]


def test_store_help_says_a_hook_folder_is_a_path_too(capsys):
    from actdict.cli import main

    with pytest.raises(SystemExit):
        main(["store", "--help"])
    assert "one hook's folder <store>/<hook>" in " ".join(capsys.readouterr().out.split())


def test_a_manifest_without_numerics_or_corpus_says_they_are_not_recorded(tmp_path, capsys):
    """A store whose manifest records no numerics nor corpus (written by StoreWriter from Python with its
    hook alone) was described as '  model ...; None' and '  corpus None': Python's None."""
    import numpy as np

    from actdict.cli import main
    from actdict.harvest.store import StoreWriter

    with StoreWriter(str(tmp_path / "s"), {"hook": "h"}, 3, "float32", 32, 16) as w:
        w.append(np.zeros((20, 3), np.float32), np.arange(20), np.arange(20) // 4, np.arange(20) % 4)
    assert main(["store", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("h: 20 rows x d 3 float32, ") and "None" not in "\n".join(out)
    assert out[1:] == ["  model - (no model: imported vectors); numerics not recorded",
                       "  corpus not recorded"]
