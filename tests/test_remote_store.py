"""Stores on fsspec URLs: harvest into s3://bucket/store on a local S3 endpoint (a moto server on loopback,
started here), then train from it and read it back equal to the same harvest on a local disk."""

import json

import numpy as np
import pytest

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

from test_resume import write_corpus  # noqa: E402

from actdict.cli import main as cli  # noqa: E402
from actdict.harvest.store import list_hooks, open_store  # noqa: E402


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 and the environment that points boto/s3fs at it."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        s3fs.S3FileSystem().mkdir("actdict-test")
        yield "s3://actdict-test"
        s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


def config(tmp_path, store: str) -> str:
    corpus = tmp_path.parent / "docs.jsonl"  # one corpus for every config of a test
    if not corpus.exists():
        write_corpus(corpus, n_docs=40)
    tmp_path.mkdir(exist_ok=True)
    cfg = {"run_dir": str(tmp_path / "run"), "store": store, "seed": 0,
           "harvest": {"model": "all-MiniLM-L6-v2", "hooks": ["blocks.1.hook_resid_post"], "ctx": 16,
                       "source": {"kind": "files", "path": str(corpus)}, "batch_size": 4, "max_tokens": 300,
                       "dtype": "float32", "store_dtype": "bfloat16", "shard_rows": 64, "chunk_rows": 32},
           "train": {"epochs": 1, "batch_size": 64, "test_fraction": 0.25,
                     "dicts": [{"name": "sae", "variant": "sae_l1", "k": 16}]}}
    (tmp_path / "cfg.yaml").write_text(json.dumps(cfg))
    return str(tmp_path / "cfg.yaml")


def test_harvest_to_s3_then_train_from_it(tmp_path, s3):
    url = f"{s3}/store"
    assert cli(["harvest", config(tmp_path / "s3", url)]) == 0
    assert list_hooks(url) == ["blocks.1.hook_resid_post"]
    remote = open_store(url)
    remote.verify()
    assert len(remote) == 300 and remote.num_shards == 5 and remote.manifest["dtype"] == "bfloat16"
    assert cli(["harvest", config(tmp_path / "local", str(tmp_path / "local" / "store"))]) == 0
    local = open_store(str(tmp_path / "local" / "store"))
    a, b = remote.read_rows(0, 300), local.read_rows(0, 300)
    for f in ("acts", "token_ids", "doc", "pos"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert remote.manifest == local.manifest
    assert cli(["train", config(tmp_path / "s3", url)]) == 0
    assert (tmp_path / "s3" / "run" / "dicts" / "sae" / "model.safetensors").is_file()


def harvested(tmp_path, s3: str, name: str):
    """A harvest into ``s3``/``name``: (its URL, its config, the S3 file system, its hook's folder there,
    the bytes of every file under it)."""
    import s3fs

    url = f"{s3}/{name}"
    cfg = config(tmp_path / "s3", url)
    assert cli(["harvest", cfg]) == 0
    fs = s3fs.S3FileSystem()
    root = f"actdict-test/{name}/blocks.1.hook_resid_post"
    return url, cfg, fs, root, contents(fs, root)


def contents(fs, root: str) -> dict[str, bytes]:
    fs.invalidate_cache()
    return {p: fs.cat_file(p) for p in fs.find(root)}


def test_killed_remote_shard_is_rewritten(tmp_path, s3):
    """On S3 a shard is written in place, its done-record last: one cut short by a kill (here: its
    done-record and a chunk removed) is invisible to readers and rewritten by the rerun."""
    url, cfg, fs, root, before = harvested(tmp_path, s3, "store2")
    meta = f"{root}/shards/00002/zarr.json"
    blob = json.loads(fs.cat_file(meta))
    blob["attributes"] = {}
    fs.pipe_file(meta, json.dumps(blob).encode())
    fs.rm(f"{root}/shards/00002/acts/c/1/0")
    fs.pipe_file(f"{root}/manifest.json", fs.cat_file(f"{root}/manifest.json").replace(
        b'"complete": true', b'"complete": false'))
    fs.invalidate_cache()
    assert len(open_store(url, allow_partial=True)) == 128  # shards 0, 1 only
    assert cli(["harvest", cfg]) == 0
    assert contents(fs, root) == before  # the same files, the same bytes


def test_repair_of_a_remote_store(tmp_path, s3, capsys):
    """--repair on S3 removes a corrupted shard (its done-record first: s3fs cannot rename a prefix) and
    marks the hook unfinished; the harvest rewrites it, and the store is as it was."""
    url, cfg, fs, root, before = harvested(tmp_path, s3, "store3")
    chunk = f"{root}/shards/00002/acts/c/1/0"
    blob = bytearray(before[chunk])
    blob[5] ^= 0xFF
    fs.pipe_file(chunk, bytes(blob))
    fs.invalidate_cache()
    capsys.readouterr()
    assert cli(["store", url, "--verify"]) == 2 and "00002 is corrupted" in capsys.readouterr().out
    assert cli(["store", url, "--repair"]) == 0
    fs.invalidate_cache()
    assert not fs.exists(f"{root}/shards/00002") and not [p for p in fs.find(root) if ".tmp" in p]
    capsys.readouterr()
    assert cli(["store", url]) == 0 and "INCOMPLETE" in capsys.readouterr().out
    assert cli(["harvest", cfg]) == 0
    assert contents(fs, root) == before


def test_a_misspelt_bucket_is_refused_not_made(tmp_path, s3, capsys):
    import s3fs

    assert cli(["harvest", config(tmp_path / "s3", "s3://actdict-tset/store")]) == 2
    err = capsys.readouterr().err
    assert "the object store failed" in err and "bucket's name" in err, err
    s3fs.S3FileSystem.clear_instance_cache()
    assert not s3fs.S3FileSystem().exists("actdict-tset")
    from actdict.harvest.vectors import cli as import_cli  # the import command: one line too

    np.save(tmp_path / "v.npy", np.ones((16, 2), np.float32))
    assert import_cli([str(tmp_path / "v.npy"), "s3://actdict-tset/imp"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("import: ActdictError: the object store failed") and len(err.splitlines()) == 1


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_failed_replacement_leaves_the_old_hook(tmp_path, s3, where):
    """write_vectors(overwrite=True) writes the new hook beside the old one and swaps it in only once whole:
    a NaN row part way leaves the old hook's rows (and no staging folder); a whole one replaces them."""
    from actdict.harvest.store import write_vectors

    url = f"{s3}/replace" if where == "s3" else str(tmp_path / "replace")
    old = np.arange(40 * 3, dtype=np.float32).reshape(40, 3)
    write_vectors(url, old, chunk_rows=8, shard_rows=16)
    bad = old + 1
    bad[35, 1] = np.nan  # in the third shard: the first two are written before it is seen
    with pytest.raises(ValueError, match="row 35"):
        write_vectors(url, bad, chunk_rows=8, shard_rows=16, overwrite=True)
    s = open_store(url)
    np.testing.assert_array_equal(s.read_rows(0, len(s)).acts, old)
    assert list_hooks(url) == ["vectors"] and not any(".replacing" in p for p in _names(url))
    new = write_vectors(url, old * 2, chunk_rows=8, shard_rows=16, overwrite=True)
    np.testing.assert_array_equal(new.read_rows(0, 40).acts, old * 2)
    np.testing.assert_array_equal(open_store(url).read_rows(0, 40).acts, old * 2)
    assert not any(".replacing" in p for p in _names(url))


def _names(url: str) -> list[str]:
    from actdict.harvest.layout import fs_of

    fs, root = fs_of(url)
    fs.invalidate_cache()
    return fs.find(root, withdirs=True)


@pytest.mark.parametrize("holder", ["alive", "other host", "dead", "pid reused"])
def test_a_remote_store_has_a_lock_object(tmp_path, s3, capsys, holder):
    """No flock on S3: a harvest makes <store>/.actdict-lock.json only if there is none. Another live
    process's (or any of another host, which cannot be checked) stops a second harvest with one line; one a
    killed process of this host left (its pid free, or now another process's) is taken over, saying so."""
    import os
    import socket
    import subprocess
    import sys

    import s3fs

    from actdict.lock import _pid_space, _started

    url, fs = f"{s3}/locked-{holder.replace(' ', '-')}", s3fs.S3FileSystem()
    lock = f"{url[len('s3://'):]}/.actdict-lock.json"
    me = {"host": socket.gethostname(), "pids": _pid_space(), "pid": os.getpid(),
          "started": _started(os.getpid()), "since": "then"}
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                           text=True).stdout.strip()
    fs.pipe_file(lock, json.dumps(me | {"alive": me, "other host": {"host": "elsewhere"},
                                        "dead": {"pid": int(ended)}, "pid reused": {"started": "1"}}[holder]
                                  ).encode())
    code = cli(["harvest", config(tmp_path / "s3", url)])
    said = capsys.readouterr()
    if holder in ("alive", "other host"):
        host = "elsewhere" if holder == "other host" else socket.gethostname()
        assert code == 2 and (f"store {url} is in use by actdict process {os.getpid()} on host {host} (since "
                              f"then; its lock {url}/.actdict-lock.json): start this run when that one is "
                              f"done, or delete {url}/.actdict-lock.json if that process is gone") in said.err
        assert fs.exists(lock) and list_hooks(url) == []  # nothing written, the other one's lock kept
    else:
        assert code == 0 and list_hooks(url) == ["blocks.1.hook_resid_post"] and not fs.exists(lock)
        pid = ended if holder == "dead" else os.getpid()
        assert (f"store {url}: removing {url}/.actdict-lock.json, the lock of actdict process {pid}, which "
                "ended without removing it (killed?)") in said.out
