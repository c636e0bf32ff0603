"""oneDNN's fused linear kernels for float32 CPU inference on AVX-512 machines.

PyTorch runs ``F.linear`` / ``addmm`` on the CPU through MKL. On an AVX-512 AMD EPYC (Zen 4) host,
torch 2.13, oneDNN's ``mkldnn._linear_pointwise`` runs the same products 15-40 % faster for the shapes
of BiRefNet's Swin projections and deformable-convolution GEMMs (175-205 GFLOP/s against MKL's
110-165 on 2 threads; a plain 4096² product reads 185-205 against 145-175), and it can fuse the bias,
an exact GELU or a residual sum into the product, which saves a pass over each output. On the AVX2-only
hosts this project measured earlier, MKL was never compared with it, so machines without AVX-512 keep
MKL (see docs/performance.md).

The kernels return fresh tensors (there is no ``out=``): callers keep outputs moderate, e.g. by
chunking, so that they are recycled by the allocator instead of being page-faulted in afresh.
Values equal the MKL path up to float rounding (~1e-7 relative; the GELU is the same erf form).
"""

from __future__ import annotations

import functools

import torch

from birefnet.models.tracing import is_tracing

__all__ = ["USE_ONEDNN", "autocast_enabled", "available", "linear", "linear_add", "use_onednn"]

#: Set to False to run every product through MKL again, as on CPUs without AVX-512 (a switch for
#: comparisons: ``benchmarks/onednn_linear.py`` alternates forwards with it on and off).
USE_ONEDNN = True


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """Whether this machine takes the oneDNN path: the op exists, oneDNN is built in, and the CPU has
    AVX-512 (where it was measured faster than MKL)."""
    try:
        torch.ops.mkldnn._linear_pointwise  # noqa: B018 - raises where this build lacks the op
    except (AttributeError, RuntimeError):
        return False
    return torch.backends.mkldnn.is_available() and torch.backends.cpu.get_cpu_capability() == "AVX512"


def use_onednn(x: torch.Tensor) -> bool:
    """Whether a float32 CPU product on ``x`` should go through :func:`linear` / :func:`linear_add`: on
    an AVX-512 CPU (:func:`available`) with oneDNN enabled (``torch.backends.mkldnn.flags``) and no
    autocast, with no autograd graph being recorded (inference only), and not while the model is being
    captured (:func:`birefnet.models.tracing.is_tracing`): Inductor cannot lower these calls
    (``torch.compile`` failed with a LoweringException on them), and an exported graph should hold
    plain products."""
    return (
        USE_ONEDNN
        and not is_tracing()  # first: the checks below are not all traceable (graph breaks)
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_grad_enabled()
        and torch.backends.mkldnn.enabled
        and not autocast_enabled("cpu")
        and available()
    )


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (a product under it must keep its own dtype rules)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no device type
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gelu: bool = False
) -> torch.Tensor:
    """``x @ weight^T + bias`` (then the exact, erf-based GELU if ``gelu``) in one oneDNN call.

    Args:
        x: ``(M, K)`` contiguous float32.
        weight: ``(N, K)``, a Linear's layout.
        bias: ``(N,)`` or None.
        gelu: apply ``nn.GELU()`` (approximate="none") to the result, fused.

    Returns:
        A new ``(M, N)`` tensor.
    """
    if gelu:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu", [], "none")
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def linear_add(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``x @ weight^T + bias + residual`` in one oneDNN call, the sum fused into the product.

    Args:
        x: ``(M, K)`` contiguous float32.
        residual: ``(M, N)`` contiguous; not modified.
        weight: ``(N, K)``.
        bias: ``(N,)`` or None.

    Returns:
        A new ``(M, N)`` tensor.
    """
    return torch.ops.mkldnn._linear_pointwise.binary(x, residual, weight, bias, "add")
