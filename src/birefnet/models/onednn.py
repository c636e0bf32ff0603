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
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from birefnet.models.tracing import is_tracing

__all__ = [
    "USE_ONEDNN",
    "PackedLinear",
    "autocast_enabled",
    "available",
    "linear",
    "linear_add",
    "pack_linear_weights",
    "unpack_linear_weights",
    "use_onednn",
]

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


# The row count oneDNN's blocked weight layout is chosen for. The layout does not depend on it for the
# shapes measured (every row count from 64 to 16384 gave the same products, bit for bit); 2048 is the
# chunk the Swin's MLP runs in.
_PACK_ROWS = 2048


class PackedLinear(nn.Linear):
    """An ``nn.Linear`` whose float32 CPU weight is held in oneDNN's blocked layout, for inference.

    oneDNN reorders a plain ``(N, K)`` weight into its blocked layout inside every product; packed
    once, the products skip that. On the AVX-512 host, swin_v1_l's Swin shapes ran 1.03-1.09x faster
    per product, with the same values bit for bit (docs/performance.md). The packed weight replaces the plain
    one (same bytes), so memory does not grow.

    Made by :func:`pack_linear_weights` only. It behaves as the plain layer it came from:
    - ``forward`` runs the oneDNN product where :func:`use_onednn` allows it, else ``F.linear`` on the
      weight unpacked for that call (slow, but correct: autocast, tracing, oneDNN switched off);
    - ``state_dict`` holds the plain weight, so saved files and key lists are unchanged;
    - ``load_state_dict``, ``.to()``/``.float()``/``.cuda()`` and ``train()`` first turn it back into a
      plain ``nn.Linear`` (:func:`unpack_linear_weights`), so training, other devices and dtypes
      see ordinary parameters.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W^T + b`` for ``(..., in_features)`` ``x``."""
        if use_onednn(x):
            flat = x.reshape(-1, x.shape[-1])
            if not flat.is_contiguous():
                flat = flat.contiguous()
            return linear(flat, self.weight, self.bias).view(*x.shape[:-1], self.out_features)
        return F.linear(x, self.weight.to_dense(), self.bias)

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "weight"] = self.weight.detach().to_dense()

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        _unpack(self)
        nn.Linear._load_from_state_dict(self, *args, **kwargs)

    def _apply(self, fn: Any, recurse: bool = True) -> nn.Module:
        _unpack(self)
        return nn.Linear._apply(self, fn, recurse)

    def train(self, mode: bool = True) -> nn.Module:
        if mode:
            _unpack(self)
        return nn.Linear.train(self, mode)


def _packable(module: nn.Module) -> bool:
    """A plain float32 CPU ``nn.Linear`` (not a subclass: quantised or otherwise replaced layers stay)."""
    weight = getattr(module, "weight", None)
    return (
        type(module) is nn.Linear
        and isinstance(weight, torch.Tensor)
        and weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and weight.layout == torch.strided
    )


def packed_weight(weight: torch.Tensor) -> torch.Tensor:
    """``(N, K)`` float32 ``weight`` reordered into oneDNN's blocked layout, for :func:`linear` /
    :func:`linear_add` products that reuse it (their values are those of the plain weight, bit for bit,
    from 64 rows up). For a weight made inside the forward and used for several products: oneDNN
    otherwise reorders it in every product. Only where :func:`use_onednn` holds for the products."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), _PACK_ROWS)


def pack_linear_weights(module: nn.Module) -> int:
    """Turn every plain float32 CPU ``nn.Linear`` in ``module`` into a :class:`PackedLinear`, in place.

    For CPU inference only: each product gives the plain weight's values bit for bit (from 64 rows up;
    with a single row oneDNN takes another kernel for a plain weight: float rounding), ~3-9 % faster
    on the AVX-512 host, and the memory stays the same (the plain weight is replaced, not copied).
    Does nothing where this
    machine does not take the oneDNN path (:func:`available`), or for a module in training mode.
    Returns the number of layers packed.
    """
    if not available() or module.training:
        return 0
    count = 0
    with torch.no_grad():
        for layer in module.modules():
            if _packable(layer):
                requires_grad = layer.weight.requires_grad
                packed = torch.ops.mkldnn._reorder_linear_weight(
                    layer.weight.detach().contiguous(), _PACK_ROWS
                )
                layer.weight = nn.Parameter(packed, requires_grad=False)
                layer._plain_requires_grad = requires_grad  # type: ignore[assignment]
                layer.__class__ = PackedLinear
                count += 1
    return count


def _unpack(layer: nn.Module) -> None:
    """A :class:`PackedLinear` back to a plain ``nn.Linear`` with its exact weight (no-op otherwise)."""
    if type(layer) is not PackedLinear:
        return
    with torch.no_grad():
        plain = layer.weight.detach().to_dense()
    layer.__class__ = nn.Linear
    layer.weight = nn.Parameter(plain, requires_grad=layer.__dict__.pop("_plain_requires_grad", True))


def unpack_linear_weights(module: nn.Module) -> int:
    """Undo :func:`pack_linear_weights` in ``module`` (exact); returns the number of layers unpacked."""
    layers = [layer for layer in module.modules() if type(layer) is PackedLinear]
    for layer in layers:
        _unpack(layer)
    return len(layers)
