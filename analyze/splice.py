"""CE-loss recovered and KL when a dictionary is spliced into a causal language model.

The hook's activation is replaced by the dictionary's reconstruction x_hat (deterministic path) through
TransformerBridge forward hooks, on held-out windows made of the test split's tokens (read from the store,
so they are the rows the dictionaries were not trained on). Three runs per batch of windows:

* clean: no hook; zero ablation: the activation set to 0; spliced: the activation replaced by x_hat.
* CE = mean next-token cross-entropy over every predicted position; KL = mean over the same positions of
  KL(p_clean || p_spliced) (nats).
* CE recovered = (CE_zero - CE_spliced) / (CE_zero - CE_clean): 1 = as good as the model, 0 = as bad as
  zero-ablating the hook.

The windows are the test split's text as the harvest fed it to the model (``heldout_windows``: its window
prefix (BOS) first, never across a jump between non-adjacent test chunks, the harvest's document separator
put back, the end of a stretch in a shorter, right-padded window). The prefix and those separators are left
untouched in every run (the harvest stores neither, so no dictionary has seen their rows); every other real
position is replaced, and every prediction of a real token counts. Shapes: W = windows, T = tokens per
window, V = vocabulary.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from actdict.bars import bar_disabled, bar_timing
from actdict.errors import ActdictError


class SpliceError(ActdictError, ValueError):
    """The CE/KL evaluation cannot run on this store or model (the message says what to change)."""


@dataclass(frozen=True)
class Windows:
    """Held-out windows [W, T] of token ids, right-padded: ``spliced`` marks the positions whose activation a
    dictionary replaces (document tokens), ``real`` every position that is not padding."""

    tokens: Tensor  # [W, T] int64
    spliced: Tensor  # [W, T] bool
    real: Tensor  # [W, T] bool

    def __len__(self) -> int:
        return len(self.tokens)


def heldout_windows(store, chunks: Sequence[int], n_windows: int, ctx: int, prefix: Sequence[int] = (),
                    sep: Sequence[int] = (), join_docs: bool = True, pad_id: int = 0) -> Windows:
    """Up to ``n_windows`` windows of the test split's text as the harvest fed it to the model: ``prefix``
    (its BOS) then ``ctx`` tokens (T = len(prefix) + ctx).

    The stored rows of adjacent chunks are the harvest's token stream (without its window prefixes and
    separators, which are not stored): a window never spans two chunks that are not adjacent, a row the
    harvest left out (a gap in a document's positions: ``harvest.skip_special``; a document left out whole),
    nor, when not ``join_docs`` (a ``per_doc`` harvest), two documents. Between two documents of a stretch
    the harvest's separator ``sep`` (its ``join_with_eos``) is put back. Each stretch gives windows of ctx
    tokens and, for what is left, one shorter window padded with ``pad_id`` (not ``real``: a causal model's
    earlier positions do not see it). Prefix and separators are not ``spliced``: no dictionary has seen their
    rows. Rows without a token id (vectors) are left out."""
    out = []  # windows (tokens [n], spliced [n], n <= ctx)
    pieces: list[np.ndarray] = []  # the stretch's tokens, piece by piece
    flags: list[np.ndarray] = []  # and whether each is spliced
    last = (None, 0, 0)  # (chunk, doc, pos) of the stretch's last row
    sep_ids = np.asarray(sep, np.int64)
    seen = False  # whether any row had a token id

    def add(tokens: np.ndarray, splice: bool) -> None:
        pieces.append(tokens)
        flags.append(np.full(len(tokens), splice))

    def cut() -> None:  # the stretch's windows into out
        toks = np.concatenate(pieces) if pieces else np.empty(0, np.int64)
        spl = np.concatenate(flags) if flags else np.empty(0, bool)
        for a in range(0, len(toks), ctx):
            if len(out) < n_windows and len(prefix) + len(toks[a:a + ctx]) >= 2:  # one prediction at least
                out.append((toks[a:a + ctx], spl[a:a + ctx]))
        pieces.clear()
        flags.clear()

    for c in chunks:
        if len(out) >= n_windows:
            break
        tok, doc, pos = store.read_meta(*store.chunk_bounds(c))  # [n] each: the acts are not read here
        has = tok >= 0
        ids, doc, pos = tok[has].astype(np.int64), doc[has], pos[has]  # [n]
        if not len(ids):
            continue
        seen = True
        if last[0] is None or c != last[0] + 1:  # a jump: a new stretch
            cut()
            last = (c, doc[0], pos[0] - 1)
        doc_before, pos_before = np.append(last[1], doc[:-1]), np.append(last[2], pos[:-1])  # [n]
        new_doc = doc != doc_before  # [n]
        gap = np.where(new_doc, (doc != doc_before + 1) | (pos != 0), pos != pos_before + 1)  # a row left out
        starts = np.union1d([0], np.flatnonzero(new_doc | gap))  # [s] rows where a piece of the stream starts
        for a, b in zip(starts, np.append(starts[1:], len(ids)), strict=True):
            if gap[a] or new_doc[a] and not join_docs:
                cut()
            elif new_doc[a] and len(sep_ids):
                add(sep_ids, False)
            add(ids[a:b], True)
        last = (c, doc[-1], pos[-1])
        if sum(map(len, pieces)) >= (n_windows - len(out)) * ctx:
            cut()
    cut()
    if not out and seen:
        bos = "" if len(prefix) else ", no BOS before them"
        raise SpliceError(f"no window of the test chunks' tokens holds two tokens to predict one from "
                          f"(analyze.ce_ctx={ctx}{bos}): raise analyze.ce_ctx, or set analyze.ce_loss=false")
    if not out:
        raise SpliceError("the test chunks hold no token ids to make a window of (store rows without token "
                          "ids cannot be spliced): set analyze.ce_loss=false")
    w, head = len(out), len(prefix)
    tokens = torch.full((w, head + ctx), int(pad_id), dtype=torch.long)  # [W, T]
    spliced = torch.zeros(w, head + ctx, dtype=torch.bool)  # [W, T]
    real = torch.zeros(w, head + ctx, dtype=torch.bool)  # [W, T]
    tokens[:, :head] = torch.as_tensor(np.asarray(prefix, np.int64))
    real[:, :head] = True
    for i, (t, f) in enumerate(out):
        tokens[i, head:head + len(t)] = torch.as_tensor(t)
        spliced[i, head:head + len(t)] = torch.as_tensor(f)
        real[i, head:head + len(t)] = True
    return Windows(tokens, spliced, real)


def next_token_ce(logits: Tensor, tokens: Tensor) -> Tensor:
    """Per-position cross-entropy of predicting tokens[:, 1:]: logits [W, T, V], tokens [W, T] -> [W, T-1]."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # [W, T-1, V]
    return -logp.gather(-1, tokens[:, 1:, None].to(logits.device))[..., 0]


def kl_per_position(clean_logits: Tensor, logits: Tensor) -> Tensor:
    """KL(p_clean || p) at every predicting position: [W, T, V] x2 -> [W, T-1] (nats)."""
    lp = torch.log_softmax(clean_logits[:, :-1].float(), dim=-1)
    lq = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return (lp.exp() * (lp - lq)).sum(-1)


def ce_recovered(ce_clean: float, ce_zero: float, ce_spliced: float) -> float:
    """(CE_zero - CE_spliced) / (CE_zero - CE_clean); nan when zero ablation does not change the CE."""
    den = ce_zero - ce_clean
    return (ce_zero - ce_spliced) / den if den != 0 else float("nan")


MIN_ABLATION_COST = 0.01
"""CE recovered is read as meaningful when zero ablation raises the CE by at least this share of the clean
CE; a trained model's residual stream costs nats when zeroed (the ratio's denominator), an untrained one's
about nothing, either sign (random-init Pythia-70m shape at blocks.2: clean 10.971, zero ablation 10.935)."""


def ce_caveat(ce: dict | None, hook: str | None = None) -> str | None:
    """Why CE recovered says little for this evaluation (``summary["ce"]``), or None: zero ablation of the
    hook raises the CE by under ``MIN_ABLATION_COST`` of the clean CE (or lowers it), so the ratio divides
    by that small difference and can pass 1 or fall below 0 whatever the reconstruction; or zero ablation
    gives no finite CE (summary.json's null: a LayerNorm's ``hook_scale`` divides by the value zeroed), so
    CE recovered is n/a."""
    clean, zero = (ce or {}).get("ce_clean"), (ce or {}).get("ce_zero")
    if clean is not None and "ce_zero" in ce and (zero is None or not math.isfinite(zero)):
        return (f"zero-ablating {hook or 'the hook'} gives no finite CE (a norm's hook_scale is divided by: "
                "0 is no value it can take), so CE recovered is n/a; compare the dictionaries' CE and KL")
    if clean is None or zero is None or zero - clean >= MIN_ABLATION_COST * abs(clean):
        return None
    return (f"zero-ablating {hook or 'the hook'} changes the CE by {zero - clean:+.4g} nats (clean "
            f"{clean:.5g}, zero ablation {zero:.5g}), under {MIN_ABLATION_COST:.0%} of the clean CE: CE "
            "recovered divides by that difference, so it can pass 1 or fall below 0 whatever the "
            "reconstruction (an untrained model?); compare the dictionaries' CE and KL instead")


def _replace_hook(f: Callable[[Tensor], Tensor], where: Tensor):
    """A forward hook that replaces the positions ``where`` [W, T] bool of the activation [W, T, ...] by
    f(activation)."""

    def hook(act: Tensor, hook=None) -> Tensor:
        out = act.clone()
        x = act[where]  # [n, ...]
        out[where] = f(x.reshape(len(x), -1)).reshape(x.shape).to(act.dtype)  # f: [n, d] -> [n, d]
        return out

    return hook


def dictionary_fn(model) -> Callable[[Tensor], Tensor]:
    """rows [n, d] -> the dictionary's deterministic reconstruction [n, d] (float32)."""

    @torch.no_grad()
    def f(x: Tensor) -> Tensor:
        return model(x.float(), sample=False).x_hat

    return f


def _sum_at(per_position: Tensor, counted: Tensor) -> float:
    """The float64 sum of ``per_position`` [W, T-1] where ``counted`` [W, T-1] is True."""
    return float(per_position.double()[counted].sum())


NORM_EDIT = "A forward hook edited hook_scale/hook_normalized"
"""The start of TransformerLens' warning when a hook edits a norm's ``hook_scale`` or ``hook_normalized``:
the bridge then rebuilds the norm's output from the hooked values, float rounding apart from its native
forward (an identity dictionary moves the CE by ~1e-6 nats there). Editing them is what a splice at those
hooks is, so ``splice_eval`` does not pass the warning on (docs/analyze.md, "CE-loss recovered and KL")."""


@torch.no_grad()
def splice_fails(bridge, windows: Windows, hook: str) -> str | None:
    """The bridge's error, in a few words, when one forward that edits ``hook`` (an identity splice of the
    first window's first two tokens, as ``splice_eval`` edits it) fails inside TransformerBridge; None when
    it runs. OLMo 1's norms have no weight, and a hook that edits their hook_normalized or hook_scale fails
    in every forward: ``splice_eval`` stopped on it after the whole analysis pass. An error that the same
    forward with no edit raises too (the windows' tokens, the model) is raised as it is: the hook is not
    at fault, and analyze.ce_loss=false would not be the cure."""
    from actdict.harvest.bridge import in_words, not_the_bridges

    tok = windows.tokens[:1, :2].to(next(bridge.parameters()).device)  # [1, 2]
    same = _replace_hook(lambda x: x, torch.ones_like(tok, dtype=torch.bool))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", NORM_EDIT, UserWarning)
        try:
            bridge.run_with_hooks(tok, fwd_hooks=[(hook, same)], return_type="logits")
        except Exception as e:
            if not_the_bridges(e):  # out of memory, a CUDA error: not a hook the bridge cannot edit
                raise
            bridge(tok, return_type="logits")  # fails too (a token id past the embedding): not the edit's
            return in_words(e)
    return None


@torch.no_grad()
def splice_eval(bridge, windows: Windows, hook: str, models: dict[str, object], batch_size: int = 4,
                progress: bool = False) -> dict:
    """Clean, zero-ablation and spliced CE (and KL to clean) of ``models`` at ``hook`` over ``windows``
    (``heldout_windows``), replacing the positions ``windows.spliced``; every prediction of a real token
    counts (not those of padding). ``progress``: a bar over the windows on stderr (the analysis's), since
    each window costs 2 + len(models) full forwards with the vocabulary's logits (~75 s for 16 windows of
    128 tokens, five dictionaries and Pythia-70m on 2 CPU cores, in silence before it had one).

    -> {"ce_clean": float, "ce_zero": float, "n_tokens": int,
        "models": {name: {"ce": float, "kl": float, "ce_recovered": float}}}"""
    dev = next(bridge.parameters()).device
    fns = {name: dictionary_fn(m.to(dev).eval()) for name, m in models.items()}
    base = {"clean": 0.0, "zero": 0.0}  # the baselines, apart from any dictionary's name
    sums, kls = {n: 0.0 for n in fns}, {n: 0.0 for n in fns}
    count = 0
    bar = tqdm(total=len(windows), desc="CE/KL", unit="window", disable=bar_disabled(not progress),
               **bar_timing())
    with warnings.catch_warnings():  # a splice at a norm edits its hooks: NORM_EDIT
        warnings.filterwarnings("ignore", NORM_EDIT, UserWarning)
        for s in range(0, len(windows), batch_size):
            tok = windows.tokens[s : s + batch_size].to(dev)  # [W, T]
            where = windows.spliced[s : s + batch_size].to(dev)  # [W, T]
            counted = windows.real[s : s + batch_size, 1:].to(dev)  # [W, T-1] predictions of real tokens
            clean = bridge.run_with_hooks(tok, fwd_hooks=[], return_type="logits")  # [W, T, V]
            base["clean"] += _sum_at(next_token_ce(clean, tok), counted)
            zero = bridge.run_with_hooks(tok, fwd_hooks=[(hook, _replace_hook(torch.zeros_like, where))],
                                         return_type="logits")
            base["zero"] += _sum_at(next_token_ce(zero, tok), counted)
            for name, f in fns.items():
                logits = bridge.run_with_hooks(tok, fwd_hooks=[(hook, _replace_hook(f, where))],
                                               return_type="logits")
                sums[name] += _sum_at(next_token_ce(logits, tok), counted)
                kls[name] += _sum_at(kl_per_position(clean, logits), counted)
            count += int(counted.sum())
            bar.update(len(tok))
    bar.close()
    ce_clean, ce_zero = base["clean"] / count, base["zero"] / count
    return {"ce_clean": ce_clean, "ce_zero": ce_zero, "n_tokens": count,
            "models": {n: {"ce": sums[n] / count, "kl": kls[n] / count,
                           "ce_recovered": ce_recovered(ce_clean, ce_zero, sums[n] / count)} for n in fns}}
