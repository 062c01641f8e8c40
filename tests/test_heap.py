"""analyze/heap.py: the pass's glibc settings (no mmap, no trim) and glibc's defaults back after it."""

import pytest
import torch

from actdict.analyze import heap


class FakeLibc:
    """Records mallopt / malloc_trim calls; mallopt answers ``ok`` (glibc: 1 when it took the value)."""

    def __init__(self, ok: int = 1):
        self.calls, self.ok = [], ok

    def mallopt(self, param, value):
        self.calls.append(("mallopt", param, value))
        return self.ok

    def malloc_trim(self, pad):
        self.calls.append(("malloc_trim", pad))
        return 1


def test_the_pass_allocates_from_the_heap_and_gives_it_back_after_even_on_an_error():
    libc = FakeLibc()
    with pytest.raises(RuntimeError, match="in the pass"), heap.reuse_freed_memory(libc) as on:
        assert on and libc.calls == [("mallopt", -4, 0), ("mallopt", -1, 2**31 - 1)]
        raise RuntimeError("in the pass")
    assert libc.calls[2:] == [("mallopt", -4, 65536), ("mallopt", -1, 128 * 1024), ("malloc_trim", 0)]
    refused = FakeLibc(ok=0)
    with heap.reuse_freed_memory(refused) as on:
        assert on is False and len(refused.calls) == 1  # the first refused: the second not tried
    assert refused.calls[-1] == ("malloc_trim", 0)


def test_on_this_linux_the_real_glibc_takes_it_and_results_do_not_change():
    libc = heap.glibc()
    if libc is None:
        pytest.skip("no glibc here")
    x = torch.arange(12_000_000, dtype=torch.float32)  # 48 MB: above glibc's mmap threshold
    want = float(x.sum())
    with heap.reuse_freed_memory() as on:
        assert on is True
        for _ in range(2):  # freed, then the same size again from the heap
            y = x * 2
            assert float(y.sum()) == 2 * want
            del y


def test_a_nested_block_leaves_the_outer_blocks_settings_until_the_outer_ends():
    """A block within a block (a benchmark around a pass) set glibc's defaults back and trimmed at its own
    end, in the middle of the outer pass: only the outermost block sets glibc now, and sets it back."""
    outer, inner = FakeLibc(), FakeLibc()
    with heap.reuse_freed_memory(outer) as on:
        with heap.reuse_freed_memory(inner) as nested:
            assert nested is True and inner.calls == []
        with pytest.raises(RuntimeError, match="inner"), heap.reuse_freed_memory(inner):
            raise RuntimeError("inner")
        assert on is True and inner.calls == [] and len(outer.calls) == 2  # still no mmap, no trim
    assert outer.calls[2:] == [("mallopt", -4, 65536), ("mallopt", -1, 128 * 1024), ("malloc_trim", 0)]
    again = FakeLibc()
    with heap.reuse_freed_memory(again) as on:  # closed blocks: the next one sets glibc again
        assert on is True and len(again.calls) == 2
