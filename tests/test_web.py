"""The web page in a real browser: headless Chromium (Debian ``chromium`` + ``chromium-driver``, driven
by Selenium) loads ``/`` from a uvicorn server on 127.0.0.1, uploads an image, and shows a cut-out.

A screenshot is kept as a test artefact in ``tests/artifacts/`` (or ``$BIREFNET_TEST_ARTIFACTS``);
its path is printed. Skipped, with the reason, where Selenium or the browser is not installed.
The browser talks to 127.0.0.1 only (the page loads nothing from elsewhere).
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install selenium)")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from birefnet.inference import Predictor  # noqa: E402
from birefnet.serve import create_app  # noqa: E402

ARTIFACTS = Path(os.environ.get("BIREFNET_TEST_ARTIFACTS", Path(__file__).resolve().parent / "artifacts"))


def _find(names: tuple[str, ...]) -> str | None:
    return next((p for p in (shutil.which(n) for n in names) if p), None)


CHROMIUM = _find(("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"))
CHROMEDRIVER = _find(("chromedriver",))
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs a headless Chromium and its driver (Debian: apt-get install -y chromium chromium-driver)",
)


class DiscNet(torch.nn.Module):
    """Stand-in network: a soft disc in the middle of the image is foreground (a visible cut-out)."""

    def forward(self, x: torch.Tensor) -> types.SimpleNamespace:
        _, _, h, w = x.shape
        yy = torch.linspace(-1, 1, h).view(h, 1)
        xx = torch.linspace(-1, 1, w).view(1, w)
        logits = 12 * (0.6 - torch.sqrt(yy**2 + xx**2))
        return types.SimpleNamespace(logits=logits.expand(x.shape[0], 1, h, w).contiguous())


@pytest.fixture(scope="module")
def server():
    app = create_app({"disc": Predictor(DiscNet(), size=128, device="cpu")})
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    srv.should_exit = True
    thread.join(15)
    sock.close()


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1000,1150",
        "--no-proxy-server",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ):
        options.add_argument(arg)
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    except Exception as e:  # a browser that cannot start here (sandbox, missing libraries)
        pytest.skip(f"headless Chromium did not start: {type(e).__name__}: {str(e).splitlines()[0]}")
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_page_uploads_image_and_shows_cutout(server, browser, tmp_path):
    rgb = np.zeros((240, 320, 3), np.uint8)
    rgb[..., 0] = np.linspace(0, 255, 320, dtype=np.uint8)[None, :]
    rgb[..., 1] = np.linspace(40, 160, 240, dtype=np.uint8)[:, None]
    rgb[..., 2] = 200
    image_path = tmp_path / "photo.png"
    Image.fromarray(rgb).save(image_path)

    browser.get(server)
    wait = WebDriverWait(browser, 30)
    assert "BiRefNet" in browser.title
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"))  # models listed from the API
    assert browser.find_element(By.CSS_SELECTOR, "#model option").get_attribute("value") == "disc"

    browser.find_element(By.ID, "file").send_keys(str(image_path))  # picking a file starts the request
    wait.until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-result") in ("ready", "error")
    )
    status = browser.find_element(By.ID, "status").text
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-result") == "ready", status
    assert status.startswith("Done"), status
    wait.until(EC.visibility_of_element_located((By.ID, "compare")))

    # the result shown is the server's cut-out: fetch the displayed blob and look at its alpha
    data = browser.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        fetch(document.getElementById('after').src).then(r => r.arrayBuffer()).then(buf => {
          done(Array.from(new Uint8Array(buf)));
        }).catch(e => done(String(e)));
        """
    )
    assert isinstance(data, list), data
    cutout = Image.open(io.BytesIO(bytes(data)))
    assert cutout.mode == "RGBA" and cutout.size == (320, 240)
    alpha = np.asarray(cutout)[..., 3]
    assert alpha[120, 160] > 200 and alpha[0, 0] < 30  # opaque centre, transparent corner
    href = browser.find_element(By.ID, "download").get_attribute("href")
    assert href.startswith("blob:") and browser.find_element(By.ID, "download").get_attribute("download") == (
        "photo_rgba.png"
    )

    # the slider moves the before/after split
    slider = browser.find_element(By.ID, "slider")
    browser.execute_script("arguments[0].value = 20; arguments[0].dispatchEvent(new Event('input'));", slider)
    clip = browser.find_element(By.ID, "before-clip").value_of_css_property("clip-path")
    assert "80%" in clip, clip

    # composite on a colour: the background option appears and the request is redone
    assert not browser.find_element(By.ID, "bg-label").is_displayed()
    browser.execute_script(
        "const s = document.getElementById('output'); s.value = 'composite'; s.dispatchEvent(new Event('change'));"
    )
    assert browser.find_element(By.ID, "bg-label").is_displayed()
    wait.until(lambda d: d.find_element(By.ID, "status").text.startswith("Done"))

    browser.execute_script(
        "const s = document.getElementById('output'); s.value = 'rgba'; s.dispatchEvent(new Event('change'));"
    )
    wait.until(lambda d: d.find_element(By.ID, "status").text.startswith("Done"))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "web_page.png"
    assert browser.save_screenshot(str(shot))
    print(f"screenshot: {shot}")
    assert Image.open(shot).size[0] > 0


def test_page_shows_server_errors(server, browser, tmp_path):
    bogus = tmp_path / "notes.png"
    bogus.write_bytes(b"this is not a png")
    browser.get(server)
    wait = WebDriverWait(browser, 30)
    browser.find_element(By.ID, "file").send_keys(str(bogus))
    wait.until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-result") in ("ready", "error")
    )
    status = browser.find_element(By.ID, "status")
    assert "error" in status.get_attribute("class")
    assert "not an image" in status.text
