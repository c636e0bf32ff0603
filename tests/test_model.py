"""BiRefNet on small inputs: every backbone family and every architecture option, forward + backward."""

from __future__ import annotations

import pytest
import torch

from birefnet import BiRefNet, BiRefNetConfig, BiRefNetOutput


def run_train_step(model: BiRefNet, size=(64, 64), batch=2) -> BiRefNetOutput:
    model.train()
    x = torch.randn(batch, 3, *size)
    out = model(x)
    loss = out.logits.mean()
    for group in (out.side_logits, out.gradient_logits, out.gradient_targets):
        for t in group or []:
            loss = loss + t.mean()
    if out.class_logits is not None:
        loss = loss + out.class_logits.mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(torch.isfinite(g).all() for g in grads if g is not None)
    return out


@pytest.mark.parametrize("backbone", ["swin_v1_t", "pvt_v2_b0", "vgg16", "vgg16bn", "resnet50"])
def test_backbones_forward_backward(backbone):
    model = BiRefNet(BiRefNetConfig(backbone=backbone))
    out = run_train_step(model, size=(64, 96))
    assert out.logits.shape == (2, 1, 64, 96)
    assert [tuple(s.shape[-2:]) for s in out.side_logits] == [(2, 3), (4, 6), (8, 12)]
    assert [tuple(s.shape[-2:]) for s in out.gradient_logits] == [(2, 3), (4, 6), (8, 12)]
    assert all(tuple(s.shape) == (2, 1, 64, 96) for s in out.gradient_targets)
    model.eval()
    for size in [(64, 64), (96, 64), (128, 96)]:  # PVT needs >= 64 (its half-size pass at 32)
        with torch.inference_mode():
            out = model(torch.randn(1, 3, *size))
        assert out.logits.shape == (1, 1, *size)
        assert out.side_logits is None and out.gradient_logits is None and out.class_logits is None


OPTIONS = [
    {"multi_scale_input": ""},
    {"multi_scale_input": "add"},
    {"context_levels": 0},
    {"context_levels": 1},
    {"context_levels": 2},
    {"squeeze_block": ""},
    {"squeeze_block": "", "context_levels": 0},
    {"squeeze_block": "ResBlk_x4"},
    {"squeeze_block": "ASPP_x3"},
    {"squeeze_block": "ASPPDeformable_x3"},
    {"squeeze_block": "BasicDecBlk_x2"},
    {"decoder_attention": ""},
    {"decoder_attention": "ASPP"},
    {"decoder_block": "ResBlk"},
    {"decoder_channels_inter": "adap"},
    {"inward_reference": False},
    {"inward_reference_split": False},
    {"patch_order": "legacy"},
    {"outward_reference": False},
    {"multi_scale_supervision": False, "outward_reference": False},
    {"auxiliary_classification": True},
    {"norm": "none"},
]


@pytest.mark.slow
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_architecture_options(options):
    cfg = BiRefNetConfig(backbone="pvt_v2_b0", **options)
    model = BiRefNet(cfg)
    out = run_train_step(model, size=(64, 64))
    assert out.logits.shape == (2, 1, 64, 64)
    if not cfg.multi_scale_supervision:
        assert out.side_logits is None
    if not cfg.outward_reference:
        assert out.gradient_logits is None and out.gradient_targets is None
    if cfg.auxiliary_classification:
        assert out.class_logits.shape == (2, cfg.num_classes)
    model.eval()
    with torch.inference_mode():
        assert model(torch.randn(1, 3, 64, 96)).logits.shape == (1, 1, 64, 96)


def test_add_mode_with_cnn_backbone():
    """Official bug: 'add' multi-scale input crashed for CNN backbones; here it works."""
    model = BiRefNet(BiRefNetConfig(backbone="vgg16", multi_scale_input="add"))
    with torch.inference_mode():
        assert model.eval()(torch.randn(1, 3, 64, 64)).logits.shape == (1, 1, 64, 64)


def test_input_not_multiple_of_32_is_rejected():
    model = BiRefNet(BiRefNetConfig(backbone="pvt_v2_b0")).eval()
    with pytest.raises(ValueError, match="multiple of 32"):
        model(torch.randn(1, 3, 60, 64))


def test_patches_roundtrip():
    from birefnet.models.blocks import image_to_patches, patches_to_image

    x = torch.randn(2, 3, 64, 96)
    for order in ("current", "legacy"):
        p = image_to_patches(x, (16, 24), order)
        assert p.shape == (2, 3 * 16, 16, 24)
        assert torch.equal(patches_to_image(p, (4, 4), order), x)
    # current order: channel c*(hg*wg) + i_h*wg + i_w
    p = image_to_patches(x, (16, 24), "current")
    assert torch.equal(p[:, 1 * 16 + 2 * 4 + 3], x[:, 1, 32:48, 72:96])
    # legacy order: (i_w*hg + i_h)*C + c
    p = image_to_patches(x, (16, 24), "legacy")
    assert torch.equal(p[:, (3 * 4 + 2) * 3 + 1], x[:, 1, 32:48, 72:96])


def test_patches_at_cpu_inference_are_channels_last_with_the_same_values():
    from birefnet.models.blocks import image_to_patches

    x = torch.randn(2, 3, 64, 96)
    for order in ("current", "legacy"):
        plain = image_to_patches(x, (16, 24), order)
        with torch.no_grad():
            fast = image_to_patches(x, (16, 24), order)
        assert fast.is_contiguous(memory_format=torch.channels_last) and plain.is_contiguous()
        assert torch.equal(fast, plain)


def test_config_roundtrip_and_validation():
    cfg = BiRefNetConfig(backbone="swin_v1_t", patch_order="legacy", squeeze_block="ResBlk_x2")
    assert BiRefNetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown backbone"):
        BiRefNetConfig(backbone="swin_v2")
    with pytest.raises(ValueError, match="squeeze_block"):
        BiRefNetConfig(squeeze_block="Foo_x2")
    with pytest.raises(ValueError, match="outward_reference needs"):
        BiRefNetConfig(multi_scale_supervision=False)
    with pytest.raises(ValueError, match="unknown BiRefNetConfig fields"):
        BiRefNetConfig.from_dict({"bb": "swin_v1_t"})
    official = BiRefNetConfig.from_official({"bb": "pvt_v2_b0", "batch_size": 1, "ms_supervision": False})
    assert official.norm == "none" and official.outward_reference is False
    assert BiRefNetConfig.from_official({"bb": "vgg16", "batch_size": 4}).norm == "bn"
    with pytest.raises(ValueError, match="unknown official"):
        BiRefNetConfig.from_official({"bogus": 1})
