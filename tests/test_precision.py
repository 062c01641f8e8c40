"""The forward dtype ``auto``: bfloat16 only where the device has it natively (an AVX2-only CPU emulates it,
several times slower than float32), what the start lines and the manifest say, and a resume refused where
``auto`` picks another dtype than the store's. The CPU's flags are patched (both answers on any machine)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from actdict import precision
from actdict.config import Common, build
from actdict.harvest.config import HarvestConfig
from actdict.harvest.resume import HarvestError
from actdict.harvest.run import main
from actdict.harvest.store import open_store

TEXTS = Path(__file__).parent / "data" / "texts"
HOOK = "blocks.1.hook_resid_post"


@pytest.fixture
def cpu_flags(monkeypatch):
    """Set what torch says of this CPU's bf16 instructions (AVX512-BF16, AMX tiles)."""
    def set_flags(avx512_bf16: bool, amx: bool = False) -> None:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    return set_flags


@pytest.mark.parametrize("flags, want", [((False, False), "float32"), ((True, False), "bfloat16"),
                                         ((False, True), "bfloat16")])
def test_auto_is_bfloat16_only_on_a_cpu_with_bf16_instructions(cpu_flags, flags, want):
    cpu_flags(*flags)
    assert precision.forward_dtype("auto", "cpu") == want
    assert precision.forward_dtype("float32", "cpu") == "float32"  # asked: as asked, whatever the CPU
    assert precision.forward_dtype("bfloat16", "cpu") == "bfloat16"
    has = "has" if want == "bfloat16" else "lacks"
    assert precision.dtype_said("auto", want, "cpu") == f"{want} (auto: this CPU {has} native bf16)"
    assert precision.dtype_said("float32", "float32", "cpu") == "float32"
    note = precision.slow_bf16_note("cpu", "harvest.dtype bfloat16", "harvest.dtype=float32 or auto")
    assert (note is None) == (want == "bfloat16")
    if note:
        assert note.startswith("harvest.dtype bfloat16 on a CPU without bf16 instructions")
        assert note.endswith("harvest.dtype=float32 or auto is faster here")


def test_missing_torch_flags_count_as_no_bf16(monkeypatch):
    """The flags are torch's private functions: where a torch lacks them, the CPU counts as without bf16
    (auto: float32, the exact choice), not an AttributeError."""
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert precision.forward_dtype("auto", "cpu") == "float32"


def test_other_devices_and_bad_names(cpu_flags):
    cpu_flags(True)
    assert precision.slow_bf16_note("cuda", "x", "y") is None  # a GPU's bf16 is never emulated on a CPU
    assert precision.forward_dtype("auto", "meta") == "float32"
    if not torch.cuda.is_available():
        assert precision.forward_dtype("auto", "cuda") == "float32"
    with pytest.raises(ValueError, match="forward dtype must be one of auto, float32, bfloat16, got 'fp8'"):
        precision.forward_dtype("fp8", "cpu")
    with pytest.raises(ValueError, match="harvest.dtype: 'fp8' is not one of"):
        build(HarvestConfig, {"dtype": "fp8"}, "harvest")


def harvest(run_dir: Path, **kw) -> Common:
    data = {"source": {"kind": "files", "path": str(TEXTS)}, "chunk_rows": 16, "shard_rows": 32,
            "max_tokens": None, "device": "cpu", "ctx": 16, "batch_size": 3, "hooks": [HOOK]} | kw
    common = Common(run_dir=str(run_dir))
    main(common, build(HarvestConfig, data))
    return common


def test_an_auto_harvest_is_the_harvest_of_the_dtype_it_picks(tmp_path, cpu_flags, capsys):
    """harvest.dtype auto on a CPU without bf16: the start lines say float32 and why, the manifest's numerics
    say float32, and the rows are a float32 harvest's, bit for bit; on a CPU with bf16 they are a bfloat16
    harvest's (which differ from float32's)."""
    rows = {}
    for name in ("float32", "bfloat16"):
        rows[name] = open_store(harvest(tmp_path / name, dtype=name).store_path, HOOK).read_rows(0, 95).acts
    assert not np.array_equal(rows["float32"], rows["bfloat16"])
    for flags, want in ((False, "float32"), (True, "bfloat16")):
        cpu_flags(flags)
        capsys.readouterr()
        store = open_store(harvest(tmp_path / f"auto-{flags}", dtype="auto").store_path, HOOK)
        out = capsys.readouterr().out
        said = f"{want} (auto: this CPU {'has' if flags else 'lacks'} native bf16)"
        assert f"(device cpu, {said})\n" in out  # the loading line
        assert f"cpu, 1 thread, {said}) hooks" in out or f"threads, {said}) hooks" in out  # the start line
        assert store.manifest["numerics"] == f"forward {want} on cpu, stored float16"
        assert store.manifest["harvest"]["dtype"] == "auto"
        np.testing.assert_array_equal(store.read_rows(0, 95).acts, rows[want])
        assert "warning" not in out


def test_bfloat16_asked_on_a_cpu_without_it_warns(tmp_path, cpu_flags, capsys):
    cpu_flags(False)
    harvest(tmp_path / "r", dtype="bfloat16", max_tokens=32)
    out = capsys.readouterr().out
    assert out.startswith("harvest: warning: harvest.dtype bfloat16 on a CPU without bf16 instructions")
    assert "harvest.dtype=float32 or auto is faster here\n" in out
    cpu_flags(True)
    harvest(tmp_path / "s", dtype="bfloat16", max_tokens=32)
    assert "warning" not in capsys.readouterr().out


def _refused_without_bf16(run_dir: Path, cpu_flags) -> str:
    """The HarvestError an auto harvest into ``run_dir`` stops with on a CPU without bf16 instructions."""
    cpu_flags(False)
    with pytest.raises(HarvestError) as e:
        harvest(run_dir, dtype="auto")
    return str(e.value)


def test_an_unfinished_auto_store_resumes_only_where_auto_picks_its_dtype(tmp_path, cpu_flags):
    """A store started by an auto harvest on a CPU with bf16, cut short, then rerun on one without: the
    rows would mix two dtypes, so the harvest refuses, saying the forward's dtype or device differs and
    naming both numerics; on a CPU with bf16 again it resumes and completes."""
    cpu_flags(True)
    store = Path(harvest(tmp_path / "r", dtype="auto").store_path)
    manifest = store / HOOK / "manifest.json"
    assert json.loads(manifest.read_text())["n_rows"] == 95  # 3 shards: the texts' rows
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"complete": False}))
    shutil.rmtree(store / HOOK / "shards" / "00002")  # what a kill before the last shard leaves
    assert ("numerics: store 'forward bfloat16 on cpu, stored float16', this run 'forward float32 on cpu, "
            "stored float16'): this run's forward dtype or device is not the one the store was started with "
            "(harvest.dtype / harvest.device: 'auto' picks by the machine): it resumes where they pick the "
            "store's numerics again (set otherwise, they are another config); delete the store") in (
        _refused_without_bf16(tmp_path / "r", cpu_flags))
    assert not (store / HOOK / "shards" / "00002").exists()
    with pytest.raises(HarvestError, match=r"another config \(hook .*: dtype: 'auto' -> 'bfloat16'\)"):
        harvest(tmp_path / "r", dtype="bfloat16")  # what the refusal said to do: refused as another config
    cpu_flags(True)
    harvest(tmp_path / "r", dtype="auto")
    s = open_store(store, HOOK)
    assert len(s) == 95 and s.manifest["complete"]


def test_train_autocast_on_a_cpu_without_bf16_warns(tmp_path, cpu_flags, capsys):
    """train.autocast on a CPU that emulates bf16 trains as asked, saying first that it is slower there;
    on a CPU with bf16 instructions, not a word."""
    from actdict.harvest.store import write_vectors
    from actdict.train.config import DictConfig, TrainConfig
    from actdict.train.run import main as train

    x = np.random.default_rng(0).standard_normal((512, 8)).astype(np.float32)
    store = write_vectors(str(tmp_path / "store"), x, shard_rows=256, chunk_rows=128).path
    for flags in (False, True):
        cpu_flags(flags)
        capsys.readouterr()
        cfg = TrainConfig(dicts=[DictConfig("l1", "sae_l1", k=8)], epochs=1, batch_size=128, device="cpu",
                          autocast=True, test_fraction=0.25)
        train(Common(run_dir=str(tmp_path / f"run{flags}"), store=store), cfg)
        said = capsys.readouterr().out
        warned = ("train: warning: train.autocast (bf16 matmuls) on a CPU without bf16 instructions "
                  "(AVX512-BF16 or AMX): torch emulates it")
        assert (warned in said) == (not flags), said
        assert (tmp_path / f"run{flags}" / "dicts" / "l1" / "model.safetensors").exists()


def test_a_complete_auto_store_grows_only_where_auto_picks_its_dtype(tmp_path, cpu_flags):
    """A larger max_tokens on a complete auto store, on a CPU where auto picks another dtype than the store's:
    refused before the store is reopened (it was reopened, then refused: left unfinished, unusable here), so
    it stays complete and usable as it was; on a CPU that picks its dtype again it grows."""
    cpu_flags(True)
    store = Path(harvest(tmp_path / "r", dtype="auto", max_tokens=64).store_path)
    assert ("cannot grow (numerics: store 'forward bfloat16 on cpu, stored float16', this run 'forward "
            "float32 on cpu, stored float16'): this run's forward dtype or device is not the one it was "
            "harvested with (harvest.dtype / harvest.device: 'auto' picks by the machine), so its rows would "
            "mix two: it grows where they pick the store's numerics again; it is left complete as it was: "
            "use it with harvest.max_tokens=64") in _refused_without_bf16(tmp_path / "r", cpu_flags)
    s = open_store(store, HOOK)
    assert (len(s), s.manifest["complete"], s.manifest["harvest"]["max_tokens"]) == (64, True, 64)
    harvest(tmp_path / "r", dtype="auto", max_tokens=64)  # used as it is
    cpu_flags(True)
    harvest(tmp_path / "r", dtype="auto")
    s = open_store(store, HOOK)
    assert (len(s), s.manifest["complete"], s.manifest["numerics"]) == (
        95, True, "forward bfloat16 on cpu, stored float16")


def test_auto_on_cuda_asks_the_gpu_the_device_names(monkeypatch):
    """'cuda:1' on a machine whose GPU 0 (the current one) is a Turing (7.5) and GPU 1 an Ampere (8.0):
    auto is bfloat16 there (torch's is_bf16_supported answered for the current GPU: float32), float32 on
    'cuda' and 'cuda:0'."""
    caps = {0: (7, 5), 1: (8, 0)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d: caps[d.index or 0])  # a torch.device
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: type("P", (), {"major": caps[i][0]}))
    monkeypatch.setattr(torch.version, "hip", None)
    assert [precision.forward_dtype("auto", d) for d in ("cuda", "cuda:0", "cuda:1")] == [
        "float32", "float32", "bfloat16"]
    assert precision.dtype_said("auto", "bfloat16", "cuda:1") == "bfloat16 (auto: this GPU has native bf16)"


def test_the_dry_run_says_a_store_auto_would_refuse_here(tmp_path, cpu_flags):
    """--dry-run on a store whose numerics auto does not pick on this CPU: 'would stop' with the refusal the
    harvest stops with once its model is loaded (it said 'grows' / 'continues'); where auto picks them, as
    before."""
    from actdict.harvest.reuse import plan

    cpu_flags(True)
    common = harvest(tmp_path / "r", dtype="auto", max_tokens=64)
    data = {"source": {"kind": "files", "path": str(TEXTS)}, "chunk_rows": 16, "shard_rows": 32,
            "max_tokens": None, "device": "cpu", "ctx": 16, "batch_size": 3, "hooks": [HOOK], "dtype": "auto"}
    cfg = build(HarvestConfig, data)
    where = f"store {common.store_path} hook {HOOK!r}"
    assert plan(common, cfg).lines[0].startswith(f"harvest: grows store {common.store_path} to max_tokens")
    cpu_flags(False)
    said = plan(common, cfg)
    assert said.stops and said.lines == [
        f"harvest: would stop: {where} cannot grow (numerics: store 'forward bfloat16 on cpu, stored "
        "float16', this run 'forward float32 on cpu, stored float16'): this run's forward dtype or device is "
        "not the one it was harvested with (harvest.dtype / harvest.device: 'auto' picks by the machine), so "
        "its rows would mix two: it grows where they pick the store's numerics again; it is left complete as "
        "it was: use it with harvest.max_tokens=64, or set store / run_dir to another folder to harvest more "
        "rows"]
    manifest = Path(common.store_path) / HOOK / "manifest.json"
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"complete": False}))  # a killed run
    cfg = build(HarvestConfig, data | {"max_tokens": 64})
    said = plan(common, cfg)
    assert said.stops and said.lines[0].startswith(
        f"harvest: would stop: {where} does not match this harvest (numerics: store 'forward bfloat16 on cpu")
    with pytest.raises(HarvestError, match="does not match this harvest"):  # as the harvest stops
        main(common, cfg)
    cpu_flags(True)
    assert plan(common, cfg).lines[0].startswith("harvest: continues the unfinished harvest in")


def test_a_gpu_before_ampere_warns_and_auto_picks_float32(monkeypatch):
    """A CUDA GPU of compute capability 7.5 (a T4) has no bf16 tensor cores: auto picks float32, and an
    asked bfloat16 says so; 8.0 (an A100): bfloat16 and no word. GPUs faked (none needed)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "hip", None)
    for cap, want in (((7, 5), "float32"), ((8, 0), "bfloat16")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=cap: c)
        assert precision.forward_dtype("auto", "cuda:0") == want
        note = precision.slow_bf16_note("cuda:0", "harvest.dtype bfloat16", "harvest.dtype=float32 or auto")
        assert (note is None) == (want == "bfloat16")
        if note:
            assert note.startswith("harvest.dtype bfloat16 on a GPU of compute capability below 8.0")
