"""Order-preserving, memory-bounded parallel decoding that survives crashing decoders.

``Pool.imap`` buffers every finished result when the consumer is slower than the workers; here at
most ``window`` chunks are in flight, so memory is bounded by ``window * chunk`` images whatever the
dataset size. Results come back in submission order, so outputs do not depend on the worker count.
A worker killed by a native decoder crash (segfault on a hostile file) breaks the pool; the chunk is
then retried one item per fresh process to isolate the culprit, which is reported as an error.

Workers are forked where the platform allows (cheap start, no re-import of ``__main__``, which matters
under Snakemake's script runner). They may inherit the parent's open HDF5 handle but never use it, and
multiprocessing ends forked workers with ``os._exit``, so no library shutdown code touches that file.
"""

from __future__ import annotations

import multiprocessing as mp
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import islice
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def _context():
    methods = mp.get_all_start_methods()
    return mp.get_context("fork" if "fork" in methods else "spawn")


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def ordered_map(
    fn: Callable[[Sequence[T]], list[R]],
    chunks: Iterable[Sequence[T]],
    workers: int,
    window: int | None = None,
    on_crash: Callable[[T], R] | None = None,
) -> Iterator[list[R]]:
    """Yield ``fn(chunk)`` for each chunk, in order, using ``workers`` processes (0 = in-process).

    ``on_crash(item)`` produces the result for an item whose worker process died.
    """
    if workers <= 0:
        for c in chunks:
            yield fn(c)
        return
    window = window or 2 * workers
    it = iter(chunks)
    ex = ProcessPoolExecutor(max_workers=workers, mp_context=_context())
    pending: deque[tuple[Sequence[T], Future]] = deque()
    try:
        for c in islice(it, window):
            pending.append((c, ex.submit(fn, c)))
        while pending:
            chunk, fut = pending.popleft()
            try:
                result = fut.result()
            except BrokenProcessPool:
                ex.shutdown(wait=False, cancel_futures=True)
                redo = [chunk] + [c for c, _ in pending]
                pending.clear()
                for c in redo:
                    yield _isolated(fn, c, on_crash)
                ex = ProcessPoolExecutor(max_workers=workers, mp_context=_context())
                for c in islice(it, window):
                    pending.append((c, ex.submit(fn, c)))
                continue
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, ex.submit(fn, nxt)))
            yield result
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def _isolated(fn: Callable[[Sequence[T]], list[R]], chunk: Sequence[T], on_crash: Callable[[T], R] | None) -> list[R]:
    """Run each item of ``chunk`` in its own short-lived process."""
    out: list[R] = []
    for item in chunk:
        with ProcessPoolExecutor(max_workers=1, mp_context=_context()) as ex:
            try:
                out.extend(ex.submit(fn, [item]).result())
            except BrokenProcessPool:
                if on_crash is None:
                    raise
                out.append(on_crash(item))
    return out
