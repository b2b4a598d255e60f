"""Many small storage requests at once, a bounded number in flight.

A catalog run folder holds ~10^4 markers and record files; read one after another, each pays
the store's full round trip (20 ms on S3 makes 10^4 reads cost 200 s). `map_bounded` overlaps
them on a thread pool (boto3 clients and pyarrow's S3 filesystem are thread-safe, and both
release the GIL while waiting on the network) while keeping at most `2 x workers` results
pending, so memory stays bounded however many objects there are.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

# Requests in flight for listing-driven passes (plan, resume, status). The S3 client's
# connection pool is sized to hold them all (`pipeline.storage.s3`).
REQUEST_WORKERS = 32


def map_bounded(
    fn: Callable[[T], R], items: Iterable[T], workers: int = REQUEST_WORKERS
) -> Iterator[R]:
    """`fn(item)` for every item, in the items' order, at most `workers` at a time.

    The first exception is raised where its result would have been yielded; the requests not
    yet started are cancelled.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    pending: deque[Future[R]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="storage-map") as pool:
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
