"""Our forward with the projections on oneDNN against the same forward on MKL, alternating in one process.

On CPUs with AVX-512, float32 inference runs the Swin projections, patch merging and the deformable
convolutions' products through oneDNN's fused linear kernels (``birefnet.models.onednn``); elsewhere, or
with ``onednn.USE_ONEDNN = False``, through MKL as before. This script times full forwards of a random
BiRefNet, switching between the two for each pair, and prints the median over the pairs of
(MKL time / oneDNN time): above 1 means the oneDNN path is faster. It also prints the largest
difference of the two outputs (probabilities), which only float rounding should cause.

    python benchmarks/onednn_linear.py --variant swin_v1_l --size 1024 --pairs 3

On a CPU without AVX-512 both columns run MKL (the script says so).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from birefnet import BiRefNet, BiRefNetConfig
from birefnet.models import onednn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="swin_v1_l")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if not onednn.available():
        print("this CPU has no AVX-512 (or torch no oneDNN): both runs take MKL")
    model = BiRefNet(BiRefNetConfig(backbone=args.variant)).eval()
    x = torch.randn(1, 3, args.size, args.size)

    def forward(use: bool) -> tuple[float, torch.Tensor]:
        onednn.USE_ONEDNN = use
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model(x).logits
        return time.perf_counter() - t0, out

    _, ref = forward(False)  # warm-up of both paths
    _, new = forward(True)
    diff = (ref.sigmoid() - new.sigmoid()).abs().max().item()
    mkl, dnn = [], []
    for i in range(args.pairs):
        mkl.append(forward(False)[0])
        dnn.append(forward(True)[0])
        print(f"pair {i + 1}: MKL {mkl[-1]:.2f} s, oneDNN {dnn[-1]:.2f} s", flush=True)
    onednn.USE_ONEDNN = True
    ratio = statistics.median(m / d for m, d in zip(mkl, dnn))
    print(
        f"{args.variant} {args.size}²: MKL median {statistics.median(mkl):.2f} s, oneDNN median "
        f"{statistics.median(dnn):.2f} s, MKL/oneDNN {ratio:.3f} (median of pairs); "
        f"max |prob difference| {diff:.1e}"
    )


if __name__ == "__main__":
    main()
