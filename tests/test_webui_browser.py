"""scripts/webui.py in a real browser: headless Chromium (Debian's chromium + chromium-driver,
driven by selenium) uploads an image, asks two questions, reads both streamed answers from the
page, uploads a decompression bomb and sees the refusal, then asks again (the server goes on),
and saves a screenshot.

WEBUI_TEST_MODEL=default runs it on the embedded tiny chat model (otherwise a tiny random one);
WEBUI_SCREENSHOT=PATH keeps the screenshot there (the README's is docs/images/webui.png).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from PIL import Image

from tests.chat_util import make_chat_model_dir
from tests.scripts_util import REPO

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="needs Chromium and its driver (Debian: apt-get install chromium chromium-driver; "
    ".ci/run installs them)",
)
STARTUP_S = 600  # importing gradio and loading the model on a busy 2-core machine
ANSWER_S = 600  # the first answer compiles the model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(url: str, proc: subprocess.Popen, log_path: str) -> None:
    deadline = time.time() + STARTUP_S
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"web UI exited ({proc.returncode}): {open(log_path).read()[-3000:]}"
            )
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"web UI not up after {STARTUP_S} s: {open(log_path).read()[-3000:]}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("webui")
    path, image = make_chat_model_dir(str(root))
    if os.environ.get("WEBUI_TEST_MODEL") == "default":
        path = None  # scripts/webui.py builds (or finds) the embedded model
    port = _free_port()
    log_path = str(root / "server.log")
    args = [sys.executable, os.path.join(REPO, "scripts", "webui.py"), f"--port={port}"]
    if path:
        args.append(f"--model={path}")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "GRADIO_ANALYTICS_ENABLED": "False"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_for_server(url, proc, log_path)
        yield url, image, root
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _status(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, "status").text


def _bot_messages(driver) -> list[str]:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, '#chatbot [data-testid="bot"]')
    return [e.text for e in found]


def _wait(driver, what, timeout: float) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: what(d))


def _upload(driver, path: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, "#image-upload input[type=file]").send_keys(path)


def _ask(driver, question: str, n_answers: int) -> str:
    """Types ``question``, watches the answer stream in; returns it as shown."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.CSS_SELECTOR, "#message textarea")
    box.send_keys(question)
    box.send_keys(Keys.ENTER)
    _wait(driver, lambda d: len(_bot_messages(d)) == n_answers, ANSWER_S)
    _wait(driver, lambda d: "(answer complete)" in _status(d), ANSWER_S)
    return _bot_messages(driver)[-1]


def test_chat_in_a_browser(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    url, image, root = server
    browser.get(url)
    _wait(
        browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#image-upload input[type=file]"), 120
    )
    assert "megapixels" in browser.page_source  # the limits are stated in the page
    _upload(browser, image)
    _wait(browser, lambda d: "ready" in _status(d), 120)

    first = _ask(browser, "What color is the circle?", 1)
    second = _ask(browser, "How many squares are there?", 2)
    user = [e.text for e in browser.find_elements(By.CSS_SELECTOR, '#chatbot [data-testid="user"]')]
    assert user == ["What color is the circle?", "How many squares are there?"]
    assert _bot_messages(browser) == [first, second]

    screenshot = os.environ.get("WEBUI_SCREENSHOT") or str(tmp_path / "webui.png")
    browser.save_screenshot(screenshot)
    assert os.path.getsize(screenshot) > 10_000

    bomb = str(root / "bomb.png")
    Image.new("L", (5000, 4100)).save(bomb)  # 20.5 megapixels, refused from its header
    _upload(browser, bomb)
    _wait(browser, lambda d: "Refused" in _status(d), 120)
    assert "pixels" in _status(browser) and "refused before decoding" in _status(browser)
    # The refusal changed nothing: the conversation about the first image goes on.
    third = _ask(browser, "Is there a triangle?", 3)
    assert isinstance(third, str)
