"""Top-activating and quantile-sampled contexts of every dictionary feature, from the activation store.

:class:`FeatureTracker` gathers, in the one streaming pass of the analysis over the test rows, for ALL k
features: the top-t rows by code, the t most negative rows (kept when codes are signed, e.g. VAE means),
a uniform sample of the rows where the feature is active (split into activation quantiles afterwards) and
an exact log-binned activation histogram (see :mod:`actdict.analyze.streaming`). Memory O(k x t), whatever
the number of rows. Contexts are then read from the neighbouring rows of the store (the rows of one
document are contiguous and in position order): :func:`read_contexts` reads every needed window in a
few contiguous spans, so the language model is never re-run.

Shapes: B = batch rows, k = features, t = top_k, H = hits, w = context window.
"""

from __future__ import annotations

import json
import re
import unicodedata
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from actdict.analyze import streaming
from actdict.analyze.cofire import CoFire
from actdict.analyze.streaming import LogHistogram, Reservoir, TopRows, where_true
from actdict.errors import ActdictError, ActdictWarning

Decoder = Callable[[Sequence[int]], list[str]]


class FeatureTracker:
    """Streaming top / bottom rows, active-row sample and activation histogram of all k features."""

    def __init__(self, k: int, top_k: int, samples: int, seed: int, device: str | torch.device = "cpu",
                 cofire: bool = False):
        self.cofire = CoFire(k, device) if cofire else None  # which features fire together: k^2 counts
        self.top = TopRows(k, top_k, device=device, floor=0.0)  # only codes > 0 are shown (and < 0 below)
        self.bottom = TopRows(k, top_k, device=device, floor=0.0)
        self.sample = Reservoir(k, samples, seed, device)
        self.hist = LogHistogram(k, device=device)

    def update(self, codes: Tensor, active: Tensor, rows: Tensor, pairs: tuple[Tensor, Tensor] | None = None,
               nonzero: int | None = None) -> None:
        """codes [B, k], active [B, k] bool (the latent counts as active on that row), rows [B] global; pairs:
        ``streaming.where_true(active)`` if the caller has it (the sample, the histogram and cofire read it);
        nonzero: ``torch.count_nonzero(codes)`` if the caller has it (``positive_pairs`` reads it).
        Sparse codes with none below 0 (``positive_pairs``) rank the top rows from their positive codes alone
        (``TopRows.update_pairs``: the same rows and values above 0) and need no transposed copy of the codes;
        else the column top-k of that one copy ranks them."""
        codes = codes.detach().float()
        pairs = where_true(active) if pairs is None else pairs
        signed = negative_or_nan(codes)
        pos = None if signed else positive_pairs(codes, pairs, nonzero)
        held = codes  # [B, k] what the sample's values are read from
        if pos is not None:
            v = codes[pos]  # [m] the codes above 0
            self.top.update_pairs(*pos, rows, v, v)
        else:  # [k, B]: the trackers' column top-k read each feature's codes contiguously
            ct = codes.T.contiguous()  # (streaming.column_topk: one transposed copy, not one per tracker)
            self.top.update(ct.T, rows)
            held = ct.T
        if signed:
            self.bottom.update((-ct).T, rows, ct.T)
        else:  # no code below 0 (a ReLU's): the bottom tracker would take none it reports (floor 0), only
            few = codes[: self.bottom.t]  # rows at its floor in any order: its first t rows keep its shape
            self.bottom.update(-few, rows[: self.bottom.t], few)  # (no [k, B] negation, no top-k)
        self.sample.update(held, active, rows, pairs)
        self.hist.update(codes, active, pairs)
        if self.cofire is not None:
            self.cofire.update(active, pairs=pairs)

    def nbytes(self) -> int:
        """Bytes held by the trackers (independent of the number of rows seen)."""
        co = 0 if self.cofire is None else self.cofire.nbytes()
        return self.top.nbytes() + self.bottom.nbytes() + self.sample.nbytes() + self.hist.nbytes() + co


def positive_pairs(codes: Tensor, pairs: tuple[Tensor, Tensor], nonzero: int | None = None
                   ) -> tuple[Tensor, Tensor] | None:
    """The (row, column) pairs [m] of the codes above 0 of codes [B, k] (none below 0, no NaN), row-major,
    when at most ``streaming.SPARSE_SHARE`` of them are nonzero; else None. ``nonzero``: the count of nonzero
    codes, ``torch.count_nonzero(codes)`` (ModelEval has it for L0; with no code below 0 it counts the codes
    above 0: a -0.0, as a JumpReLU SAE's pre * (pre > theta) holds wherever pre < 0, is not counted).
    ``pairs``, the active mask's, are those when they are as many and all above 0 (an SAE's mask on rows that
    each have an exact zero: its nonzero codes); else ``where_true(codes > 0)``."""
    n = streaming.nonzero_count(codes) if nonzero is None else nonzero
    if n > streaming.SPARSE_SHARE * codes.numel():
        return None
    if len(pairs[0]) == n and bool((codes[pairs] > 0).all()):
        return pairs
    return where_true(codes > 0)


def negative_or_nan(x: Tensor) -> bool:
    """Whether x holds a value below 0 or a NaN (which ``TopRows`` ranks first). On a CPU by numpy's min: one
    pass, no temporary (a [16384, 4096] float32: 35 ms; torch's (x < 0).any() 0.2 s)."""
    if not x.numel():
        return False
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        return not bool(np.min(x.detach().numpy()) >= 0)
    return not bool(x.min() >= 0)


def scan(store, model, top_k: int, samples: int, chunks: Iterable[int] | None = None, batch_size: int = 4096,
         seed: int = 0, device: str = "cpu") -> FeatureTracker:
    """One pass over ``chunks`` (default: all) of ``store`` through ``model`` (deterministic path).
    "Active" is the Otsu mask of the activity (``metrics.active_mask``), as for AD: for an SAE its nonzero
    codes on a row with at least one exact zero."""
    from actdict.analyze.metrics import active_mask

    tracker = FeatureTracker(model.k, top_k, samples, seed, device)
    model = model.to(device).eval()
    for c in range(store.num_chunks) if chunks is None else chunks:
        start, _ = store.chunk_bounds(c)
        acts = store.read_chunk(c).acts
        for s in range(0, len(acts), batch_size):
            x = torch.as_tensor(acts[s : s + batch_size], device=device)  # [B, d]
            with torch.no_grad():
                out = model(x, sample=False)
            active = active_mask(out.activity, model.active_side)  # [B, k]
            tracker.update(out.codes, active, torch.arange(len(x), device=device) + start + s)
    return tracker


@dataclass
class Contexts:
    """Windows around H store rows: ``ids`` [H, 2w+1] token ids (column w = the row itself), ``valid``
    [H, 2w+1] (False beyond the store or the row's document), ``doc`` [H], ``pos`` [H]."""

    ids: np.ndarray
    valid: np.ndarray
    doc: np.ndarray
    pos: np.ndarray

    def row(self, h: int) -> tuple[list[int], int]:
        """(context token ids of hit h, index of the hit's own token in that list)."""
        w = (self.ids.shape[1] - 1) // 2
        keep = np.flatnonzero(self.valid[h])
        return self.ids[h, keep].tolist(), int((keep < w).sum())


def read_contexts(store, rows: np.ndarray, window: int) -> Contexts:
    """Token ids of rows [r - window, r + window] of each r in ``rows`` [H], cut at document edges.

    The needed rows are read in contiguous spans (windows closer than one chunk are merged), at most a chunk
    at a time, and only the needed rows' metadata is kept (their activations are not read: ``read_meta``):
    memory O(rows x window + one chunk), not O(the spans), which cover every held-out row when the hits are
    many."""
    rows = np.asarray(rows, dtype=np.int64)
    n, w = len(store), window
    uniq = np.unique(rows)
    need = np.unique(np.clip(uniq[:, None] + np.arange(-w, w + 1)[None], 0, max(n - 1, 0)))  # [m] sorted
    span_rows, ids, docs, poss = [], [], [], []
    step = max(getattr(store, "chunk_rows", 1), 1)
    gap = max(step, 2 * w + 1)
    lo_all, hi_all = np.maximum(uniq - w, 0), np.minimum(uniq + w + 1, n)
    i = 0
    while i < len(uniq):
        lo, hi = int(lo_all[i]), int(hi_all[i])
        while i + 1 < len(uniq) and lo_all[i + 1] <= hi + gap:
            i += 1
            hi = max(hi, int(hi_all[i]))
        cuts = [lo, *range(lo - lo % step + step, hi, step), hi]  # pieces within one chunk each
        for a, b in zip(cuts[:-1], cuts[1:], strict=True):
            keep = need[np.searchsorted(need, a):np.searchsorted(need, b)]  # [<= b - a] the rows needed
            if not len(keep):  # a chunk between two windows of the span: not read
                continue
            (tok, doc, pos), at = store.read_meta(a, b), keep - a
            span_rows.append(keep)
            ids.append(tok[at]), docs.append(doc[at]), poss.append(pos[at])
        i += 1
    all_rows = np.concatenate(span_rows) if span_rows else np.empty(0, np.int64)
    all_ids = np.concatenate(ids) if ids else np.empty(0, np.int32)
    all_doc = np.concatenate(docs) if docs else np.empty(0, np.int64)
    all_pos = np.concatenate(poss) if poss else np.empty(0, np.int32)

    want = rows[:, None] + np.arange(-w, w + 1)[None]  # [H, 2w+1]
    j = np.clip(np.searchsorted(all_rows, want), 0, max(len(all_rows) - 1, 0))
    present = (all_rows[j] == want) if len(all_rows) else np.zeros(want.shape, bool)
    center = j[:, w]
    same = present & (all_doc[j] == all_doc[center][:, None])
    # contiguous outward from the centre: stop at the first row of another document
    right = np.cumprod(same[:, w:], axis=1).astype(bool)
    left = np.cumprod(same[:, : w + 1][:, ::-1], axis=1).astype(bool)[:, ::-1]
    valid = np.concatenate([left[:, :w], right], axis=1)
    return Contexts(ids=all_ids[j].astype(np.int64), valid=valid, doc=all_doc[center], pos=all_pos[center])


def is_wordpiece(strings) -> bool:
    """Whether token strings look WordPiece: some token is a ``##`` continuation."""
    return any(str(s).startswith("##") for s in strings)


def display_strings(strings: Sequence[str], wordpiece: bool | None = None) -> list[str]:
    """Token strings made for concatenation: WordPiece vocabularies get a space before each word-initial
    token and lose the ``##`` of continuations; others are unchanged. ``wordpiece``: whether the vocabulary
    is WordPiece (None: guessed from these strings, true when one starts with ``##``; pass it for a short
    context that may hold no continuation)."""
    if not (is_wordpiece(strings) if wordpiece is None else wordpiece):
        return list(strings)
    return [s[2:] if s.startswith("##") else " " + s for s in strings]


MARKS = {"\n": "\u21b5", "\t": "\u21e5", "\r": "\u240d"}
"""How a newline (↵), a tab (⇥) and a carriage return (␍) in a token are shown: the context stays one line."""
HIDDEN = ("Cc", "Cf", "Zl", "Zp", "Zs")
"""Unicode categories of the characters that show nothing (controls, format characters such as a zero-width
space, a BOM or a bidi control, separators other than the space such as NBSP): shown as ``<U+200B>``."""


def visible(s: str) -> str:
    """A token as a context shows it: ``MARKS`` for newline, tab and CR, ``<U+200B>`` for each other
    character that shows nothing (``HIDDEN``), spaces as they are (a context reads like the text). The
    report, the feature pages (``visible_js``), ``actdict feature`` and ``actdict lens`` all show tokens so;
    summary.json and the features files keep the text itself."""
    return "".join(MARKS.get(c) or (f"<U+{ord(c):04X}>" if c != " " and unicodedata.category(c) in HIDDEN
                                    else c) for c in s)


BYTE_RUN = re.compile(r"((?:<0x[89A-F][0-9A-F]>)+)")
"""A run of the byte marks ``harvest.tokentext`` writes for bytes that are no character alone (0x80-0xFF:
an ASCII byte is always a character), captured so that ``re.split`` keeps it."""


def _spelled(b: bytes) -> str:
    """``b`` as UTF-8, from the first byte on the longest piece (4..1 bytes) that is a character; a byte
    that starts none stays a mark. ``visible_js``'s ``spelled`` does the same with a fatal TextDecoder."""
    out, i = [], 0
    while i < len(b):
        for n in (4, 3, 2, 1):
            if i + n <= len(b):
                try:
                    out.append(b[i:i + n].decode("utf-8"))
                    break
                except UnicodeDecodeError:
                    pass
        else:
            out.append(f"<0x{b[i]:02X}>")
            n = 1
        i += n
    return "".join(out)


def context_text(strings: Sequence[str]) -> str:
    """Tokens as a context shows them: joined, the byte marks of a character split over tokens (GPT-2's
    ' <0xE7>' '<0x8C>' '<0xAB>') read as that character (' 猫'), then ``visible``. A character cut by the
    context's edge or by the highlighted token keeps its marks. Only a mark that one token's text holds
    whole is a byte: a document's own '<0x0A>' or '<0xC3><0xA9>', spelled over several tokens ('<', '0x',
    '0A', '>'), reads as it is written (``visible_js``'s ``contextText`` does the same)."""
    out, run = [], ""
    for s in strings:
        for j, part in enumerate(BYTE_RUN.split(s)):
            if j % 2:
                run += part
            elif part:
                out += [_spelled(bytes.fromhex(run.replace("<0x", "").replace(">", ""))), part]
                run = ""
    return visible("".join(out) + _spelled(bytes.fromhex(run.replace("<0x", "").replace(">", ""))))


def blank(s: str) -> bool:
    """Whether ``s`` shows nothing by itself: only ``HIDDEN`` characters (spaces, newlines, tabs, zero-width
    characters), or none."""
    return all(unicodedata.category(c) in HIDDEN for c in s)


def alone(s: str) -> str:
    """A token shown by itself (the highlighted one of a context, a list of tokens): ``visible``, and when it
    is ``blank``, its spaces as ␣ too (an indent: a space shows nothing)."""
    return visible(s).replace(" ", "\u2423") if blank(s) else visible(s)


def token_label(s: str) -> str:
    """A token as a feature's label (its top tokens): stripped and ``visible``, or ``alone`` when it is
    ``blank`` (a newline, a tab, an indent: frequent top tokens on code and prose alike, which stripping
    left without a label); "" stays "" (no string). ``s`` is the vocabulary's string, not its
    ``display_strings`` form: a WordPiece continuation keeps its ``##`` ('##ing', a word start 'walk'), in
    the report, the feature pages, ``actdict feature``, lens and compare alike."""
    return alone(s) if blank(s) else visible(s.strip())


SPACES = "".join(c for c in map(chr, range(0x3001)) if c.isspace())
"""What ``str.strip`` strips (``visible_js``'s ``strip``: JavaScript's ``trim`` strips a BOM and keeps
U+0085 and U+001C..U+001F, so a label or a highlight would differ between the report and the page)."""


def visible_js() -> str:
    """``visible``, ``blank``, ``alone`` and ``token_label`` in JavaScript, for the feature pages: the same
    marks for the same characters."""
    hidden = "".join("\\p{" + c + "}" for c in HIDDEN)  # a JS regular expression's class: \p{Cc}\p{Cf}...
    return (f"const MARKS = {json.dumps(MARKS)};\n"
            f"const HIDDEN = /[{hidden}]/gu, BLANK = /^[{hidden}]*$/u;\n"
            "function visible(s) {\n"
            "  return s.replace(HIDDEN, c => MARKS[c] || (c === ' ' ? c :\n"
            "    '<U+' + c.codePointAt(0).toString(16).toUpperCase().padStart(4, '0') + '>'));\n"
            "}\n"
            "const UTF8 = new TextDecoder('utf-8', {fatal: true, ignoreBOM: true});  // U+FEFF kept\n"
            "function spelled(run) {  // toptokens._spelled of a run of byte marks\n"
            "  const b = Uint8Array.from(run.match(/[0-9A-F]{2}/g) || [], h => parseInt(h, 16));\n"
            "  let out = '', i = 0;\n"
            "  while (i < b.length) {\n"
            "    let n = 4;\n"
            "    for (; n > 0; n--) {\n"
            "      if (i + n > b.length) continue;\n"
            "      try { out += UTF8.decode(b.subarray(i, i + n)); break; } catch (e) { /* none */ }\n"
            "    }\n"
            "    if (n === 0) { out += run.slice(6 * i, 6 * i + 6); n = 1; }\n"
            "    i += n;\n"
            "  }\n"
            "  return out;\n"
            "}\n"
            "const BYTES = /((?:<0x[89A-F][0-9A-F]>)+)/;  // toptokens.BYTE_RUN\n"
            "function contextText(list) {  // toptokens.context_text: a token's own marks are bytes\n"
            "  const out = [];\n"
            "  let run = '';\n"
            "  for (const s of list) {\n"
            "    s.split(BYTES).forEach((part, j) => {\n"
            "      if (j % 2) run += part;\n"
            "      else if (part) { out.push(spelled(run), part); run = ''; }\n"
            "    });\n"
            "  }\n"
            "  return visible(out.join('') + spelled(run));\n"
            "}\n"
            "function alone(s) { return BLANK.test(s) ? visible(s).replace(/ /g, '\\u2423') : visible(s); }\n"
            f"const SPACES = {json.dumps(SPACES)};  // str.strip's: String.trim strips a BOM, keeps U+0085\n"
            "const STRIP = new RegExp('^[' + SPACES + ']+|[' + SPACES + ']+$', 'g');\n"
            "function strip(s) { return s.replace(STRIP, ''); }\n"
            "function tokenLabel(s) {\n"
            "  return BLANK.test(s) ? alone(s) : visible(strip(s));\n"
            "}\n")


def resolve_decoder(manifest: dict) -> Decoder:
    """``actdict.harvest.tokens.token_decoder(manifest)``, or ids shown as ``#id`` when unavailable."""
    try:
        from actdict.harvest.tokens import token_decoder

        return token_decoder(manifest)
    except (ActdictError, ImportError, KeyError, OSError, ValueError) as e:  # ModelError: gone, not cached
        warnings.warn(f"no token decoder for this store ({e}); showing token ids", ActdictWarning,
                      stacklevel=2)
        return lambda ids: [f"#{i}" for i in ids]
