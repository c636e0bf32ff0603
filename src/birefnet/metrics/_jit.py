"""Optional numba compilation for the metric kernels (GT skeleton, distance transform, wF look-ups).

numba is a dependency, but each kernel has an exact fallback (scikit-image, OpenCV) so that a
platform without numba wheels still evaluates, only slower. Kernels are compiled on first use and
cached on disk (numba's ``cache=True``: beside this package when writable, else in the user's cache
folder), so a new process pays ~0.5-1 s once to load them, and the very first run ~5-10 s to compile.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)

# tests set this to False to exercise the fallbacks
ENABLED = True
_compiled: dict[Callable, Callable | None] = {}


def compiled(fn: Callable) -> Callable | None:
    """``fn`` compiled by numba (nopython, no GIL), or None when numba is missing or disabled."""
    if not ENABLED:
        return None
    if fn not in _compiled:
        try:
            import numba
        except ImportError:
            logger.info("numba is not installed: %s falls back to a slower exact path", fn.__name__)
            _compiled[fn] = None
        else:
            _compiled[fn] = numba.njit(cache=True, nogil=True)(fn)
    return _compiled[fn]


def warm() -> None:
    """Compile (or load from the disk cache) every metric kernel now, on tiny inputs."""
    import numpy as np

    from .functional import (
        _FAR,
        _edt_sq_kernel,
        _importance_kernel,
        _importance_table,
        _nearest_kernel,
        _offsets_table,
    )
    from .skeleton import _TABLE, _thin_kernel

    thin, edt = compiled(_thin_kernel), compiled(_edt_sq_kernel)
    if thin is not None:
        fg = np.zeros(25, np.uint8)
        thin(fg, np.zeros(25, np.uint8), 5, _TABLE)
    if edt is not None:
        edt(np.ones((2, 2), np.uint8), _FAR)
    importance = compiled(_importance_kernel)
    if importance is not None:
        importance(np.zeros((1, 1), np.int32), _importance_table())
    nearest = compiled(_nearest_kernel)
    if nearest is not None:
        starts, offsets = _offsets_table()
        one = np.zeros(1, np.int64)
        nearest(np.ones(49, np.uint8), one + 24, one + 1, starts, offsets[:, 0] * 7 + offsets[:, 1])
