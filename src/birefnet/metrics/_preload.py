"""Imported by the metric workers' forkserver: loads the numba kernels once, before the fork.

Each worker would otherwise import numba and load the cached kernels itself (~1 s per process, which
on a small folder costs more than the second core saves). Only numpy arrays are touched here: no
OpenCV call, whose thread pool must not exist in a process that forks (see ``evaluate._run_all``).
"""

from __future__ import annotations

from ._jit import warm

warm()
