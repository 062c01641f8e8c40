"""benchmarks/*.py at tiny sizes on the CPU, each as its own process (as they are run): every script runs to
the end and prints the table the README's Benchmarks section reads, with its columns and ratios consistent
with one another. No timing is asserted: the numbers only have to parse, be positive and agree with each
other. (paper_tables.py has tests/test_paper_tables.py; gpu_session.sh's CPU rehearsal is in its header.)
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from actdict.harvest.store import write_vectors

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
NUM = r"[\d,]+(?:\.\d+)?"


def run(script: str, *args: str) -> str:
    """The script's stdout; its stderr in the failure message if it did not exit 0."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def num(s: str) -> float:
    return float(s.replace(",", ""))


def test_train_table_and_the_l1_sparse_state_at_a_batch_below_512():
    out = run("train.py", "--d", "64", "--k", "256", "--batch", "256", "--steps", "2", "--warmup", "1",
              "--repeats", "1", "--variants", "sae_topk", "sae_l1", "--topk", "4", "--l1-l0", "8",
              "--no-saelens", "--stream-rows", "2048")
    disk, ram = re.search(rf"store on disk \(float16\) ({NUM}) rows/s, in-RAM array ({NUM}) rows/s",
                          out).groups()
    assert num(disk) > 0 and num(ram) > 0
    fed = re.search(rf"store stream ({NUM}) samples/s, by in-RAM tensors ({NUM}) samples/s \(ratio ({NUM})\)",
                    out).groups()
    assert num(fed[2]) == pytest.approx(num(fed[0]) / num(fed[1]), abs=0.006)
    row = rf"^(\S+)\s+256\s+({NUM})\s+({NUM})\s+({NUM})%\s+({NUM})%\s+-\s+-$"  # no SAELens column
    rows = {m[0]: m[1:] for m in re.findall(row, out, re.M)}
    assert list(rows) == ["sae_topk", "sae_l1", "sae_l1@L0=8"]
    for rate, _, pct, dense in rows.values():
        assert num(rate) > 0 and num(pct) > 0 and num(dense) > 0
    pct, dense = (num(v) for v in rows["sae_l1"][2:])
    assert pct == pytest.approx(dense, abs=0.11)  # the fused dense step does the dense algorithm's matmuls
    pct, dense = (num(v) for v in rows["sae_topk"][2:])
    assert pct < dense  # the sparse decode and encoder gradient count no matmul
    # the bias lowered for 8 of 256 codes a row from the batch's 256 rows (was: for 512 rows, L0 16)
    l0 = float(re.search(r"sae_l1@L0=8: mean L0 after the timed steps ([\d.]+) of 256", out)[1])
    assert l0 == pytest.approx(8, abs=1.5)


def test_train_without_warmup_ends_and_refuses_an_l1_l0_not_below_k():
    # --warmup 0 was a train() of max_steps 0, no limit, on the endless store stream: it never ended
    proc = subprocess.run([sys.executable, str(BENCH / "train.py"), "--d", "16", "--k", "32", "--batch", "64",
                           "--variants", "sae_l1", "--l1-l0", "32", "--no-saelens", "--stream-rows", "256",
                           "--steps", "1", "--warmup", "0", "--repeats", "1"],
                          capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"},
                          timeout=120)
    assert proc.returncode == 1
    assert "--l1-l0 32: give a count of nonzero codes per row below k = 32" in proc.stderr


def test_train_profile_rate_matches_its_step_time():
    out = run("train_profile.py", "--d", "32", "--k", "64", "--batch", "64", "--steps", "2", "--rows", "3",
              "--topk", "4")
    head = rf"^(\w+) d=32 k=64 B=64 float32 on cpu: ({NUM}) ms/step, ({NUM}) samples/s"
    heads = re.findall(head, out, re.M)
    assert [h[0] for h in heads] == ["sae_topk", "sae_l1"]
    for _, ms, rate in heads:  # ms printed to 2 decimals: +-0.005 ms, 1 % of a 0.5 ms step
        assert num(rate) == pytest.approx(64 / (num(ms) / 1e3), rel=0.0051 / num(ms) + 0.001)
    assert out.count("Self CPU time total") == 2


def test_sparse_ops_times_each_op():
    out = run("sparse_ops.py", "--B", "64", "--d", "16", "--k", "128", "--topk", "4")
    ops = re.findall(r"^  (.+?)\s+([\d.]+)$", out, re.M)
    assert len(ops) == 11 and all(float(ms) > 0 for _, ms in ops)
    assert sum("(used)" in name for name, _ in ops) == 3
    assert "k=128 B=64 d=16 topk=4 on cpu (ms per call)" in out


def test_analyze_pass_prints_each_option_beside_the_forward():
    out = run("analyze_pass.py", "--ks", "64", "256", "--d", "16", "--ad", "4", "--rows", "128", "--repeats",
              "1", "--classes", "3")
    assert "sae_topk, B 128, d 16, 3 classes, 1 thread(s)" in out
    rows = re.findall(r"^\s*(\d+)\s+([\d.]+)((?:\s+[\d.]+ \(\s*[\d.]+x\)){4})\s+([\d.]+)$", out, re.M)
    assert [r[0] for r in rows] == ["64", "256"]
    for _, fwd, cells, _ in rows:
        pairs = re.findall(r"([\d.]+) \(\s*([\d.]+)x\)", cells)
        assert len(pairs) == 4
        for t, x in pairs:  # to 3 decimals (+-0.0005) and 2 (+-0.005), as the cofire test's bounds
            low = max(float(t) - 0.0005, 0) / (float(fwd) + 0.0005) - 0.005
            high = (float(t) + 0.0005) / max(float(fwd) - 0.0005, 1e-9) + 0.005
            assert low <= float(x) <= high, (t, fwd, x)



def test_analyze_pass_times_each_update_and_the_whole_end_of_the_pass(monkeypatch):
    """measure(): the untimed first batch then --repeats timed ones per option (the first computes the
    paper's RE sample), and the 'summary (once)' column is run.py's end of the pass: ModelEval.summary with
    its class_separation AND class_profile (the docstring said so; only summary was timed)."""
    import importlib.util

    import torch

    from actdict.analyze import evaluate
    from actdict.train.protocol import make

    spec = importlib.util.spec_from_file_location("analyze_pass", BENCH / "analyze_pass.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    calls = {"update": 0, "summary": 0, "class_profile": 0}

    def counted(name):
        real = getattr(evaluate.ModelEval, name)

        def call(self, *args, **kw):
            calls[name] += 1
            return real(self, *args, **kw)
        return call

    for name in calls:
        monkeypatch.setattr(evaluate.ModelEval, name, counted(name))
    model = make("sae_topk", 8, 32, seed=0, topk=4).eval()
    times, end = bench.measure(model, torch.randn(24, 8, generator=torch.Generator().manual_seed(0)), 3, 2)
    assert len(times) == 1 + len(bench.OPTIONS) and end >= 0
    assert calls == {"update": len(bench.OPTIONS) * (1 + 2), "summary": 1, "class_profile": 1}

def test_cofire_ratios_are_the_times_over_the_forward():
    out = run("cofire.py", "--ks", "64", "256", "--d", "16", "--ad", "4", "--rows", "128", "--repeats", "1")
    rows = re.findall(r"^\s*(\d+)\s+([\d.]+)\s+([\d.]+) \(\s*([\d.]+)x\)\s+([\d.]+) \(\s*([\d.]+)x\)"
                      r"\s+([\d.]+) \(\s*([\d.]+)x\)$", out, re.M)
    assert [r[0] for r in rows] == ["64", "256"]
    for r in rows:
        fwd, cells = float(r[1]), [(float(r[i]), float(r[i + 1])) for i in (2, 4, 6)]
        assert fwd > 0
        for t, x in cells:  # times printed to 3 decimals (+-0.0005), ratios to 2 (+-0.005): x must lie
            low = max(t - 0.0005, 0) / (fwd + 0.0005) - 0.005  # between the ratios those bounds allow
            high = (t + 0.0005) / max(fwd - 0.0005, 1e-9) + 0.005
            assert low <= x <= high, (t, fwd, x)


def test_l1_run_ours_with_and_without_the_sparse_step_agree(tmp_path):
    x = np.random.default_rng(0).standard_normal((2048, 16)).astype(np.float32)
    write_vectors(str(tmp_path / "s"), x, dtype="float16", shard_rows=1024, chunk_rows=512)
    out = run("l1_run.py", str(tmp_path / "s"), "--k", "64", "--batch", "64", "--steps", "6", "--every", "3",
              "--lam1", "5", "--no-saelens")
    trace = re.findall(r"^\s*(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", out, re.M)
    assert [t[0] for t in trace] == ["0", "3", "5"]
    assert all(t[1:3] == t[3:5] for t in trace)  # L0 and loss of the two runs, as printed
    dense = re.search(rf"^ours, dense only: [\d.]+ s, ({NUM}) samples/s \(0 of 6 steps sparse\); "
                      rf"ours is ([\d.]+)x faster$", out, re.M)
    assert dense and num(dense[1]) > 0 and float(dense[2]) > 0
    assert re.search(r"^ours: [\d.]+ s, [\d,]+ samples/s \(\d of 6 steps sparse\); ours is 1.00x faster$",
                     out, re.M)


FAKE_SAELENS = '''"""A stand-in for SAELens's training API, for --saelens-path: its standard SAE (the squared
error summed over d plus l1_coefficient * sum_i f_i ||W_dec,i||), Adam and a clip at 1, as
``SAETrainer.step``; it records the interpreter that imported it."""
import sys
import types
from pathlib import Path

import torch

Path(__file__).with_name("imported_by").write_text(sys.executable)
__version__ = "0.0.0"


class StandardTrainingSAEConfig:
    def __init__(self, d_in, d_sae, l1_coefficient, apply_b_dec_to_input=True):
        self.d_in, self.d_sae, self.l1_coefficient = d_in, d_sae, l1_coefficient


class StandardTrainingSAE(torch.nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.W_enc = torch.nn.Parameter(torch.zeros(cfg.d_in, cfg.d_sae))
        self.W_dec = torch.nn.Parameter(torch.zeros(cfg.d_sae, cfg.d_in))
        self.b_enc = torch.nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_dec = torch.nn.Parameter(torch.zeros(cfg.d_in))

    def encode(self, x):
        return torch.relu(x @ self.W_enc + self.b_enc)

    def loss(self, x):
        f = self.encode(x)
        err = ((f @ self.W_dec + self.b_dec - x) ** 2).sum(-1).mean()
        return err + self.cfg.l1_coefficient * (f * self.W_dec.norm(dim=1)).sum(-1).mean()


class SAETrainer:
    def __init__(self, cfg, sae, data):
        self.sae, self.n_training_steps = sae, 0
        self.opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr)

    def step(self, x):
        loss = self.sae.loss(x)
        self.opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.sae.parameters(), 1.0)
        self.opt.step()
        return types.SimpleNamespace(loss=loss.detach())
'''
FAKE_CONFIG = """class SAETrainerConfig:
    def __init__(self, lr, **rest):
        self.lr = lr
"""


def test_l1_run_runs_saelens_from_this_interpreter_with_saelens_path(tmp_path):
    """``--saelens-path DIRS`` (as benchmarks/train.py's, for a machine where no venv can be made): the
    SAELens run is this interpreter's child with DIRS first on its path (here a stand-in SAELens), and its
    column is printed beside ours; l1_run.py had only --saelens-venv."""
    x = np.random.default_rng(0).standard_normal((2048, 16)).astype(np.float32)
    write_vectors(str(tmp_path / "s"), x, dtype="float16", shard_rows=1024, chunk_rows=512)
    (fake := tmp_path / "site" / "sae_lens").mkdir(parents=True)
    (fake / "__init__.py").write_text(FAKE_SAELENS)
    (fake / "config.py").write_text(FAKE_CONFIG)
    out = run("l1_run.py", str(tmp_path / "s"), "--k", "64", "--batch", "64", "--steps", "6", "--every", "3",
              "--lam1", "5", "--saelens-venv", str(tmp_path / "no-venv"), "--saelens-path",
              f"{tmp_path / 'nothing'}{os.pathsep}{tmp_path / 'site'}")
    assert (fake / "imported_by").read_text() == sys.executable
    head = r"^\s+step\s+L0 ours\s+loss\s+L0 ours, dense only\s+loss\s+L0 SAELens\s+loss$"
    assert re.search(head, out, re.M)
    trace = re.findall(r"^\s*(\d+)" + r"\s+([\d.]+)" * 6 + "$", out, re.M)
    assert [t[0] for t in trace] == ["0", "3", "5"]
    said = re.search(rf"^SAELens: [\d.]+ s, ({NUM}) samples/s; ours is ([\d.]+)x faster$", out, re.M)
    assert said and num(said[1]) > 0 and float(said[2]) > 0
    assert not (tmp_path / "no-venv").exists()  # the venv is neither used nor made


def _harvest_rows(out: str, title: str) -> list[list[str]]:
    block = out.split(title, 1)[1].split("\n\n", 1)[0].splitlines()[1:]  # below the title's line
    assert block[0].split()[:3] == ["model", "d", "ctx"]
    return [line.split() for line in block[1:]]


@pytest.mark.slow
def test_harvest_ratios_are_the_table_rates(tmp_path):
    out = run("harvest.py", "--models", "pythia", "--tokens", "2048", "--shard-rows", "512",
              "--batch-size", "4", "--repeats", "1", "--tmp", str(tmp_path))
    from actdict.precision import forward_dtype  # the default --dtype auto, said as what it picked here

    picked = forward_dtype("auto", "cpu")
    has = "has" if picked == "bfloat16" else "lacks"
    assert f", cpu, dtype {picked} (auto: this CPU {has} native bf16)" in out
    for title in ("tokens/s, wall clock", "tokens per CPU-second"):
        (row,) = _harvest_rows(out, title)
        assert row[:3] == ["pythia", "512", "256"] and len(row) == 3 + 6 + 3
        tps = dict(zip(("tokenise", "bare", "cached", "harvest", "write", "attributed"),
                       (num(v) for v in row[3:9]), strict=True))
        assert all(v > 0 for v in tps.values())
        ratios = [float(v) for v in row[9:]]
        for r, top in zip(ratios, ("harvest", "attributed", "write"), strict=True):
            assert r == pytest.approx(tps[top] / tps["bare"], rel=0.01, abs=0.002)


@pytest.mark.slow
def test_harvest_profile_rates_count_the_tokens_it_ran():
    # 2,500 tokens at batch 4 x 256: the bare forward runs 2 batches, 2,048 tokens, and its rate counts those
    out = run("harvest_profile.py", "--tokens", "2500", "--batch-size", "4")
    from actdict.precision import forward_dtype  # the default --dtype auto, said as what it picked and why

    picked = forward_dtype("auto", "cpu")
    has = "has" if picked == "bfloat16" else "lacks"
    assert out.startswith(f"forward dtype {picked} (auto: this CPU {has} native bf16)\n")
    writes = re.findall(r"^write_shard 65,536 rows x 512 float16 .* flushed ([14]) at a time", out, re.M)
    assert writes == ["1", "4"] * 3
    assert len(re.findall(rf"^batch 4, run \d .*: [\d.]+ s, ({NUM}) rows/s$", out, re.M)) == 3
    for part in ("main: forward", "main: store_rows", "writer: _write", "main: submit"):
        assert out.count(part) == 3
    bare = re.findall(rf"^bare forward, batch 4: ({NUM}) tokens, ({NUM}) tok/s$", out, re.M)
    assert len(bare) == 2 and all(n == "2,048" and num(r) > 0 for n, r in bare)


def test_every_benchmark_flag_is_in_the_readme():
    """The README's Benchmarks section lists each measuring script's flags (paper_tables.py: its --help),
    saelens_side.py's SAELens flags too where a script adds them (a helper: no bullet of its own)."""
    readme = (BENCH.parent / "README.md").read_text(encoding="utf-8")
    bullet = r"(?ms)^- `benchmarks/(\w+)\.py[^`]*`: (.*?)(?=^- |^$)"  # up to the next bullet or blank line
    bullets = dict(re.findall(bullet, readme))
    helpers = ("paper_tables", "paper_report", "paper_sets", "saelens_side")
    scripts = sorted(p.stem for p in BENCH.glob("*.py") if p.stem not in helpers)
    assert sorted(bullets) == scripts
    def flags(name: str) -> set[str]:
        return set(re.findall(r"add_argument\(\"(--[\w-]+)\"", (BENCH / f"{name}.py").read_text()))

    saelens = flags("saelens_side")
    assert saelens == {"--saelens-venv", "--saelens-path", "--no-saelens"}
    for name in scripts:
        adds = "from saelens_side import add_arguments" in (BENCH / f"{name}.py").read_text()
        found = flags(name) | (saelens if adds else set())
        assert found and {f for f in found if f"`{f}" not in bullets[name]} == set(), name


@pytest.mark.parametrize("device, said", [("cuda", "this torch sees no CUDA device"),
                                          ("mps", "cpu or cuda[:N]")])
def test_analyze_pass_refuses_a_device_it_cannot_time(device, said):
    """--device (for the GPU sessions: the sparse analysis paths were only ever timed on a CPU): a device this
    torch lacks, or one other than cpu / cuda, is refused by the parser (exit 2), before any model is made."""
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("a CUDA device is there: nothing to refuse")
    proc = subprocess.run([sys.executable, str(BENCH / "analyze_pass.py"), "--device", device, "--ks", "8"],
                          capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"},
                          timeout=120)
    assert proc.returncode == 2 and f"--device {device}: {said}" in proc.stderr


def test_analyze_pass_times_on_the_batchs_device(monkeypatch):
    """measure() builds each ModelEval on x's device and its rows and labels there (run.one_pass's), and
    waits for a CUDA device's queued work in each timed call (_synced); on a CPU each call is timed as is."""
    import importlib.util

    import torch

    from actdict.analyze import evaluate
    from actdict.train.protocol import make

    spec = importlib.util.spec_from_file_location("analyze_pass", BENCH / "analyze_pass.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    seen = []
    real = evaluate.ModelEval.update

    def update(self, x, rows, cls=None):
        seen.append((self.fire.device, rows.device, None if cls is None else cls.device))
        return real(self, x, rows, cls)

    monkeypatch.setattr(evaluate.ModelEval, "update", update)
    model = make("sae_topk", 8, 32, seed=0, topk=4).eval()
    bench.measure(model, torch.randn(24, 8), 3, 1)
    cpu = torch.device("cpu")
    assert seen and all(d == cpu and r == cpu and c in (None, cpu) for d, r, c in seen)
    assert sum(c is not None for _, _, c in seen) == 3 * 2  # 3 labelled options, 2 calls each
    f = lambda: None  # noqa: E731
    assert bench._synced(f, cpu) is f and bench._synced(f, torch.device("cuda")) is not f


def test_bf16_on_a_cpu_without_bf16_instructions_is_said_emulated():
    """The training benchmarks' --autocast says, on a CPU that emulates bf16 (no AVX512-BF16 / AMX: several
    times slower than float32), that it is emulated there; on one with bf16 instructions, and in float32,
    not a word."""
    from actdict.precision import cpu_bf16

    said = ("(emulated: this CPU lacks bf16 instructions, AVX512-BF16 or AMX; several times slower than "
            "float32)")
    tiny = ("--d", "16", "--k", "32", "--batch", "64", "--steps", "1", "--variants", "sae_l1")
    out = run("train.py", *tiny, "--warmup", "1", "--repeats", "1", "--l1-l0", "0", "--no-saelens",
              "--stream-rows", "256", "--autocast")
    assert (f"bf16 autocast on cpu {said}\n" in out) == (not cpu_bf16()), out.splitlines()[0]
    out = run("train_profile.py", *tiny, "--rows", "1", "--autocast")
    assert (f"sae_l1 d=16 k=32 B=64 bf16 autocast on cpu {said}: " in out) == (not cpu_bf16())
    assert "emulated" not in run("train_profile.py", *tiny, "--rows", "1")
