"""Headless Chromium (the Debian packages chromium + chromium-driver) driven by Selenium, and a page served
in a thread, for the browse page's tests. A missing browser fails the test with the command that installs it."""
from __future__ import annotations

import shutil
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).is_file() and not shutil.which(Path(p).name)]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: the browse tests need `apt-get install chromium chromium-driver` "
                    "(.ci/run installs them)", pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,1000"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


@contextmanager
def serving(app) -> Iterator[str]:
    """Serve `app` on a free loopback port in a thread; yields its base URL."""
    import uvicorn

    from flows.browse.server import listening_socket

    sock = listening_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the browse server stopped while starting"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join()
        sock.close()


def click_and_wait(browser, element, timeout_s: float = 30) -> None:
    """Click a link or submit button and wait until the next page has replaced this one: a click returns before
    the navigation, so reading the page right after it can read the old page."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    page = browser.find_element(By.TAG_NAME, "html")
    element.click()
    WebDriverWait(browser, timeout_s).until(expected_conditions.staleness_of(page))
