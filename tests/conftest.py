"""Shared test helpers: the ../shared reference material (skipped when absent) and seeding."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# ../shared beside the checkout (CI and developers have it; a user's clone does not).
SHARED = Path(os.environ.get("BIREFNET_SHARED", ROOT.parent / "shared")).resolve()
REFERENCE = SHARED / "reference"
HAVE_SHARED = (REFERENCE / "make_weights.py").is_file()

requires_shared = pytest.mark.skipif(
    not HAVE_SHARED,
    reason=f"needs the reference material in {REFERENCE} (official fixtures/weights); absent in a user's clone",
)

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def make_weights_module():
    """The shared ``make_weights`` module (deterministic official-format state dicts)."""
    if not HAVE_SHARED:
        pytest.skip(f"needs {REFERENCE}/make_weights.py")
    if str(REFERENCE) not in sys.path:
        sys.path.insert(0, str(REFERENCE))
    import make_weights

    return make_weights


def official_state_dict(variant_or_keys: str, seed: int) -> dict[str, torch.Tensor]:
    mw = make_weights_module()
    return {k: torch.from_numpy(v) for k, v in mw.make_state_dict(variant_or_keys, seed).items()}


def load_fixture(name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(case json, tensors) of ../shared/reference/fixtures/<name>."""
    from safetensors.torch import load_file

    case = json.loads((REFERENCE / "fixtures" / f"{name}.json").read_text())
    if isinstance(case.get("losses"), str):  # stored as a Python-literal string in some cases
        import ast

        case["losses"] = ast.literal_eval(case["losses"])
    return case, load_file(str(REFERENCE / "fixtures" / f"{name}.safetensors"))


def run_interpreted(script: str, timeout: int = 600):
    """Run ``script`` in a fresh Python under Triton's CPU interpreter (``TRITON_INTERPRET=1``, read when
    Triton is imported) and return the JSON it printed; fails the test with its stderr if it failed."""
    import subprocess

    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=timeout
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout)


def rel_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max |ours - ref| / max |ref| (the project's definition of relative error)."""
    ours = ours.detach().double()
    ref = ref.detach().double()
    return float((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)
    yield


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Caches the package writes by default (``birefnet eval``'s skeletons) go to a temporary folder,
    not the user's home."""
    old = os.environ.get("BIREFNET_CACHE")
    os.environ["BIREFNET_CACHE"] = str(tmp_path_factory.mktemp("birefnet_cache"))
    yield
    if old is None:
        os.environ.pop("BIREFNET_CACHE", None)
    else:
        os.environ["BIREFNET_CACHE"] = old
