"""ONNX export of BiRefNet with dynamic shapes, metadata and a built-in parity check.

``export_onnx(model, "model.onnx")`` writes a graph that ONNX Runtime runs with no custom operator:
the deformable convolutions of the decoder are our own PyTorch code
(:mod:`birefnet.models.deform_conv`), which under export takes its ``grid_sample`` path and becomes
standard ``GridSample`` nodes, and the Swin backbone takes a path with symbolic window padding, shift
mask and batched window attention (:meth:`birefnet.models.backbones.swin.SwinBlock.forward_traceable`). The graph is produced by the ``torch.export``-based exporter
(``torch.onnx.export(..., dynamo=True)``), the one that keeps shapes symbolic; the TorchScript
exporter would bake the export size into the inward-reference patch split.

The graph (the contract users deploy against):

* input ``input``: float32 (B, 3, H, W), RGB, **normalised** with the metadata's ``mean``/``std``
  (``(x / 255 - mean) / std``, ImageNet for every released model) -- the same tensor
  :class:`~birefnet.models.birefnet.BiRefNet` takes, and what rembg's BiRefNet sessions feed. With
  ``normalize=True`` the normalisation moves into the graph and the input is RGB in [0, 1]
  instead (handy in browsers); the metadata key ``birefnet.input`` says which.
* output ``logits``: float32 (B, 1, H, W) before the sigmoid; ``sigmoid`` gives the mask.
* H and W must be multiples of 32. By default B, H and W are dynamic; ``static_size`` fixes H and W
  (smaller graphs, and what TensorRT and onnxruntime-web like best); ``dynamic=False`` fixes B too.
* ``half=True`` stores weights and computes in float16 but keeps float32 input and output, so
  callers do not change.

Metadata (``metadata_props``; read it with :func:`read_metadata`): ``birefnet.name`` (registry
name), ``birefnet.repo_id``, ``birefnet.backbone``, ``birefnet.size`` (training size, WxH),
``birefnet.resolution`` (resize policy), ``birefnet.mean``/``birefnet.std`` (JSON),
``birefnet.input`` ("normalized" or "rgb01"), ``birefnet.output`` ("logits"),
``birefnet.patch_order``, ``birefnet.license``, ``birefnet.commercial``, ``birefnet.dtype``,
``birefnet.dynamic`` and ``birefnet.static_size`` (HxW), ``birefnet.config`` (the architecture as
JSON), and the versions that produced the file.

After writing, the file is checked: ``onnx.checker``, then ONNX Runtime (CPU) and PyTorch run the
same random inputs (batch 2, and a second size when shapes are dynamic) and the relative error
``max|ort - torch| / max|torch|`` must stay within the tolerance (1e-4 for float32, the project's
parity bound; 2e-2 for float16 against the float32 model). Above it, the file is renamed to
``<name>.failed.onnx`` and :class:`ExportCheckError` is raised.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from birefnet import __version__
from birefnet._sizes import two_numbers
from birefnet.models.onednn import unpack_linear_weights

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 18  # the torch.export-based exporter's base opset; GridSample needs >= 16
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
MULTIPLE = 32
FP32_TOLERANCE = 1e-4  # PARITY.md: relative error of the final logits
FP16_TOLERANCE = 2e-2  # float16 graph against the float32 PyTorch model
# Example (H, W) for dynamic exports. Large enough that no intermediate map of BiRefNet is 1 pixel
# (the half-size branch of the multi-scale input at stride 32 and PVT's spatial reduction are H/64):
# the exporter turns a size that is 1 in the example into a constant.
DYNAMIC_EXAMPLE_SIZE = (192, 256)
EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf's 2 GB limit, with room for the graph itself
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ExportError(RuntimeError):
    """The model could not be exported; the message says what failed and what to try."""


class ExportCheckError(ExportError):
    """The exported file does not reproduce PyTorch within the tolerance (``report`` holds the numbers)."""

    def __init__(self, message: str, report: ExportReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class CheckResult:
    """ONNX Runtime against PyTorch on one input.

    Attributes:
        shape: (B, 3, H, W) of the input.
        max_abs: max |ort - torch| of the logits.
        rel_error: max_abs / max |torch| (PARITY.md's relative error).
        torch_seconds, ort_seconds: one forward each (CPU; includes first-run overheads).
    """

    shape: tuple[int, int, int, int]
    max_abs: float
    rel_error: float
    torch_seconds: float
    ort_seconds: float


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and measured.

    Attributes:
        path: the .onnx file.
        opset: ONNX opset of the graph.
        dynamic_axes: names of the dynamic input axes ("batch", "height", "width"), empty if static.
        static_size: (H, W) when height and width are fixed.
        half: float16 weights and compute.
        normalize: normalisation inside the graph (input RGB in [0, 1]).
        metadata: the metadata_props written.
        export_seconds: time of the export itself.
        file_bytes: size of the .onnx file plus its external data, if any.
        checks: one :class:`CheckResult` per checked input (empty when ``check=False``).
        tolerance: the relative-error bound the checks were held to.
    """

    path: Path
    opset: int
    dynamic_axes: list[str]
    static_size: tuple[int, int] | None
    half: bool
    normalize: bool
    metadata: dict[str, str]
    export_seconds: float = 0.0
    file_bytes: int = 0
    checks: list[CheckResult] = field(default_factory=list)
    tolerance: float = FP32_TOLERANCE

    @property
    def max_rel_error(self) -> float | None:
        return max((c.rel_error for c in self.checks), default=None)

    @property
    def passed(self) -> bool:
        return all(c.rel_error <= self.tolerance for c in self.checks)

    def summary(self) -> str:
        """A few lines for people (the CLI prints this)."""
        shape = "B" if "batch" in self.dynamic_axes else "1"
        if self.static_size is not None:
            hw = f"{self.static_size[0]}, {self.static_size[1]}"
        else:
            hw = "H, W" if self.dynamic_axes else "?"
        lines = [
            f"wrote {self.path} ({self.file_bytes / 1e6:.1f} MB, opset {self.opset}, "
            f"{'float16' if self.half else 'float32'}, export {self.export_seconds:.1f} s)",
            f"  input  {INPUT_NAME}: float32 ({shape}, 3, {hw}) "
            + (
                "RGB in [0, 1] (normalised inside the graph)"
                if self.normalize
                else f"normalised RGB: (x / 255 - mean) / std, mean={self.metadata.get('birefnet.mean')} "
                f"std={self.metadata.get('birefnet.std')}"
            ),
            f"  output {OUTPUT_NAME}: float32 ({shape}, 1, {hw}) logits; sigmoid gives the mask",
        ]
        if self.dynamic_axes and self.static_size is None:
            lines.append(f"  dynamic: {', '.join(self.dynamic_axes)} (height and width multiples of 32)")
        for c in self.checks:
            lines.append(
                f"  check {tuple(c.shape)}: max |onnxruntime - torch| = {c.max_abs:.3g}, relative "
                f"{c.rel_error:.3g} (tolerance {self.tolerance:g}) {'ok' if c.rel_error <= self.tolerance else 'FAILED'}"
            )
        return "\n".join(lines)


class _ExportWrapper(nn.Module):
    """The exported function: (B, 3, H, W) float32 -> (B, 1, H, W) float32 logits."""

    def __init__(
        self,
        model: nn.Module,
        *,
        normalize: bool,
        mean: Sequence[float],
        std: Sequence[float],
        dtype: torch.dtype,
    ) -> None:
        super().__init__()
        self.model = model
        self.normalize = normalize
        self.dtype = dtype
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            x = (x - self.mean) / self.std
        logits = self.model(x.to(self.dtype)).logits
        return logits.to(torch.float32)


# --------------------------------------------------------------------------------------------
# Metadata


def _spec_for(model: nn.Module, name: str | None) -> Any:
    from birefnet import registry

    if name is not None:
        return registry.get(name, None)
    return getattr(model, "registry_spec", None)


def build_metadata(
    model: nn.Module,
    *,
    spec: Any = None,
    name: str | None = None,
    mean: Sequence[float],
    std: Sequence[float],
    normalize: bool,
    half: bool,
    dynamic_axes: Sequence[str],
    static_size: tuple[int, int] | None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """The ``metadata_props`` of an exported file (all values strings; see the module docstring)."""
    cfg = getattr(model, "config", None)
    meta: dict[str, str] = {
        "birefnet.format": "1",
        "birefnet.name": name or (spec.name if spec is not None else "custom"),
        "birefnet.input": "rgb01" if normalize else "normalized",
        "birefnet.input_layout": "NCHW RGB float32; height and width multiples of 32",
        "birefnet.output": "logits",
        "birefnet.mean": json.dumps([float(v) for v in mean]),
        "birefnet.std": json.dumps([float(v) for v in std]),
        "birefnet.dtype": "float16" if half else "float32",
        "birefnet.dynamic": ",".join(dynamic_axes),
        "birefnet.static_size": f"{static_size[0]}x{static_size[1]}" if static_size else "",
        "birefnet.version": __version__,
        "torch.version": torch.__version__,
    }
    if cfg is not None and hasattr(cfg, "to_dict"):
        meta["birefnet.backbone"] = str(cfg.backbone)
        meta["birefnet.patch_order"] = str(cfg.patch_order)
        meta["birefnet.config"] = json.dumps(cfg.to_dict(), sort_keys=True)
    if spec is not None:
        meta.update(
            {
                "birefnet.repo_id": spec.repo_id,
                "birefnet.size": f"{spec.size[0]}x{spec.size[1]}",
                "birefnet.resolution": spec.resolution,
                "birefnet.patch_order": spec.patch_order,
                "birefnet.license": spec.license,
                "birefnet.commercial": "true" if spec.commercial else "false",
                "birefnet.task": spec.task,
                "birefnet.description": spec.description,
            }
        )
    else:
        meta.setdefault("birefnet.license", "unknown (not a registry model)")
    for key, value in (extra or {}).items():
        meta[str(key)] = value if isinstance(value, str) else json.dumps(value)
    return meta


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata_props of an ONNX file (without loading its weights)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


# --------------------------------------------------------------------------------------------
# Export


def _parse_hw(size: int | str | Sequence[int] | None) -> tuple[int, int] | None:
    """A static export size -> (height, width), both multiples of 32; None stays None."""
    if size is None:
        return None
    h, w = two_numbers(size, "static size", "HxW, e.g. 1024x1024")
    if h < MULTIPLE or w < MULTIPLE or h % MULTIPLE or w % MULTIPLE:
        near = tuple(max(MULTIPLE, round(v / MULTIPLE) * MULTIPLE) for v in (h, w))
        raise ValueError(f"static size {h}x{w}: both sides must be multiples of 32; try {near[0]}x{near[1]}")
    return h, w


def _resolve_model(model: nn.Module | str | os.PathLike, name: str | None) -> tuple[nn.Module, Any]:
    if isinstance(model, nn.Module):
        return model, _spec_for(model, name)
    from birefnet import registry
    from birefnet.weights import load_model

    text = str(model)
    spec = registry.get(name, None) if name else None
    if spec is None and not Path(text).expanduser().exists():
        spec = registry.get(text, None) or registry.find_by_repo(text)
    if spec is None:
        from birefnet.inference import registry_row_for_path

        spec = registry_row_for_path(text) if Path(text).expanduser().exists() else None
    overrides = {"patch_order": spec.patch_order} if spec is not None else {}
    return load_model(text, **overrides), spec


def export_onnx(
    model: nn.Module | str | os.PathLike,
    path: str | os.PathLike,
    *,
    example: torch.Tensor | None = None,
    dynamic: bool = True,
    static_size: int | str | Sequence[int] | None = None,
    half: bool = False,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    metadata: Mapping[str, Any] | None = None,
    normalize: bool = False,
    name: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    tolerance: float | None = None,
    check_sizes: Sequence[tuple[int, int]] | None = None,
    optimize: bool = True,
) -> ExportReport:
    """Export a BiRefNet to ONNX, record its metadata, and check it against PyTorch.

    Args:
        model: a BiRefNet (any module whose output has ``.logits``), or anything
            :func:`birefnet.load_model` accepts (registry name, checkpoint, folder, hub id).
        path: the .onnx file to write (folders are created).
        example: (B, 3, H, W) input to trace with; default random, batch 2 (so that the batch
            axis stays symbolic), 192x256 (dynamic; no feature map may be 1 pixel in the example)
            or the static size.
        dynamic: symbolic batch, height and width (height/width stay fixed with ``static_size``).
            False: every axis fixed to the example's shape (batch 1 by default).
        static_size: fix height and width: ``N``, ``"HxW"`` or (H, W). Default without
            ``dynamic``: the registry row's training size, else 1024x1024.
        half: float16 weights and compute (float32 input/output). For GPUs; ONNX Runtime's CPU
            provider runs it, slowly, by casting back to float32.
        opset: ONNX opset (>= 16 for GridSample; default 18).
        check: run ``onnx.checker`` and compare ONNX Runtime with PyTorch afterwards.
        metadata: extra metadata_props (values that are not strings are stored as JSON).
        normalize: put ``(x - mean) / std`` into the graph; the input is then RGB in [0, 1].
        name: registry name to record (and to take size/licence/mean/std from); default the
            one the model was loaded as, if known.
        mean, std: normalisation; default the registry row's, else ImageNet.
        tolerance: relative-error bound of the check; default 1e-4 (float32) or 2e-2 (float16).
        check_sizes: (H, W) sizes to check at (batch 2 each); default the example's size, and
            for dynamic graphs one more size.
        optimize: run the exporter's graph optimiser (constant folding, dead-code removal).

    Returns:
        An :class:`ExportReport` (``report.summary()`` prints it).

    Raises:
        ExportError: the exporter failed (the message names the failing step).
        ExportCheckError: the file does not match PyTorch within the tolerance; it was renamed
            to ``<name>.failed.onnx``.
    """
    try:
        import onnx  # noqa: F401
    except ImportError as e:  # pragma: no cover
        raise ExportError('ONNX export needs the onnx extra: pip install "birefnet[onnx]"') from e

    model, spec = _resolve_model(model, name)
    # Weights packed for oneDNN (Predictor, BiRefNet.pack_cpu_weights) become plain again: the graph
    # must hold ordinary initialisers. Exact, and done in place: the model runs as before, a bit slower.
    unpack_linear_weights(model)
    path = Path(path).expanduser()
    if path.suffix != ".onnx":
        raise ValueError(f"{path}: the output file name must end in .onnx")
    hw = _parse_hw(static_size)
    if hw is None and not dynamic:
        if example is not None:
            hw = (int(example.shape[-2]), int(example.shape[-1]))
        else:
            size = spec.size if spec is not None else (1024, 1024)
            hw = (size[1], size[0])
    mean = tuple(mean or (spec.mean if spec is not None else IMAGENET_MEAN))
    std = tuple(std or (spec.std if spec is not None else IMAGENET_STD))
    dtype = torch.float16 if half else torch.float32
    if example is None:
        batch = 2 if dynamic else 1
        h, w = hw if hw is not None else DYNAMIC_EXAMPLE_SIZE
        example = torch.rand(batch, 3, h, w) if normalize else torch.randn(batch, 3, h, w)
    example = example.detach().to(torch.float32).cpu()
    if example.dim() != 4 or example.shape[1] != 3:
        raise ValueError(f"example must be (B, 3, H, W), got {tuple(example.shape)}")
    if hw is not None and tuple(example.shape[-2:]) != hw:
        raise ValueError(f"example is {tuple(example.shape[-2:])} but static_size is {hw}")
    if dynamic and example.shape[0] < 2:
        raise ValueError("a dynamic batch axis needs an example with batch >= 2 (batch 1 would be baked in)")

    net = model
    if half:
        net = copy.deepcopy(model).half()
    wrapper = _ExportWrapper(net.eval(), normalize=normalize, mean=mean, std=std, dtype=dtype).eval()
    dynamic_axes: list[str] = []
    dynamic_shapes = None
    if dynamic:
        from torch.export import Dim

        dims: dict[int, Any] = {0: Dim("batch", min=1, max=1024)}
        dynamic_axes.append("batch")
        if hw is None:
            dims[2] = MULTIPLE * Dim("height_32", min=2, max=512)
            dims[3] = MULTIPLE * Dim("width_32", min=2, max=512)
            dynamic_axes += ["height", "width"]
        dynamic_shapes = {"x": dims}
    meta = build_metadata(
        model,
        spec=spec,
        name=name,
        mean=mean,
        std=std,
        normalize=normalize,
        half=half,
        dynamic_axes=dynamic_axes,
        static_size=hw,
        extra=metadata,
    )

    path.parent.mkdir(parents=True, exist_ok=True)
    # One eager forward first: it fails fast, with a readable error, on an unusable example (the exporter's
    # own errors are long). Under export the model takes its traceable paths (the Swin backbone's
    # pad/roll/reshape windows, the deformable convolution's GridSample), chosen by the modules themselves.
    try:
        with torch.inference_mode():
            _ExportWrapper(model.eval(), normalize=normalize, mean=mean, std=std, dtype=torch.float32)(
                example
            )
    except Exception as e:
        raise ExportError(
            f"the model fails on the example input {tuple(example.shape)}: {type(e).__name__}: {e}"
        ) from e
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # exporter deprecation chatter
            program = torch.onnx.export(
                wrapper,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamic_shapes=dynamic_shapes,
                optimize=optimize,
                verbose=False,
            )
    except Exception as e:
        raise ExportError(
            f"torch.onnx.export failed for {type(model).__name__}: {_root_cause(e)}. "
            + (
                "Try a fixed shape (--static HxW --static-batch); "
                if dynamic
                else "Try another opset (--opset); "
            )
            + "run with -vv for the full trace."
        ) from e
    export_seconds = time.perf_counter() - start
    for key, value in meta.items():
        program.model.metadata_props[key] = value
    program.model.doc_string = (
        f"BiRefNet {meta['birefnet.name']} exported by birefnet {__version__}: input '{INPUT_NAME}' "
        f"(B, 3, H, W) {'RGB in [0, 1]' if normalize else 'normalised RGB'}, output '{OUTPUT_NAME}' logits"
    )
    program.model.producer_name = "birefnet"
    program.model.producer_version = __version__
    param_bytes = sum(p.numel() * p.element_size() for p in net.parameters())
    external = param_bytes > EXTERNAL_DATA_BYTES
    program.save(str(path), external_data=external)
    file_bytes = path.stat().st_size
    data_file = path.with_name(path.name + ".data")
    if external and data_file.exists():
        file_bytes += data_file.stat().st_size
    report = ExportReport(
        path=path,
        opset=opset,
        dynamic_axes=dynamic_axes,
        static_size=hw,
        half=half,
        normalize=normalize,
        metadata=meta,
        export_seconds=export_seconds,
        file_bytes=file_bytes,
        tolerance=tolerance if tolerance is not None else (FP16_TOLERANCE if half else FP32_TOLERANCE),
    )
    _check_dynamic_axes(report)
    logger.info("exported %s in %.1f s", path, export_seconds)
    if not check:
        return report

    sizes = list(check_sizes) if check_sizes else [tuple(example.shape[-2:])]
    if not check_sizes and hw is None and dynamic:
        h, w = sizes[0]
        sizes.append((h + MULTIPLE, w + 2 * MULTIPLE))  # a second, differently shaped size
    batch = 2 if "batch" in dynamic_axes else int(example.shape[0])
    verify_onnx(report, model, sizes=sizes, batch=batch, mean=mean, std=std)
    return report


def _root_cause(error: BaseException) -> str:
    """ "Type: first line" of the innermost exception in the chain (the exporter wraps the real one)."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def _check_dynamic_axes(report: ExportReport) -> None:
    """Raise ExportError (and set the file aside) if the exporter fixed an axis meant to stay dynamic."""
    import onnx

    proto = onnx.load(str(report.path), load_external_data=False)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    index = {"batch": 0, "height": 2, "width": 3}
    fixed = [
        f"{axis} = {dims[index[axis]].dim_value}"
        for axis in report.dynamic_axes
        if not dims[index[axis]].dim_param
    ]
    if fixed:
        failed = _set_aside(report)
        raise ExportError(
            f"the exporter fixed input axes that should stay dynamic ({', '.join(fixed)}): some model code "
            "turns that size into a constant, so the graph would only work at that size. Export with a "
            f"fixed shape instead (--static HxW, plus --static-batch if the batch was fixed). Kept as {failed}."
        )


def verify_onnx(
    report: ExportReport,
    model: nn.Module,
    *,
    sizes: Sequence[tuple[int, int]],
    batch: int = 2,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    seed: int = 0,
) -> list[CheckResult]:
    """Check an exported file: ``onnx.checker``, then ONNX Runtime against PyTorch on random inputs.

    Fills ``report.checks``. Above ``report.tolerance`` the file is renamed to
    ``<name>.failed.onnx`` (``report.path`` follows) and :class:`ExportCheckError` is raised.

    Args:
        report: the export's report (path, tolerance, static size, normalisation).
        model: the float32 PyTorch model the file was exported from.
        sizes: (H, W) input sizes, each run at ``batch``.
        mean, std: used to normalise the PyTorch input when the graph normalises itself.
    """
    import onnx

    path = report.path
    try:
        onnx.checker.check_model(str(path))
    except Exception as e:
        raise ExportError(f"{path}: onnx.checker rejects the exported graph ({type(e).__name__}: {e})") from e
    generator = torch.Generator().manual_seed(seed)
    inputs = []
    for h, w in sizes:
        if report.static_size is not None and (h, w) != tuple(report.static_size):
            raise ValueError(f"check size {(h, w)} differs from the static size {report.static_size}")
        shape = (batch, 3, h, w)
        inputs.append(
            torch.rand(shape, generator=generator)
            if report.normalize
            else torch.randn(shape, generator=generator)
        )
    try:
        report.checks = compare_with_torch(
            path, model, inputs, normalize=report.normalize, mean=mean, std=std
        )
    except _RunError as e:
        failed = _set_aside(report)
        raise ExportCheckError(
            f"ONNX Runtime cannot run the exported graph at input {e.shape}: {e}. The exporter probably fixed "
            "a dimension that should stay symbolic (export with --static HxW to get a graph for one size). "
            f"The file was kept as {failed} for inspection; do not deploy it.",
            report,
        ) from e
    for line in report.summary().splitlines()[3:]:
        logger.info("%s", line.strip())
    if not report.passed:
        failed = _set_aside(report)
        raise ExportCheckError(
            f"the exported graph differs from PyTorch: relative error {report.max_rel_error:.3g} > "
            f"{report.tolerance:g}. The file was kept as {failed} for inspection; do not deploy it. "
            "Please report this with the model name and the options used.",
            report,
        )
    return report.checks


class _RunError(RuntimeError):
    def __init__(self, message: str, shape: tuple[int, ...]) -> None:
        super().__init__(message)
        self.shape = shape


def _set_aside(report: ExportReport) -> Path:
    """Rename a file that failed its check to ``<name>.failed.onnx``; returns the new path."""
    failed = report.path.with_name(report.path.stem + ".failed.onnx")
    os.replace(report.path, failed)
    report.path = failed
    return failed


def compare_with_torch(
    path: str | os.PathLike,
    model: nn.Module,
    inputs: Sequence[torch.Tensor],
    *,
    normalize: bool = False,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> list[CheckResult]:
    """Run ONNX Runtime and the float32 PyTorch model on the same inputs; one CheckResult each.

    Args:
        path: the .onnx file.
        model: the PyTorch model (float32; its output has ``.logits``).
        inputs: (B, 3, H, W) graph inputs (normalised, or RGB in [0, 1] with ``normalize``).
        normalize: the graph normalises its input itself (PyTorch gets the normalised tensor).
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=list(providers))
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    results = []
    model = model.eval()
    param = next(model.parameters(), None)
    for x in inputs:
        t = time.perf_counter()
        with torch.inference_mode():
            x_t = (x - mean_t) / std_t if normalize else x
            if param is not None:
                x_t = x_t.to(param.device, param.dtype)
            ref = model(x_t).logits.float().cpu().numpy()
        torch_seconds = time.perf_counter() - t
        t = time.perf_counter()
        try:
            out = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy().astype(np.float32)})[0]
        except Exception as e:
            message = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise _RunError(message, tuple(x.shape)) from e
        ort_seconds = time.perf_counter() - t
        if out.shape != ref.shape:
            raise ExportError(
                f"ONNX Runtime returned shape {out.shape} for input {tuple(x.shape)}, PyTorch {ref.shape}"
            )
        diff = float(np.abs(out.astype(np.float64) - ref.astype(np.float64)).max())
        scale = float(np.abs(ref).max())
        results.append(
            CheckResult(
                shape=tuple(int(s) for s in x.shape),  # type: ignore[arg-type]
                max_abs=diff,
                rel_error=diff / max(scale, 1e-30),
                torch_seconds=torch_seconds,
                ort_seconds=ort_seconds,
            )
        )
    return results
