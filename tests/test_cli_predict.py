"""``birefnet predict`` end to end, in-process, with a small generated checkpoint (pvt_v2_b0, 64x64)."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from birefnet.cli import main
from conftest import official_state_dict, requires_shared

pytestmark = requires_shared

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny inputs: one thread is faster, and much faster when other test runs share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> Path:
    from birefnet.config import BiRefNetConfig
    from birefnet.models.birefnet import BiRefNet
    from birefnet.weights import save_pretrained

    model = BiRefNet(BiRefNetConfig(backbone="pvt_v2_b0"))
    model.load_state_dict(official_state_dict("pvt_v2_b0", 0))
    return save_pretrained(model, tmp_path_factory.mktemp("cli_weights"))


def rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def predict(weights: Path, *args: str) -> int:
    return main(["predict", *args, "--weights", str(weights), "--size", "64", "--device", "cpu", "-q"])


def read_manifest(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def leftovers(folder: Path) -> list[Path]:
    """Temporary or hidden files anywhere under folder."""
    return [p for p in folder.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]


def digest(folder: Path) -> dict[str, str]:
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and os.access(p, os.R_OK):
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# --------------------------------------------------------------------------------------------


def test_folder_all_kinds_manifest_and_rerun(weights, tmp_path, capsys):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    sizes = {}
    Image.fromarray(rgb(60, 80)).save(src / "a.jpg")
    sizes["a"] = (80, 60)
    Image.fromarray(np.dstack([rgb(70, 50, 1), np.full((70, 50), 200, np.uint8)])).save(src / "b.png")
    sizes["b"] = (50, 70)
    Image.fromarray(rgb(30, 30, 2)[..., 0]).save(src / "sub" / "c.png")
    sizes["sub/c"] = (30, 30)
    Image.fromarray(rgb(40, 40, 3)).save(src / "d.webp")
    sizes["d"] = (40, 40)
    Image.fromarray(rgb(21, 33, 4)).save(src / "e.bmp")
    sizes["e"] = (33, 21)
    Image.fromarray(rgb(35, 25, 5)).save(src / "f.tif")
    sizes["f"] = (25, 35)
    (src / "notes.txt").write_text("not an image extension: ignored")
    out = tmp_path / "out"
    manifest = tmp_path / "run.jsonl"
    args = [str(src), "-o", str(out), "-r", "--output", "mask,rgba", "--output", "composite"]
    assert predict(weights, *args, "--manifest", str(manifest), "--batch-size", "8") == 0
    for stem, size in sizes.items():
        mask = Image.open(out / f"{stem}_mask.png")
        rgba = Image.open(out / f"{stem}_rgba.png")
        comp = Image.open(out / f"{stem}_composite.png")
        assert (mask.mode, rgba.mode, comp.mode) == ("L", "RGBA", "RGB")
        assert mask.size == rgba.size == comp.size == size, stem
    assert np.asarray(Image.open(out / "b_rgba.png"))[..., 3].max() <= 200  # input alpha kept
    records = read_manifest(manifest)
    assert len(records) == len(sizes)
    fields = {"input", "outputs", "width", "height", "model", "seconds", "status", "error"}
    for rec in records:
        assert fields <= rec.keys() and rec["status"] == "ok" and rec["error"] is None
        assert len(rec["outputs"]) == 3 and all(Path(p).is_file() for p in rec["outputs"])
        assert (rec["width"], rec["height"]) == Image.open(rec["outputs"][0]).size
    assert not leftovers(out)

    # re-run: everything is skipped, without even loading the model
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    capsys.readouterr()
    code = main(["predict", *args, "--manifest", str(manifest), "--weights", str(tmp_path / "nope"), "-q"])
    assert code == 0
    assert {r["status"] for r in read_manifest(manifest)} == {"skipped"}
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == mtimes
    # --overwrite redoes them
    assert predict(weights, *args, "--manifest", str(manifest), "--batch-size", "8", "--overwrite") == 0
    assert {r["status"] for r in read_manifest(manifest)} == {"ok"}


def test_naming_formats_and_options(weights, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(rgb(20, 30)).save(src / "dup.jpg")
    Image.fromarray(rgb(20, 30, 1)).save(src / "dup.png")
    Image.fromarray(rgb(24, 16, 2)).save(src / "solo.png")
    out = tmp_path / "out"
    # default kind: the RGBA cut-out as OUT/<stem>.png; shared stems keep their extension
    assert predict(weights, str(src), "-o", str(out), "--batch-size", "4") == 0
    assert sorted(p.name for p in out.iterdir()) == ["dup.jpg.png", "dup.png.png", "solo.png"]
    assert Image.open(out / "solo.png").mode == "RGBA"
    # webp keeps transparency; jpg for opaque kinds; glob input; threshold binarises
    assert predict(weights, str(src / "solo.*"), "-o", str(tmp_path / "w"), "--format", "webp") == 0
    assert Image.open(tmp_path / "w" / "solo.webp").mode == "RGBA"
    code = predict(
        weights, str(src / "solo.png"), "-o", str(tmp_path / "j"), "--bg-color", "#00ff00", "--format", "jpg"
    )
    assert code == 0 and Image.open(tmp_path / "j" / "solo.jpg").mode == "RGB"
    code = predict(
        weights, str(src / "solo.png"), "-o", str(tmp_path / "t"), "--output", "mask", "--threshold", "0.5"
    )
    assert code == 0 and set(np.unique(np.asarray(Image.open(tmp_path / "t" / "solo.png")))) <= {0, 255}
    bg = tmp_path / "bg.jpg"
    Image.fromarray(rgb(100, 10, 9)).save(bg)
    code = predict(
        weights,
        str(src / "solo.png"),
        "-o",
        str(tmp_path / "b"),
        "--bg-image",
        str(bg),
        "--refine-foreground",
    )
    assert code == 0 and Image.open(tmp_path / "b" / "solo.png").mode == "RGB"
    # an output that would overwrite an input file keeps the extension instead
    code = predict(weights, str(src / "solo.png"), "-o", str(src), "--output", "rgba")
    assert code == 0 and (src / "solo.png.png").is_file() and Image.open(src / "solo.png").mode == "RGB"


def test_usage_errors_exit_2(weights, tmp_path, capsys):
    img = tmp_path / "a.png"
    Image.fromarray(rgb(8, 8)).save(img)
    out = str(tmp_path / "out")
    cases = [
        ([str(img), "-o", out, "--format", "jpg"], "transparency"),
        ([str(img), "-o", out, "--bg-color", "nocolour"], "--bg-color"),
        ([str(img), "-o", out, "--output", "mask", "--bg-color", "red"], "composite"),
        ([str(tmp_path), "-o", str(tmp_path)], "also an input folder"),
        ([str(img), "-o", out, "--size", "100"], "multiples of 32"),
        ([str(tmp_path / "nothing"), "-o", out], "no input images"),
    ]
    (tmp_path / "nothing").mkdir()
    for argv, needle in cases:
        capsys.readouterr()
        code = main(["predict", *argv, "--weights", str(weights), "--device", "cpu", "-q"])
        err = capsys.readouterr().err
        assert code == 2, argv
        if needle:
            assert needle in err, (argv, err)
    for argv in (["predict", str(img)], ["predict", str(img), "-o", out, "--output", "bogus"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2


def test_offline_default_model_says_how_to_pass_weights(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    img = tmp_path / "a.png"
    Image.fromarray(rgb(8, 8)).save(img)
    assert main(["predict", str(img), "-o", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "--weights" in err and "ZhengPeng7/BiRefNet" in err


def make_corpus(folder: Path) -> tuple[dict[str, tuple[int, int]], list[str]]:
    """Broken and unusual inputs. Returns ({ok file name: expected output size}, [bad names])."""
    folder.mkdir()
    ok: dict[str, tuple[int, int]] = {}
    bad: list[str] = []
    base = Image.fromarray(rgb(48, 64))

    (folder / "empty.png").write_bytes(b"")
    buf = io.BytesIO()
    base.save(buf, "PNG")
    (folder / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    buf = io.BytesIO()
    base.save(buf, "JPEG")
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (folder / "notes.jpg").write_text("this is a text file, not a JPEG\n")
    Image.new("L", (1500, 1000)).save(folder / "bomb.png")  # 1.5 Mpx, above --max-pixels 1000000
    (folder / "x.png").mkdir()  # a directory with an image name
    (folder / "header.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 32)
    bad += ["empty.png", "truncated.png", "truncated.jpg", "notes.jpg", "bomb.png", "x.png", "header.png"]
    if not IS_ROOT:  # root reads any file, so the permission case only exists for normal users
        base.save(folder / "locked.png")
        os.chmod(folder / "locked.png", 0)
        bad.append("locked.png")

    Image.fromarray(rgb(30, 20)[..., 0]).save(folder / "gray.png")
    ok["gray.png"] = (20, 30)
    Image.fromarray(np.full((12, 18), 40000, np.uint16)).save(folder / "deep16.png")
    assert Image.open(folder / "deep16.png").mode.startswith("I")
    ok["deep16.png"] = (18, 12)
    Image.new("CMYK", (26, 14), (0, 128, 255, 10)).save(folder / "cmyk.jpg")
    ok["cmyk.jpg"] = (26, 14)
    pal = Image.new("P", (16, 16), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.save(folder / "palette.png", transparency=0)
    ok["palette.png"] = (16, 16)
    Image.fromarray(np.dstack([rgb(22, 28, 3), np.full((22, 28), 128, np.uint8)])).save(folder / "rgba.png")
    ok["rgba.png"] = (28, 22)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb(20, 40, 4)).save(folder / "rotated.jpg", exif=exif)
    ok["rotated.jpg"] = (20, 40)  # displayed upright: 20 wide, 40 high
    Image.new("RGB", (1, 1), (10, 20, 30)).save(folder / "tiny.png")
    ok["tiny.png"] = (1, 1)
    Image.fromarray(rgb(50, 4000, 5)).save(folder / "wide.jpg")
    ok["wide.jpg"] = (4000, 50)
    frames = [Image.new("RGB", (24, 18), (60 * i, 0, 0)) for i in range(3)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    ok["anim.gif"] = (24, 18)
    Image.fromarray(rgb(19, 23, 6)).save(folder / "photo.webp")
    ok["photo.webp"] = (23, 19)
    Image.fromarray(rgb(17, 13, 7)).save(folder / "photo.bmp")
    ok["photo.bmp"] = (13, 17)
    Image.fromarray(rgb(15, 11, 8)).save(folder / "photo.tiff")
    ok["photo.tiff"] = (11, 15)
    return ok, bad


def test_corpus_of_broken_and_unusual_inputs(weights, tmp_path, capsys):
    src = tmp_path / "corpus"
    ok, bad = make_corpus(src)
    assert len(ok) + len(bad) >= 15
    before = digest(src)
    out = tmp_path / "out"
    manifest = out / "manifest.jsonl"
    capsys.readouterr()
    code = main(
        [
            "predict",
            str(src),
            "-o",
            str(out),
            "--output",
            "mask,rgba",
            "--manifest",
            str(manifest),
            "--max-pixels",
            "1000000",
            "--weights",
            str(weights),
            "--size",
            "64",
            "--batch-size",
            "16",
            "--device",
            "cpu",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    error_lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == len(bad)
    for name in bad:
        assert sum(str(src / name) in line for line in error_lines) == 1, name
    assert f"{len(bad)} failed" in err
    records = {Path(r["input"]).name: r for r in read_manifest(manifest)}
    assert set(records) == set(ok) | set(bad)
    for name in bad:
        assert (
            records[name]["status"] == "error" and records[name]["error"] and records[name]["outputs"] == []
        )
        assert not list(out.glob(f"{Path(name).stem}_*"))
    for name, size in ok.items():
        rec = records[name]
        assert rec["status"] == "ok", (name, rec["error"])
        stem = name if name.startswith("photo.") else Path(name).stem  # photo.webp/.bmp/.tiff share a stem
        assert Image.open(out / f"{stem}_rgba.png").size == size, name
        assert Image.open(out / f"{stem}_mask.png").size == size, name
    assert (out / "photo.bmp_mask.png").is_file() and not (out / "photo_mask.png").exists()
    assert np.asarray(Image.open(out / "palette_rgba.png"))[0, 0, 3] == 0  # transparent index stays so
    assert "bomb.png" in records and "max-pixels" in records["bomb.png"]["error"]
    assert "directory" in records["x.png"]["error"] and "empty" in records["empty.png"]["error"]
    assert "text file" in records["notes.jpg"]["error"]
    assert (
        "truncated" in records["truncated.jpg"]["error"] and "truncated" in records["truncated.png"]["error"]
    )
    assert not leftovers(out)
    assert digest(src) == before  # inputs are never modified


@pytest.mark.skipif(IS_ROOT, reason="root can read files without read permission; the case cannot happen")
def test_unreadable_file_is_reported(weights, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(rgb(8, 8)).save(src / "locked.png")
    os.chmod(src / "locked.png", 0)
    Image.fromarray(rgb(8, 8)).save(src / "fine.png")
    try:
        assert predict(weights, str(src), "-o", str(tmp_path / "out")) == 1
    finally:
        os.chmod(src / "locked.png", 0o600)
    assert "permission denied" in capsys.readouterr().err
    assert (tmp_path / "out" / "fine.png").is_file()


def test_failed_writes_and_interrupts_leave_no_partial_files(weights, tmp_path, monkeypatch, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        Image.fromarray(rgb(20 + i, 30, i)).save(src / f"img{i}.png")
    out = tmp_path / "out"
    real_save = Image.Image.save

    def flaky_save(self, fp, *args, **kwargs):
        if self.size == (30, 21):  # img1: write half a file, then fail like a full disk
            fp.write(b"\x89PNG partial")
            raise OSError(28, "No space left on device")
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", flaky_save)
    assert predict(weights, str(src), "-o", str(out), "--batch-size", "2") == 1
    assert "No space left" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["img0.png", "img2.png", "img3.png"]
    monkeypatch.setattr(Image.Image, "save", real_save)

    # Ctrl-C during the second forward pass: finished outputs are complete, nothing partial stays
    from birefnet.inference import Predictor

    real_forward = Predictor.forward
    calls = {"n": 0}

    def interrupted_forward(self, batch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_forward(self, batch)

    monkeypatch.setattr(Predictor, "forward", interrupted_forward)
    out2 = tmp_path / "out2"
    manifest = tmp_path / "m.jsonl"
    code = predict(weights, str(src), "-o", str(out2), "--manifest", str(manifest), "--batch-size", "1")
    assert code == 130
    written = list(out2.iterdir())
    assert len(written) == 1 and Image.open(written[0]).size == (30, 20)
    assert not leftovers(out2) and not list(tmp_path.glob(".m.jsonl*"))
    assert [r["status"] for r in read_manifest(manifest)] == ["ok"]


def test_half_weights_and_cuda_graph_flags(weights, tmp_path, capsys):
    """--precision bf16 --optimize half-weights runs the bf16 model (a mask close to fp32's); cuda-graph
    and half-weights without a reduced precision are refused with one line that says what to change."""
    img = tmp_path / "a.png"
    Image.fromarray(rgb(48, 40)).save(img)
    assert predict(weights, str(img), "-o", str(tmp_path / "fp32")) == 0
    assert predict(weights, str(img), "-o", str(tmp_path / "bf16"), "--precision", "bf16",
                   "--optimize", "half-weights") == 0  # fmt: skip
    fp32 = np.asarray(Image.open(tmp_path / "fp32" / "a.png"), dtype=np.int16)
    bf16 = np.asarray(Image.open(tmp_path / "bf16" / "a.png"), dtype=np.int16)
    assert fp32.shape == bf16.shape and np.abs(fp32 - bf16).max() <= 8
    capsys.readouterr()
    assert predict(weights, str(img), "-o", str(tmp_path / "g"), "--optimize", "cuda-graph") == 2
    assert "cuda-graph needs a CUDA device" in capsys.readouterr().err
    assert predict(weights, str(img), "-o", str(tmp_path / "h"), "--optimize", "half-weights") == 2
    assert "--precision fp16 or bf16" in capsys.readouterr().err
    assert not (tmp_path / "g").exists() and not (tmp_path / "h").exists()
