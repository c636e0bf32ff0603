"""The released BiRefNet checkpoints, as data: one table, one row per model.

``load_model("general")`` and ``Predictor("lite")`` look names up here; ``birefnet models`` lists
the table. Each row says where the weights live, the architecture settings that cannot be seen in
the tensors (the inward-reference patch order), how images should be sized for it, and its licence.

Patch order: the official code changed the order in which inward-reference patches are stacked on
2024-11-05 (commit 5198d3f). Per the spec (OFFICIAL_SPEC.md section 2.4), weights uploaded before
that date were trained with the old ("legacy") order. Release dates below come from the spec and
the model cards; rows marked ``order_certain=False`` are inferred from the upload period only and
should be checked on real images (compare both orders with ``birefnet predict --patch-order``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Resolution = Literal["fixed", "dynamic", "tiled"]


@dataclass(frozen=True)
class WeightsSpec:
    """One released checkpoint.

    Attributes:
        name: registry name (``birefnet models``).
        repo_id: Hugging Face repo holding ``model.safetensors``.
        backbone: encoder of the checkpoint (detected from the tensors too; listed for users).
        size: training resolution (width, height) in pixels; the Predictor's default input size.
        resolution: default resolution policy: "fixed" (resize to ``size``) or "dynamic" (keep the
            aspect ratio, multiples of 32, about ``size`` pixels).
        patch_order: inward-reference patch order the weights were trained with.
        order_certain: False where the patch order is inferred from the upload date only.
        license: licence of the weights.
        commercial: whether the licence allows commercial use.
        description: one line for ``birefnet models``.
        task: what it was trained for.
    """

    name: str
    repo_id: str
    backbone: str
    size: tuple[int, int]
    resolution: Resolution
    patch_order: Literal["current", "legacy"]
    order_certain: bool
    license: str
    commercial: bool
    description: str
    task: str = "general"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def config_overrides(self) -> dict[str, Any]:
        """BiRefNetConfig fields the tensors cannot tell."""
        return {"patch_order": self.patch_order}


MIT = "MIT"

# fmt: off
_ROWS: list[WeightsSpec] = [
    WeightsSpec("general", "ZhengPeng7/BiRefNet", "swin_v1_l", (1024, 1024), "fixed", "legacy", False, MIT, True,
                "General-purpose background removal (default), Swin-L at 1024x1024"),
    WeightsSpec("lite", "ZhengPeng7/BiRefNet_lite", "swin_v1_t", (1024, 1024), "fixed", "legacy", True, MIT, True,
                "Light general model, Swin-T at 1024x1024 (about 4x faster than general)"),
    WeightsSpec("lite-2K", "ZhengPeng7/BiRefNet_lite-2K", "swin_v1_t", (2560, 1440), "fixed", "legacy", False, MIT,
                True, "Light general model trained at 2560x1440"),
    WeightsSpec("HR", "ZhengPeng7/BiRefNet_HR", "swin_v1_l", (2048, 2048), "fixed", "current", True, MIT, True,
                "General model trained at 2048x2048 for high-resolution images (Feb 2025)"),
    WeightsSpec("HR-matting", "ZhengPeng7/BiRefNet_HR-matting", "swin_v1_l", (2048, 2048), "fixed", "current", True,
                MIT, True, "Matting (soft alpha) at 2048x2048", task="matting"),
    WeightsSpec("matting", "ZhengPeng7/BiRefNet-matting", "swin_v1_l", (1024, 1024), "fixed", "legacy", False, MIT,
                True, "General matting (soft alpha) at 1024x1024", task="matting"),
    WeightsSpec("portrait", "ZhengPeng7/BiRefNet-portrait", "swin_v1_l", (1024, 1024), "fixed", "legacy", False, MIT,
                True, "Portrait matting (P3M-10k, humans)", task="portrait"),
    WeightsSpec("512x512", "ZhengPeng7/BiRefNet_512x512", "swin_v1_l", (512, 512), "fixed", "current", False, MIT,
                True, "General model trained at 512x512 (fast, low resolution)"),
    WeightsSpec("dynamic", "ZhengPeng7/BiRefNet_dynamic", "swin_v1_l", (1024, 1024), "dynamic", "current", True, MIT,
                True, "General model trained at random 256-2304 resolutions (any aspect ratio, Mar 2025)"),
    WeightsSpec("dynamic-matting", "ZhengPeng7/BiRefNet_dynamic-matting", "swin_v1_l", (1024, 1024), "dynamic",
                "current", True, MIT, True, "Matting trained at dynamic resolutions", task="matting"),
    WeightsSpec("DIS5K", "ZhengPeng7/BiRefNet-DIS5K", "swin_v1_l", (1024, 1024), "fixed", "legacy", False, MIT, True,
                "Dichotomous segmentation, trained on DIS5K-TR (benchmark weights)", task="DIS5K"),
    WeightsSpec("DIS5K-TR_TEs", "ZhengPeng7/BiRefNet-DIS5K-TR_TEs", "swin_v1_l", (1024, 1024), "fixed", "legacy",
                False, MIT, True, "Dichotomous segmentation, trained on DIS5K-TR + DIS-TEs", task="DIS5K"),
    WeightsSpec("COD", "ZhengPeng7/BiRefNet-COD", "swin_v1_l", (1024, 1024), "fixed", "legacy", False, MIT, True,
                "Camouflaged object detection (COD10K + CAMO)", task="COD"),
    WeightsSpec("HRSOD", "ZhengPeng7/BiRefNet-HRSOD", "swin_v1_l", (1024, 1024), "fixed", "legacy", False, MIT, True,
                "High-resolution salient object detection (HRSOD + UHRSD)", task="HRSOD"),
    WeightsSpec("massive", "ZhengPeng7/BiRefNet-massive-TR_DIS5K_TR_TEs", "swin_v1_l", (1024, 1024), "fixed",
                "legacy", False, MIT, True, "General model trained on massive data (earlier release)"),
    WeightsSpec("RMBG-2.0", "briaai/RMBG-2.0", "swin_v1_l", (1024, 1024), "fixed", "legacy", False,
                "CC BY-NC 4.0", False,
                "BRIA RMBG-2.0 (BiRefNet retrained on licensed data); NON-COMMERCIAL licence, gated repo"),
]
# fmt: on

REGISTRY: dict[str, WeightsSpec] = {row.name: row for row in _ROWS}
DEFAULT_MODEL = "general"


def get(name: str, default: Any = KeyError) -> WeightsSpec | Any:
    """Registry row by name (case-insensitive); ``default`` when unknown, or KeyError listing the names."""
    row = REGISTRY.get(name) or next((r for r in _ROWS if r.name.lower() == name.lower()), None)
    if row is not None:
        return row
    if default is KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(REGISTRY)}")
    return default


def find_by_repo(repo_id: str) -> WeightsSpec | None:
    """Registry row of a hub repo id, if it is a released checkpoint."""
    return next((r for r in _ROWS if r.repo_id.lower() == repo_id.lower()), None)


def list_models() -> list[WeightsSpec]:
    return list(_ROWS)
