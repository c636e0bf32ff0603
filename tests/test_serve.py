"""The HTTP API: every endpoint and error path (in-process client), the micro-batching queue, and a
bounded-concurrency run against a real uvicorn server on 127.0.0.1.

Most tests use a stand-in network (fast, no reference material); one runs a real pvt_v2_b0 BiRefNet
through the app and checks that its answer equals the Predictor's.
"""

from __future__ import annotations

import asyncio
import base64
import io
import socket
import threading
import time
import types

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient

from birefnet.inference import Predictor
from birefnet.serve import ServeSettings, create_app
from birefnet.serve.batcher import BatcherStopped, MicroBatcher, QueueFull
from conftest import official_state_dict, requires_shared

ENDPOINT = "/v1/remove-background"


class TinyNet(torch.nn.Module):
    """Stand-in network: logits = 4 * channel mean of the normalised image; optional delay/failure."""

    def __init__(self, delay: float = 0.0, fail: bool = False, gate: threading.Event | None = None) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(()))
        self.delay = delay
        self.fail = fail
        self.gate = gate
        self.batch_sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> types.SimpleNamespace:
        self.batch_sizes.append(int(x.shape[0]))
        if self.gate is not None:
            self.gate.wait(10)
        if self.delay:
            time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("boom")
        return types.SimpleNamespace(logits=4 * x.mean(dim=1, keepdim=True) + self.bias)


def encode(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def rand_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


PNG = encode(rand_rgb(40, 50))


def make_app(net: torch.nn.Module | None = None, **settings) -> tuple:
    settings.setdefault("max_upload_bytes", 100_000)
    settings.setdefault("max_pixels", 500 * 500)
    predictor = Predictor(net or TinyNet(), size=64, device="cpu")
    app = create_app({"tiny": predictor}, settings=ServeSettings(**settings))
    return app, predictor


@pytest.fixture(scope="module")
def client():
    app, _ = make_app()
    with TestClient(app) as c:
        yield c


def upload(client, data: bytes = PNG, content_type: str = "image/png", **fields):
    return client.post(ENDPOINT, files={"file": ("img.png", data, content_type)}, data=fields)


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code, body
    assert isinstance(body["detail"], str) and body["detail"]
    return body


# --------------------------------------------------------------------------------------------
# Success paths


def test_multipart_returns_rgba_png_at_input_size(client):
    r = upload(client)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert r.headers["x-model"] == "tiny"
    assert r.headers["x-image-size"] == "50x40"
    image = Image.open(io.BytesIO(r.content))
    assert image.mode == "RGBA" and image.size == (50, 40)
    # colours are the input's; alpha is the mask
    np.testing.assert_array_equal(np.asarray(image)[..., :3], rand_rgb(40, 50))


def test_output_equals_predictor_and_postprocess(client):
    from birefnet.imageio import load_image
    from birefnet.postprocess import mask_to_uint8

    predictor = client.app.state.birefnet.models["tiny"].predictor
    r = upload(client, output="mask")
    mask = np.asarray(Image.open(io.BytesIO(r.content)))
    expected = mask_to_uint8(predictor.predict(load_image(rand_rgb(40, 50)).rgb))
    np.testing.assert_array_equal(mask, expected)


def test_raw_body_with_query_options_and_json_response(client):
    r = client.post(
        f"{ENDPOINT}?output=mask&response=json&model=tiny",
        content=PNG,
        headers={"content-type": "image/png"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny" and body["output"] == "mask" and body["media_type"] == "image/png"
    assert (body["width"], body["height"]) == (50, 40)
    assert set(body["timings_ms"]) >= {"decode", "model", "encode", "total"}
    image = Image.open(io.BytesIO(base64.b64decode(body["image"])))
    assert image.mode == "L" and image.size == (50, 40)


def test_octet_stream_body_and_jpeg_input(client):
    r = client.post(
        ENDPOINT,
        content=encode(rand_rgb(30, 20), "JPEG"),
        headers={"content-type": "application/octet-stream"},
    )
    assert r.status_code == 200, r.text
    assert Image.open(io.BytesIO(r.content)).size == (20, 30)


def test_composite_on_colour_as_jpeg(client):
    r = upload(client, output="composite", bg_color="#00ff00", format="jpg", quality="90")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(r.content)).mode == "RGB"
    # bg_color alone implies composite (the CLI's rule), threshold and refine are accepted
    r = upload(client, bg_color="white", format="webp", threshold="0.5", refine_foreground="true")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/webp"
    assert Image.open(io.BytesIO(r.content)).mode == "RGB"


def test_rgba_input_keeps_its_transparency(client):
    rgba = np.dstack([rand_rgb(16, 16), np.zeros((16, 16), np.uint8)])
    r = upload(client, data=encode(rgba))
    assert r.status_code == 200
    assert np.asarray(Image.open(io.BytesIO(r.content)))[..., 3].max() == 0


def test_models_and_health(client):
    models = client.get("/v1/models").json()
    assert models["default"] == "tiny"
    (info,) = models["models"]
    assert info["name"] == "tiny" and info["default"] is True and info["backend"] == "torch"
    assert info["size"] == [64, 64] and info["resolution"] == "fixed"
    health = client.get("/healthz")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok" and body["models"] == ["tiny"] and body["workers"]["tiny"]["alive"]
    assert body["capacity"] == 16 and body["in_flight"] == 0


def test_openapi_docs_and_web_page(client):
    spec = client.get("/openapi.json").json()
    op = spec["paths"][ENDPOINT]["post"]
    content = op["requestBody"]["content"]
    assert {"multipart/form-data", "application/octet-stream", "image/*"} <= set(content)
    assert {"404", "413", "415", "422", "503", "504"} <= set(op["responses"])
    assert "/v1/models" in spec["paths"] and "/healthz" in spec["paths"]
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'type="file"' in page.text and "static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/style.css").status_code == 200


# --------------------------------------------------------------------------------------------
# Error paths


def test_too_large_upload_by_content_length(client):
    assert_error(upload(client, data=b"\0" * 200_000), 413, "too_large")
    r = client.post(ENDPOINT, content=b"\0" * 200_000, headers={"content-type": "image/png"})
    assert_error(r, 413, "too_large")


def test_too_large_upload_between_limit_and_multipart_slack(client):
    # above max_upload_bytes but within the multipart overhead allowance: caught after reading
    assert_error(upload(client, data=b"\0" * 120_000), 413, "too_large")


def test_too_large_chunked_upload_without_content_length(client):
    def chunks():
        for _ in range(40):
            yield b"\0" * 10_000

    r = client.post(ENDPOINT, content=chunks(), headers={"content-type": "image/png"})
    assert_error(r, 413, "too_large")


def test_too_many_pixels(client):
    big = encode(np.zeros((600, 600), np.uint8))  # a few kB of PNG, 360,000 pixels > 250,000
    body = assert_error(upload(client, data=big), 413, "too_many_pixels")
    assert "600x600" in body["detail"]


@pytest.mark.parametrize(
    "data",
    [b"hello, this is text", b"", PNG[: len(PNG) // 2], b"\x89PNG\r\n\x1a\n" + b"\0" * 50],
    ids=["text", "empty", "truncated", "bad-header"],
)
def test_not_an_image(client, data):
    assert_error(upload(client, data=data), 422, "not_an_image")


def test_wrong_content_type(client):
    assert_error(upload(client, content_type="text/plain"), 415, "unsupported_media_type")
    assert_error(client.post(ENDPOINT, json={"image": "x"}), 415, "unsupported_media_type")
    assert_error(client.post(ENDPOINT, data={"model": "tiny"}), 415, "unsupported_media_type")  # urlencoded
    assert_error(client.post(ENDPOINT, content=PNG), 415, "unsupported_media_type")  # no content type


def test_multipart_without_file_field(client):
    r = client.post(ENDPOINT, files={"other": ("x.png", PNG, "image/png")}, data={"output": "mask"})
    assert_error(r, 422, "missing_file")


def test_unknown_model_is_404(client):
    body = assert_error(upload(client, model="general"), 404, "unknown_model")
    assert "tiny" in body["detail"]
    r = client.post(f"{ENDPOINT}?model=nope", content=PNG, headers={"content-type": "image/png"})
    assert_error(r, 404, "unknown_model")


@pytest.mark.parametrize(
    "fields",
    [
        {"threshold": "2"},
        {"threshold": "abc"},
        {"output": "cutout"},
        {"format": "gif"},
        {"quality": "0"},
        {"output": "mask", "bg_color": "white"},
        {"output": "rgba", "format": "jpg"},
        {"output": "composite", "bg_color": "not-a-colour"},
        {"response": "xml"},
    ],
)
def test_bad_options_are_422(client, fields):
    assert_error(upload(client, **fields), 422, "invalid_option")


def test_bad_query_options_on_raw_body_are_422(client):
    r = client.post(f"{ENDPOINT}?threshold=-1", content=PNG, headers={"content-type": "image/png"})
    assert_error(r, 422, "invalid_option")


def test_no_paths_accepted(client):
    # a "file" given as a path string is not read from disk: it is a form field, not an upload
    r = client.post(ENDPOINT, files={"x": ("x", b"", "text/plain")}, data={"file": "/etc/passwd"})
    assert r.status_code in (415, 422)
    assert "root:" not in r.text


def test_unknown_route_and_method(client):
    assert_error(client.get("/v1/nothing"), 404, "not_found")
    assert_error(client.get(ENDPOINT), 405, "method_not_allowed")


def test_busy_server_answers_503_with_retry_after():
    app, _ = make_app(queue_size=2)
    with TestClient(app) as c:
        state = app.state.birefnet
        state.in_flight = 2  # as if two uploads were in progress
        r = upload(c)
        assert_error(r, 503, "busy")
        assert r.headers["retry-after"] == "1"
        state.in_flight = 0
        assert upload(c).status_code == 200
        assert c.get("/healthz").json()["rejected"] == 1


def test_timeout_is_504():
    app, _ = make_app(TinyNet(delay=1.0), request_timeout=0.2)
    with TestClient(app) as c:
        assert_error(upload(c), 504, "timeout")
        assert c.get("/healthz").status_code == 200


def test_model_failure_is_500_and_server_stays_up():
    app, _ = make_app(TinyNet(fail=True))
    with TestClient(app) as c:
        assert_error(upload(c), 500, "model_error")
        assert c.get("/healthz").json()["workers"]["tiny"]["alive"]


def test_create_app_rejects_duplicate_names():
    p = Predictor(TinyNet(), size=64, device="cpu")
    with pytest.raises(ValueError, match="distinct names"):
        create_app([p, p])


# --------------------------------------------------------------------------------------------
# The micro-batching queue


def _echo_batches(log: list[list[int]], gate: threading.Event | None = None):
    def run(payloads: list[int]) -> list[int]:
        if gate is not None:
            gate.wait(10)
        log.append(list(payloads))
        return [p * 10 for p in payloads]

    return run


def test_batcher_groups_same_key_up_to_max_batch():
    log: list[list[int]] = []
    gate = threading.Event()
    batcher = MicroBatcher(_echo_batches(log, gate), max_batch=3, max_wait=0.0, capacity=10)
    try:
        first = batcher.submit(0, key="a")
        time.sleep(0.05)  # the worker holds job 0 at the gate
        futures = [batcher.submit(i, key="a" if i != 3 else "b") for i in range(1, 6)]
        gate.set()
        assert first.result(5) == 0
        assert [f.result(5) for f in futures] == [10, 20, 30, 40, 50]
        assert log[0] == [0]
        assert log[1] == [1, 2, 4]  # same key, at most 3
        assert sorted(map(tuple, log[2:])) == [(3,), (5,)]
    finally:
        batcher.stop()


def test_batcher_bounded_queue_cancel_and_stop():
    log: list[list[int]] = []
    gate = threading.Event()
    batcher = MicroBatcher(_echo_batches(log, gate), max_batch=1, capacity=2)
    running = batcher.submit(1)
    time.sleep(0.05)
    waiting = [batcher.submit(2), batcher.submit(3)]
    with pytest.raises(QueueFull):
        batcher.submit(4)
    assert waiting[0].cancel()  # a caller that gave up
    gate.set()
    assert running.result(5) == 10 and waiting[1].result(5) == 30
    assert [2] not in log  # the cancelled job was skipped
    gate.clear()
    blocked = batcher.submit(5)
    time.sleep(0.05)
    pending = batcher.submit(6)
    stopper = threading.Thread(target=batcher.stop)
    stopper.start()  # fails the waiting job at once, then waits for the running one
    time.sleep(0.05)
    gate.set()
    stopper.join(10)
    assert blocked.result(5) == 50
    with pytest.raises(BatcherStopped):
        pending.result(5)
    with pytest.raises(BatcherStopped):
        batcher.submit(7)


def test_batcher_failure_retries_one_by_one():
    calls: list[list[int]] = []
    gate = threading.Event()

    def run(payloads: list[int]) -> list[int]:
        gate.wait(10)
        calls.append(list(payloads))
        if 2 in payloads:
            raise ValueError("bad input 2")
        return payloads

    batcher = MicroBatcher(run, max_batch=4, max_wait=0.0)
    try:
        head = batcher.submit(0, key="k")
        time.sleep(0.05)
        futures = [batcher.submit(i, key="k") for i in (1, 2, 3)]
        gate.set()
        assert head.result(5) == 0
        assert futures[0].result(5) == 1 and futures[2].result(5) == 3
        with pytest.raises(ValueError, match="bad input 2"):
            futures[1].result(5)
        assert [1, 2, 3] in calls and [1] in calls and [3] in calls
    finally:
        batcher.stop()


def test_concurrent_requests_are_batched_in_process():
    gate = threading.Event()
    net = TinyNet(gate=gate)
    app, _ = make_app(net, max_batch=4, batch_wait_ms=50)
    with TestClient(app) as c:
        results: list[int] = []

        def post() -> None:
            results.append(upload(c).status_code)

        threads = [threading.Thread(target=post) for _ in range(5)]
        for t in threads:
            t.start()
            time.sleep(0.02)
        time.sleep(0.2)
        gate.set()
        for t in threads:
            t.join(20)
    assert results == [200] * 5
    assert max(net.batch_sizes) > 1, net.batch_sizes  # requests that waited shared a forward pass
    assert sum(net.batch_sizes) == 5


# --------------------------------------------------------------------------------------------
# A real network through the app


@pytest.fixture(scope="module")
def pvt_model():
    from birefnet.config import BiRefNetConfig
    from birefnet.models.birefnet import BiRefNet

    model = BiRefNet(BiRefNetConfig(backbone="pvt_v2_b0"))
    model.load_state_dict(official_state_dict("pvt_v2_b0", 0))
    return model.eval()


@requires_shared
def test_real_pvt_model_answer_equals_predictor(pvt_model):
    from birefnet.postprocess import mask_to_uint8

    predictor = Predictor(pvt_model, size=64, device="cpu")
    app = create_app({"pvt": predictor})
    rgb = rand_rgb(48, 80, seed=3)
    with TestClient(app) as c:
        r = upload(c, data=encode(rgb), output="mask")
        assert r.status_code == 200, r.text
    np.testing.assert_array_equal(
        np.asarray(Image.open(io.BytesIO(r.content))), mask_to_uint8(predictor.predict(rgb))
    )


# --------------------------------------------------------------------------------------------
# Real server: 50 concurrent requests


def test_50_concurrent_requests_against_uvicorn():
    uvicorn = pytest.importorskip("uvicorn")
    import httpx

    net = TinyNet(delay=0.02)
    app, _ = make_app(net, queue_size=8, max_batch=4, request_timeout=20)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)
        images = [encode(rand_rgb(40 + i % 7, 50 + i % 5, seed=i)) for i in range(50)]

        async def fire() -> list[httpx.Response]:
            limits = httpx.Limits(max_connections=60, max_keepalive_connections=0)
            async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits, trust_env=False) as ac:
                return await asyncio.gather(
                    *[
                        ac.post(ENDPOINT, files={"file": (f"{i}.png", data, "image/png")})
                        for i, data in enumerate(images)
                    ]
                )

        started = time.monotonic()
        responses = asyncio.run(asyncio.wait_for(fire(), timeout=60))
        elapsed = time.monotonic() - started
        codes = [r.status_code for r in responses]
        assert set(codes) <= {200, 429, 503}, codes
        assert codes.count(200) >= 8, codes
        for r, data in zip(responses, images):
            if r.status_code == 200:
                assert Image.open(io.BytesIO(r.content)).size == Image.open(io.BytesIO(data)).size
            else:
                assert r.json()["error"] == "busy" and "retry-after" in r.headers
        # still up and idle afterwards, and serving
        with httpx.Client(base_url=base, timeout=10, trust_env=False) as hc:
            health = hc.get("/healthz").json()
            assert health["status"] == "ok" and health["in_flight"] == 0
            assert health["served"] == codes.count(200) and health["rejected"] == len(codes) - codes.count(
                200
            )
            assert hc.post(ENDPOINT, files={"file": ("a.png", PNG, "image/png")}).status_code == 200
        print(f"50 concurrent: {codes.count(200)} ok, {len(codes) - codes.count(200)} busy, {elapsed:.2f} s")
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
    assert not thread.is_alive(), "uvicorn did not stop"


# --------------------------------------------------------------------------------------------
# The serve CLI (uvicorn.run replaced: the app it would serve is checked in-process)


def test_serve_cli_parses_models():
    from birefnet.cli.serve import parse_models

    assert parse_models(["lite", "mine=./w.safetensors"]) == [
        (None, None, "lite"),
        ("mine", "mine", "./w.safetensors"),
    ]
    with pytest.raises(ValueError, match="NAME=PATH"):
        parse_models(["=x"])


def test_serve_cli_usage_errors(tmp_path, capsys):
    from birefnet.cli import main

    assert main(["serve", "--model", str(tmp_path / "missing.safetensors")]) == 2
    assert "error" in capsys.readouterr().err


@requires_shared
def test_serve_cli_builds_app_from_checkpoint(tmp_path, monkeypatch, pvt_model):
    import uvicorn

    from birefnet.cli import main
    from birefnet.weights import save_pretrained

    folder = save_pretrained(pvt_model, tmp_path / "pvt")
    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(app=app, **kw))
    args = ["serve", "--model", f"mine={folder}", "--size", "64", "--device", "cpu", "--queue-size", "3"]
    assert main([*args, "--max-upload-mb", "1", "--port", "0"]) == 0
    assert served["host"] == "127.0.0.1" and served["port"] == 0
    with TestClient(served["app"]) as c:
        info = c.get("/v1/models").json()
        assert info["default"] == "mine" and info["models"][0]["backbone"] == "pvt_v2_b0"
        assert c.get("/healthz").json()["capacity"] == 3
        r = upload(c, output="mask")
        assert r.status_code == 200 and r.headers["x-model"] == "mine"
        assert_error(upload(c, data=b"\0" * (1024 * 1024 + 1)), 413, "too_large")
