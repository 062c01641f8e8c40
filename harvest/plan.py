"""Which rows go to which shard: pure functions of the window stream, shared by every rank and every resume.

The windows of a harvest form one deterministic stream; each window stores some of its positions as rows
(document tokens, minus special tokens when ``skip_special``). Rows are numbered globally in stream order
and shard ``s`` holds rows ``[s * shard_rows, (s + 1) * shard_rows)``, so a shard's content depends only on
the stream, never on who computes it or when. A rank owns shard ``s`` when ``s % world == rank``; one
process is the case world = 1. A window whose rows straddle two shards is run by both shards' writers.

A shard's forward batches are the consecutive groups of ``batch_size`` windows of that shard, starting at
its first window: the same batches (so the same numbers, bit for bit) in every run, resumed or not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from actdict.harvest.windows import Window


@dataclass
class Item:
    """One window of the stream and the rows it stores."""

    index: int  # window index in the stream
    window: Window
    rows: np.ndarray  # [n] int positions in the window of its stored rows, increasing
    row: int  # global row index of rows[0]

    @property
    def cursor(self) -> dict:
        """Where the stream can be resumed at this window (recorded in the done-record of shards)."""
        doc, offset = self.window.start
        return {"window": self.index, "doc": doc, "offset": offset, "row": self.row}


def stored_positions(w: Window, special_ids: Iterable[int], skip_special: bool) -> np.ndarray:
    """Positions [n] of the rows a window stores: its document tokens, minus special tokens if asked."""
    keep = w.keep & ~np.isin(w.tokens, list(special_ids)) if skip_special else w.keep  # [ctx]
    return np.flatnonzero(keep)


class RowStream:
    """Items of a window stream from a cursor (window index, global row), cut at ``limit`` rows.
    After iteration, ``end_row`` is the total number of rows of the harvest."""

    def __init__(self, windows: Iterable[Window], positions: Callable[[Window], np.ndarray],
                 first_index: int = 0, first_row: int = 0, limit: int | None = None):
        self.windows, self.positions, self.limit = windows, positions, limit
        self.first_index, self.end_row = first_index, first_row

    def __iter__(self) -> Iterator[Item]:
        for k, w in enumerate(self.windows, start=self.first_index):
            if self.limit is not None and self.end_row >= self.limit:
                return
            p = self.positions(w)
            if self.limit is not None:
                p = p[:self.limit - self.end_row]
            item = Item(k, w, p, self.end_row)
            self.end_row += len(p)
            yield item


def spans(lo: int, hi: int, shard_rows: int) -> list[tuple[int, int, int]]:
    """(shard, a, b) for the global rows [lo, hi): rows lo+a .. lo+b-1 lie in that shard."""
    if hi <= lo:
        return []
    return [(s, max(lo, s * shard_rows) - lo, min(hi, (s + 1) * shard_rows) - lo)
            for s in range(lo // shard_rows, (hi - 1) // shard_rows + 1)]


@dataclass
class ShardWork:
    """The windows of one shard: pieces (item, a, b) store rows item.rows[a:b], in row order."""

    index: int
    pieces: list[tuple[Item, int, int]]

    @property
    def n_rows(self) -> int:
        return sum(b - a for _, a, b in self.pieces)

    def batches(self, batch_size: int) -> Iterator[list[tuple[Item, int, int]]]:
        for i in range(0, len(self.pieces), batch_size):
            yield self.pieces[i:i + batch_size]


def shard_work(items: Iterable[Item], shard_rows: int, wanted: Callable[[int], bool]) -> Iterator[ShardWork]:
    """The wanted shards of the stream, each yielded as soon as its last row has been seen."""
    open_: dict[int, list[tuple[Item, int, int]]] = {}
    for it in items:
        lo, hi = it.row, it.row + len(it.rows)
        for s, a, b in spans(lo, hi, shard_rows):
            if s in open_ or wanted(s):
                open_.setdefault(s, []).append((it, a, b))
        for s in sorted(open_):
            if (s + 1) * shard_rows <= hi:  # full
                yield ShardWork(s, open_.pop(s))
    for s in sorted(open_):  # the last, short shard
        yield ShardWork(s, open_.pop(s))


def owner(shard: int, world: int) -> int:
    """The rank that writes ``shard`` (round robin: balanced, and each shard has exactly one writer)."""
    return shard % world
