"""Order-preserving bounded parallel map, including a worker killed by a crashing decoder."""

from __future__ import annotations

import os
import signal

from synthcxr.data.parallel import chunked, ordered_map


def square_chunk(items):
    return [x * x for x in items]


def crashing_chunk(items):
    out = []
    for x in items:
        if x == 7:
            os.kill(os.getpid(), signal.SIGKILL)  # what a segfaulting native decoder looks like
        out.append(x * x)
    return out


def test_chunked():
    assert list(chunked(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]


def test_order_independent_of_workers():
    seq = list(range(50))
    ref = [r for c in ordered_map(square_chunk, chunked(seq, 4), workers=0) for r in c]
    par = [r for c in ordered_map(square_chunk, chunked(seq, 4), workers=2, window=3) for r in c]
    assert ref == par == [x * x for x in seq]


def test_crashed_item_is_isolated_and_the_rest_survive():
    seq = list(range(20))
    out = [r for c in ordered_map(crashing_chunk, chunked(seq, 4), workers=2, on_crash=lambda x: ("crash", x)) for r in c]
    assert out == [("crash", 7) if x == 7 else x * x for x in seq]
