"""harvest/pipeline.py: tokenising ahead and writing behind keep the order, and never hide an error."""

import threading
import time

import pytest

from actdict.harvest.pipeline import Behind, Prefetch


def test_prefetch_keeps_order_and_raises_where_the_generator_failed():
    assert list(Prefetch(iter(range(1000)), depth=7)) == list(range(1000))

    def gen():
        yield from range(5)
        raise ValueError("bad line 6")

    got = []
    with pytest.raises(ValueError, match="bad line 6"):
        for x in Prefetch(gen(), depth=2):
            got.append(x)
    assert got == [0, 1, 2, 3, 4]


def test_prefetch_close_stops_the_producer_early():
    made = []

    def gen():
        for i in range(10**6):
            made.append(i)
            yield i

    it = Prefetch(gen(), depth=4)
    first = [x for _, x in zip(range(3), it, strict=False)]
    it.close()
    assert first == [0, 1, 2] and len(made) <= 3 + 4 + 2  # consumed + queue depth + in hand
    assert not it._thread.is_alive()


def test_behind_runs_one_job_at_a_time_in_order_and_reraises():
    log, lock, running = [], threading.Lock(), [0]

    def job(i):
        def run():
            with lock:
                running[0] += 1
                assert running[0] == 1
            time.sleep(0.01)
            log.append(i)
            with lock:
                running[0] -= 1
        return run

    with Behind() as w:
        for i in range(5):
            w.submit(job(i))
    assert log == [0, 1, 2, 3, 4]

    def boom():
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"), Behind() as w:
        w.submit(boom)
        w.submit(job(9))  # waits for boom first: its error surfaces here


def test_prefetch_budget_counts_cost_and_lets_an_oversized_item_through():
    made = []

    def gen(costs):
        for i, c in enumerate(costs):
            made.append(i)
            yield c

    it = Prefetch(gen([4] * 100), depth=10, cost=lambda c: c)
    time.sleep(0.3)  # nothing consumed: two items (8 of 10) ahead, the third waits for room
    assert len(made) == 3 and it._ahead == 8
    assert list(it) == [4] * 100 and it._ahead == 0
    assert list(Prefetch(gen([50, 1, 50]), depth=10, cost=lambda c: c)) == [50, 1, 50]  # larger than depth
