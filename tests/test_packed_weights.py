"""Swin Linear weights packed in oneDNN's blocked layout (birefnet.models.onednn.pack_linear_weights).

Packing only happens where this machine takes the oneDNN path (AVX-512 CPU, oneDNN built in); the
tests that need real packing skip elsewhere, and the no-op is tested everywhere.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from birefnet import BiRefNet, BiRefNetConfig
from birefnet.models import onednn
from birefnet.models.onednn import PackedLinear, pack_linear_weights, unpack_linear_weights
from conftest import rel_error

needs_onednn = pytest.mark.skipif(
    not onednn.available(), reason="weight packing needs an AVX-512 CPU with oneDNN (elsewhere it is a no-op)"
)


def _swin_t() -> BiRefNet:
    torch.manual_seed(0)
    return BiRefNet(BiRefNetConfig(backbone="swin_v1_t")).eval()


def _linears(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.bb.modules() if isinstance(m, nn.Linear)]


def _assert_plain(model: nn.Module) -> None:
    for m in model.modules():
        assert type(m) is not PackedLinear
        for p in m.parameters(recurse=False):
            assert not p.is_mkldnn


@needs_onednn
def test_packed_model_equals_plain_and_keeps_its_state_dict():
    model = _swin_t()
    x = torch.randn(1, 3, 128, 128)
    with torch.inference_mode():
        plain = model(x).logits
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert model.pack_cpu_weights() == len(_linears(model)) > 0
    assert all(type(m) is PackedLinear and m.weight.is_mkldnn for m in _linears(model))
    with torch.inference_mode():
        packed = model(x).logits
    # the same oneDNN products without the per-call reorder: bit-identical for swin_v1_l at 1024²
    # (benchmarks/ab_switch.py); float rounding at most
    assert rel_error(packed, plain) < 1e-6
    after = model.state_dict()
    assert list(after) == list(before)
    for key, value in before.items():
        assert not after[key].is_mkldnn and torch.equal(after[key], value), key


@needs_onednn
@pytest.mark.parametrize("how", ["train", "to", "load_state_dict", "unpack", "export"])
def test_packed_layers_turn_plain_again(how, tmp_path):
    model = _swin_t()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {k: p.requires_grad for k, p in model.named_parameters()}
    model.pack_cpu_weights()
    if how == "train":
        model.train()
    elif how == "to":
        model.to(torch.float64)
        model.float()
    elif how == "load_state_dict":
        model.load_state_dict(weights, strict=True)
    elif how == "unpack":
        assert unpack_linear_weights(model) == len(_linears(model))
    else:
        from birefnet.export import export_onnx

        pytest.importorskip("onnx")
        with pytest.raises(Exception):  # noqa: B017 - only the unpacking before tracing matters here
            export_onnx(model, tmp_path / "m.onnx", example=torch.randn(1, 3, 5, 5), check=False)
    _assert_plain(model)
    state = model.state_dict()
    for key, value in weights.items():
        assert torch.equal(state[key], value), key
    assert {k: p.requires_grad for k, p in model.named_parameters()} == grads


@needs_onednn
def test_packed_linear_falls_back_off_the_onednn_path():
    torch.manual_seed(0)
    layer = nn.Linear(32, 48).eval()
    w, b = layer.weight.detach().clone(), layer.bias.detach().clone()
    assert pack_linear_weights(layer) == 1 and type(layer) is PackedLinear
    x = torch.randn(3, 5, 32)
    with torch.inference_mode():
        fast = layer(x)  # oneDNN, with the packed weight
    assert fast.shape == (3, 5, 48) and rel_error(fast, F.linear(x, w, b)) < 1e-6
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        cast = layer(x)  # autocast: F.linear on the unpacked weight
    assert cast.dtype == torch.bfloat16
    assert (cast.float() - F.linear(x, w, b)).abs().max() < 0.1
    strided = torch.randn(5, 32, 3).transpose(1, 2)  # not contiguous
    with torch.inference_mode():
        assert rel_error(layer(strided), F.linear(strided, w, b)) < 1e-6


def test_packing_is_a_noop_where_it_does_not_apply(monkeypatch):
    pvt = BiRefNet(BiRefNetConfig(backbone="pvt_v2_b0")).eval()
    assert pvt.pack_cpu_weights() == 0  # only the Swin backbones take the oneDNN path
    model = _swin_t()
    model.train()
    assert model.pack_cpu_weights() == 0  # training keeps plain parameters
    monkeypatch.setattr(onednn, "available", lambda: False)  # a CPU without AVX-512
    assert model.eval().pack_cpu_weights() == 0
    _assert_plain(model)
    quantised_like = nn.Sequential(type("MyLinear", (nn.Linear,), {})(4, 4)).eval()
    monkeypatch.setattr(onednn, "available", lambda: True)
    assert pack_linear_weights(quantised_like) == 0  # subclasses (replaced layers) stay as they are


@needs_onednn
def test_predictor_packs_for_float32_cpu_inference_only():
    import numpy as np

    from birefnet.inference import Predictor

    plain = Predictor(_swin_t(), size=64, device="cpu")
    assert any(type(m) is PackedLinear for m in plain.model.modules())
    other = Predictor(_swin_t(), size=64, device="cpu", optimize="channels-last")
    _assert_plain(other.model)
    rgb = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    assert np.abs(plain.predict(rgb) - other.predict(rgb)).max() < 1e-4
