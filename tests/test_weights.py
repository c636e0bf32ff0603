"""Checkpoint loading: every official key list, user file formats, errors, hub resolution, convert."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from birefnet import BiRefNet, BiRefNetConfig
from birefnet.weights import (
    CheckpointError,
    infer_config,
    load_into,
    load_model,
    read_state_dict,
    save_pretrained,
)
from conftest import REFERENCE, make_weights_module, official_state_dict, requires_shared


def key_lists() -> list[str]:
    return sorted(p.stem for p in (REFERENCE / "keys").glob("*.json")) if REFERENCE.exists() else []


@requires_shared
@pytest.mark.parametrize("variant", key_lists() or ["swin_v1_t"])
def test_strict_load_every_official_key_list(variant):
    data = json.loads((REFERENCE / "keys" / f"{variant}.json").read_text())
    sd = official_state_dict(variant, 0)
    cfg = BiRefNetConfig.from_official({"bb": data["variant"], **data.get("cfg", {})})
    assert infer_config(sd) == cfg  # the architecture is detected from the shapes alone
    model = BiRefNet(cfg)
    assert list(model.state_dict()) == [k for k, _, _ in data["keys"]]  # official names and order
    report = load_into(model, sd)
    assert report.ok
    if "n_params" in data:  # learnable parameters (the official count leaves out BatchNorm statistics)
        assert sum(p.numel() for p in model.parameters()) == data["n_params"]


@pytest.fixture(scope="module")
def pvt_files(tmp_path_factory):
    mw = make_weights_module()
    d = tmp_path_factory.mktemp("ckpt")
    sd = mw.make_state_dict("pvt_v2_b0", 5)
    mw.save(sd, d / "plain.safetensors")
    mw.save(sd, d / "plain.pth")
    mw.save(sd, d / "prefixed.pth", prefix="module._orig_mod.")
    mw.save(mw.make_state_dict("pvt_v2_b0", 5, half=True), d / "half.pth", prefix="_orig_mod.")
    hub = d / "hub"
    hub.mkdir()
    mw.save(sd, hub / "model.safetensors")
    (hub / "config.json").write_text(
        json.dumps({"bb_pretrained": False, "auto_map": {}})
    )  # official hub layout
    return d, {k: torch.from_numpy(v) for k, v in sd.items()}


def _same(model, sd):
    own = model.state_dict()
    return all(torch.equal(own[k].to(v.dtype), v) for k, v in sd.items())


@requires_shared
@pytest.mark.parametrize("name", ["plain.safetensors", "plain.pth", "prefixed.pth", "half.pth", "hub"])
def test_load_user_files(pvt_files, name):
    d, sd = pvt_files
    model = load_model(d / name)
    assert not model.training
    assert model.config.backbone == "pvt_v2_b0"
    assert model.load_report.ok and model.load_report.config_source == "inferred"
    assert _same(model, sd)  # fp16 files were made from the same fp16-rounded values
    if name == "prefixed.pth":
        assert model.load_report.stripped_prefixes == ["module.", "_orig_mod."]
    if name == "half.pth":
        assert model.load_report.cast_from == ["float16"]


@requires_shared
def test_overrides_and_registry_patch_order(pvt_files):
    d, _ = pvt_files
    assert load_model(d / "plain.pth", patch_order="legacy").config.patch_order == "legacy"


@requires_shared
def test_wrong_architecture_error_names_keys_and_option(pvt_files):
    d, sd = pvt_files
    model = BiRefNet(BiRefNetConfig(backbone="pvt_v2_b0", decoder_block="ResBlk"))
    with pytest.raises(CheckpointError) as e:
        load_into(model, sd, source="x.pth")
    msg = str(e.value)
    assert "unexpected keys" not in msg or "missing keys" in msg
    assert "conv_resi" in msg and "decoder_block='BasicDecBlk' in the checkpoint" in msg
    with pytest.raises(CheckpointError, match="backbone='pvt_v2_b0' in the checkpoint"):
        load_model(d / "plain.pth", config=BiRefNetConfig(backbone="vgg16"))
    # non-strict loads what fits and reports the rest
    report = load_into(model, sd, strict=False)
    assert not report.ok and any("conv_resi" in k for k in report.missing)


def test_unknown_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this would run code",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": Evil()}, f)
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        read_state_dict(path)
    torch.save({"epoch": 3, "state_dict": {"a": torch.zeros(1)}}, tmp_path / "wrapped.pth")
    assert list(read_state_dict(tmp_path / "wrapped.pth")) == ["a"]


def test_bad_sources(tmp_path):
    with pytest.raises(CheckpointError, match="neither an existing file"):
        load_model(tmp_path / "nope.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_model(tmp_path / "junk.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"no model\.safetensors"):
        load_model(tmp_path / "empty")
    torch.save({"x": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not look like a BiRefNet"):
        load_model(tmp_path / "other.pth")


def test_save_pretrained_roundtrip_records_architecture(tmp_path):
    cfg = BiRefNetConfig(backbone="pvt_v2_b0", patch_order="legacy", decoder_block="ResBlk", norm="none")
    model = BiRefNet(cfg)
    save_pretrained(model, tmp_path / "out")
    data = json.loads((tmp_path / "out" / "config.json").read_text())
    assert data["format"] == "birefnet" and data["config"]["patch_order"] == "legacy"
    loaded = load_model(tmp_path / "out")
    assert loaded.config == cfg and loaded.load_report.config_source == "config.json"
    assert _same(loaded, model.state_dict())
    assert not list((tmp_path / "out").glob(".*tmp"))


def test_hub_repo_id_uses_snapshot_and_registry(tmp_path, monkeypatch):
    """A hub id resolves through huggingface_hub (mocked: no network here) and the registry's patch order."""
    import huggingface_hub

    model = BiRefNet(BiRefNetConfig(backbone="pvt_v2_b0"))
    from safetensors.torch import save_file

    snap = tmp_path / "snap"
    snap.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(snap / "model.safetensors"))
    calls = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None, local_files_only=False):
        calls.append((repo_id, local_files_only))
        if not local_files_only:
            raise OSError("network is unreachable")
        return str(snap)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    loaded = load_model("ZhengPeng7/BiRefNet_lite")  # registry row "lite": legacy patch order
    assert calls == [("ZhengPeng7/BiRefNet_lite", False), ("ZhengPeng7/BiRefNet_lite", True)]
    assert loaded.config.patch_order == "legacy"
    assert load_model("dynamic").config.patch_order == "current"  # registry name -> repo id

    def offline(repo_id, revision=None, allow_patterns=None, local_files_only=False):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(CheckpointError, match="--weights PATH"):
        load_model("general")


@requires_shared
def test_convert_cli_roundtrip(pvt_files, tmp_path):
    from birefnet.cli import main

    d, sd = pvt_files
    assert main(["convert", str(d / "prefixed.pth"), str(tmp_path / "conv"), "--patch-order", "legacy"]) == 0
    model = load_model(tmp_path / "conv")
    assert model.config.patch_order == "legacy" and _same(model, sd)
    assert main(["convert", str(tmp_path / "missing.pth"), str(tmp_path / "x")]) == 1
    assert not Path(tmp_path / "x").exists()
