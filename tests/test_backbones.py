"""Backbones: official key names/shapes, parity with the official fixtures, tiny forward/backward."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import torch.nn.functional as F

from birefnet.config import BACKBONES
from birefnet.models.backbones import BACKBONE_NAMES, Backbone, build_backbone, load_pretrained_backbone
from birefnet.models.backbones.pvt_v2 import PyramidVisionTransformerV2
from birefnet.models.backbones.swin import SwinTransformer, relative_position_index, window_layout
from conftest import REFERENCE, load_fixture, official_state_dict, rel_error, requires_shared

KEY_VARIANTS = sorted(p.stem for p in (REFERENCE / "keys").glob("*.json")) if REFERENCE.is_dir() else []


def _bb_keys(variant: str) -> dict[str, tuple[tuple[int, ...], str]]:
    data = json.loads((REFERENCE / "keys" / f"{variant}.json").read_text())
    return {k[3:]: (tuple(shape), dtype) for k, shape, dtype in data["keys"] if k.startswith("bb.")}


def _official_bb_state(variant_or_keys: str, seed: int) -> dict[str, torch.Tensor]:
    sd = official_state_dict(variant_or_keys, seed)
    return {k[3:]: v for k, v in sd.items() if k.startswith("bb.")}


def _backbone_name(variant: str) -> str:
    data = json.loads((REFERENCE / "keys" / f"{variant}.json").read_text())
    return data.get("variant") or variant


def test_names_match_config() -> None:
    assert set(BACKBONE_NAMES) == set(BACKBONES)


def test_unknown_name() -> None:
    with pytest.raises(ValueError, match="swin_v1_t"):
        build_backbone("swin_v2_t")


@pytest.mark.parametrize(
    ("name", "channels"),
    [
        ("swin_v1_t", (96, 192, 384, 768)),
        ("swin_v1_l", (192, 384, 768, 1536)),
        ("pvt_v2_b0", (32, 64, 160, 256)),
        ("pvt_v2_b2", (64, 128, 320, 512)),
        ("vgg16", (128, 256, 512, 512)),
        ("vgg16bn", (128, 256, 512, 512)),
        ("resnet50", (256, 512, 1024, 2048)),
    ],
)
def test_out_channels(name: str, channels: tuple[int, ...]) -> None:
    with torch.device("meta"):  # no memory, no init cost: out_channels needs no forward pass
        bb = build_backbone(name)
    assert isinstance(bb, Backbone)
    assert bb.out_channels == channels
    assert bb.reductions == (4, 8, 16, 32)


# ----------------------------------------------------------------------------- official keys
@requires_shared
@pytest.mark.parametrize("variant", KEY_VARIANTS)
def test_state_dict_matches_official_keys(variant: str) -> None:
    """Names, shapes and dtypes equal the official ``bb.*`` keys; the official tensors load strictly."""
    expected = _bb_keys(variant)
    with torch.device("meta"):  # shapes only: no memory, no init cost
        bb = build_backbone(_backbone_name(variant))
    ours = {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in bb.state_dict().items()}
    assert sorted(set(expected) - set(ours)) == [], "keys missing from our backbone"
    assert sorted(set(ours) - set(expected)) == [], "keys our backbone has but the official one has not"
    assert {k: v for k, v in ours.items() if v != expected[k]} == {}
    if variant in ("vgg16bn", "resnet50"):  # the others load strictly in the parity tests
        bb.load_state_dict(_official_bb_state(variant, 0), strict=True, assign=True)


def test_relative_position_index_is_persistent_int64() -> None:
    bb = build_backbone("swin_v1_t")
    sd = bb.state_dict()
    index = sd["layers.0.blocks.0.attn.relative_position_index"]
    assert index.dtype == torch.int64 and index.shape == (49, 49)
    assert int(index.min()) == 0 and int(index.max()) == 13 * 13 - 1
    # centre of the table = zero offset on the diagonal
    assert torch.all(index.diagonal() == 6 * 13 + 6)
    assert torch.equal(
        relative_position_index(2), torch.tensor([[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]])
    )


# ----------------------------------------------------------------------------- official parity
SWIN_PVT_CASES = [
    "swin_v1_t_eval_256",
    "swin_v1_t_eval_224x288_legacy",
    "swin_v1_t_opts_eval_256",
    "pvt_v2_b0_eval_320x256",
]


def _two_calls(bb: Backbone, x: torch.Tensor, run: callable) -> tuple:  # type: ignore[valid-type]
    h, w = x.shape[-2:]
    half = F.interpolate(x, size=(h // 2, w // 2), mode="bilinear", align_corners=True)
    with torch.inference_mode():
        return run(x), run(half)


@requires_shared
@pytest.mark.parametrize("case_name", SWIN_PVT_CASES)
def test_parity_with_official_backbone(case_name: str) -> None:
    case, tensors = load_fixture(case_name)
    bb = build_backbone(case["variant"]).eval()
    bb.load_state_dict(
        _official_bb_state(case.get("keys") or case["variant"], case["weights_seed"]), strict=True
    )
    x = tensors["input"]
    assert x.shape[-2:] == tuple(case["size"])
    for call, feats in enumerate(_two_calls(bb, x, bb)):
        assert len(feats) == 4
        for k, feat in enumerate(feats):
            ref = tensors[f"hook.bb.{call}.{k}"]
            assert feat.shape == ref.shape, (call, k)
            assert rel_error(feat, ref) <= 1e-5, (call, k, rel_error(feat, ref))


@requires_shared
def test_parity_vgg16_slices() -> None:
    case, tensors = load_fixture("vgg16_eval_256")
    with torch.device("meta"):
        bb = build_backbone("vgg16").eval()
    bb.load_state_dict(_official_bb_state("vgg16", case["weights_seed"]), strict=True, assign=True)
    for call, feats in enumerate(_two_calls(bb, tensors["input"], bb)):
        for stage in (1, 4):
            ref = tensors[f"hook.bb.conv{stage}.{call}.0"]
            assert feats[stage - 1].shape == ref.shape
            assert rel_error(feats[stage - 1], ref) <= 1e-5, (call, stage)


# ----------------------------------------------------------------------------- tiny configs
def _tiny_swin(window: int = 7, depths: tuple[int, ...] = (1, 1, 1, 1)) -> SwinTransformer:
    return SwinTransformer(embed_dim=16, depths=depths, num_heads=(1, 2, 2, 4), window_size=window)


def _tiny_pvt() -> PyramidVisionTransformerV2:
    return PyramidVisionTransformerV2(
        embed_dims=(8, 16, 40, 64), depths=(1, 1, 1, 1), mlp_ratios=(2, 2, 2, 2)
    )


TINY = {
    "swin_tiny": lambda: _tiny_swin(),
    "swin_tiny_shifted": lambda: _tiny_swin(window=3, depths=(2, 2, 2, 2)),
    "pvt_tiny": _tiny_pvt,
    "pvt_v2_b0": lambda: build_backbone("pvt_v2_b0"),
    "vgg16": lambda: build_backbone("vgg16"),
    "vgg16bn": lambda: build_backbone("vgg16bn"),
    "resnet50": lambda: build_backbone("resnet50"),
}


@pytest.mark.parametrize("name", list(TINY))
def test_forward_backward_shapes(name: str) -> None:
    bb = TINY[name]().train()
    sizes = [(2, (64, 64)), (1, (96, 64))]
    if isinstance(bb, (SwinTransformer, PyramidVisionTransformerV2)):
        sizes.append((1, (64, 160)))  # cheap enough to add a wide one
    for batch, (h, w) in sizes:
        if isinstance(bb, SwinTransformer):
            with torch.inference_mode():  # window layouts cached here must still work with autograd
                bb(torch.randn(batch, 3, h, w))
        x = torch.randn(batch, 3, h, w, requires_grad=True)
        feats = bb(x)
        assert len(feats) == 4
        for feat, c, r in zip(feats, bb.out_channels, bb.reductions, strict=True):
            assert feat.shape == (batch, c, h // r, w // r), (name, (h, w), feat.shape)
            assert feat.is_contiguous()
        sum(f.square().mean() for f in feats).backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
        grads = [p.grad for p in bb.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        bb.zero_grad(set_to_none=True)


def test_swin_odd_sizes_pad() -> None:
    """Non-multiples of 32 still work (patch / window / merge padding), like the official code."""
    bb = _tiny_swin(window=3, depths=(2, 2, 2, 2)).eval()
    with torch.inference_mode():
        feats = bb(torch.randn(1, 3, 70, 45))
    assert [tuple(f.shape[-2:]) for f in feats] == [(18, 12), (9, 6), (5, 3), (3, 2)]


def test_drop_path_only_in_training() -> None:
    bb = _tiny_swin(depths=(2, 2, 2, 2))
    bb.eval()
    for block in bb.layers[3].blocks:
        block.drop_path.drop_prob = 0.9
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        a, b = bb(x)[3], bb(x)[3]
        assert torch.equal(a, b)
        bb.train()
        c = bb(x)[3]
    assert not torch.allclose(a, c)
    with torch.device("meta"):
        assert build_backbone("swin_v1_t").layers[3].blocks[1].drop_path.drop_prob == pytest.approx(0.2)
        assert build_backbone("swin_v1_t").layers[0].blocks[0].drop_path.drop_prob == 0.0
        assert build_backbone("swin_v1_t", drop_path_rate=0.3).layers[3].blocks[1].drop_path.drop_prob == 0.3
        assert build_backbone("pvt_v2_b0", drop_path_rate=0.0).block4[1].drop_path.drop_prob == 0.0
        assert build_backbone("pvt_v2_b0").block4[1].drop_path.drop_prob == pytest.approx(0.1)


def _reference_windows(x: torch.Tensor, ws: int, shift: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The original recipe: pad, roll, partition; and the slice-labelled mask of all windows."""
    b, h, w, c = x.shape
    x = F.pad(x, (0, 0, 0, (-w) % ws, 0, (-h) % ws))
    hp, wp = x.shape[1:3]
    x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
    part = lambda t: t.view(t.shape[0], hp // ws, ws, wp // ws, ws, -1).permute(0, 1, 3, 2, 4, 5)  # noqa: E731
    windows = part(x).reshape(b, -1, ws * ws, c)
    label = torch.zeros(1, hp, wp, 1)
    cuts = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
    for i, rows in enumerate(cuts):
        for j, cols in enumerate(cuts):
            label[:, rows, cols] = 3 * i + j
    label = part(label).reshape(-1, ws * ws)
    mask = (label[:, None, :] != label[:, :, None]).float() * float("-inf")
    return windows, mask.nan_to_num(0.0, neginf=float("-inf"))


@pytest.mark.parametrize(
    ("h", "w", "ws", "shift"),
    [(8, 8, 4, 2), (7, 10, 3, 1), (5, 3, 7, 3), (9, 9, 3, 0), (16, 16, 6, 3), (16, 16, 6, 0)],
)
def test_window_layout_matches_roll_and_partition(h: int, w: int, ws: int, shift: int) -> None:
    x = torch.randn(2, h, w, 5)
    layout = window_layout(h, w, ws, shift, device=x.device, dtype=x.dtype)
    ref_windows, ref_mask = _reference_windows(x, ws, shift)
    ours = x.reshape(2, h * w, 5).index_select(1, layout.gather_index)
    if layout.pad_slots is not None:
        ours.index_fill_(1, layout.pad_slots, 0.0)
    ours = ours.view(2, layout.num_windows, ws * ws, 5)
    # our window order: unmasked windows first (then by padding pattern), given by window_order
    nh, nw = layout.padded[0] // ws, layout.padded[1] // ws
    order = layout.window_order
    assert sorted(order.tolist()) == list(range(nh * nw))
    if shift:
        masked = (order // nw == nh - 1) | (order % nw == nw - 1)
        assert not masked[: layout.num_unmasked].any() and masked[layout.num_unmasked :].all()
    torch.testing.assert_close(ours, ref_windows[:, order], rtol=0, atol=0)
    # query groups: consecutive ranges, none straddling num_unmasked, rows = the real slots
    real = torch.ones(layout.num_windows * ws * ws, dtype=torch.bool)
    if layout.pad_slots is not None:
        real[layout.pad_slots] = False
    real = real.view(layout.num_windows, ws * ws)
    assert layout.query_groups[0][0] == 0 and layout.query_groups[-1][1] == layout.num_windows
    for (lo, hi, rows), nxt in zip(layout.query_groups, [*layout.query_groups[1:], None]):
        assert nxt is None or nxt[0] == hi
        assert not lo < layout.num_unmasked < hi
        expected = torch.ones(ws * ws, dtype=torch.bool)
        if rows is not None:
            expected = torch.zeros(ws * ws, dtype=torch.bool)
            expected[rows] = True
        assert torch.equal(real[lo:hi], expected.expand(hi - lo, -1))
    if shift:
        assert layout.num_unmasked == (nh - 1) * (nw - 1)
        assert torch.all(ref_mask[order[: layout.num_unmasked]] == 0)
        assert torch.equal(layout.boundary_mask, ref_mask[order[layout.num_unmasked :]])
        assert torch.all(torch.isfinite(layout.boundary_mask).any(-1))  # no fully masked row
    else:
        assert layout.boundary_mask is None and layout.num_unmasked == layout.num_windows
    # scatter_index inverts the gather on the unpadded positions
    back = ours.reshape(2, -1, 5).index_select(1, layout.scatter_index)
    torch.testing.assert_close(back, x.reshape(2, h * w, 5), rtol=0, atol=0)
    # slot_token (the window-attention kernel's table): the gather index, -1 in the padding slots, so
    # every token is written by exactly one slot
    slots = layout.gather_index.clone()
    if layout.pad_slots is not None:
        slots[layout.pad_slots] = -1
    assert layout.slot_token.dtype == torch.int32 and torch.equal(layout.slot_token.long(), slots)
    assert torch.equal(torch.sort(slots[slots >= 0]).values, torch.arange(h * w))


def test_batch_items_independent() -> None:
    """Per-sample masked attention and the batched path agree with single-image runs."""
    bb = _tiny_swin(window=3, depths=(2, 2, 2, 2)).eval()
    x = torch.randn(3, 3, 64, 96)
    with torch.inference_mode():
        batched = bb(x)
        single = [bb(x[i : i + 1]) for i in range(3)]
    for k in range(4):
        torch.testing.assert_close(batched[k], torch.cat([s[k] for s in single]), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- pretrained loading
def test_load_pretrained_swin_release_format(tmp_path, caplog) -> None:
    src = _tiny_swin(depths=(2, 2, 2, 2))
    sd = {k: v.clone() for k, v in src.state_dict().items() if not k.startswith("norm")}
    sd["head.weight"] = torch.zeros(10, 128)
    sd["norm.weight"] = torch.zeros(128)
    sd["layers.0.blocks.1.attn_mask"] = torch.zeros(4, 49, 49)
    sd = {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}
    path = tmp_path / "swin.pth"
    torch.save({"model": sd}, path)

    bb = _tiny_swin(depths=(2, 2, 2, 2))
    with caplog.at_level(logging.INFO):
        report = load_pretrained_backbone(bb, path)
    assert sorted(report.unexpected) == ["head.weight", "layers.0.blocks.1.attn_mask", "norm.weight"]
    assert report.missing == report.expected_missing and len(report.missing) == 8  # norm0..3
    assert report.unexpected_missing == []
    for k, v in bb.state_dict().items():
        if not k.startswith("norm"):
            torch.testing.assert_close(v, src.state_dict()[k].half().to(v.dtype), rtol=0, atol=0)
            assert v.dtype == src.state_dict()[k].dtype


def test_load_pretrained_pvt_plain_and_prefixed(tmp_path) -> None:
    src = _tiny_pvt()
    path = tmp_path / "pvt.pth"
    torch.save(
        {"module." + k: v for k, v in src.state_dict().items()} | {"module.head.weight": torch.zeros(3)}, path
    )
    bb = _tiny_pvt()
    report = load_pretrained_backbone(bb, path)
    assert report.missing == [] and report.unexpected == ["head.weight"]
    for k, v in bb.state_dict().items():
        assert torch.equal(v, src.state_dict()[k])


def test_load_pretrained_shape_mismatch_raises(tmp_path) -> None:
    sd = _tiny_swin().state_dict()
    path = tmp_path / "w7.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError, match="relative_position"):
        load_pretrained_backbone(_tiny_swin(window=5), path)


def test_load_pretrained_torchvision_names(tmp_path) -> None:
    bb = build_backbone("resnet50")
    ours_to_tv = {"conv1.0.": "conv1.", "conv1.1.": "bn1.", "conv1.4.": "layer1."}
    ours_to_tv |= {f"conv{i}.": f"layer{i}." for i in (2, 3, 4)}
    tv = {}
    for k, v in bb.state_dict().items():
        prefix = next(p for p in ours_to_tv if k.startswith(p))
        tv[ours_to_tv[prefix] + k[len(prefix) :]] = torch.randn_like(v) if v.is_floating_point() else v
    tv["fc.weight"] = torch.zeros(1000, 2048)
    path = tmp_path / "resnet50.pth"
    torch.save(tv, path)
    report = load_pretrained_backbone(bb, path)
    assert report.missing == [] and report.unexpected == ["fc.weight"]
    assert torch.equal(bb.state_dict()["conv1.0.weight"], tv["conv1.weight"])
    assert torch.equal(bb.state_dict()["conv1.4.0.conv1.weight"], tv["layer1.0.conv1.weight"])
    assert torch.equal(bb.state_dict()["conv4.2.bn3.running_var"], tv["layer4.2.bn3.running_var"])

    vgg = build_backbone("vgg16bn")
    bounds = (0, 14, 24, 34, 44)
    tv = {}
    for k, v in vgg.state_dict().items():
        stage, index, rest = k.split(".", 2)
        assert bounds[int(stage[-1]) - 1] <= int(index) < bounds[int(stage[-1])]
        tv[f"features.{index}.{rest}"] = torch.randn_like(v) if v.is_floating_point() else v
    path = tmp_path / "vgg.pth"
    torch.save(tv | {"classifier.0.weight": torch.zeros(2)}, path)
    report = load_pretrained_backbone(vgg, path)
    assert report.missing == [] and report.unexpected == ["classifier.0.weight"]
    assert torch.equal(vgg.state_dict()["conv3.27.weight"], tv["features.27.weight"])


@pytest.mark.parametrize(
    ("side", "dim", "heads", "window"), [(64, 96, 3, 12), (50, 48, 3, 7), (20, 32, 2, 7)]
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_swin_stage_workspace_path_equals_the_plain_path(monkeypatch, side, dim, heads, window, dtype):
    """CPU inference writes the blocks' large temporaries into one reused buffer and accumulates the
    output projections into ``residual + bias`` (swin._linear_plus); the numbers must be those of the
    plain path up to the order of that three-term sum, in both padding branches (64 -> 72 and
    50 -> 56 pad over 1/8 of the slots: project, then gather; 20 -> 21 under: gather, then project)."""
    from birefnet.models.backbones import swin
    from birefnet.models.backbones.swin import SwinStage

    monkeypatch.setattr(swin, "STREAM_WINDOWS", False)  # the oneDNN streamed path has its own test
    torch.manual_seed(0)
    stage = SwinStage(dim, 2, heads, window, 4.0, [0.0, 0.0], downsample=False).eval().to(dtype)
    x = torch.randn(2, side, side, dim, dtype=dtype)
    x_before = x.clone()
    with torch.inference_mode():
        ours, _ = stage(x)
        layouts = {
            s: window_layout(side, side, window, s, device=torch.device("cpu"), dtype=dtype)
            for s in (0, window // 2)
        }
        plain = x
        for block in stage.blocks:
            plain = block(plain, layouts[block.shift], None)
    assert rel_error(ours, plain) < (1e-13 if dtype == torch.float64 else 1e-6)
    assert torch.equal(x, x_before)  # the stage input is not summed into in place


@pytest.mark.parametrize(("h", "w", "shift"), [(16, 16, 3), (16, 16, 0), (7, 10, 2), (12, 12, 3)])
def test_attention_on_real_query_rows_equals_all_rows(h: int, w: int, shift: int) -> None:
    """With query_groups, the rows of real tokens are the same as computing every row (float64)."""
    from birefnet.models.backbones.swin import WindowAttention

    torch.manual_seed(0)
    ws = 6
    attn = WindowAttention(8, ws, num_heads=2).double()
    with torch.no_grad():
        attn.relative_position_bias_table.normal_()
    layout = window_layout(h, w, ws, shift, device=torch.device("cpu"), dtype=torch.float64)
    qkv = torch.randn(2, layout.num_windows, ws * ws, 24, dtype=torch.float64)
    with torch.no_grad():
        full = attn(qkv, layout.num_unmasked, layout.boundary_mask)
        grouped = attn(qkv, layout.num_unmasked, layout.boundary_mask, layout.query_groups)
    real = layout.scatter_index  # the slots that are read back
    a, b = full.reshape(2, -1, 8)[:, real], grouped.reshape(2, -1, 8)[:, real]
    torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)


def test_swin_block_under_autocast_casts_once_before_the_gather() -> None:
    """Under autocast the normalised tokens are cast to the autocast dtype before the window gather
    (the qkv Linear would cast them anyway): the block's output equals the one computed with the cast
    left to the Linear, i.e. on the traceable path's order of operations up to attention rounding."""
    from birefnet.models.backbones import swin

    torch.manual_seed(0)
    stage = swin.SwinStage(16, 2, 2, 6, 4.0, [0.0, 0.0], downsample=False).eval()
    x = torch.randn(2, 14, 14, 16)
    seen = []
    hook = stage.blocks[1].attn.qkv.register_forward_pre_hook(lambda _m, a: seen.append(a[0].dtype))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ours, _ = stage(x)
        mask = swin.shifted_window_mask(3, 3, 6, 3, device=x.device, dtype=torch.float32)
        ref = x
        for block in stage.blocks:
            ref = block.forward_traceable(ref, mask)
    hook.remove()
    # the gathered windows reach qkv already cast (the traceable path leaves the cast to the Linear)
    assert seen == [torch.bfloat16, torch.float32]
    assert rel_error(ours.float(), ref.float()) < 2e-2


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")
@pytest.mark.parametrize(("side", "dim", "heads", "window"), [(64, 96, 3, 12), (20, 32, 2, 7)])
@pytest.mark.parametrize("qkv_max_bytes", [0, 2**40])
def test_swin_stage_onednn_path_equals_the_plain_path(monkeypatch, side, dim, heads, window, qkv_max_bytes):
    """On AVX-512 CPUs float32 inference runs the projections through oneDNN's fused kernels (bias,
    GELU and residual sum fused; MLP in token chunks).
    Forced on here whatever the CPU, with chunks smaller than the map, the numbers must be those of the
    plain path up to float rounding, in both padding branches and both qkv routes (one fresh output, or
    chunks copied into the workspace)."""
    from birefnet.models.backbones import swin

    monkeypatch.setattr(swin.onednn, "available", lambda: True)
    monkeypatch.setattr(swin, "STREAM_WINDOWS", False)
    monkeypatch.setattr(swin, "_ONEDNN_CHUNK", 100)
    monkeypatch.setattr(swin, "_ONEDNN_QKV_MAX_BYTES", qkv_max_bytes)
    calls = []
    real_linear = swin._onednn_linear
    monkeypatch.setattr(swin, "_onednn_linear", lambda *a, **k: calls.append(1) or real_linear(*a, **k))
    torch.manual_seed(0)
    stage = swin.SwinStage(dim, 2, heads, window, 4.0, [0.0, 0.0], downsample=False).eval()
    x = torch.randn(2, side, side, dim)
    x_before = x.clone()
    with torch.inference_mode():
        ours, _ = stage(x)
        layouts = {
            s: window_layout(side, side, window, s, device=torch.device("cpu"), dtype=x.dtype)
            for s in (0, window // 2)
        }
        plain = x
        for block in stage.blocks:
            plain = block(plain, layouts[block.shift], None)
    # per block: fc1 per chunk of tokens; qkv in one call (small enough) or per chunk of its rows
    chunks = -(-2 * side * side // 100)
    padded = layouts[0].num_windows * window * window
    qkv_rows = 2 * (padded if (padded - side * side) * 8 < side * side else side * side)
    qkv_calls = 1 if qkv_max_bytes else -(-qkv_rows // 100)
    assert len(calls) == 2 * (chunks + qkv_calls)
    assert rel_error(ours, plain) < 1e-6
    assert torch.equal(x, x_before)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")
@pytest.mark.parametrize(
    ("side", "dim", "heads", "window", "tokens"),
    [(64, 96, 3, 12, 100), (50, 48, 3, 7, 300), (20, 32, 2, 7, 4096), (13, 32, 2, 6, 1)],
)
@pytest.mark.parametrize("post_op", [False, True])
def test_swin_stage_streamed_path_equals_the_plain_path(
    monkeypatch, side, dim, heads, window, tokens, post_op
):
    """On the oneDNN path the stage runs window chunk by window chunk (SwinBlock.forward_streamed): chunks
    of one window up to all windows, maps with and without padding (64 -> 72, 50 -> 56, 20 -> 21,
    13 -> 18), shifted and plain blocks, two samples, the residual sums apart or as oneDNN post-ops.
    Forced on whatever the CPU; the numbers must be those of the plain path up to float rounding, and the
    stage input must be left as it was."""
    from birefnet.models.backbones import swin

    monkeypatch.setattr(swin, "RESIDUAL_POST_OP", post_op)
    monkeypatch.setattr(swin.onednn, "available", lambda: True)
    monkeypatch.setattr(swin, "_ONEDNN_CHUNK", 100)
    monkeypatch.setattr(swin, "_STREAM_TOKENS", tokens)
    streamed = []
    real_streamed = swin.SwinBlock.forward_streamed
    monkeypatch.setattr(
        swin.SwinBlock, "forward_streamed", lambda *a, **k: streamed.append(1) or real_streamed(*a, **k)
    )
    torch.manual_seed(0)
    stage = swin.SwinStage(dim, 2, heads, window, 4.0, [0.0, 0.0], downsample=False).eval()
    with torch.no_grad():
        for block in stage.blocks:
            block.attn.relative_position_bias_table.normal_()
    x = torch.randn(2, side, side, dim)
    x_before = x.clone()
    with torch.inference_mode():
        ours, _ = stage(x)
        mask = swin.shifted_window_mask(
            -(-side // window), -(-side // window), window, window // 2, device=x.device, dtype=x.dtype
        )
        plain = x
        for block in stage.blocks:
            plain = block.forward_traceable(plain, mask)
    assert len(streamed) == 2
    assert rel_error(ours, plain) < 1e-6
    assert torch.equal(x, x_before)


def test_stream_plan_covers_each_real_slot_once() -> None:
    """The streamed path's chunks (swin._stream_plan) gather every token of the map exactly once, stay
    inside one query group each (so inside the masked or the unmasked windows), and hold at most the
    requested number of slots (at least one window)."""
    from birefnet.models.backbones import swin

    for h, w, ws, shift, tokens in [(20, 27, 7, 3, 100), (16, 16, 6, 0, 1), (30, 30, 6, 3, 10**6)]:
        layout = swin._window_layout_cpu(h, w, ws, shift)
        plan = swin._stream_plan(h, w, ws, shift, tokens)
        seen = torch.cat([index for *_, index in plan])
        assert torch.equal(seen.sort().values, torch.arange(h * w))
        groups = [(lo, hi) for lo, hi, _ in layout.query_groups]
        for start, stop, rows, index in plan:
            assert any(lo <= start < stop <= hi for lo, hi in groups)
            assert (stop - start) * ws * ws <= max(tokens, ws * ws)
            assert index.numel() == (stop - start) * (ws * ws if rows is None else rows.numel())


def test_swin_outputs_channels_last_at_cpu_inference_contiguous_otherwise() -> None:
    """At CPU inference the four outputs are channels-last views (the decoder's 1x1 convolutions take
    them without reordering); with autograd on they are NCHW-contiguous. The same values up to the
    inference path's float rounding."""
    torch.manual_seed(0)
    bb = SwinTransformer(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(2, 2, 4, 4), window_size=4).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        fast = bb(x)
    plain = bb(x)
    for a, b in zip(fast, plain):
        assert a.is_contiguous(memory_format=torch.channels_last) and not a.is_contiguous()
        assert b.is_contiguous()
        torch.testing.assert_close(a, b)
