"""Our forward with the projections on oneDNN against the same forward on MKL, alternating in one process.

On CPUs with AVX-512, float32 inference runs the Swin projections, patch merging and the deformable
convolutions' products through oneDNN's fused linear kernels (``birefnet.models.onednn``); elsewhere, or
with ``onednn.USE_ONEDNN = False``, through MKL as before. This is ``benchmarks/ab_switch.py --switch
onednn``: full forwards of a random BiRefNet, alternating MKL and oneDNN for each pair, then the median
over the pairs of (MKL time / oneDNN time): above 1 means the oneDNN path is faster, and the largest
difference of the two outputs (probabilities), which only float rounding should cause.

    python benchmarks/onednn_linear.py --variant swin_v1_l --size 1024 --pairs 3

On a CPU without AVX-512 both columns run MKL (the script says so).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ab_switch import main

if __name__ == "__main__":
    main(default_switch="onednn")
