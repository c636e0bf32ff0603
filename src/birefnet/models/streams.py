"""A second CUDA stream for the parts of a forward that do not depend on each other (GPU inference).

At batch 1 a 1024x1024 swin_v1_l forward on an H100 is ~2000 kernels in ~20 ms: most of them are too
small to fill the GPU, so the forward is bound by their one-after-another latency, not by arithmetic
(2.4 TFLOP is ~3 ms of the card's bf16 rate). Two parts of the forward have no data dependence on the
main chain and can run beside it on a second stream:

* the backbone pass over the half-size image (``multi_scale_input``) beside the full-size pass;
* the decoder's patch encoders (``ipt_blk*``, inputs: the image only) and lateral blocks (inputs: the
  encoder maps only) beside the decoder chain that consumes them one stage at a time.

Both run the same kernels on the same inputs as the one-stream forward, so the outputs are the same
(cuDNN's ``benchmark`` search may pick other algorithms when two streams share the GPU; with it off
the results are bit-identical). A CUDA graph captures both streams (a fork from the capture stream
and a join back into it).

Memory safety without ``record_stream``: a tensor made on the side stream and freed on the main one
goes back to the side stream's pool. Every block of side work here starts with
``side.wait_stream(main)`` and is enqueued in full before the main stream frees any of its outputs, so
the side stream's next allocation of a freed block always comes after a wait on the main stream's use
of it. Tensors of the main stream that the side stream reads are held until the main stream has
waited for the side work that reads them.

Not under CUDA autocast with its weight-cast cache on (``torch.autocast``'s default, the Predictor's
fp16/bf16 autocast path): the cache is shared by the streams, so the full-size pass on the main stream
would read the backbone's bf16/fp16 weight copies that the half-size pass is still writing on the side
stream. With the cache off (CUDA graph captures, :class:`birefnet.models.optimize.CudaGraphs`) each use
casts its own copy on its own stream, and with half weights (``optimize="half-weights"``) nothing is cast.

``ENABLED = False`` turns the second stream off (the one-stream forward, for comparisons). Nothing
changes on the CPU, in training (autograd), or while exporting or compiling.
"""

from __future__ import annotations

import threading

import torch

from birefnet.models.onednn import autocast_enabled
from birefnet.models.tracing import is_tracing

__all__ = ["ENABLED", "side_stream"]

#: Run the independent parts of a CUDA inference forward on a second stream.
ENABLED = True

# One side stream per thread and device: the memory argument above needs every allocation on a side
# stream to follow a wait on the main stream of the same forward, which a stream shared by two threads'
# forwards (two Predictors, one per thread) would break.
_LOCAL = threading.local()


def side_stream(x: torch.Tensor) -> torch.cuda.Stream | None:
    """The side stream for a forward on ``x``, or None where the forward runs on one stream.

    None unless :data:`ENABLED`, ``x`` is on a CUDA device, autograd is off (inference), CUDA autocast
    is off or runs without its weight-cast cache (see the module docstring), and nothing is exporting,
    compiling or tracing the model. One stream per thread and device, made on first use and kept (a
    captured CUDA graph refers to it).
    """
    if not ENABLED or x.device.type != "cuda" or torch.is_grad_enabled() or is_tracing():
        return None
    if autocast_enabled("cuda") and torch.is_autocast_cache_enabled():
        return None
    index = x.device.index if x.device.index is not None else torch.cuda.current_device()
    streams: dict[int, torch.cuda.Stream] = _LOCAL.__dict__.setdefault("streams", {})
    stream = streams.get(index)
    if stream is None:
        stream = streams[index] = torch.cuda.Stream(device=index)
    return stream
