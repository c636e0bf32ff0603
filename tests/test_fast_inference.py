"""The inference-only rewrites of the forward (issue 6) equal the official order of operations, and
the opt-in optimisations work and stay close."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from birefnet import BiRefNet, BiRefNetConfig
from birefnet.models import birefnet as birefnet_module
from birefnet.models import decoder as decoder_module
from birefnet.models import memory
from birefnet.models.blocks import (
    ASPP,
    ASPPDeformable,
    BasicDecBlk,
    BasicLatBlk,
    TwoScaleFeature,
    norm_inplace,
    resize,
)
from birefnet.models.deform_conv import deform_conv2d
from birefnet.models.memory import trim_heap, trim_heap_at_stage_end
from birefnet.models.optimize import optimize_for_inference, parse_optimizations
from conftest import rel_error


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial weights, offsets and BatchNorm statistics (fresh modules have zero offsets)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if "offset" in name else 0.2))
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


@pytest.mark.parametrize("height", [1, 7, 64, 65])
def test_two_convs_in_bands_equal_unbanded(height):
    x = torch.randn(2, 3, height, 19, dtype=torch.float64)
    w1, b1 = torch.randn(5, 3, 3, 3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    w2, b2 = torch.randn(1, 5, 3, 3, dtype=torch.float64), torch.randn(1, dtype=torch.float64)
    whole = F.conv2d(F.conv2d(x, w1, b1, padding=1), w2, b2, padding=1)
    row_bytes = 2 * 5 * 19 * 8
    for rows in (1, 8, 9, 30):  # bands of at least 8 rows: 8, 8, 9 and 30 rows
        banded = decoder_module._two_convs_in_bands(x, w1, b1, w2, b2, budget_bytes=rows * row_bytes)
        assert rel_error(banded, whole) < 1e-13, rows


@pytest.mark.parametrize("size", [(4, 4), (5, 9), (64, 33), (17, 4), (3, 40)])
def test_two_convs_as_one_5x5_equal_the_pair(size):
    """The composed 5x5 kernel inside, the two-convolution border ring: equal to the pair (float64)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    w1, b1 = torch.randn(5, 3, 3, 3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    w2, b2 = torch.randn(1, 5, 3, 3, dtype=torch.float64), torch.randn(1, dtype=torch.float64)
    whole = F.conv2d(F.conv2d(x, w1, b1, padding=1), w2, b2, padding=1)
    assert rel_error(decoder_module._two_convs(x, w1, b1, w2, b2), whole) < 1e-13
    no_bias = F.conv2d(F.conv2d(x, w1, padding=1), w2, padding=1)
    assert rel_error(decoder_module._two_convs(x, w1, None, w2, None), no_bias) < 1e-13


def test_conv_over_parts_equals_conv_of_concatenation():
    from birefnet.models.blocks import BasicDecBlk, ResBlk, conv_over_parts

    torch.manual_seed(0)
    a = torch.randn(2, 5, 9, 11, dtype=torch.float64)
    b = torch.randn(2, 3, 9, 11, dtype=torch.float64)
    for conv in (
        torch.nn.Conv2d(8, 4, 3, padding=1),
        torch.nn.Conv2d(8, 4, 3, stride=2, padding=2, dilation=2, bias=False),
        torch.nn.Conv2d(8, 6, 1),
    ):
        conv = conv.double()
        with torch.no_grad():
            assert rel_error(conv_over_parts(conv, (a, b)), conv(torch.cat((a, b), 1))) < 1e-14
    grouped = torch.nn.Conv2d(8, 4, 3, padding=1, groups=2).double()  # falls back to the concatenation
    with torch.no_grad():
        assert torch.equal(conv_over_parts(grouped, (a, b)), grouped(torch.cat((a, b), 1)))
    for cls in (BasicDecBlk, ResBlk):
        block = cls(8, 6, inter_channels=4, attention="ASPPDeformable", norm="bn", dropout=0.0).double()
        _randomise(block)
        block.eval()
        with torch.no_grad():
            assert rel_error(block((a, b)), block(torch.cat((a, b), 1))) < 1e-13, cls


@pytest.mark.parametrize("cls", [ASPPDeformable, ASPP])
def test_aspp_sum_of_products_equals_concatenation(cls):
    torch.manual_seed(0)
    block = cls(6, 5, norm="bn", dropout=0.0).double()
    _randomise(block)
    x = torch.randn(2, 6, 9, 11, dtype=torch.float64)
    block.eval()
    with torch.no_grad():
        fast = block(x)
        # the official form: concatenate the branches and the broadcast pooled branch, then conv1
        branches = [block.aspp1] + (
            list(block.aspp_deforms) if cls is ASPPDeformable else [block.aspp2, block.aspp3, block.aspp4]
        )
        outs = [b(x) for b in branches]
        outs.append(block.global_avg_pool(x).expand(-1, -1, 9, 11))
        official = F.relu(block.bn1(block.conv1(torch.cat(outs, dim=1))))
    assert rel_error(fast, official) < 1e-12


@pytest.mark.parametrize("norm", ["bn", "none"])
def test_fused_deformable_branches_equal_the_unfused_path(norm, monkeypatch):
    """At CPU inference each deformable ASPP branch is normalised, rectified and projected chunk by
    chunk (blocks._fused_deformable_branch) from a channels-last input; the values are those of the
    full-size branch outputs, across several chunks, for both norms."""
    from birefnet.models import blocks
    from birefnet.models import deform_conv as dc

    torch.manual_seed(0)
    block = ASPPDeformable(6, 5, norm=norm, dropout=0.0).double()
    _randomise(block)
    block.eval()
    x = torch.randn(2, 6, 9, 11, dtype=torch.float64)
    monkeypatch.setattr(dc, "COLUMN_BUDGET_BYTES", 2 * 11 * 8 * 256 * 3)  # 3 output rows per chunk
    calls = []
    forward_rows = dc.DeformableConv2d.forward_rows
    monkeypatch.setattr(
        dc.DeformableConv2d, "forward_rows", lambda self, *a: calls.append(1) or forward_rows(self, *a)
    )
    with torch.no_grad():
        fused = block(x)
        assert len(calls) == 4  # aspp1 and the three aspp_deforms
        monkeypatch.setattr(blocks, "FUSE_DEFORMABLE_BRANCHES", False)
        unfused = block(x)
    assert len(calls) == 4
    assert rel_error(fused, unfused) < 1e-13
    # with autograd on (eval mode, no no_grad), and under autocast, the plain path runs
    monkeypatch.setattr(blocks, "FUSE_DEFORMABLE_BRANCHES", True)
    assert rel_error(block(x).detach(), unfused) < 1e-13
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert rel_error(block.float()(x.float()).double(), unfused) < 0.1
    assert len(calls) == 4


def test_fused_deformable_branch_with_conv_bias():
    """A branch whose deformable convolution has a bias (none of BiRefNet's does) folds it in first,
    with and without a BatchNorm, into an accumulator left NCHW by an earlier branch."""
    from birefnet.models import blocks
    from birefnet.models.deform_conv import DeformableConv2d

    torch.manual_seed(0)
    x = torch.randn(1, 4, 7, 6, dtype=torch.float64)
    w = torch.randn(3, 8, 1, 1, dtype=torch.float64)
    for norm in ("bn", "none"):
        conv = DeformableConv2d(4, 8, kernel_size=3, padding=1, bias=True)
        branch = blocks._ASPPBranch(conv, 8, norm).double()
        _randomise(branch)
        branch.eval()
        earlier = torch.randn(1, 3, 7, 6, dtype=torch.float64)  # NCHW
        with torch.no_grad():
            expected = earlier + F.conv2d(branch(x), w)
            got = blocks._fused_deformable_branch(branch, x, w, earlier.clone())
            first = blocks._fused_deformable_branch(branch, x, w, None)
        assert rel_error(got, expected) < 1e-13, norm
        assert rel_error(first, F.conv2d(branch(x), w).detach()) < 1e-13, norm


def test_norm_inplace_equals_batch_norm():
    bn = torch.nn.BatchNorm2d(4).double()
    _randomise(bn)
    bn.eval()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        expected = bn(x)
        y = x.clone()
        out = norm_inplace(bn, y)
    assert out.data_ptr() == y.data_ptr()  # in place at inference
    assert rel_error(out, expected) < 1e-14
    x.requires_grad_(True)
    assert norm_inplace(bn, x).data_ptr() != x.data_ptr()  # autograd on: the plain module


@pytest.mark.parametrize("inward", [True, False])
def test_final_stage_fold_equals_official_order(inward):
    cfg = BiRefNetConfig(backbone="pvt_v2_b0", inward_reference=inward)
    model = BiRefNet(cfg).double().eval()
    _randomise(model.decoder)
    dec = model.decoder
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    p1 = torch.randn(
        2,
        dec.conv_out1[0].in_channels - (dec.ipt_blk1.conv_out.out_channels if inward else 0),
        16,
        24,
        dtype=torch.float64,
    )
    with torch.no_grad():
        fast = dec._final_logits_eval(x, p1)
        official = dec.conv_out1(dec._inward(x, resize(p1, x.shape[-2:]), 1))
    assert fast.shape == (2, 1, 64, 96)
    assert rel_error(fast, official) < 1e-12


@pytest.mark.parametrize("norm", ["bn", "none"])
@pytest.mark.parametrize("parts", [False, True])
def test_last_block_folded_with_the_projection_equals_block_then_projection(norm, parts):
    """BasicDecBlk.forward_projected: conv_out, bn_out and a 1x1 projection as one convolution equal
    the block followed by the projection (float64); from (feature, encoded patches) parts too."""
    block = BasicDecBlk(12, 10, inter_channels=8, norm=norm).double()
    _randomise(block)
    block.eval()
    x = torch.randn(2, 12, 9, 11, dtype=torch.float64)
    projection = torch.randn(1, 10, 1, 1, dtype=torch.float64)
    given = (x[:, :7], x[:, 7:]) if parts else x
    with torch.no_grad():
        folded = block.forward_projected(given, projection)
        expected = F.conv2d(block(x), projection)
    assert folded is not None and folded.shape == (2, 1, 9, 11)
    assert rel_error(folded, expected) < 1e-12


def test_last_block_fold_declines_where_it_does_not_apply():
    """None (the caller runs the block) with autograd on, with a training-mode BatchNorm, and for a
    grouped conv_out; the decoder then runs the plain block."""
    block = BasicDecBlk(6, 4, inter_channels=8).eval()
    x = torch.randn(1, 6, 5, 5)
    projection = torch.randn(1, 4, 1, 1)
    assert block.forward_projected(x, projection) is None  # grad mode on
    with torch.no_grad():
        assert block.forward_projected(x, projection) is not None
        block.bn_out.train()
        assert block.forward_projected(x, projection) is None
        block.bn_out.eval()
        block.conv_out = torch.nn.Conv2d(8, 4, 3, padding=1, groups=2)
        assert block.forward_projected(x, projection) is None


def test_decoder_folds_its_last_block_at_cpu_inference_only(monkeypatch):
    """The CPU eval forward takes the fold (the switch on), and gives the unfolded logits."""
    torch.manual_seed(0)
    model = BiRefNet(BiRefNetConfig(backbone="pvt_v2_b0")).eval()
    _randomise(model.decoder)
    x = torch.randn(1, 3, 64, 64)
    calls = []
    original = BasicDecBlk.forward_projected

    def spy(self, *args):
        out = original(self, *args)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(BasicDecBlk, "forward_projected", spy)
    with torch.inference_mode():
        folded = model(x).logits
        assert calls == [True]
        monkeypatch.setattr(decoder_module, "FOLD_LAST_BLOCK", False)
        unfolded = model(x).logits
    assert calls == [True]
    assert rel_error(folded, unfolded) < 1e-5


def test_eval_forward_equals_training_form_forward(monkeypatch):
    """Whole model: the eval fast paths against the same model's official-order ops (float64)."""
    torch.manual_seed(0)
    model = BiRefNet(BiRefNetConfig(backbone="pvt_v2_b0")).double()
    _randomise(model.decoder)
    model.eval()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.inference_mode():
        fast = model(x).logits
    # official order: the training-mode code paths of the decoder, with eval BatchNorm and no dropout
    # (the top level stays in eval mode: no Laplacian, so no gradient labels; the side heads run
    # but do not change the logits)
    # the concatenated multi-scale maps, as the official code
    monkeypatch.setattr(birefnet_module, "TWO_SCALE_LATERALS", False)
    with torch.no_grad():
        model.decoder.train()
        for m in model.decoder.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.Dropout)):
                m.eval()
        slow = model(x).logits
    assert rel_error(fast, slow) < 1e-10


def test_deform_inference_path_equals_autograd_path():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 9, 10, generator=g, dtype=torch.float64)
    offset = torch.randn(2, 2 * 9, 9, 10, generator=g, dtype=torch.float64) * 2
    mask = torch.rand(2, 9, 9, 10, generator=g, dtype=torch.float64)
    weight = torch.randn(4, 5, 3, 3, generator=g, dtype=torch.float64)
    with torch.no_grad():
        fast = deform_conv2d(x, offset, weight, padding=1, mask=mask)
    assert fast.is_contiguous(memory_format=torch.channels_last)
    slow = deform_conv2d(x, offset, weight.requires_grad_(True), padding=1, mask=mask)
    assert rel_error(fast, slow.detach()) < 1e-13


def test_trim_heap_is_safe():
    trim_heap()
    trim_heap_at_stage_end(torch.zeros(1, 3, 8, 8), training=False)
    size = memory.heap_bytes()
    assert size is None or size > 0  # None only without glibc >= 2.33


def test_heap_kept_within_budget(monkeypatch):
    """Freed pages stay mapped (no trim at stage ends) from prepare_heap to release_heap while malloc
    holds at most HEAP_KEEP_BYTES. Over it (or where the size is unknown) the process stops keeping them
    for good and trims at every stage end, as it does with the switch off."""
    trims, settings = [], []
    monkeypatch.setattr(memory, "trim_heap", lambda: trims.append(1))
    monkeypatch.setattr(memory, "_set_heap", lambda **kw: settings.append(kw) or True)
    monkeypatch.setattr(memory, "_state", memory._HeapState())
    big, small = torch.empty(1, 3, 512, 512), torch.empty(1, 3, 256, 256)
    keep = {"mmap_max": 0, "trim_threshold": 2**31 - 1}

    def stage_end(x=big, training=False, heap=memory.HEAP_KEEP_BYTES) -> int:
        monkeypatch.setattr(memory, "heap_bytes", lambda: heap)
        trims.clear()
        memory.trim_heap_at_stage_end(x, training)
        return len(trims)

    memory.prepare_heap(small, training=False)
    memory.prepare_heap(big, training=True)
    assert settings == [] and stage_end() == 1  # nothing kept: trims as before
    memory.release_heap()
    assert settings == []
    memory.prepare_heap(big, training=False)
    memory.prepare_heap(big, training=False)
    assert settings == [keep]  # applied once per forward
    assert stage_end() == 0
    assert stage_end(small) == stage_end(training=True) == 0  # small inputs and training never trim
    memory.release_heap()  # end of the forward: glibc's usual handling again
    assert settings[-1]["mmap_max"] > 0 and not memory._state.kept
    memory.prepare_heap(big, training=False)  # the next forward keeps pages again
    assert settings[-1] == keep
    assert stage_end(heap=memory.HEAP_KEEP_BYTES + 1) == 1
    assert settings[-1]["mmap_max"] > 0 and memory._state.over_budget
    n = len(settings)
    memory.release_heap()
    memory.prepare_heap(big, training=False)
    assert len(settings) == n and stage_end() == 1  # over budget once: for good

    monkeypatch.setattr(memory, "_state", memory._HeapState())
    memory.prepare_heap(big, training=False)
    assert stage_end(heap=None) == 1 and memory._state.over_budget  # size unknown: not kept
    monkeypatch.setattr(memory, "_state", memory._HeapState())
    monkeypatch.setattr(memory, "KEEP_HEAP_PAGES", False)
    n = len(settings)
    memory.prepare_heap(big, training=False)
    assert len(settings) == n and stage_end() == 1  # switched off: nothing applied, trims as before


def test_forward_releases_the_heap_settings(monkeypatch):
    """BiRefNet.forward keeps pages only while it runs, also when it raises."""
    calls = []
    monkeypatch.setattr(birefnet_module, "prepare_heap", lambda x, training: calls.append("prepare"))
    monkeypatch.setattr(birefnet_module, "release_heap", lambda: calls.append("release"))
    model = BiRefNet(BiRefNetConfig(backbone="swin_v1_t")).eval()
    with torch.inference_mode():
        model(torch.randn(1, 3, 64, 64))
    assert calls == ["prepare", "release"]

    def fail(x, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(model, "forward_encoder", fail)
    with pytest.raises(RuntimeError, match="boom"), torch.inference_mode():
        model(torch.randn(1, 3, 64, 64))
    assert calls[-2:] == ["prepare", "release"]


def test_parse_optimizations():
    assert parse_optimizations("channels-last, int8,int8") == ("channels_last", "int8")
    assert parse_optimizations(None) == () == parse_optimizations("none")
    with pytest.raises(ValueError, match="channels-last, compile, int8"):
        parse_optimizations("fast")


@pytest.mark.parametrize("options", ["channels_last", "int8", "channels_last,int8"])
def test_optimizations_stay_close(options):
    torch.manual_seed(0)
    model = BiRefNet(BiRefNetConfig(backbone="swin_v1_t")).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        ref = model(x).logits.sigmoid()
        out = optimize_for_inference(model, options)(x).logits.sigmoid()
    assert out.shape == ref.shape
    assert float((out - ref).abs().max()) < (0.05 if "int8" in options else 1e-4)


def test_onednn_kernels_stay_out_of_compiled_graphs(monkeypatch):
    """Inductor cannot lower oneDNN's fused linear calls (``torch.compile`` of the model failed with a
    LoweringException on an AVX-512 host), so under capture the products take plain matmuls, and the
    check itself must not break the graph. Eager inference keeps the oneDNN path."""
    from birefnet.models import onednn

    monkeypatch.setattr(onednn, "available", lambda: True)  # as on an AVX-512 CPU
    seen = []

    def probe(t: torch.Tensor) -> torch.Tensor:
        seen.append(onednn.use_onednn(t))
        return t + 1

    x = torch.ones(4)
    try:
        with torch.inference_mode():
            torch.compile(probe, backend="eager", fullgraph=True)(x)  # fullgraph: a graph break raises
            assert seen == [False]
            assert onednn.use_onednn(x)
    finally:
        torch._dynamo.reset()


def test_model_traces_as_one_graph_with_onednn_available(monkeypatch):
    """The whole inference forward is one Dynamo graph (no graph break, so no per-shape recompiles of
    the pieces after a break), also where the oneDNN fast path exists."""
    from birefnet.models import onednn

    monkeypatch.setattr(onednn, "available", lambda: True)
    torch.manual_seed(0)
    model = BiRefNet(BiRefNetConfig(backbone="swin_v1_t")).eval()
    try:
        with torch.inference_mode():
            explained = torch._dynamo.explain(model)(torch.randn(1, 3, 64, 64))
    finally:
        torch._dynamo.reset()
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]


def test_compile_option_compiles_static_shapes(monkeypatch):
    """Dynamic shapes made Inductor fail on PVT's reduction convolution; the Predictor feeds one size."""
    seen = {}
    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: seen.update(kwargs) or module)
    optimize_for_inference(torch.nn.Linear(2, 2), "compile")
    assert seen == {"dynamic": False}


def test_int8_needs_cpu():
    with pytest.raises(ValueError, match="CPU only"):
        optimize_for_inference(torch.nn.Linear(2, 2), "int8", device="meta")


def test_predictor_optimize_option():
    import copy

    import numpy as np

    from birefnet.inference import Predictor

    torch.manual_seed(0)
    model = BiRefNet(BiRefNetConfig(backbone="pvt_v2_b0"))
    plain = Predictor(copy.deepcopy(model), size=64, device="cpu")
    fast = Predictor(model, size=64, device="cpu", optimize="channels-last")
    assert fast.optimizations == ("channels_last",) and "channels-last" in fast.describe()
    rgb = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    assert np.abs(fast.predict(rgb) - plain.predict(rgb)).max() < 1e-4
    with pytest.raises(ValueError, match="unknown optimisation"):
        Predictor(model, size=64, device="cpu", optimize="turbo")


def test_half_weights_predictor_runs_the_half_model_and_falls_back_to_the_fp32_weights(caplog):
    """half_weights: the model is converted to the precision's type and fed inputs of it (no autocast);
    non-finite outputs bring back the exact float32 weights, not the rounded ones."""
    import copy
    import logging

    import numpy as np

    from birefnet.inference import Predictor

    torch.manual_seed(0)
    model = BiRefNet(BiRefNetConfig(backbone="pvt_v2_b0"))
    _randomise(model)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    plain = Predictor(copy.deepcopy(model), size=64, device="cpu")
    half = Predictor(model, size=64, device="cpu", precision="bf16", optimize="half-weights")
    assert model.decoder.conv_out1[0].weight.dtype == torch.bfloat16
    assert "half-weights" in half.describe()
    seen = []
    model.register_forward_pre_hook(lambda _m, a: seen.append((a[0].dtype, torch.is_autocast_enabled("cpu"))))
    rgb = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    ref = plain.predict(rgb)
    autocast = Predictor(copy.deepcopy(plain.model), size=64, device="cpu", precision="bf16")
    # bf16 rounding of these random weights: the half model lands as far from fp32 as autocast does
    assert np.abs(half.predict(rgb) - ref).max() < 2 * np.abs(autocast.predict(rgb) - ref).max() + 0.02
    assert seen == [(torch.bfloat16, False)]
    # a non-finite output: the float32 weights come back and the Predictor stays in fp32
    real_logits = half._logits
    half._logits = lambda x, p: real_logits(x, p) + (float("inf") if p != "fp32" else 0.0)
    with caplog.at_level(logging.WARNING, logger="birefnet.inference"):
        out = half.predict(rgb)
    assert half.precision == "fp32" and half.optimizations == ()
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())
    assert np.abs(out - ref).max() < 1e-6
    with pytest.raises(ValueError, match="--precision fp16 or bf16"):
        Predictor(
            BiRefNet(BiRefNetConfig(backbone="pvt_v2_b0")), size=64, device="cpu", optimize="half-weights"
        )


def test_cuda_graph_wrapper_captures_on_the_second_call_and_hands_out_copies(monkeypatch):
    """CudaGraphs without CUDA: the capture is replaced by one that re-runs the recorded forward, so the
    bookkeeping is checked: eager first call, capture on the second, static input refreshed, outputs
    cloned, one graph per shape/dtype/autocast key, keys past max_graphs eager (nothing recaptured)."""
    from birefnet.models import optimize
    from birefnet.models.output import BiRefNetOutput

    captures = []

    def fake_capture(run, device):
        captures.append(torch.is_autocast_cache_enabled())
        static_out = run()  # the capture call; "replay" recomputes into its output, as a graph would

        def replay():
            static_out.logits.copy_(run().logits)

        return replay

    monkeypatch.setattr(optimize, "capture_cuda_graph", fake_capture)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            return BiRefNetOutput(logits=x * 2)

    net = Net()
    graphs = optimize.CudaGraphs(net, max_graphs=2)
    x = torch.randn(1, 3, 4, 4)
    with torch.inference_mode():
        first = graphs(x)
        assert net.calls == 1 and not graphs._graphs  # eager
        second = graphs(x + 1)
        assert len(graphs._graphs) == 1 and captures == [False]
        third = graphs(x + 2)
        torch.testing.assert_close(third.logits, (x + 2) * 2)
        torch.testing.assert_close(second.logits, (x + 1) * 2)  # a copy, not the static output
        torch.testing.assert_close(first.logits, x * 2)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # another key: eager first, then captured
            graphs(x)
            graphs(x)
        calls = net.calls
        for _ in range(3):  # a third key once two are captured: eager every time
            out = graphs(x[:, :2])
        assert net.calls == calls + 3 and len(graphs._graphs) == 2 and captures == [False, False]
        torch.testing.assert_close(out.logits, x[:, :2] * 2)
        torch.testing.assert_close(graphs(x + 3).logits, (x + 3) * 2)  # the first graph still replays


def test_fast_gelu_option_sets_the_swin_blocks_and_refuses_other_paths():
    from birefnet.models.backbones.swin import SwinBlock
    from birefnet.models.optimize import set_fast_gelu

    model = BiRefNet(BiRefNetConfig(backbone="swin_v1_t")).eval()
    blocks = [m for m in model.modules() if isinstance(m, SwinBlock)]
    assert blocks and not any(b.gelu_tanh for b in blocks)  # off by default: the exact GELU
    assert set_fast_gelu(model) == len(blocks) and all(b.gelu_tanh for b in blocks)
    assert "gelu_tanh" not in str(list(model.state_dict()))  # not a parameter or buffer
    set_fast_gelu(model, False)
    assert parse_optimizations("fast-gelu") == ("fast_gelu",)
    with pytest.raises(ValueError, match="half-weights"):  # needs the CUDA half-weights path
        optimize_for_inference(model, "fast-gelu", device="cpu")
    with pytest.raises(ValueError, match="half-weights"):
        optimize_for_inference(model, "half-weights,fast-gelu", device="cpu", half_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="no Swin blocks"):
        optimize_for_inference(
            torch.nn.Linear(2, 2), "half-weights,fast-gelu", device="cuda", half_dtype=torch.bfloat16
        )


def test_cuda_graph_refusals():
    with pytest.raises(ValueError, match="CUDA device"):
        optimize_for_inference(torch.nn.Linear(2, 2), "cuda-graph", device="cpu")
    with pytest.raises(ValueError, match="not both"):
        optimize_for_inference(torch.nn.Linear(2, 2), "cuda-graph,compile", device="cuda")
    with pytest.raises(ValueError, match="do not combine"):
        optimize_for_inference(torch.nn.Linear(2, 2), "half-weights,int8", half_dtype=torch.bfloat16)


def test_device_window_layout_cache_equals_per_call_build():
    """The per-device cached layout (used on accelerators, so a forward makes no host-to-device copies
    and a CUDA graph can capture it) holds the same tensors as the CPU's per-call build."""
    from birefnet.models.backbones import swin

    for h, w, shift in ((20, 30, 0), (20, 30, 3), (12, 12, 3)):
        per_call = swin.window_layout(h, w, 6, shift, device=torch.device("cpu"), dtype=torch.float32)
        cached = swin._window_layout_on(h, w, 6, shift, torch.device("cpu"), torch.float32)
        assert cached is swin._window_layout_on(h, w, 6, shift, torch.device("cpu"), torch.float32)
        for name in ("gather_index", "pad_slots", "scatter_index", "boundary_mask", "slot_token"):
            a, b = getattr(per_call, name), getattr(cached, name)
            assert (a is None) == (b is None), name
            if a is not None:
                assert torch.equal(a, b), name
        with torch.inference_mode():  # a cache built under inference_mode still serves autograd later
            swin._window_layout_on(h + 1, w, 6, shift, torch.device("cpu"), torch.float32)
        assert not swin._window_layout_on(
            h + 1, w, 6, shift, torch.device("cpu"), torch.float32
        ).gather_index.is_inference()


def test_deform_sampler_constants_built_on_device():
    from birefnet.models.deform_conv import _GatherSampler

    sampler = _GatherSampler(torch.zeros(2, 4, 7, 9), groups=2)
    # planes of (7 + 3) x (9 + 3) rows, pixel (0, 0) at row 12 + 1 of its plane; corners 0, 1, 12, 13 on
    assert sampler.corner_rows.shape == (2, 2, 1, 1, 1, 4)
    assert sampler.corner_rows.dtype == torch.int32
    starts = [13 + 120 * plane for plane in range(4)]
    assert sampler.corner_rows.view(4, 4).tolist() == [[s, s + 1, s + 12, s + 13] for s in starts]
    assert (sampler.height, sampler.width) == (7, 9)


def test_channels_last_resize_equals_nchw():
    """blocks.resize runs many-channel maps through the channels-last kernel on CUDA; the premise
    (same formula, same values) checked on the CPU's two kernels."""
    x = torch.randn(2, 16, 9, 13, dtype=torch.float64)
    for size in ((18, 26), (5, 7)):
        nchw = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        nhwc = F.interpolate(
            x.contiguous(memory_format=torch.channels_last), size=size, mode="bilinear", align_corners=True
        )
        assert rel_error(nhwc.contiguous(), nchw) < 1e-13
    assert resize(x, (18, 26)).is_contiguous()


@pytest.mark.parametrize("size", [(4, 6), (18, 26), (9, 13)])
def test_cpu_resize_channels_as_batch_equals_interpolate(size):
    """On the CPU, blocks.resize resizes an NCHW map's channels as a batch of one-channel maps (ATen would
    copy it to channels-last and back): the same values, and the same gradients in training."""
    x = torch.randn(2, 16, 9, 13, dtype=torch.float64, requires_grad=True)
    ours = resize(x, size)
    ref = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
    assert ours.shape == ref.shape and ours.is_contiguous()
    assert rel_error(ours.detach(), ref.detach()) < 1e-13
    g = torch.randn(ref.shape, dtype=torch.float64)
    (grad_ours,) = torch.autograd.grad(ours, x, g)
    (grad_ref,) = torch.autograd.grad(ref, x, g)
    assert rel_error(grad_ours, grad_ref) < 1e-13
    # float32, where ATen's own kernel is the channels-last one: within rounding
    y = torch.randn(1, 384, 64, 64)
    assert (
        resize(y, (8, 8)) - F.interpolate(y, size=(8, 8), mode="bilinear", align_corners=True)
    ).abs().max() < 1e-5
    # channels-last input keeps ATen's kernel (no view as a batch possible)
    cl = y.contiguous(memory_format=torch.channels_last)
    assert torch.equal(
        resize(cl, (8, 8)), F.interpolate(cl, size=(8, 8), mode="bilinear", align_corners=True)
    )


def test_lateral_sum_inference_equals_training_form():
    """The in-place lateral sum with a channels-last coarse map (decoder blocks write channels-last)."""
    g = torch.Generator().manual_seed(3)
    coarse = torch.randn(1, 8, 5, 7, generator=g, dtype=torch.float64).contiguous(
        memory_format=torch.channels_last
    )
    lateral = torch.randn(1, 8, 10, 14, generator=g, dtype=torch.float64)
    with torch.no_grad():
        ref = decoder_module.Decoder._lateral_sum(coarse, lateral.clone())  # grad mode: out of place
    with torch.inference_mode():
        ours = decoder_module.Decoder._lateral_sum(coarse, lateral.clone())
    assert rel_error(ours, ref) < 1e-13


def test_two_scale_lateral_sum_equals_the_concatenated_form(monkeypatch):
    """W [full | resize(half)] + b + resize(coarse) = W_full full + b + resize(W_half half + coarse)."""
    from birefnet.models import blocks

    monkeypatch.setattr(blocks, "_RESIZE_CHUNK_BYTES", 2 * 8 * 12 * 8 * 4)  # resized 4 channels at a time
    g = torch.Generator().manual_seed(0)
    full = torch.randn(2, 5, 8, 12, generator=g, dtype=torch.float64)
    half = torch.randn(2, 3, 4, 6, generator=g, dtype=torch.float64)
    coarse = torch.randn(2, 6, 4, 6, generator=g, dtype=torch.float64)
    block = BasicLatBlk(8, 6).double()
    _randomise(block)
    feat = TwoScaleFeature(full, half)
    assert feat.shape == (2, 8, 8, 12)
    with torch.no_grad():
        ref = resize(coarse, (8, 12)) + block(torch.cat([full, resize(half, (8, 12))], 1))
        assert rel_error(feat.concatenated(), torch.cat([full, resize(half, (8, 12))], 1)) == 0
    with torch.inference_mode():
        ours = decoder_module.Decoder._two_scale_lateral_sum(coarse.clone(), block, feat)
        # a coarse map of another size than the half part's: the concatenation, the same values
        odd = decoder_module.Decoder._two_scale_lateral_sum(resize(coarse, (3, 5)), block, feat)
    assert rel_error(ours, ref) < 1e-13
    with torch.no_grad():
        odd_ref = resize(resize(coarse, (3, 5)), (8, 12)) + block(feat.concatenated())
    assert rel_error(odd, odd_ref) < 1e-13


def test_two_scale_feature_resized_equals_resize_of_concatenation(monkeypatch):
    """The context resize of a two-scale stage, a few channels at a time, equals that of the map."""
    from birefnet.models import blocks

    g = torch.Generator().manual_seed(1)
    feat = TwoScaleFeature(
        torch.randn(1, 4, 16, 24, generator=g, dtype=torch.float64),
        torch.randn(1, 7, 8, 12, generator=g, dtype=torch.float64),
    )
    ref = resize(feat.concatenated(), (4, 6))
    monkeypatch.setattr(blocks, "_RESIZE_CHUNK_BYTES", 2 * 16 * 24 * 8)  # two channels per resize
    with torch.inference_mode():
        ours = feat.resized((4, 6))
    assert ours.shape == (1, 11, 4, 6)
    assert rel_error(ours, ref) < 1e-14


@pytest.mark.parametrize("backbone", ["pvt_v2_b0", "swin_v1_t"])
def test_two_scale_laterals_equal_the_concatenated_maps(backbone, monkeypatch):
    """Whole model at CPU inference: the two-scale stages against the concatenated ones (float64); and
    only inference without autograd takes them."""
    torch.manual_seed(0)
    model = BiRefNet(BiRefNetConfig(backbone=backbone)).double()
    _randomise(model.decoder)
    model.eval()
    x = torch.randn(1, 3, 64, 96, dtype=torch.float64)
    asked = []
    encoder = model.forward_encoder

    def spy(x, *, two_scale=False):
        asked.append(two_scale)
        return encoder(x, two_scale=two_scale)

    monkeypatch.setattr(model, "forward_encoder", spy)
    with torch.inference_mode():
        fast = model(x).logits
        monkeypatch.setattr(birefnet_module, "TWO_SCALE_LATERALS", False)
        slow = model(x).logits
        monkeypatch.setattr(birefnet_module, "TWO_SCALE_LATERALS", True)
    with torch.enable_grad():
        model(x)
    assert asked == [True, False, False]
    assert rel_error(fast, slow) < 1e-12
    with torch.inference_mode():
        feats, _ = encoder(x, two_scale=True)
    assert [type(f).__name__ for f in feats] == ["TwoScaleFeature"] * 3 + ["Tensor"]


def test_decoder_releases_the_features_it_is_handed():
    """BiRefNet's forward hands its encoder maps to the decoder (release_features=True): the list is
    emptied so each map can be freed once used, and the logits are those of a call that keeps them."""
    torch.manual_seed(0)
    model = BiRefNet(BiRefNetConfig(backbone="pvt_v2_b0")).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        feats, _ = model.forward_encoder(x, two_scale=True)  # as BiRefNet's forward at CPU inference
        feats[3] = model.squeeze_module(feats[3])
        kept = model.decoder(x, tuple(feats)).logits
        handed = list(feats)
        released = model.decoder(x, handed, release_features=True).logits
        whole = model(x).logits
    assert handed == []
    assert torch.equal(released, kept) and torch.equal(whole, kept)


def test_patch_embed_channels_last_equals_official_order():
    """PatchEmbed feeds oneDNN a channels-last image on the CPU; same values as conv -> permute -> norm."""
    from birefnet.models.backbones.swin import PatchEmbed

    torch.manual_seed(0)
    embed = PatchEmbed(4, 3, 24).double()
    x = torch.randn(2, 3, 30, 34, dtype=torch.float64)  # padded to 32 x 36
    with torch.inference_mode():
        ours = embed(x)
        ref = embed.norm(embed.proj(F.pad(x, (0, 2, 0, 2))).permute(0, 2, 3, 1))
    assert ours.shape == (2, 8, 9, 24) and ours.is_contiguous()
    assert rel_error(ours, ref) < 1e-12
