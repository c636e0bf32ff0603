"""How a CPU inference forward uses the process heap: freed pages kept mapped, within a budget.

A BiRefNet forward at 1024x1024 allocates and frees ~1-3 GB of temporaries. With glibc's default
settings each tensor above the mmap threshold (dynamic, up to 32 MB) is a fresh mapping, unmapped
again when freed, and the heap's free top is handed back after each free. Every reuse of that memory
page-faults it in afresh, and the kernel zeroes each 4 KB page: ~1 GB of faults per swin_v1_t
forward, 0.5-0.7 s of system CPU time, ~7-11 % of the forward (docs/performance.md, "Page faults").

So for each CPU inference forward of a large input (:func:`prepare_heap` at its start,
:func:`release_heap` at its end) the process's glibc allocator is told to serve large blocks from the
heap (``M_MMAP_MAX = 0``) and to keep freed heap memory mapped (``M_TRIM_THRESHOLD`` at its maximum):
the forward's temporaries reuse pages already faulted in. The settings are process-wide (other threads
see them while a forward runs), so they hold only for the forward; afterwards glibc's usual handling
is back, and the pages the heap holds stay mapped for the next forward, as glibc leaves them anyway.
:data:`KEEP_HEAP_PAGES` = False turns this off.

Kept pages still count in the process's RSS. At the ends of the big stages of the forward
(:func:`trim_heap_at_stage_end`) a process within :data:`HEAP_KEEP_BYTES` keeps them. The first time
one is over it, it stops keeping pages for good and, as before, hands the free pages back at every
stage end (``malloc_trim(0)``): without that, freed pages of earlier stages add to the peak
(swin_v1_l at 1024x1024: ~2.07 GB instead of ~1.75-1.87). So swin_v1_l keeps its peak RSS of
before, while swin_v1_t at 1024x1024 (~1.1 GB held) page-faults 0.04-0.15 GB per forward instead
of ~1 GB.

Only glibc has these calls; elsewhere (macOS, Windows, musl) every function here does nothing.

(The RSS figures here were read from ``benchmarks/speed.py`` before 2026-11-27, when it printed GiB
under "GB": multiply by 1.074 for GB of 10^9 bytes, the unit of issue 6's goal.)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from dataclasses import dataclass

import torch

from birefnet.models.tracing import is_tracing

__all__ = [
    "HEAP_KEEP_BYTES",
    "KEEP_HEAP_PAGES",
    "heap_bytes",
    "prepare_heap",
    "release_heap",
    "trim_heap",
    "trim_heap_at_stage_end",
]

#: Keep freed heap pages mapped during CPU inference forwards (see the module docstring); read by
#: :func:`prepare_heap` at each forward. ``benchmarks/ab_switch.py --switch keep-heap`` compares two
#: processes, one with each setting (the heap a process has built up would blur an in-process switch).
KEEP_HEAP_PAGES = True

#: Memory held by malloc (:func:`heap_bytes`, weights included) up to which freed pages stay mapped at
#: the stage ends of a CPU forward (see :func:`trim_heap_at_stage_end` for what happens above it).
#: 1.25 GiB: swin_v1_t at 1024x1024 (~1.1 GB, 1.17 GB inside `birefnet predict`) stays under it;
#: swin_v1_l (0.9 GB of weights, ~2.2 GB if nothing were handed back) goes over it at its first stage
#: end, and trimming keeps its peak RSS under the 2 GB goal of issue 6.
HEAP_KEEP_BYTES = 1280 * 2**20

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1
# glibc's usual handling as it settles during a forward: its dynamic mmap threshold rises to the
# largest freed mapped block up to 32 MB, with the trim threshold at twice that; 65536 mappings at most.
_USUAL_MMAP_THRESHOLD = 32 * 2**20
_USUAL_TRIM_THRESHOLD = 64 * 2**20
_USUAL_MMAP_MAX = 65536


class _MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (glibc >= 2.33): heap statistics in size_t fields."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",  # bytes of the heaps of all arenas, in use or free
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",  # bytes in separately mapped (large) blocks
            "usmblks",
            "fsmblks",
            "uordblks",  # bytes in use
            "fordblks",  # bytes free
            "keepcost",
        )
    ]


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    """The C library if it is glibc (it has ``malloc_trim``), else None."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim  # noqa: B018 - glibc only
    except (OSError, AttributeError):
        return None
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.malloc_trim.restype = ctypes.c_int
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    if hasattr(libc, "mallinfo2"):
        libc.mallinfo2.argtypes = []
        libc.mallinfo2.restype = _MallInfo2
    return libc


def trim_heap() -> None:
    """Give free heap pages back to the OS (glibc ``malloc_trim(0)``); a no-op without glibc."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def heap_bytes() -> int | None:
    """Bytes that glibc's malloc holds from the OS for this process: its heaps (in use or free) and
    its separately mapped large blocks (``mallinfo2()``: ``arena + hblkhd``; tensors allocated before
    :func:`prepare_heap`, such as the weights, are mostly the latter). None where that is unknown (no
    glibc, or glibc older than 2.33)."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    info = libc.mallinfo2()
    return int(info.arena + info.hblkhd)


@dataclass
class _HeapState:
    """This process's heap handling (the allocator settings are process-wide, so is this record)."""

    kept: bool = False  # freed pages are being kept mapped (between prepare_heap and release_heap)
    over_budget: bool = False  # the budget was once exceeded: glibc's usual handling from then on


_state = _HeapState()


def _set_heap(mmap_max: int, trim_threshold: int, mmap_threshold: int | None = None) -> bool:
    """glibc ``mallopt`` of the mmap count limit, the trim threshold and optionally the mmap threshold;
    True if glibc took them all, False without glibc."""
    libc = _libc()
    if libc is None:
        return False
    ok = bool(libc.mallopt(_M_MMAP_MAX, mmap_max)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold))
    if mmap_threshold is not None:
        ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and ok
    return ok


def _large_cpu_inference(x: torch.Tensor, training: bool) -> bool:
    """A CPU inference forward (not training, export or compile) on a (B, C, H, W) input of at least
    512x512, where the heap handling pays (below, the temporaries are small)."""
    return (
        not training
        and x.device.type == "cpu"
        and x.shape[-2] * x.shape[-1] >= 512 * 512
        and not is_tracing()  # covers torch.compile too
    )


def prepare_heap(x: torch.Tensor, training: bool) -> None:
    """At the start of a forward on ``x``: for a large CPU inference input, keep freed heap pages
    mapped until :func:`release_heap` at its end (see the module docstring), unless
    :data:`KEEP_HEAP_PAGES` is False or the process once went over :data:`HEAP_KEEP_BYTES`."""
    if KEEP_HEAP_PAGES and not _state.kept and not _state.over_budget and _large_cpu_inference(x, training):
        # Large blocks from the heap instead of fresh mappings, and the heap's free top kept mapped.
        _state.kept = _set_heap(mmap_max=0, trim_threshold=_INT_MAX)


def release_heap() -> None:
    """At the end of a forward: if :func:`prepare_heap` kept freed pages for it, go back to glibc's
    usual handling (large blocks mapped above 32 MB, the heap top trimmed above 64 MB), so that the
    process outside our forwards (training, the caller's code, other threads) runs as it would
    without us. The pages the heap holds stay mapped: the next forward faults in little (swin_v1_t at
    1024x1024: 0.04-0.15 GB per forward, against 0.00-0.08 GB with the setting kept between forwards,
    ~1 GB without it)."""
    if _state.kept and not is_tracing():
        _set_usual_heap()
        _state.kept = False


def _set_usual_heap() -> None:
    """glibc's usual handling as it settles during a forward (see the ``_USUAL_*`` constants)."""
    _set_heap(
        mmap_max=_USUAL_MMAP_MAX, trim_threshold=_USUAL_TRIM_THRESHOLD, mmap_threshold=_USUAL_MMAP_THRESHOLD
    )


def trim_heap_at_stage_end(x: torch.Tensor, training: bool) -> None:
    """Between the big stages of a large CPU inference forward on ``x``: hand free heap pages back
    (:func:`trim_heap`), unless they are being kept and malloc holds at most :data:`HEAP_KEEP_BYTES`.

    The first time a process with kept pages is found over that budget (or cannot tell: glibc older
    than 2.33), it goes back to glibc's usual handling at once (large blocks mapped and returned when
    freed, above 32 MB, where glibc's dynamic threshold ends up; the heap's free top trimmed above
    64 MB) and stops keeping pages for good. Kept pages would otherwise add up to the peak RSS:
    swin_v1_l at 1024x1024 measured 1.84-1.95 GB with them and trims at every stage end, 1.75 GB
    without them. Training, accelerator tensors, export/tracing and inputs under 512x512 skip all of
    this.
    """
    if not _large_cpu_inference(x, training):
        return
    if _state.kept:
        size = heap_bytes()
        if size is not None and size <= HEAP_KEEP_BYTES:
            return
        _set_usual_heap()
        _state.kept, _state.over_budget = False, True
    trim_heap()
