"""The rows of a token harvest: which hooks give one (``expand_hooks``, ``row_hooks``), one forward per
batch of windows (``forward``) and the rows of one shard as stored (``shard_rows_of``: selected and cast
once per batch, ``store_rows``, which refuses a non-finite one by its row). ``actdict.harvest.run`` writes
them; ``actdict lens`` runs ``forward`` on its text.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable
from functools import partial

import numpy as np

from actdict.harvest.config import hook_pattern
from actdict.harvest.layout import ACT_DTYPES
from actdict.harvest.models import LoadedModel, rows_refused
from actdict.harvest.plan import ShardWork
from actdict.harvest.windows import Window
from actdict.harvest.writer import non_finite


def expand_hooks(lm: LoadedModel, wanted: Iterable[str]) -> list[str]:
    """Hook names from names and patterns: ``all`` = every block's hook_resid_post, ``blocks.*.hook_mlp_out``
    (fnmatch) = every match, in layer order. A name or pattern the model lacks raises HookError."""
    valid = lm.hook_names()
    out: list[str] = []
    for w in wanted:
        if w == "all":
            names = [f"blocks.{i}.hook_resid_post" for i in range(lm.n_layers)]
        elif hook_pattern(w):
            names = [h for h in valid if fnmatch.fnmatchcase(h, w)]
            if not names:
                lm.check_hooks([w])  # raises, listing the valid hooks
        else:
            names = [w]
        lm.check_hooks(names)
        out += [n for n in sorted(names, key=_layer_key) if n not in out]
    return out


def row_hooks(lm: LoadedModel, wanted: Iterable[str], hooks: list[str]
              ) -> tuple[dict[str, int], dict[str, str]]:
    """(the ``hooks`` that give one vector per token: hook -> its width d, the others a pattern of
    ``wanted`` matched: hook -> why), from ``LoadedModel.storable``' probe. A hook named outright that
    gives none (an attention pattern, a hook that does not fire, token ids, a hook of the random masked-LM
    head of a bare encoder: ``bridge.untrained_hooks``, not probed) raises HookError before anything is
    written, all such hooks in one (``models.rows_refused``); a pattern (``blocks.1.*``) asks for every
    storable hook it matches, so its others are left out, and one that matches no storable hook raises."""
    wanted = list(wanted)
    widths, problems = lm.storable(hooks)  # a random head's hooks too (matched by a pattern: left out)
    named = {w for w in wanted if not hook_pattern(w)}
    if refused := {h: why for h, why in problems.items() if h in named}:
        raise rows_refused(refused, lm.name)
    for w in (w for w in wanted if hook_pattern(w)):
        matched = [h for h in hooks if fnmatch.fnmatchcase(h, hook_pattern(w))]
        if matched and all(h in problems for h in matched):
            raise rows_refused({h: problems[h] for h in matched}, f"{lm.name} (all that {w!r} matches)")
    return widths, problems


def _layer_key(name: str) -> tuple[int, str]:
    m = re.match(r"blocks\.(\d+)\.", name)
    return (int(m.group(1)) if m else -1, name)


def forward(lm: LoadedModel, batch: list[Window], hooks: list[str], stop: int | None,
            on_device: bool = False) -> dict:
    """hook -> activations [B, ctx, d] (torch, in the model's dtype) of one batch of windows, on the CPU or
    (``on_device``) left on the model's device, where ``store_rows`` selects and casts the stored rows."""
    import torch

    tokens = torch.from_numpy(np.stack([w.tokens for w in batch])).to(lm.device)  # [B, ctx]
    kw = {}
    if lm.kind == "encoder":  # bidirectional: padding must be masked out
        mask = np.ones(tokens.shape, np.int64)  # [B, ctx]
        for b, w in enumerate(batch):
            mask[b, len(w.tokens) - w.n_pad:] = 0  # the padding only (a body may end in a separator)
        if not mask.all():
            kw["attention_mask"] = torch.from_numpy(mask).to(lm.device)
    with torch.inference_mode():
        _, cache = lm.bridge.run_with_cache(tokens, names_filter=hooks, stop_at_layer=stop,
                                            return_cache_object=False, **kw)
        acts = {h: cache[h].reshape(cache[h].shape[0], cache[h].shape[1], -1) for h in hooks}
        return acts if on_device else {h: a.cpu() for h, a in acts.items()}


def sum_dtype(dtype, device_type: str):
    """The dtype ``store_rows`` sums rows of ``dtype`` in to find a non-finite one: float64 for float32 rows,
    but float32 on MPS (Apple's GPUs have no float64; the exact check then clears a float32 overflow of
    finite rows), and float32 for narrower rows."""
    import torch

    return torch.float64 if dtype == torch.float32 and device_type != "mps" else torch.float32


def store_rows(acts, flat: np.ndarray, out: np.ndarray, where: str,
               row_name: Callable[[int], str] | None = None) -> None:
    """Write the rows ``flat`` of acts [B, ctx, d] (torch) into ``out`` [m, d] as stored: float16 | float32
    | bfloat16 bits (uint16, ``layout.ACT_DTYPES``); torch rounds to nearest even, as
    ``layout.encode_acts``. On the CPU one gather and one casting copy, no temporary in the store dtype; on
    an accelerator the rows are gathered and cast there and only they are copied back. ValueError on a
    non-finite stored value: their sum (``sum_dtype``: float64 for float32 rows) is finite when all are,
    bar an overflow of finite bfloat16 values near float32's limit, which the exact check then clears; the
    error names the first such row by ``row_name(i)`` (i: its index in ``out``) when given."""
    import torch

    dtype = torch.bfloat16 if out.dtype == np.uint16 else getattr(torch, out.dtype.name)
    wide = sum_dtype(dtype, acts.device.type)
    with torch.inference_mode():
        dst = torch.from_numpy(out).view(dtype)  # [m, d], shares out's memory
        idx = torch.from_numpy(flat).to(acts.device, non_blocking=True)  # [m]
        rows = acts.reshape(-1, acts.shape[-1]).index_select(0, idx)  # [m, d] on acts' device
        if rows.device.type == "cpu":
            dst.copy_(rows)
            stored = dst
        else:
            stored = rows.to(dtype)  # [m, d] as stored
            dst.copy_(stored)  # the device-to-host copy
        if not bool(torch.isfinite(stored.sum(dtype=wide))) and not bool(torch.isfinite(stored).all()):
            name = lambda t: str(t).removeprefix("torch.")  # noqa: E731
            i = int((~torch.isfinite(stored)).any(1).nonzero()[0, 0])  # the first such row of out
            raise non_finite(where, name(dtype), row_name(i) if row_name else None, forward=name(acts.dtype))


def _row_name(rows: np.ndarray, doc: np.ndarray, pos: np.ndarray, tokens: np.ndarray, i: int) -> str:
    """Row i of a batch in words: its store row, document, position and token id."""
    return f"row {int(rows[i]):,} (doc {int(doc[i]):,}, position {int(pos[i]):,}, token id {int(tokens[i])})"


def shard_rows_of(lm: LoadedModel, work: ShardWork, hooks: list[str], stop: int | None,
                  batch_size: int, store_dtype: str, progress=None) -> dict[str, np.ndarray]:
    """The arrays of one shard: hook -> acts [n, d] as stored (``store_dtype``), and token_ids/doc/pos [n];
    ``progress(n_rows)`` is called after each batch. Rows are selected and cast once per batch, straight
    into the shard's arrays."""
    n = work.n_rows
    out: dict[str, np.ndarray] = {"token_ids": np.empty(n, np.int32), "doc": np.empty(n, np.int64),
                                  "pos": np.empty(n, np.int32)}
    at = 0
    for batch in work.batches(batch_size):
        windows = [it.window for it, _, _ in batch]
        acts = forward(lm, windows, hooks, stop, on_device=True)  # hook -> [B, ctx, d] on the model's device
        ctx = len(windows[0].tokens)
        flat = np.concatenate([b * ctx + it.rows[lo:hi] for b, (it, lo, hi) in enumerate(batch)])  # [m]
        m = len(flat)
        for key, field in (("token_ids", "tokens"), ("doc", "doc"), ("pos", "pos")):
            out[key][at:at + m] = np.concatenate([getattr(w, field) for w in windows])[flat]  # [m]
        glob = np.concatenate([it.row + np.arange(lo, hi) for it, lo, hi in batch])  # [m] store rows
        name = partial(_row_name, glob, out["doc"][at:], out["pos"][at:], out["token_ids"][at:])
        for h in hooks:
            if h not in out:
                out[h] = np.empty((n, acts[h].shape[-1]), ACT_DTYPES[store_dtype])  # [n, d]
            store_rows(acts[h], flat, out[h][at:at + m], h, name)
        at += m
        if progress is not None:
            progress(m)
    return out
