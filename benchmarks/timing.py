"""What the benchmarks share: a warm median of a call's wall time."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable


def median_ms(fn: Callable[[], Any], repeats: int, warm: int = 1) -> float:
    """The median wall time of ``repeats`` calls of ``fn`` after ``warm`` untimed ones, ms."""
    for _ in range(warm):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times)
