"""C kernels of our own for float32 CPU inference on AVX-512, compiled on first use.

- Swin window attention (``csrc/window_attention.c``), taken by
  :meth:`birefnet.models.backbones.swin.SwinBlock.forward_streamed`. PyTorch computes a chunk of windows'
  attention as two batched products of 144 x 144 x 32 per head, a softmax and a scatter of the outputs,
  ~10 operator calls over ~2 MB of scores; the kernel does one head of one window at a time with its
  scores in the L2 cache and writes each output row to its token's place (1.9-2.6x per chunk).
- The deformable convolution's bilinear sampling (``csrc/deform_sampling.c``), taken by
  :class:`birefnet.models.deform_conv._GatherSampler`: the columns straight from the offsets and the
  mask, instead of ~20 elementwise operations that write 4 indices and 4 weights per sample and
  ``F.embedding_bag`` reading them back (1.7x).
- LayerNorm of gathered rows (``csrc/layer_norm_rows.c``), taken by the Swin backbone's streamed blocks
  (each window chunk's tokens, gathered and normalised by ``norm1``; ``norm2`` on each chunk) and by
  ``PatchMerging`` (each 2x2 neighbourhood concatenated and normalised): one pass over the rows instead
  of a gather (or permute) that writes them out and a LayerNorm that reads them back (1.5-2.2x).

``benchmarks/cpu_kernels.py`` measures them; docs/performance.md has the forward. The package ships the
C sources, not a binary: the first call compiles them with the machine's C compiler (``$CC``, else
``cc``, ``gcc`` or ``clang``; under a second) into ``kernels/`` of the package's cache folder
(``$BIREFNET_CACHE``, else ``$XDG_CACHE_HOME/birefnet``, else ``~/.cache/birefnet``), named by a hash of
the sources, the flags and the compiler, and loads it with :mod:`ctypes` (which releases the GIL during
the call). Where there is no compiler, the build fails, the CPU has no AVX-512, or
``BIREFNET_C_KERNELS=0`` is set, :func:`available` is False and the callers keep their PyTorch paths:
the same functions, rounded in another order (~1e-7 relative).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from birefnet._cache import cache_root

__all__ = [
    "available",
    "build_error",
    "cpu_has_avx512",
    "deform_columns",
    "gather_layer_norm",
    "library_path",
    "unavailable_reason",
    "window_attention",
]

log = logging.getLogger(__name__)

#: Set to False to keep every CPU path in PyTorch (a switch for ``benchmarks/ab_switch.py``; the
#: environment variable ``BIREFNET_C_KERNELS=0`` does the same for a whole process). Read per call.
ENABLED = True

_SOURCES = (
    Path(__file__).with_name("csrc") / "window_attention.c",
    Path(__file__).with_name("csrc") / "deform_sampling.c",
    Path(__file__).with_name("csrc") / "layer_norm_rows.c",
)
# -fopenmp: the parallel loop runs on the OpenMP runtime already loaded by PyTorch's Linux wheels
# (libgomp.so.1, matched by soname), sharing its worker threads; pthreads of our own measured 1.4-2x
# slower per call right after a PyTorch operator, whose spinning workers held the second core.
_FLAGS = ("-O3", "-mavx512f", "-mavx512dq", "-mfma", "-fopenmp", "-fPIC", "-shared")
# The C functions' parameters in order (see the sources), one letter each: p pointer, q int64, f float,
# i int. Each returns an int status.
_SIGNATURES = {
    "birefnet_window_attention_f32": "pqqqpqpqppqqfi",
    "birefnet_deform_columns_f32": "pqqqppqqqqpppppi",
    "birefnet_gather_layer_norm_f32": "pqpqqqppfpi",
}
_CTYPES = {"p": ctypes.c_void_p, "q": ctypes.c_int64, "f": ctypes.c_float, "i": ctypes.c_int}
_HEAD_DIM = 32
_WINDOW_TOKENS = 144

_build_error: str | None = None


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def library_path(compiler: str) -> Path:
    """Where the library compiled from these sources, with these flags and ``compiler``, is cached."""
    digest = hashlib.sha256()
    for part in (*(p.read_bytes() for p in _SOURCES), " ".join(_FLAGS).encode(), compiler.encode()):
        digest.update(part)
    return cache_root() / "kernels" / f"birefnet_cpu-{digest.hexdigest()[:16]}.so"


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    """The compiled library, built on the first call of a process that finds none on disk, or None."""
    global _build_error
    compiler = _compiler()
    if compiler is None:
        _build_error = "no C compiler found (set CC, or install gcc or clang)"
        return None
    target = library_path(compiler)
    try:
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            # Built under a temporary name and renamed into place: a concurrent process sees either no
            # library or a whole one.
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
            os.close(fd)
            try:
                subprocess.run(
                    [compiler, *_FLAGS, *map(str, _SOURCES), "-o", tmp],
                    check=True,
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        lib = ctypes.CDLL(str(target))
    except subprocess.CalledProcessError as e:
        lines = (e.stderr or "").strip().splitlines()
        _build_error = f"{compiler} failed: {lines[-1] if lines else e}"
    except (OSError, subprocess.SubprocessError) as e:
        _build_error = f"{type(e).__name__}: {e}"
    else:
        for name, argtypes in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = [_CTYPES[c] for c in argtypes], ctypes.c_int
        return lib
    log.warning("birefnet: the C kernels are not used (%s); PyTorch's paths run instead", _build_error)
    return None


def available() -> bool:
    """Whether the kernels may run in this process: enabled (:data:`ENABLED`, ``BIREFNET_C_KERNELS``),
    Linux, an AVX-512 CPU (:func:`cpu_has_avx512`), and the library built and loaded (compiled on the
    first call that gets this far)."""
    return (
        ENABLED
        and os.environ.get("BIREFNET_C_KERNELS", "1") != "0"
        and sys.platform.startswith("linux")
        and cpu_has_avx512()
        and _library() is not None
    )


def cpu_has_avx512() -> bool:
    """Whether PyTorch found AVX-512 (F, BW, VL, DQ) on this CPU: the kernels' instructions."""
    return torch.backends.cpu.get_cpu_capability() == "AVX512"


def build_error() -> str | None:
    """Why the library could not be built or loaded (None if it was, or was not tried)."""
    return _build_error


def unavailable_reason() -> str | None:
    """Why :func:`available` is False, in a few words for a message (None when it is True)."""
    if not ENABLED or os.environ.get("BIREFNET_C_KERNELS", "1") == "0":
        return "switched off (cpu_kernels.ENABLED or BIREFNET_C_KERNELS=0)"
    if not sys.platform.startswith("linux"):
        return f"built for Linux only, not {sys.platform}"
    if not cpu_has_avx512():
        return "this CPU has no AVX-512 (the kernels' instructions)"
    if _library() is None:
        return f"the library could not be built here: {_build_error}"
    return None


def window_attention(
    qkv: torch.Tensor,
    heads: int,
    rows: torch.Tensor | None,
    mask: torch.Tensor,
    out: torch.Tensor,
    out_rows: torch.Tensor,
) -> bool:
    """``softmax(q k^T / sqrt(d) + mask) v`` per window and head, each query's output written to its row.

    Args:
        qkv: ``(windows, 144, 3C)`` contiguous float32, the qkv projection of each window's token slots
            (``C = heads * 32``).
        heads: attention heads.
        rows: ``(nq,)`` int64 query slots to compute, or None for all 144 (keys and values: all slots).
        mask: ``(1 or windows, heads, 144, 144)`` contiguous float32 additive mask (bias, plus 0 / -inf);
            every query row needs a finite entry.
        out: ``(M, C)`` float32 with unit column stride, written in place.
        out_rows: ``(windows * nq,)`` int64 rows of ``out``, window-major, one per computed query.

    Returns:
        False (``out`` untouched) where the kernel does not apply: not :func:`available`, or other
        shapes, dtypes or layouts (the caller then runs PyTorch's path); True once ``out`` is written.

    Raises:
        IndexError: a query slot outside ``[0, 144)`` or an output row outside ``out`` (checked by the
            kernel before it writes anything).
    """
    windows, tokens, c3 = qkv.shape
    nq = tokens if rows is None else rows.numel()
    if not (
        available()
        and tokens == _WINDOW_TOKENS
        and c3 == 3 * heads * _HEAD_DIM
        and all(t.dtype == torch.float32 and t.device.type == "cpu" for t in (qkv, mask, out))
        and qkv.is_contiguous()
        and mask.is_contiguous()
        and mask.shape[1:] == (heads, tokens, tokens)
        and mask.shape[0] in (1, windows)
        and out.dim() == 2
        and out.shape[1] == heads * _HEAD_DIM
        and out.stride(1) == 1
        and out_rows.dtype == torch.int64
        and out_rows.is_contiguous()
        and out_rows.numel() == windows * nq
        and (rows is None or (rows.dtype == torch.int64 and rows.is_contiguous() and 0 < nq <= tokens))
        and not any(t.requires_grad and torch.is_grad_enabled() for t in (qkv, mask))
    ):
        return False
    if windows == 0:
        return True
    status = _library().birefnet_window_attention_f32(
        qkv.data_ptr(),
        windows,
        tokens,
        heads,
        None if rows is None else rows.data_ptr(),
        nq,
        mask.data_ptr(),
        0 if mask.shape[0] == 1 else mask.stride(0),
        out.data_ptr(),
        out_rows.data_ptr(),
        out.shape[0],
        out.stride(0),
        _HEAD_DIM**-0.5,
        torch.get_num_threads(),
    )
    if status == 3:
        raise IndexError("window_attention: a query slot or an output row is out of range")
    return status == 0


def deform_columns(
    table: torch.Tensor,
    height: int,
    width: int,
    base_y: torch.Tensor,
    base_x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor | None,
) -> torch.Tensor | None:
    """The deformable convolution's sampled columns (``deform_conv._GatherSampler``, one offset group).

    Args:
        table: ``(B * (height + 3) * (width + 3), C)`` contiguous float32: the input with a zero border
            (rows -1 .. height + 1, columns -1 .. width + 1), channels last.
        height, width: the input's size.
        base_y: ``(R, 1, K)`` contiguous float32 rows of the kernel points of ``R`` output rows.
        base_x: ``(1, Wo, K)`` contiguous float32 columns of the kernel points.
        offset: ``(B, 1, R, Wo, K, 2)`` float32 (dy, dx), any strides.
        mask: ``(B, 1, R, Wo, K)`` float32 modulation, any strides, or None.

    Returns:
        ``(B, 1, R * Wo, K * C)`` columns, or None where the kernel does not apply (not
        :func:`available`, other dtypes or layouts, or autograd recording: the caller then samples with
        PyTorch).
    """
    batch, groups, rows, out_w, points, _ = offset.shape
    channels = table.shape[1]
    tensors = (table, base_y, base_x, offset) if mask is None else (table, base_y, base_x, offset, mask)
    if not (
        available()
        and groups == 1
        and all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors)
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
        and table.is_contiguous()
        and table.shape[0] == batch * (height + 3) * (width + 3)
        and base_y.is_contiguous()
        and base_y.shape == (rows, 1, points)
        and base_x.is_contiguous()
        and base_x.shape == (1, out_w, points)
        and (mask is None or mask.shape == offset.shape[:-1])
    ):
        return None
    columns = table.new_empty(batch, 1, rows * out_w, points * channels)
    if columns.numel() == 0:
        return columns
    off_stride = (ctypes.c_int64 * 5)(*(offset.stride(i) for i in (0, 2, 3, 4, 5)))
    mask_strides = (0,) * 4 if mask is None else tuple(mask.stride(i) for i in (0, 2, 3, 4))
    status = _library().birefnet_deform_columns_f32(
        table.data_ptr(),
        height,
        width,
        channels,
        base_y.data_ptr(),
        base_x.data_ptr(),
        batch,
        rows,
        out_w,
        points,
        offset.data_ptr(),
        off_stride,
        None if mask is None else mask.data_ptr(),
        (ctypes.c_int64 * 4)(*mask_strides),
        columns.data_ptr(),
        torch.get_num_threads(),
    )
    return columns if status == 0 else None


def gather_layer_norm(
    src: torch.Tensor,
    index: torch.Tensor | None,
    pieces: int,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
) -> torch.Tensor | None:
    """``F.layer_norm`` of gathered, concatenated rows: row ``i`` of the result normalises
    ``cat(src[index[i * pieces]], ..., src[index[i * pieces + pieces - 1]])``.

    Args:
        src: ``(M, C)`` contiguous float32 rows (``C`` a multiple of 16).
        index: ``(rows * pieces,)`` contiguous int64 rows of ``src``, or None for all rows in order (a plain
            LayerNorm of ``src``, ``rows = M / pieces``).
        pieces: source rows per output row.
        weight, bias: ``(pieces * C,)`` float32 LayerNorm affine.
        eps: LayerNorm's epsilon.

    Returns:
        A new ``(rows, pieces * C)`` tensor, or None where the kernel does not apply (not
        :func:`available`, other dtypes, layouts or sizes, or autograd recording: the caller then runs
        PyTorch's gather and LayerNorm).

    Raises:
        IndexError: an index outside ``[0, M)`` (checked before anything is written).
    """
    if src.dim() != 2 or (index is not None and index.dim() != 1) or pieces < 1:
        return None
    count = src.shape[0] if index is None else index.numel()
    rows, channels = count // pieces, src.shape[1]
    tensors = (src, weight, bias)
    if not (
        available()
        and all(t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous() for t in tensors)
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
        and channels % 16 == 0
        and channels > 0
        and count == rows * pieces
        and (
            index is None
            or (index.dtype == torch.int64 and index.device.type == "cpu" and index.is_contiguous())
        )
        and weight.shape == (pieces * channels,)
        and bias.shape == (pieces * channels,)
    ):
        return None
    out = src.new_empty(rows, pieces * channels)
    if rows == 0:
        return out
    status = _library().birefnet_gather_layer_norm_f32(
        src.data_ptr(),
        src.shape[0],
        None if index is None else index.data_ptr(),
        rows,
        pieces,
        channels,
        weight.data_ptr(),
        bias.data_ptr(),
        eps,
        out.data_ptr(),
        torch.get_num_threads(),
    )
    if status == 3:
        raise IndexError("gather_layer_norm: an index is outside the source rows")
    return out if status == 0 else None
