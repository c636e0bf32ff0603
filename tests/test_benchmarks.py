"""The kernel-ceiling benchmark's bookkeeping: which calls it records, their FLOPs, and the replay."""

from __future__ import annotations

import functools
import importlib.util
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT


@functools.cache
def _ceiling():
    """benchmarks/ceiling.py as a module (the benchmarks are scripts, not a package)."""
    path = ROOT / "benchmarks" / "ceiling.py"
    name = "birefnet_benchmark_ceiling"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)  # (it puts benchmarks/ on sys.path for its sibling speed.py)
    return module


def test_recorder_groups_the_compute_calls_and_counts_their_flops():
    ceiling = _ceiling()
    x = torch.randn(1, 8, 16, 16)
    weight = torch.randn(4, 8, 3, 3)
    a, b = torch.randn(32, 24), torch.randn(24, 40)
    qkv = torch.randn(5, 49, 3, 2, 16)  # strided q, k, v views as the Swin's attention passes them
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    recorder = ceiling.Recorder()
    with torch.inference_mode(), recorder:
        F.conv2d(x, weight, padding=1)
        torch.mm(a, b)
        torch.mm(a, b)  # the same signature again: one entry, two calls
        F.scaled_dot_product_attention(q, k, v)
        torch.matmul(q, k.transpose(-2, -1))  # the streamed Swin's attention product
        (x + 1).relu_()  # glue: not recorded
    by_group = {}
    for call in recorder.calls.values():
        by_group.setdefault(call["group"], []).append(call)
    attention = "attention (SDPA or matmul)"
    assert set(by_group) == {"convolution", "GEMM (linear, deformable products)", attention}
    (conv,) = by_group["convolution"]
    assert conv["flops"] == 2 * (4 * 16 * 16) * (8 * 3 * 3)
    (mm,) = by_group["GEMM (linear, deformable products)"]
    assert mm["n"] == 2 and mm["flops"] == 2 * 32 * 24 * 40
    sdpa, product = sorted(by_group[attention], key=lambda call: -call["flops"])
    assert sdpa["flops"] == 4 * 5 * 2 * 49 * 49 * 16
    assert product["flops"] == 2 * 5 * 2 * 49 * 49 * 16


def test_replay_uses_the_recorded_shapes_and_strides():
    ceiling = _ceiling()
    qkv = torch.randn(3, 10, 3, 2, 8)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    recorder = ceiling.Recorder()
    with torch.inference_mode(), recorder:
        F.scaled_dot_product_attention(q, k, v)
    ((func, args, kwargs),) = recorder.specs.values()
    rebuilt = ceiling._make(args)
    assert rebuilt[0].shape == q.shape and rebuilt[0].stride() == q.stride()
    with torch.inference_mode():
        assert ceiling.isolated_best(func, args, kwargs, repeats=2) > 0


def test_integer_operands_keep_their_values():
    """embedding_bag's indices must stay in range when replayed, so integer tensors are kept as they are."""
    ceiling = _ceiling()
    table = torch.randn(10, 4)
    index = torch.randint(0, 10, (6, 4))
    recorder = ceiling.Recorder()
    with torch.inference_mode(), recorder:
        F.embedding_bag(index, table, per_sample_weights=torch.rand(6, 4), mode="sum")
    ((func, args, kwargs),) = recorder.specs.values()
    assert torch.equal(ceiling._make(args)[1], index.flatten())  # aten.embedding_bag(table, indices, ...)
    with torch.inference_mode():
        assert ceiling.isolated_best(func, args, kwargs, repeats=1) > 0


def test_packed_weights_are_replayed_packed():
    """A oneDNN-packed weight (the deformable products pack theirs per call) has no strides to replay:
    the replay packs a fresh weight of its shape (replaying its reported strides stalled for minutes)."""
    from birefnet.models import onednn

    if not onednn.available():
        pytest.skip("packed weights are made on AVX-512 CPUs with oneDNN only")
    ceiling = _ceiling()
    x, weight = torch.randn(128, 24), onednn.packed_weight(torch.randn(16, 24))
    recorder = ceiling.Recorder()
    with torch.inference_mode(), recorder:
        onednn.linear(x, weight, None)
    ((func, args, kwargs),) = recorder.specs.values()
    assert args[1].packed and args[1].shape == (16, 24)
    assert ceiling._make(args[1]).is_mkldnn
    with torch.inference_mode():
        assert ceiling.isolated_best(func, args, kwargs, repeats=1) > 0


@pytest.mark.parametrize(
    ("switch", "labels", "exact"),
    [("keep-heap", "trimmed heap/kept heap", True), ("streamed-windows", "map-sized/streamed", False)],
)
def test_ab_switch_compares_a_per_process_switch_across_two_workers(capsys, switch, labels, exact):
    """keep-heap and streamed-windows change what the heap holds, so ab_switch runs one warm worker per
    side and alternates forwards between them (64² here: the mechanics only; the heap handling starts
    at 512², and the streamed path runs on AVX-512 CPUs only)."""
    path = ROOT / "benchmarks" / "ab_switch.py"
    spec = importlib.util.spec_from_file_location("birefnet_benchmark_ab_switch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(
        ["--switch", switch, "--variant", "swin_v1_t", "--size", "64", "--pairs", "2", "--threads", "1"]
    )
    out = capsys.readouterr().out
    assert out.count("pair ") == 2
    assert labels in out
    rss = out.split("peak RSS (model build included): ", 1)[1].splitlines()[0]
    assert rss.count(" GB") == 2  # each worker's own peak
    difference = float(out.rsplit("max |prob difference| ", 1)[1].split()[0])
    assert difference == 0.0 if exact else difference < 1e-5


def test_speed_counts_the_official_flops_of_a_forward():
    """speed.count_flops swaps in the official last stage and the plain deformable branches; it must
    keep up with the signatures it replaces (it broke once when the decoder's last stage grew an argument)."""
    _ceiling()  # puts benchmarks/ on sys.path
    import speed
    from birefnet import BiRefNet, BiRefNetConfig

    model = BiRefNet(BiRefNetConfig(backbone="pvt_v2_b0")).eval()
    flops = speed.count_flops(model, torch.randn(1, 3, 64, 64))
    assert flops > 1e8
    with torch.inference_mode():  # the swapped methods are restored
        assert model(torch.randn(1, 3, 64, 64)).logits.shape == (1, 1, 64, 64)


def test_speed_counts_the_official_multi_scale_fusion(monkeypatch):
    """The count is the official forward's: the concatenated multi-scale stages and their full-size
    lateral products, not the unfused pairs CPU inference hands to the decoder (which do fewer FLOPs);
    and the switch is left as it was."""
    _ceiling()
    import speed
    from birefnet import BiRefNet, BiRefNetConfig
    from birefnet.models import birefnet as birefnet_module

    torch.manual_seed(0)
    model = BiRefNet(BiRefNetConfig(backbone="pvt_v2_b0")).eval()
    x = torch.randn(1, 3, 64, 64)
    assert birefnet_module.TWO_SCALE_LATERALS
    counted = speed.count_flops(model, x)
    assert birefnet_module.TWO_SCALE_LATERALS  # restored
    monkeypatch.setattr(birefnet_module, "TWO_SCALE_LATERALS", False)
    assert speed.count_flops(model, x) == counted


def test_speed_counts_the_official_last_decoder_block(monkeypatch):
    """The count runs decoder_block1's own convolution to its full width, not the fold with the head's
    projection that CPU inference runs (fewer FLOPs); and the switch is left as it was."""
    _ceiling()
    import speed
    from birefnet import BiRefNet, BiRefNetConfig
    from birefnet.models import decoder as decoder_module
    from birefnet.models.blocks import BasicDecBlk

    torch.manual_seed(0)
    model = BiRefNet(BiRefNetConfig(backbone="pvt_v2_b0")).eval()
    x = torch.randn(1, 3, 64, 64)
    calls = []
    original = BasicDecBlk.forward_projected
    monkeypatch.setattr(
        BasicDecBlk, "forward_projected", lambda self, *a: calls.append(1) or original(self, *a)
    )
    speed.count_flops(model, x)
    assert calls == [] and decoder_module.FOLD_LAST_BLOCK  # unfolded while counting; restored
    with torch.inference_mode():
        model(x)
    assert calls == [1]


def test_speed_counts_the_flops_of_a_packed_model():
    """A model whose Swin weights are packed for oneDNN (what speed.py times by default) counts the same
    FLOPs as the plain one, and stays packed: the counter does not see oneDNN's op, so it counts plain."""
    from birefnet.models import onednn

    if not onednn.available():
        pytest.skip("weight packing needs an AVX-512 CPU with oneDNN (elsewhere it is a no-op)")
    _ceiling()
    import speed
    from birefnet import BiRefNet, BiRefNetConfig

    torch.manual_seed(0)
    model = BiRefNet(BiRefNetConfig(backbone="swin_v1_t")).eval()
    x = torch.randn(1, 3, 64, 64)
    plain = speed.count_flops(model, x)
    assert model.pack_cpu_weights() > 0
    assert speed.count_flops(model, x) == plain
    assert any(type(m) is onednn.PackedLinear for m in model.modules())


def test_gpu_script_smoke_run_on_the_cpu():
    """benchmarks/gpu.py end to end where no GPU is present (its documented smoke run): the modes it can
    run on a CPU report, and a mode that needs CUDA fails alone without stopping the others."""
    import subprocess

    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--variant", "pvt_v2_b0", "--size", "64"]
    cmd += ["--device", "cpu", "--modes", "fp32", "bf16-weights-graph-1stream", "bf16", "--runs", "1"]
    cmd += ["--warmup", "0", "--batch", "2"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout
    assert "bf16-weights-graph-1stream FAILED RuntimeError: CUDA graphs need a CUDA device" in out
    assert sum(line.startswith(("fp32 ", "bf16 ")) for line in out.splitlines()) == 2


def test_fft_conv_script_smoke_run():
    """benchmarks/fft_conv.py prints one row per map size with the direct/FFT ratio and both errors."""
    import subprocess

    cmd = [sys.executable, str(ROOT / "benchmarks" / "fft_conv.py"), "--sizes", "20", "40", "--runs", "1"]
    cmd += ["--in-channels", "8", "--out-channels", "12"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout
    rows = [line.split() for line in out.splitlines() if line.strip().startswith(("20²", "40²"))]
    assert len(rows) == 2
    for row in rows:
        assert row[3].endswith("x") and float(row[4]) < 1e-5 and float(row[5]) < 1e-5


def test_cpu_kernels_script_smoke_run():
    """benchmarks/cpu_kernels.py prints, per Swin stage's head count, both attention timings, their ratio
    and both errors against float64, then the sampling comparison, then the gathered LayerNorms per stage;
    or says why the kernels are absent."""
    import subprocess

    cmd = [sys.executable, str(ROOT / "benchmarks" / "cpu_kernels.py"), "--runs", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout
    if "not available here" in out:
        return
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["6"], ["12"], ["24"], ["48"])]
    assert [row[0] for row in rows] == ["6", "12", "24", "48"]
    for row in rows:
        assert float(row[5]) > 0 and float(row[6]) < 1e-5 and float(row[7]) < 1e-5
    sampling = out.splitlines().index(
        next(line for line in out.splitlines() if line.startswith("deformable"))
    )
    assert "ratio" in out.splitlines()[sampling + 1]
    norms = [
        line.split()
        for line in out.splitlines()
        if line.split()[:1] in (["256²"], ["128²"], ["64²"], ["32²"])
    ]
    assert [row[1] for row in norms] == ["192", "384", "768", "1536"]
    for row in norms:
        assert float(row[6]) > 0 and float(row[11]) > 0 and float(row[12]) < 1e-4
