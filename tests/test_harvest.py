"""The harvest loop: every stored row is aligned with the model run directly through HF transformers.

MiniLM (real weights, offline) and a random-init model of pythia-70m's exact shape (the Pythia code path);
``blocks.L.hook_resid_post`` must equal HF ``hidden_states[L+1]`` at the row's window position (other
families, every block: test_architectures).
"""

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_resume import tree

from actdict.config import Common, ConfigError, build, common_of, load_experiment, section
from actdict.harvest.config import HarvestConfig
from actdict.harvest.models import HookError, ModelError, resolve_model
from actdict.harvest.random_init import make_random_pythia
from actdict.harvest.run import HarvestError, main
from actdict.harvest.sources import iter_documents
from actdict.harvest.store import StoreError, open_store
from actdict.harvest.windows import token_windows

ROOT = Path(__file__).parents[1]
TEXTS = ROOT / "tests" / "data" / "texts"


def harvest(run_dir: Path, **kw) -> tuple[Common, HarvestConfig]:
    data = {"source": {"kind": "files", "path": str(TEXTS)}, "chunk_rows": 32, "shard_rows": 64,
            "max_tokens": None, "device": "cpu", "ctx": 16, "batch_size": 3} | kw
    cfg = build(HarvestConfig, data)
    common = Common(run_dir=str(run_dir))
    main(common, cfg)
    return common, cfg


def reference(run, tok, cfg, prefix, suffix, sep, pad_id, trim):
    """Rows (tokens, doc, pos, {layer: acts}) from the HF model run window by window, and the token docs."""
    docs = [tok(t, add_special_tokens=False)["input_ids"] for t in iter_documents(cfg.source)]
    out = {"tokens": [], "doc": [], "pos": [], "hs": []}
    for w in token_windows(docs, cfg.ctx, cfg.window_mode, prefix, suffix, sep, pad_id):
        keep = np.flatnonzero(w.keep)  # [k] window positions of document tokens
        n = int(np.flatnonzero(w.tokens != pad_id)[-1]) + 1 if trim else cfg.ctx  # encoders: unpadded input
        with torch.no_grad():
            hs = run(torch.from_numpy(w.tokens[None, :n]))  # tuple of [1, n, d]
        out["hs"].append(torch.stack(hs)[:, 0, keep].numpy())  # [n_layers+1, k, d]
        for k in ("tokens", "doc", "pos"):
            out[k].append(getattr(w, k)[keep])
    return {k: np.concatenate(v, axis=-2 if k == "hs" else 0) for k, v in out.items()}, docs


def check_aligned(rows, ref, docs, layer, rtol, atol, mask=None):
    mask = np.ones(len(ref["tokens"]), bool) if mask is None else mask
    assert len(rows) == int(mask.sum()) > 0
    np.testing.assert_array_equal(rows.token_ids, ref["tokens"][mask])
    np.testing.assert_array_equal(rows.doc, ref["doc"][mask])
    np.testing.assert_array_equal(rows.pos, ref["pos"][mask])
    # pos is the index of the token within its own document
    assert all(docs[d][p] == t for t, d, p in zip(rows.token_ids, rows.doc, rows.pos, strict=True))
    np.testing.assert_allclose(rows.acts, ref["hs"][layer + 1][mask], rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def minilm_hf():
    from transformers import AutoModel, AutoTokenizer

    path = resolve_model("all-MiniLM-L6-v2")[2]
    model = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    return (lambda ids: model(input_ids=ids, output_hidden_states=True).hidden_states), \
        AutoTokenizer.from_pretrained(path)


@pytest.mark.parametrize("mode", ["concat", "per_doc"])  # per_doc pads: checks the attention mask
def test_minilm_rows_align_with_hf(tmp_path, minilm_hf, mode):
    hooks = ["blocks.3.hook_resid_post", "blocks.1.hook_resid_post"]
    common, cfg = harvest(tmp_path / "run", hooks=hooks, window_mode=mode)
    ref, docs = reference(*minilm_hf, cfg, (101,), (102,), (102,), 0, trim=True)
    for hook, layer in zip(hooks, (3, 1), strict=True):
        store = open_store(common.store_path, hook)
        m = store.manifest
        assert (store.d, m["model"], m["dtype"], m["hook"]) == (384, "all-MiniLM-L6-v2", "float16", hook)
        # float16 storage: half an ulp is 2**-11 relative
        check_aligned(store.read_rows(0, len(store)), ref, docs, layer, rtol=1e-3, atol=1e-4)
    assert store.num_shards > 1 and len(set(ref["doc"])) == 5  # 2 txt files + 3 non-blank jsonl rows


def test_max_tokens_rerun_and_conflict(tmp_path, minilm_hf, capsys):
    common, cfg = harvest(tmp_path / "run", max_tokens=50)
    store = open_store(common.store_path)
    ref, docs = reference(*minilm_hf, cfg, (101,), (102,), (102,), 0, trim=True)
    first = np.arange(len(ref["doc"])) < 50
    check_aligned(store.read_rows(0, 50), ref, docs, 3, rtol=1e-3, atol=1e-4, mask=first)
    assert store.manifest["config_hash"] and store.manifest["tokenizer"] == "all-MiniLM-L6-v2"
    t = time.perf_counter()
    harvest(tmp_path / "run", max_tokens=50)  # same config: skipped, no model load
    assert "already complete" in capsys.readouterr().out and time.perf_counter() - t < 2
    # how the forward ran (batch size, device) does not choose the rows: a complete store is reused as it is
    before = tree(Path(common.store_path))
    harvest(tmp_path / "run", max_tokens=50, batch_size=5, device="auto")
    assert "it was harvested with batch_size 3; device cpu); skipping" in capsys.readouterr().out
    assert tree(Path(common.store_path)) == before
    manifest = next(Path(common.store_path).rglob("manifest.json"))
    done = json.loads(manifest.read_text())
    manifest.write_text(json.dumps(done | {"complete": False}))  # unfinished: it resumes only as it began
    with pytest.raises(HarvestError, match=r"resuming this unfinished harvest needs those .*: add "
                                           r"'harvest.batch_size=3' 'harvest.device=cpu' "
                                           r"'harvest.max_tokens=50' to the command"):
        harvest(tmp_path / "run", max_tokens=60, batch_size=5, device="auto")
    with pytest.raises(HarvestError, match=r"resuming this unfinished harvest needs those .*: add "
                                           r"'harvest.batch_size=3' to the command"):  # a run key alone
        harvest(tmp_path / "run", max_tokens=50, batch_size=5)
    manifest.write_text(json.dumps(done))
    with pytest.raises(HarvestError, match=r"growing this store needs those .*: add 'harvest.batch_size=3' "):
        harvest(tmp_path / "run", max_tokens=60, batch_size=5)
    with pytest.raises(HarvestError, match=r"growing this store needs those .*: add 'harvest.batch_size=3' "):
        harvest(tmp_path / "run", max_tokens=60, batch_size=5, embed={"prompt": "q: "})  # unread: no matter
    for other, why in (({"max_tokens": 40, "batch_size": 5}, "max_tokens: 50 -> 40"),
                       ({"batch_size": 5, "ctx": 17}, "ctx: 16 -> 17")):  # not a growth: refused, naming
        with pytest.raises(HarvestError, match=rf"another config \(hook '[^']*': {why}\); delete"):
            harvest(tmp_path / "run", **({"max_tokens": 50} | other))  # what decides the rows only
    with pytest.raises(HarvestError, match="another config.*ctx: 16 -> 20.*delete") as e:
        harvest(tmp_path / "run", max_tokens=50, ctx=20)
    assert "(hook 'blocks.3.hook_resid_post': ctx: 16 -> 20);" in str(e.value)  # only the keys that differ
    shutil.rmtree(next(Path(common.store_path).rglob("shards/00000")))  # a damaged complete store
    with pytest.raises(HarvestError, match="missing shard.s. 00000 .the manifest lists 1: 00000..00000"):
        harvest(tmp_path / "run", max_tokens=50)  # reported, not "already complete"
    with pytest.raises(StoreError, match="missing shard.s. 00000"):
        open_store(common.store_path)


@pytest.mark.parametrize("first", [30, 64])  # a short last shard (removed, refilled) or a whole one (kept)
def test_raising_max_tokens_grows_the_store_into_a_fresh_harvest(tmp_path, first, capsys):
    common, _ = harvest(tmp_path / "grown", max_tokens=first)
    store = Path(common.store_path)
    shard0 = next(store.rglob("shards/00000*"))
    before = tree(shard0)
    harvest(tmp_path / "grown", max_tokens=90)  # the test corpus has 95 rows
    out = capsys.readouterr().out
    assert "growing" in out and "before it grew, in any run folder, learned another store" in out
    fresh, _ = harvest(tmp_path / "fresh", max_tokens=90)
    assert tree(store) == tree(Path(fresh.store_path))  # every byte, manifests included
    assert len(open_store(common.store_path)) == 90
    assert (tree(shard0) == before) == (first == 64)  # a whole first shard was not written again
    with pytest.raises(HarvestError, match=r"holds the first 90 rows.*smaller max_tokens \(70\)"):
        harvest(tmp_path / "grown", max_tokens=70)
    unread = {"embed": {"prompt": "q: "}, "vectors": {"path": "x.npy"}}  # a token harvest reads neither
    harvest(tmp_path / "grown", max_tokens=None, **unread)  # grows to every row all the same
    assert "growing" in capsys.readouterr().out and len(open_store(common.store_path)) == 95


def test_growing_resumes_after_a_kill_between_its_steps(tmp_path):
    from actdict.harvest import resume

    common, cfg = harvest(tmp_path / "run", max_tokens=40)
    hook, path = cfg.hooks[0], common.store_path
    m = resume.read_manifest(path, hook)
    fs, d = resume.hook_dir(path, hook)
    fs.rm(f"{d}/shards/{resume.shard_name(0)}", recursive=True)  # reopen's first step done, then killed
    assert resume.read_manifest(path, hook) == m  # still "complete" for max_tokens 40
    harvest(tmp_path / "run", max_tokens=80)
    fresh, _ = harvest(tmp_path / "fresh", max_tokens=80)
    assert tree(Path(path)) == tree(Path(fresh.store_path))


def test_bad_hook_in_harvest_lists_valid(tmp_path):
    with pytest.raises(HookError, match=r"hook_resid_pots.*Valid hooks, L = 0..5: the residual stream: "
                                        r"blocks\.\{L\}\.hook_resid_mid, blocks\.\{L\}\.hook_resid_post, "
                                        r"blocks\.\{L\}\.hook_resid_pre; all \d+: .*hook_mlp_out"):
        harvest(tmp_path / "run", hooks=["blocks.3.hook_resid_pots"])


def test_pythia_code_path_offline(tmp_path):
    from transformers import AutoTokenizer, GPTNeoXForCausalLM

    path = make_random_pythia(tmp_path / "pythia")
    texts = ["The ferry leaves at nine, rain or shine.", "Owls are quiet <|endoftext|> at night.",
             "A tidy kitchen makes a calm cook; the orchard is full of apples this year."]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    common, cfg = harvest(tmp_path / "run", model=str(path), hooks=["blocks.2.hook_resid_post"],
                          source={"kind": "files", "path": str(tmp_path / "docs.jsonl")}, ctx=12,
                          store_dtype="float32")
    store = open_store(common.store_path)
    assert store.manifest["model"] == str(path.resolve()) and store.d == 512
    model = GPTNeoXForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(path)
    eot = tok.eos_token_id  # 50256: BOS of each window, separator between documents
    ref, docs = reference(lambda ids: model(input_ids=ids, output_hidden_states=True).hidden_states, tok,
                          cfg, (eot,), (), (eot,), eot, trim=False)
    special = ref["tokens"] == eot  # the literal <|endoftext|> in the text: skip_special drops its row
    assert special.sum() == 1
    check_aligned(store.read_rows(0, len(store)), ref, docs, 2, rtol=1e-4, atol=1e-5, mask=~special)


def test_run_stops_at_a_train_hook_the_model_lacks(tmp_path, capsys):
    """`actdict run` with hooks [all] and a train.hook past the model's last block: refused once the model has
    named its hooks, before any row is harvested (it used to harvest every hook, then refuse)."""
    from actdict.cli import main as actdict_main

    path = make_random_pythia(tmp_path / "pythia")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\nthreads: 1\nharvest: {{model: {path}, hooks: [all], "
                   f"ctx: 12, max_tokens: 64, chunk_rows: 8, shard_rows: 64, device: cpu, source: {{kind: "
                   f"files, path: {TEXTS}}}}}\n"
                   "train: {hook: blocks.9.hook_resid_post, dicts: [{name: a, variant: sae_l1, k: 8}]}\n")
    assert actdict_main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "train.hook='blocks.9.hook_resid_post' is not among the hooks the harvest writes ([" in err
    assert "'blocks.5.hook_resid_post']" in err and not list((tmp_path / "run").rglob("shards/*"))


def test_pythia_config_fails_fast_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))  # empty cache
    data = load_experiment(ROOT / "configs" / "pythia70m_pile10k.yaml", [f"run_dir={tmp_path / 'run'}"])
    cfg = section(data, "harvest", HarvestConfig)
    assert (cfg.model, cfg.hooks, cfg.ctx, cfg.source.kind) == (
        "EleutherAI/pythia-70m-deduped", ["blocks.2.hook_resid_post"], 256, "hub")
    t = time.perf_counter()
    with pytest.raises(ModelError, match="not in the local Hugging Face cache.*local folder"):
        main(common_of(data), cfg)
    assert time.perf_counter() - t < 5


@pytest.mark.parametrize("mode", ["tokens", "embeddings"])
def test_a_hub_model_is_probed_once(tmp_path, monkeypatch, mode):
    """The harvest asks whether its model can be had before its source check, and the load asked again: a
    hub model's probe (a HEAD request to the hub when online) ran twice. The load now takes the first
    answer. Here a counting stand-in for the probe, and a load that fails after it (no hub here)."""
    from transformer_lens.model_bridge import TransformerBridge

    from actdict.harvest import sources

    probes = []
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(sources, "hub_reachable", lambda timeout=2.0: probes.append(1) or True)

    def no_hub(*_, **__):
        raise OSError("no hub here")

    monkeypatch.setattr(TransformerBridge, "boot_transformers", no_hub)
    monkeypatch.setattr("sentence_transformers.SentenceTransformer", no_hub)
    with pytest.raises(ModelError, match=r"could not load (sentence-transformers )?model 'someone/tiny' "
                                         r"\(OSError: no hub here\)"):
        harvest(tmp_path / "run", model="someone/tiny", mode=mode, max_tokens=10)
    assert probes == [1]


def test_empty_source_is_a_clear_error(tmp_path):
    (tmp_path / "blank.jsonl").write_text('{"text": ""}\n{"text": "  "}\n')
    with pytest.raises(HarvestError, match="gave no documents"):
        harvest(tmp_path / "run", source={"kind": "files", "path": str(tmp_path / "blank.jsonl")})


class _FirstShard(Exception):
    """Raised where a harvest's first shard would be computed: its start is over."""


def test_a_harvests_start_makes_only_the_probes_two_forwards(tmp_path, monkeypatch):
    """A token harvest's start made the two probe forwards of ``LoadedModel.row_widths`` and then one more,
    of its first window, to find each hook's width d: the probe's shapes tell it (the product of the
    trailing dims), so the start makes two forwards, and the widths stored are the same."""
    import actdict.harvest.run as run

    shapes = []
    real_load = run.load_model

    def counted_load(*a, **kw):
        lm = real_load(*a, **kw)
        real = lm.bridge.run_with_cache

        def run_with_cache(ids, **kw):
            shapes.append(tuple(ids.shape))
            return real(ids, **kw)

        lm.bridge.run_with_cache = run_with_cache
        return lm

    def first_shard(*a, **kw):
        raise _FirstShard

    monkeypatch.setattr(run, "load_model", counted_load)
    monkeypatch.setattr(run, "shard_rows_of", first_shard)
    hooks = ["blocks.1.hook_resid_post", "blocks.1.attn.hook_z", "blocks.1.ln1.hook_scale"]
    with pytest.raises(_FirstShard):
        harvest(tmp_path / "run", hooks=hooks)
    assert shapes == [(2, 3), (2, 4)]  # the probe's: 2 windows of 3, then of 4 tokens
    store = tmp_path / "run" / "store"
    dims = {h: json.loads((store / h / "manifest.json").read_text())["d"] for h in hooks}
    assert dims == {hooks[0]: 384, hooks[1]: 384, hooks[2]: 1}  # hook_z: 12 heads x 32


def test_all_hooks_from_one_forward_in_bfloat16(tmp_path, minilm_hf, monkeypatch):
    import actdict.harvest.rows as rows

    calls = []
    real = rows.forward

    def counted(lm, b, hooks, stop, **kw):
        calls.append(stop)
        return real(lm, b, hooks, stop, **kw)

    monkeypatch.setattr(rows, "forward", counted)
    common, cfg = harvest(tmp_path / "one", hooks=["blocks.2.hook_resid_post"])
    n_one = len(calls)
    calls.clear()
    common, cfg = harvest(tmp_path / "all", hooks=["all"], store_dtype="bfloat16")
    assert len(calls) == n_one and set(calls) == {None}  # as many forwards for 6 hooks as for 1; no stop
    ref, docs = reference(*minilm_hf, cfg, (101,), (102,), (102,), 0, trim=True)
    hooks = [f"blocks.{i}.hook_resid_post" for i in range(6)]
    assert sorted(open_store(common.store_path, h).hook for h in hooks) == hooks
    for layer, h in enumerate(hooks):
        store = open_store(common.store_path, h)
        assert store.manifest["dtype"] == "bfloat16" and store.dtype.itemsize == 2
        rows = store.read_rows(0, len(store))
        want = torch.from_numpy(ref["hs"][layer + 1]).to(torch.bfloat16).float().numpy()
        close = np.isclose(rows.acts, want, rtol=0, atol=0)  # bit-equal to torch's bfloat16 rounding ...
        assert close.mean() > 0.97  # ... but where the two float32 forwards differ in the last bits
        check_aligned(rows, ref, docs, layer, rtol=2**-8, atol=1e-3)


def test_a_row_beyond_float16_names_its_store_row_document_and_position(tmp_path, monkeypatch):
    """A model's row that overflows a float16 store (a massive activation, |x| > 65504) stops the harvest
    naming that row, its document, position and token (it said 'some row'); the same harvest into float32
    stores the row there, with that document, position and token."""
    import re

    import actdict.harvest.rows as rows
    from actdict.harvest.writer import NonFiniteError

    real, calls = rows.forward, []

    def massive(lm, b, hooks, stop, **kw):
        acts = {h: a.clone() for h, a in real(lm, b, hooks, stop, **kw).items()}
        calls.append(1)
        if len(calls) == 2:  # the first batch (after the probe of the widths): window 0, position 5
            for h in hooks:
                acts[h][0, 5, 3] = 1e5
        return acts

    monkeypatch.setattr(rows, "forward", massive)
    with pytest.raises(NonFiniteError, match="not finite once cast to float16") as e:
        harvest(tmp_path / "f16", hooks=["blocks.1.hook_resid_post"], store_dtype="float16")
    named = re.search(r"row ([\d,]+) \(doc (\d+), position (\d+), token id (\d+)\)", str(e.value))
    assert named, str(e.value)
    calls.clear()
    common, _ = harvest(tmp_path / "f32", hooks=["blocks.1.hook_resid_post"], store_dtype="float32")
    store = open_store(common.store_path, "blocks.1.hook_resid_post")
    rows = store.read_rows(0, len(store))
    at = int(np.flatnonzero(rows.acts[:, 3] == 1e5)[0])
    assert [int(named[1].replace(",", "")), *map(int, named.groups()[1:])] == [
        at, int(rows.doc[at]), int(rows.pos[at]), int(rows.token_ids[at])]


def test_hook_patterns(tmp_path, capsys):
    common, _ = harvest(tmp_path / "run", hooks=["blocks.[13].hook_resid_post", "blocks.3.hook_resid_post"],
                        max_tokens=40)
    s1, s3 = (open_store(common.store_path, f"blocks.{i}.hook_resid_post") for i in (1, 3))
    assert len(s1) == len(s3) == 40 and s1.manifest["harvest"]["hooks"][0] == "blocks.[13].hook_resid_post"
    np.testing.assert_array_equal(s1.read_rows(0, 40).token_ids, s3.read_rows(0, 40).token_ids)
    with pytest.raises(HookError, match=r"blocks\.\*\.hook_resid_pots.*Valid hooks"):
        harvest(tmp_path / "bad", hooks=["blocks.*.hook_resid_pots"])

    # a config naming some hooks of that store (one run folder per hook) uses it as it is, untouched
    before = tree(Path(common.store_path))
    harvest(tmp_path / "run", hooks=["blocks.3.hook_resid_post"], max_tokens=40)
    assert "it was harvested with hooks [blocks.[13].hook_resid_post, blocks.3.hook_resid_post]" in (
        capsys.readouterr().out)
    assert tree(Path(common.store_path)) == before
    with pytest.raises(HarvestError, match=r"another config .*ctx: 16 -> 17"):
        harvest(tmp_path / "run", hooks=["blocks.3.hook_resid_post"], max_tokens=40, ctx=17)
    # patterns spelled otherwise than the store's hooks: expanded by the model, then the same store
    harvest(tmp_path / "run", hooks=["blocks.[31].hook_resid_post"], max_tokens=40)
    assert "already complete for this config" in capsys.readouterr().out
    assert tree(Path(common.store_path)) == before
    # patterns naming a hook more: that one is added beside the others, which stay as they were
    harvest(tmp_path / "run", hooks=["blocks.[123].hook_resid_post"], max_tokens=40)
    assert "adding blocks.2.hook_resid_post beside them" in capsys.readouterr().out
    assert {k: v for k, v in tree(Path(common.store_path)).items() if "blocks.2" not in k} == before
    s2 = open_store(common.store_path, "blocks.2.hook_resid_post")
    np.testing.assert_array_equal(s2.read_rows(0, 40).token_ids, s3.read_rows(0, 40).token_ids)


def test_store_from_another_model_or_corpus_is_refused(tmp_path):
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"text": "The ferry leaves at nine, rain or shine."}\n{"text": "Owls are quiet."}\n')
    src = {"kind": "files", "path": str(docs)}
    common, _ = harvest(tmp_path / "run", source=src, max_tokens=12)
    manifest = Path(common.store_path) / "blocks.3.hook_resid_post" / "manifest.json"
    m = json.loads(manifest.read_text())
    manifest.write_text(json.dumps(m | {"d": 512, "complete": False}))  # as if another model's width
    with pytest.raises(HarvestError, match=r"does not match this harvest \(d: store 512, this run 384\)"):
        harvest(tmp_path / "run", source=src, max_tokens=12)
    assert m["attention_mask"] == "padding"  # an encoder's; a store begun before it recorded none:
    old = {k: v for k, v in m.items() if k != "attention_mask"} | {"complete": False}
    manifest.write_text(json.dumps(old))
    with pytest.raises(HarvestError, match=r"\(attention_mask: store None, this run 'padding'\).*or an "
                                           "earlier actdict began it"):
        harvest(tmp_path / "run", source=src, max_tokens=12)
    manifest.write_text(json.dumps(m | {"complete": False}))
    docs.write_text(docs.read_text() + '{"text": "A new document."}\n')  # the corpus changed
    with pytest.raises(HarvestError, match="source_fingerprint.*source files changed"):
        harvest(tmp_path / "run", source=src, max_tokens=12)
    assert json.loads(manifest.read_text()) == m | {"complete": False}  # nothing was touched
    shutil.rmtree(tmp_path / "run")
    harvest(tmp_path / "run", source=src, max_tokens=12)  # complete, of the new file
    m = json.loads(manifest.read_text())
    docs.write_text(docs.read_text() + '{"text": "Edited again."}\n')  # no longer skipped as complete
    with pytest.raises(HarvestError, match=r"before its source files at .* changed \(a path, size or mt"):
        harvest(tmp_path / "run", source=src, max_tokens=12)
    assert json.loads(manifest.read_text()) == m


def test_non_utf8_jsonl_names_the_line(tmp_path):
    from actdict.harvest.sources import SourceError

    (tmp_path / "a.jsonl").write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(SourceError, match=r"a\.jsonl, line 2 is not valid UTF-8.*iconv"):
        harvest(tmp_path / "run", source={"kind": "files", "path": str(tmp_path / "a.jsonl")})


def test_pad_and_separator_settings():
    from types import SimpleNamespace

    from actdict.harvest.windows import window_specials

    lm = SimpleNamespace(kind="causal", bos_id=0, eos_id=2, pad_id=None, cls_id=None, sep_id=None, name="m",
                         n_vocab=200)
    cfg = build(HarvestConfig, {})
    assert window_specials(lm, cfg) == {"prefix": (0,), "suffix": (), "sep": (2,), "pad_id": 2}
    no_bos = SimpleNamespace(**vars(lm) | {"bos_id": None})  # a causal LM without BOS: EOS starts windows
    assert window_specials(no_bos, cfg) == {"prefix": (2,), "suffix": (), "sep": (2,), "pad_id": 2}
    cfg = build(HarvestConfig, {"prepend_bos": False, "join_with_eos": False, "pad_id": 7})
    assert window_specials(lm, cfg) == {"prefix": (), "suffix": (), "sep": (), "pad_id": 7}
    enc = SimpleNamespace(kind="encoder", bos_id=None, eos_id=None, pad_id=0, cls_id=101, sep_id=102,
                          name="e", n_vocab=200)
    assert window_specials(enc, cfg)["pad_id"] == 7 and window_specials(enc, cfg)["sep"] == (102,)


def test_a_pad_id_outside_the_vocabulary_is_one_line():
    """harvest.pad_id = -1 or an id past the model's vocabulary was an IndexError traceback from inside the
    model's embedding, at the first forward; now the config (negative) or the model (too large) refuses it
    in one line, naming the valid ids."""
    from types import SimpleNamespace

    from actdict.harvest.run import HarvestError
    from actdict.harvest.windows import window_specials

    with pytest.raises(ConfigError, match=r"harvest.pad_id must be a token id >= 0 or null, got -1"):
        build(HarvestConfig, {"pad_id": -1})
    lm = SimpleNamespace(kind="causal", bos_id=0, eos_id=2, pad_id=None, cls_id=None, sep_id=None, name="m",
                         n_vocab=200)
    assert window_specials(lm, build(HarvestConfig, {"pad_id": 199}))["pad_id"] == 199
    with pytest.raises(HarvestError, match=r"harvest.pad_id 200 is no token of m: its ids are 0..199"):
        window_specials(lm, build(HarvestConfig, {"pad_id": 200}))


def test_an_encoder_masks_the_padding_only():
    """A concat window whose body ends in the separator between two documents ([CLS] a b c [SEP] [SEP]) is
    full: the encoder sees every token; a padded last window masks exactly its padding."""
    from types import SimpleNamespace

    from actdict.harvest.rows import forward

    seen = []

    def run_with_cache(tokens, **kw):  # tokens [B, ctx]
        seen.append(kw.get("attention_mask"))
        return None, {"h": torch.zeros(*tokens.shape, 2)}

    lm = SimpleNamespace(kind="encoder", device="cpu", bridge=SimpleNamespace(run_with_cache=run_with_cache))
    windows = list(token_windows([[5, 6, 7], [8, 9, 10, 11], [12]], 6, "concat", (101,), (102,), (102,), 0))
    assert windows[0].tokens.tolist() == [101, 5, 6, 7, 102, 102] and not windows[0].keep[4:].any()
    assert windows[2].tokens.tolist() == [101, 102, 12, 102, 0, 0]
    forward(lm, windows[:2], ["h"], None)
    assert seen[-1] is None  # nothing to hide
    forward(lm, windows, ["h"], None)
    assert seen[-1].tolist() == [[1] * 6, [1] * 6, [1, 1, 1, 1, 0, 0]]


def test_stored_rows_are_checked_without_float64_on_mps(monkeypatch):
    """Apple's GPUs have no float64: store_rows summed float32 rows in it to find a non-finite one, so a
    harvest on mps with store_dtype float32 stopped at its first batch. There the sum is float32, and the
    exact check clears the overflow of finite rows near float32's limit (run here on the CPU)."""
    import actdict.harvest.rows as hrows

    assert hrows.sum_dtype(torch.float32, "cpu") == hrows.sum_dtype(torch.float32, "cuda") == torch.float64
    assert hrows.sum_dtype(torch.float32, "mps") == hrows.sum_dtype(torch.float16, "cuda") == torch.float32
    monkeypatch.setattr(hrows, "sum_dtype", lambda dtype, device_type: torch.float32)  # as on mps
    acts = torch.full((1, 4, 3), 3e38)  # [B, ctx, d] finite float32 rows whose float32 sum is inf
    out = np.empty((4, 3), np.float32)
    hrows.store_rows(acts, np.arange(4), out, "h")
    np.testing.assert_array_equal(out, np.full((4, 3), 3e38, np.float32))
    acts[0, 2, 1] = float("inf")
    with pytest.raises(ValueError, match="float32"):
        hrows.store_rows(acts, np.arange(4), out, "h")


def test_stored_rows_cast_like_the_writer_and_refuse_overflow():
    """harvest.rows.store_rows (torch, per batch, straight into the shard array) selects the rows and rounds
    exactly as layout.encode_acts; a non-finite stored value (overflow, nan, inf) in a selected row raises."""
    from actdict.harvest.layout import ACT_DTYPES, encode_acts
    from actdict.harvest.rows import store_rows

    acts = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 5, 7)).astype(np.float32) * 300)
    flat = np.array([0, 3, 4, 6, 9])  # rows of the flattened [B * ctx, d]
    for src in (acts, acts.to(torch.bfloat16)):  # the model's dtype
        for dtype in ("float16", "float32", "bfloat16"):
            shard = np.full((8, 7), 7, ACT_DTYPES[dtype])
            store_rows(src, flat, shard[2:7], "h")
            want = encode_acts(src.float().reshape(-1, 7).numpy()[flat], dtype)
            np.testing.assert_array_equal(shard[2:7], want)
            assert (shard[:2] == 7).all() and (shard[7:] == 7).all()  # nothing outside the slice
    out = np.empty((5, 7), np.float16)
    for bad in (1e6, float("nan"), float("inf")):
        big = acts.clone()
        big[1, 4, 2] = bad  # flat row 9
        with pytest.raises(ValueError, match="beyond float16's range"):
            store_rows(big, flat, out, "h")
        store_rows(big, flat[:4], out[:4], "h")  # a row not selected does not count
    big = acts.clone()
    big[0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="float32"):
        store_rows(big, flat, np.empty((5, 7), np.float32), "h")
    huge = acts.clone()
    huge[0, 3, :2] = 3e38  # finite in bfloat16 (float32's range), but two of them overflow a float32 sum
    out = np.empty((5, 7), np.uint16)
    store_rows(huge, flat, out, "h")
    np.testing.assert_array_equal(out, encode_acts(huge.reshape(-1, 7).numpy()[flat], "bfloat16"))
    huge[1, 4, 6] = float("-inf")
    with pytest.raises(ValueError, match="holds NaN or inf"):
        store_rows(huge, flat, out, "h")


def test_a_resumed_harvest_restarts_the_document_stream_at_its_last_whole_shard(tmp_path, monkeypatch):
    """Shards 0 and 1 whole: the rerun tokenizes only the documents from shard 1's recorded cursor on
    (docs/harvest.md: "the rerun does not even re-tokenize the documents before the first missing shard")."""
    from actdict.harvest import resume, windows

    small = {"shard_rows": 32, "chunk_rows": 16,
             "source": {"kind": "files", "path": str(TEXTS), "txt_docs": "paragraph"}}  # short documents
    common, cfg = harvest(tmp_path / "run", max_tokens=64, **small)
    start = resume.record(common.store_path, cfg.hooks[0], 1)["start"]
    docs = list(iter_documents(cfg.source))
    assert start["doc"] > 0 and start["row"] <= 32
    seen, real = [], windows.tokenized

    def spy(tokenizer, texts, *a, **kw):
        return real(tokenizer, (seen.append(t) or t for t in texts), *a, **kw)

    monkeypatch.setattr(windows, "tokenized", spy)
    harvest(tmp_path / "run", max_tokens=90, **small)  # grows: shards 0 and 1 stay, the rest is harvested
    assert seen == docs[start["doc"]:]
    monkeypatch.setattr(windows, "tokenized", real)
    fresh, _ = harvest(tmp_path / "fresh", max_tokens=90, **small)
    assert tree(Path(common.store_path)) == tree(Path(fresh.store_path))


def test_a_store_that_cannot_grow_is_refused_before_it_is_reopened(tmp_path):
    """A complete encoder store harvested before 2026-12-06 (its manifest records no attention_mask), asked
    for a larger max_tokens: refused with one line saying an earlier actdict harvested it and how to use it,
    and left complete, byte for byte (it was reopened first and refused after: incomplete, its short last
    shard removed, and neither the resume nor the growth it was told to run could continue it). So is a store
    whose source files changed since."""
    common, _ = harvest(tmp_path / "run", max_tokens=40)
    store = Path(common.store_path)
    manifest = next(store.rglob("manifest.json"))
    m = json.loads(manifest.read_text())
    assert m["complete"] and m["attention_mask"] == "padding"
    manifest.write_text(json.dumps({k: v for k, v in m.items() if k != "attention_mask"}))  # as then
    before = tree(store)
    with pytest.raises(HarvestError, match=r"cannot grow \(attention_mask: store None, this run 'padding'\): "
                                           r"an earlier actdict harvested it.*harvest\.max_tokens=40"):
        harvest(tmp_path / "run", max_tokens=60)
    assert tree(store) == before and len(open_store(common.store_path)) == 40
    manifest.write_text(json.dumps(m | {"source_fingerprint": "0123456789abcdef"}))  # the corpus changed
    before = tree(store)
    with pytest.raises(HarvestError, match=r"cannot grow \(source_fingerprint: .*source files changed"):
        harvest(tmp_path / "run", max_tokens=60)
    assert tree(store) == before and len(open_store(common.store_path)) == 40


def test_a_complete_store_of_an_older_format_asked_to_grow_says_why_it_cannot(tmp_path):
    """Raising max_tokens grows a format-3 store; one of an earlier format (2: a sha256 per shard) is not
    reopened, and the refusal says it was written by an earlier actdict and how to use it, not only 'holds a
    harvest with another config (max_tokens: 40 -> 60); delete' (as though growth were not a thing)."""
    common, _ = harvest(tmp_path / "run", max_tokens=40)
    store = Path(common.store_path)
    manifest = next(store.rglob("manifest.json"))
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"format_version": 2}))
    before = tree(store)
    with pytest.raises(HarvestError, match=r"but for max_tokens \(40 -> 60\), written by an earlier "
                                           r"actdict \(format 2\), which cannot grow: use it with "
                                           r"harvest\.max_tokens=40"):
        harvest(tmp_path / "run", max_tokens=60)
    assert tree(store) == before


def test_the_start_line_bounds_the_rows_when_max_docs_may_end_the_source_first():
    """hdog: harvest.source.max_docs=20 printed "100,000 rows per hook, ~470 MB on disk", then wrote 15,843
    rows: with max_docs the rows and size are an upper bound, and say so."""
    from actdict.harvest.run import planned

    assert planned(100_000, None, 4704) == "100,000 rows per hook, ~470.4 MB on disk"
    assert planned(100_000, 20, 4704) == ("at most 100,000 rows per hook, ~470.4 MB on disk (fewer if its 20 "
                                          "documents end first)")
    assert planned(None, None, 4704) == "the whole source"
    assert planned(None, 1500, 4704) == "the whole source (1,500 documents)"


def test_the_first_batch_eta_is_a_bound_when_max_docs_may_end_the_source_first():
    """max_docs=20 of a 200,000-row harvest printed '~30 s to go', then ended after 15,843 rows (2 s)."""
    from actdict.harvest.run import _Progress

    class Bar:
        disable = False

        def __init__(self):
            self.n, self.lines = 0, []

        def update(self, n):
            self.n += n

        def write(self, s):
            self.lines.append(s)

    for bound, want in ((False, "slower), ~"), (True, "slower), at most ~")):
        bar = Bar()
        _Progress(bar, 1, 200_000, bound)(1000)
        assert bar.n == 1000 and want in bar.lines[0] and bar.lines[0].endswith(" s to go")
        assert ("at most" in bar.lines[0]) == bound


def test_under_torchrun_only_rank_0_says_how_fast_the_first_batch_went(capsys):
    """Every rank printed 'harvest: first batch: ~N rows/s ...' (tqdm.write prints also for a disabled bar):
    one line per rank, each with its own rate and ETA; now only the rank whose bar is shown."""
    from tqdm import tqdm

    from actdict.harvest.run import _Progress

    for rank in (1, 0):
        with tqdm(total=4000, disable=rank != 0, mininterval=1000) as bar:
            _Progress(bar, 2, 4000)(1000)
            assert bar.n == (2000 if rank == 0 else 0)  # a disabled bar counts nothing
        assert capsys.readouterr().out.count("harvest: first batch: ~") == (rank == 0)


@pytest.mark.parametrize("mode", ["tokens", "embeddings"])
def test_the_loading_line_says_the_device_auto_resolves_to(tmp_path, monkeypatch, capsys, mode):
    """harvest.device=auto (the default) printed 'harvest: loading the model NAME (device auto, float32)':
    a log did not say whether the harvest ran on the GPU. It now says the device load_model resolves it to
    (cuda where torch sees a GPU, here made to, else cpu)."""
    import actdict.harvest.embed as embed_mod
    import actdict.harvest.run as run_mod

    class Loading(Exception):
        pass

    def load(*a, **kw):
        raise Loading(kw["device"])

    monkeypatch.setattr(run_mod, "load_model", load)
    monkeypatch.setattr(embed_mod, "load_encoder", load)
    for gpu, device in ((True, "cuda"), (False, "cpu")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda gpu=gpu: gpu)
        with pytest.raises(Loading, match=f"^{device}$"):
            harvest(tmp_path / device, device="auto", mode=mode, max_tokens=8)
        said = capsys.readouterr().out.splitlines()
        assert said[-1] == f"harvest: loading the model all-MiniLM-L6-v2 (device {device}, float32)", said
