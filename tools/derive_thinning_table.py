"""Measure scikit-image's Zhang-Suen removal table by black-box probing, and print it.

    python tools/derive_thinning_table.py          # ~1-3 min on 2 cores

``birefnet.metrics.skeleton`` thins ground-truth masks for HCE with its own fast kernel, which must
give exactly ``skimage.morphology.skeletonize``'s result. scikit-image decides each pixel by looking
its 8-neighbourhood up in a 256-entry table (0: keep, 1: remove in the first sub-iteration, 2: in
the second, 3: in both); the table is not derived from a published rule (it differs from the
Zhang-Suen conditions on dozens of entries) and is not exposed. This script recovers it from the
function's behaviour alone, so that our table is a measurement, not a copy of their source:

1. Probes with pixel *values* (scikit-image's compiled core weighs neighbours by their value, so a
   single neighbour of value ``n`` at the weight-1 position gives the centre the code ``n``) show
   which codes are ever removed.
2. Random small valued probes, each simulated under every table still possible and compared with
   scikit-image's output, narrow each entry down to the values consistent with all observations.
3. The few entries left (codes that only matter when they first appear in a second sub-iteration)
   are settled by simulating every remaining combination on random binary masks.

The printed table is ``birefnet.metrics.skeleton._TABLE``; ``tests/test_metric_kernels.py`` checks that our
kernel equals ``skeletonize`` on thousands of masks. Measured with scikit-image 0.26.0.
"""

from __future__ import annotations

import itertools
import time

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import skeletonize
from skimage.morphology._skeletonize_various_cy import _fast_skeletonize

# neighbour offsets (row, col) and the weight of each in the code: NW=1, N=2, NE=4, E=8, SE=16,
# S=32, SW=64, W=128 (an assumption checked by the result: a wrong order cannot reproduce
# scikit-image on random masks)
NEIGHBOURS = (
    (-1, -1, 1),
    (-1, 0, 2),
    (-1, 1, 4),
    (0, 1, 8),
    (1, 1, 16),
    (1, 0, 32),
    (1, -1, 64),
    (0, -1, 128),
)
KERNEL = np.array([[1, 2, 4], [128, 0, 8], [64, 32, 16]])


class _Unknown(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


def _code(img: np.ndarray, r: int, c: int) -> int:
    return sum(w * int(img[r + dr, c + dc]) for dr, dc, w in NEIGHBOURS)


def _simulate(img: np.ndarray, table: dict[int, int]) -> np.ndarray:
    """Parallel two-sub-iteration thinning of a small valued image (border already zero)."""
    img = img.astype(np.int64)
    while True:
        removed = False
        for sub in (1, 2):
            out = img.copy()
            for r, c in zip(*np.nonzero(img)):
                code = _code(img, r, c)
                if code not in table:
                    raise _Unknown(code)
                t = table[code]
                if t == 3 or t == sub:
                    out[r, c] = 0
                    removed = True
            img = out
        if not removed:
            return img != 0


def _outcomes(img: np.ndarray, domain: dict[int, set[int]], fixed: dict[int, int] | None = None):
    """Every (assignment of the entries the probe reaches, outcome) under the current domains."""
    fixed = dict(fixed or {})
    table = {k: next(iter(d)) for k, d in domain.items() if len(d) == 1} | fixed
    try:
        return [(fixed, _simulate(img, table))]
    except _Unknown as e:
        found = []
        for v in sorted(domain[e.code]):
            found += _outcomes(img, domain, fixed | {e.code: v})
            if len(found) > 1000:
                raise RuntimeError("probe too ambiguous") from None
        return found


def _run(probes: list[np.ndarray]) -> list[np.ndarray]:
    """scikit-image's result for each probe, all tiled in one call (a zero gap keeps them apart)."""
    h = max(p.shape[0] for p in probes) + 1
    w = max(p.shape[1] for p in probes) + 1
    cols = int(np.ceil(np.sqrt(len(probes))))
    rows = -(-len(probes) // cols)
    canvas = np.zeros((rows * h + 1, cols * w + 1), np.uint8)
    at = []
    for k, p in enumerate(probes):
        r, c = divmod(k, cols)
        at.append((1 + r * h, 1 + c * w))
        canvas[at[-1][0] : at[-1][0] + p.shape[0], at[-1][1] : at[-1][1] + p.shape[1]] = p
    out = _fast_skeletonize(canvas)
    return [out[r : r + p.shape[0], c : c + p.shape[1]] for (r, c), p in zip(at, probes)]


def _max_code(p: np.ndarray) -> int:
    padded = np.pad(p.astype(np.int64), 1)
    return max((_code(padded, r, c) for r, c in zip(*np.nonzero(padded))), default=0)


def _narrow(probes: list[np.ndarray], domain: dict[int, set[int]]) -> int:
    """Intersect each entry's domain with what the probes' observed outcomes allow."""
    changed = 0
    for p, seen in zip(probes, _run(probes)):
        padded, seen = np.pad(p, 1), np.pad(seen, 1)
        try:
            cases = _outcomes(padded, domain)
        except RuntimeError:
            continue
        ok = [a for a, out in cases if np.array_equal(out, seen)]
        if not ok:
            raise AssertionError("no table explains a probe: the neighbour order assumption is wrong")
        for code in set().union(*(set(a) for a, _ in cases)):
            if all(code in a for a in ok):
                allowed = {a[code] for a in ok}
                if allowed < domain[code]:
                    domain[code] = allowed
                    changed += 1
    return changed


def _thin_full(mask: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Whole-image simulation of a binary mask under a complete table (for step 3)."""
    img = np.pad(mask.astype(np.int32), 1)
    while True:
        removed = False
        for sub in (1, 2):
            t = table[ndi.correlate(img, KERNEL, mode="constant")]
            kill = (img > 0) & ((t == 3) | (t == sub))
            if kill.any():
                img[kill] = 0
                removed = True
        if not removed:
            return img[1:-1, 1:-1] > 0


def derive(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    domain = {k: {0, 1, 2, 3} for k in range(256)}

    # 1. a lone pixel, a diagonal pair, then one neighbour of value n at the weight-1 (NW) position
    def probe(cells, shape=(4, 4)):
        p = np.zeros(shape, np.uint8)
        for r, c, v in cells:
            p[r, c] = v
        return p

    _narrow([probe([(1, 1, 1)]), probe([(1, 1, 1), (2, 2, 1)])], domain)
    _narrow([probe([(1, 1, n), (2, 2, 1)]) for n in range(1, 256)], domain)
    print(f"removable codes: {sum(d != {0} for d in domain.values())}")

    # 2. random valued probes around a centre pixel whose code is (or, once a neighbour goes, becomes)
    # an open entry; kept only when the tables still possible disagree on their outcome
    values = [1] * 6 + [2, 3, 4, 5, 7, 8, 12, 15, 16, 24, 31, 32, 48, 63, 64, 127, 255]
    ring1 = [(2 + dr, 2 + dc, w) for dr, dc, w in NEIGHBOURS]
    ring2 = [(r, c) for r in range(5) for c in range(5) if max(abs(r - 2), abs(c - 2)) == 2]

    def aimed_at(code: int) -> np.ndarray | None:
        p = np.zeros((5, 5), np.uint8)
        p[2, 2] = rng.choice([1, 1, 1, 2, 3])
        rest = code
        for j in rng.permutation(8):
            r, c, w = ring1[j]
            if rest >= w and rng.random() < 0.8:
                v = int(rng.integers(1, min(rest // w, 4) + 1))
                p[r, c], rest = v, rest - w * v
        if rest:
            return None
        free = [j for j in range(8) if p[ring1[j][0], ring1[j][1]] == 0 and code + ring1[j][2] < 256]
        if free and rng.random() < 0.9:  # a neighbour that may go first, so the code appears later
            r, c, w = ring1[free[rng.integers(len(free))]]
            p[r, c] = rng.integers(1, max(1, min(4, (255 - code) // w)) + 1)
        for j in rng.choice(16, size=rng.integers(0, 6), replace=False):
            p[ring2[j]] = rng.choice(values)
        return p

    stuck = 0
    while stuck < 3:
        unknown = [k for k, d in domain.items() if len(d) > 1]
        if not unknown:
            break
        probes = []
        for code in unknown:
            found = 0
            for _ in range(3000):
                p = aimed_at(code)
                if p is None or _max_code(p) >= 256:
                    continue
                try:
                    if len({o.tobytes() for _, o in _outcomes(np.pad(p, 1), domain)}) > 1:
                        probes.append(p)
                        found += 1
                except RuntimeError:
                    pass
                if found == 5:
                    break
        changed = _narrow(probes, domain) if probes else 0
        stuck = 0 if changed else stuck + 1
        print(f"  {len(probes)} informative probes, {changed} entries narrowed, {len(unknown)} were open")

    # 3. the rest: every combination against scikit-image on random binary masks
    unknown = [k for k, d in domain.items() if len(d) > 1]
    if np.prod([len(domain[k]) for k in unknown]) > 4096:
        raise SystemExit(f"{len(unknown)} entries still open; probe more")
    print(f"  settling {len(unknown)} entries on random binary masks")
    masks = []
    for _ in range(400):
        m = rng.random(rng.integers(6, 24, size=2)) < rng.uniform(0.4, 0.9)
        masks.append(ndi.binary_closing(m) if rng.random() < 0.5 else m)
    expected = [skeletonize(m) for m in masks]
    base = np.array([min(d) for _, d in sorted(domain.items())])
    alive = []
    for combo in itertools.product(*(sorted(domain[k]) for k in unknown)):
        table = base.copy()
        table[unknown] = combo
        if all(np.array_equal(_thin_full(m, table), e) for m, e in zip(masks, expected)):
            alive.append(table)
    if len(alive) != 1:
        raise SystemExit(f"{len(alive)} tables fit the observations; probe more")
    return alive[0]


if __name__ == "__main__":
    start = time.perf_counter()
    table = derive()
    digits = "".join(str(int(v)) for v in table)
    print(f"derived in {time.perf_counter() - start:.0f} s:")
    for i in range(0, 256, 64):
        print(f'    "{digits[i : i + 64]}"')
