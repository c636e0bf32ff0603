"""Training checkpoints: written atomically, found again with ``--resume auto``, pruned to the last N.

A checkpoint is a folder ``<out_dir>/checkpoints/step-00001234/`` holding

* ``model.safetensors`` + ``config.json``: the weights and architecture (``load_model`` reads
  the folder directly, so any checkpoint is also a usable model);
* ``training_state.pt``: optimizer, scheduler, gradient scaler, position in the data (epoch,
  step in epoch, global batch layout), the RNG states of every rank, the training config.

The folder is written under a temporary name and renamed when complete, and the ``latest``
pointer file is replaced atomically afterwards, so a crash or SIGKILL at any moment leaves the
previous checkpoints intact; a half-written temporary folder is deleted at the next start.
``training_state.pt`` holds only tensors and plain Python values and is read with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = [
    "STATE_FILE",
    "capture_rng_state",
    "find_checkpoint",
    "list_checkpoints",
    "load_training_state",
    "prune_checkpoints",
    "restore_rng_state",
    "save_checkpoint",
]

STATE_FILE = "training_state.pt"
LATEST_FILE = "latest"
_NAME_RE = re.compile(r"^step-(\d+)$")
FORMAT_VERSION = 1


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for f in path.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(path)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` via a temporary file and rename."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def capture_rng_state() -> dict[str, Any]:
    """RNG states of torch (CPU and CUDA), numpy's global generator and ``random``, as plain values."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(_plain, np_state[2:])],
        "python": _plain(random.getstate()),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    return state


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _tuple(value: Any) -> Any:
    return tuple(_tuple(v) for v in value) if isinstance(value, list) else value


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    random.setstate(_tuple(state["python"]))
    if state.get("cuda") is not None and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def list_checkpoints(checkpoint_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoint folders, oldest (lowest step) first."""
    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _NAME_RE.match(p.name)
        if m and p.is_dir() and (p / STATE_FILE).is_file() and (p / "model.safetensors").is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def clean_temporary(checkpoint_dir: str | os.PathLike) -> None:
    """Delete folders left by a save that was interrupted (``.tmp-*``, ``.old-*``)."""
    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if p.name.startswith((".tmp-", ".old-")):
            shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(
    checkpoint_dir: str | os.PathLike,
    step: int,
    model: torch.nn.Module,
    state: dict[str, Any],
    *,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write one checkpoint atomically and point ``latest`` at it.

    Args:
        checkpoint_dir: ``<out_dir>/checkpoints``.
        step: optimizer steps done; names the folder.
        model: the unwrapped model (not DDP / compiled).
        state: the training state (see the module docstring); saved with ``torch.save``.
        extra_files: name -> text written beside (e.g. the resolved config YAML).

    Returns:
        The checkpoint folder.
    """
    from birefnet.weights import save_pretrained

    root = Path(checkpoint_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = root / f".tmp-{checkpoint_name(step)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_pretrained(model, tmp, metadata={"training_step": step})
    torch.save({"format_version": FORMAT_VERSION, **state}, tmp / STATE_FILE)
    for name, text in (extra_files or {}).items():
        (tmp / name).write_text(text)
    _fsync_tree(tmp)
    if final.exists():  # the same step saved again (a resumed run passing an older checkpoint's step)
        old = root / f".old-{final.name}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(root)
    write_text_atomic(root / LATEST_FILE, final.name + "\n")
    return final


def prune_checkpoints(checkpoint_dir: str | os.PathLike, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints; returns the deleted folders."""
    ckpts = list_checkpoints(checkpoint_dir)
    doomed = ckpts[:-keep_last] if keep_last > 0 else []
    for p in doomed:
        # rename first so a crash mid-delete never leaves a half checkpoint under a valid name
        trash = p.with_name(f".old-{p.name}-{os.getpid()}")
        os.replace(p, trash)
        shutil.rmtree(trash, ignore_errors=True)
    return doomed


def find_checkpoint(source: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """The checkpoint folder meant by ``--resume``.

    Args:
        source: "auto" (latest in ``out_dir``), a checkpoint folder, its ``training_state.pt``,
            a run directory or its ``checkpoints`` folder (their latest checkpoint).
        out_dir: the run directory for "auto".

    Raises:
        FileNotFoundError: nothing to resume from; the message says where it looked.
    """
    if str(source) == "auto":
        if out_dir is None:
            raise FileNotFoundError("--resume auto needs the run's out_dir")
        candidates = [Path(out_dir) / "checkpoints"]
    else:
        path = Path(source).expanduser()
        if path.is_file() and path.name == STATE_FILE:
            path = path.parent
        if (path / STATE_FILE).is_file():
            return path
        candidates = [path / "checkpoints", path]
    for folder in candidates:
        pointer = folder / LATEST_FILE
        if pointer.is_file():
            target = folder / pointer.read_text().strip()
            if (target / STATE_FILE).is_file():
                return target
        ckpts = list_checkpoints(folder)
        if ckpts:
            return ckpts[-1]
    raise FileNotFoundError(
        f"no checkpoint to resume from in {', '.join(str(c) for c in candidates)} "
        "(a checkpoint is a step-NNNNNNNN folder holding training_state.pt and model.safetensors)"
    )


def load_training_state(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """The ``training_state.pt`` of a checkpoint folder (CPU tensors)."""
    state = torch.load(Path(checkpoint) / STATE_FILE, map_location="cpu", weights_only=True)
    version = state.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{checkpoint}: training state format {version}, this version reads {FORMAT_VERSION}"
        )
    return state
