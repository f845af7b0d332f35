"""The status page in a real browser: ``streamlit run`` on a free loopback port with a seeded store and a password,
driven by headless Chromium (Debian's ``chromium`` + ``chromedriver``, installed by ``scripts/install-browser.sh``).
Screenshots of every page go to ``test-artifacts/page/``."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from appliance.store import Store
from tests.page.conftest import APP
from tests.page.seed import seed_results, seed_typical

ROOT = APP.parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "page"
PASSWORD = "correct horse 42"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
PAGES = (
    ("Overview", "overview", ["Service", "ONNX Runtime provider", "Free disk", "Segmentation jobs", "Recent events"]),
    ("Training runs", "training", ["Successive halving", "Budget used", "predicted vs realised", "Events"]),
    ("Models", "models", ["Active model", "Activation history", "Test-split QC per class", "Download model.onnx"]),
    ("Results", "results", ["Recent images", "Trends per day", "Measurements", "Download CSV"]),
    ("Problems", "problems", ["Rejected labelled sets", "1 set(s) rejected with 2 problem(s)", "Warnings and errors"]),
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="needs Debian's chromium and chromedriver: run scripts/install-browser.sh (as root)",
    ),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"streamlit exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"streamlit did not answer on {url} within {timeout:.0f} s:\n{log.read_text()}")


def beat_like_the_service(store_path: Path, stop: threading.Event) -> None:
    """Renew the seeded components' heartbeats every second, as ``appliance run`` does (the scanner stays stale)."""
    store = Store(store_path)
    rows = {r.name: r for r in store.components() if r.name != "scanner"}
    while not stop.wait(1.0):
        for name, row in rows.items():
            store.component_beat(name, state=row.state, detail=row.detail, interval=1, pid=row.pid)
    store.close()


@contextlib.contextmanager
def page_server(tmp_path: Path, password: str):
    """The page as the service starts it, on loopback, with a seeded store (and a password when given)."""
    data_dir = tmp_path / "data"
    seed_typical(data_dir)
    seed_results(data_dir, 600)
    port = free_port()
    env = {**os.environ, "APPLIANCE_DATA_DIR": str(data_dir), "APPLIANCE_PAGE_PASSWORD": password}
    env.pop("APPLIANCE_CONFIG", None)
    log = tmp_path / "page.log"
    command = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true"]
    command += ["--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false"]
    command += ["--client.toolbarMode", "viewer"]
    with open(log, "wb") as handle:
        process = subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    stop = threading.Event()
    beats = threading.Thread(target=beat_like_the_service, args=(data_dir / "appliance.sqlite", stop), daemon=True)
    beats.start()
    try:
        wait_healthy(url, process, log)
        yield url, log
    finally:
        stop.set()
        beats.join(5)
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture
def server(tmp_path):
    with page_server(tmp_path, PASSWORD) as running:
        yield running


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1800"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait_for_text(driver, texts: list[str], timeout: float = 45.0) -> str:
    """Wait until every text is visible and Streamlit has finished running the script; return the page's text."""
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    body = ""
    while time.monotonic() < deadline:
        body = driver.find_element(By.TAG_NAME, "body").text
        running = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"]')
        if all(text in body for text in texts) and not running:
            return body
        time.sleep(0.5)
    missing = [text for text in texts if text not in body]
    pytest.fail(f"not visible after {timeout:.0f} s: {missing}\n--- page text ---\n{body}")


def log_in(driver, password: str, timeout: float = 45.0) -> None:
    """Type the password into the login form once the form itself is on the page (its text arrives before its
    widgets on a cold start) and submit it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    wait_for_text(driver, ["Enter the page password"], timeout)
    field = WebDriverWait(driver, timeout).until(
        expected_conditions.element_to_be_clickable((By.CSS_SELECTOR, 'input[type="password"]'))
    )
    field.send_keys(password)
    WebDriverWait(driver, timeout).until(
        expected_conditions.element_to_be_clickable((By.XPATH, "//button[.//p[text()='Log in']]"))
    ).click()


def screenshot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    height = driver.execute_script(
        "const main = document.querySelector('[data-testid=\"stMain\"]') || document.body;"
        "return Math.max(main.scrollHeight, document.body.scrollHeight);"
    )
    driver.set_window_size(1400, min(max(int(height) + 120, 900), 6000))
    time.sleep(1.0)  # charts re-lay themselves out after the resize
    driver.save_screenshot(str(path))
    return path


def test_login_and_every_page_in_chromium(server, browser):
    from selenium.webdriver.common.by import By

    url, log = server
    browser.get(url)
    wait_for_text(browser, ["Enter the page password"])
    assert "Training runs" not in browser.find_element(By.TAG_NAME, "body").text  # nothing before the password
    screenshot(browser, "0-login")

    log_in(browser, "not the password")
    wait_for_text(browser, ["Wrong password."])

    field = browser.find_element(By.CSS_SELECTOR, 'input[type="password"]')
    assert field.get_attribute("value") == ""  # the form forgets a wrong password
    field.send_keys(PASSWORD)
    browser.find_element(By.XPATH, "//button[.//p[text()='Log in']]").click()
    wait_for_text(browser, PAGES[0][2])

    for index, (title, path, texts) in enumerate(PAGES):
        if index:
            link = browser.find_element(By.CSS_SELECTOR, f'[data-testid="stSidebarNav"] a[href$="/{path}"]')
            link.click()
        wait_for_text(browser, [title, *texts])
        assert browser.find_element(By.TAG_NAME, "h1").text.startswith(title)
        assert browser.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]') == [], f"exception on {title}"
        assert browser.find_elements(By.CSS_SELECTOR, '[data-testid="stDataFrame"]'), f"no table on {title}"
        screenshot(browser, f"{index + 1}-{path}")
        browser.set_window_size(1400, 1800)

    assert PASSWORD not in browser.current_url
    assert PASSWORD not in log.read_text(errors="replace")  # no secret in the server's log

    # images the page served stop answering once the session logs out
    browser.find_element(By.CSS_SELECTOR, '[data-testid="stSidebarNav"] a[href$="/models"]').click()
    wait_for_text(browser, ["Models", "Test images: image | truth | prediction"])
    media = [img.get_attribute("src") for img in browser.find_elements(By.CSS_SELECTOR, "img")]
    media = [src for src in media if src and "/media/" in src]
    assert media, "the Models page shows its QC images through /media/"
    with urllib.request.urlopen(media[0], timeout=10) as response:
        assert response.status == 200
    browser.find_element(By.XPATH, "//button[.//p[text()='Log out']]").click()
    wait_for_text(browser, ["Enter the page password"])
    time.sleep(1.0)
    for src in media:
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(src, timeout=10)
        assert error.value.code == 404, src


@pytest.mark.parametrize("password", [PASSWORD, ""], ids=["with-password", "without-password"])
def test_every_page_opens_by_its_own_address_on_a_cold_start(tmp_path, browser, password):
    """Bookmarks and links from notifications: each page's URL, first thing after the page server started."""
    from selenium.webdriver.common.by import By

    with page_server(tmp_path, password) as (url, _):
        for index, (title, path, texts) in enumerate(PAGES):
            address = url if index == 0 else f"{url}/{path}"  # the default page (Overview) lives at the root
            browser.get(address)  # a new session each time: with a password, the login form first
            if password:
                log_in(browser, password)
            body = wait_for_text(browser, [title, texts[0]])
            assert browser.current_url.rstrip("/") == address, browser.current_url
            assert browser.find_element(By.TAG_NAME, "h1").text.startswith(title)
            assert browser.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]') == [], f"exception on {title}"
            assert "ModuleNotFoundError" not in body and "Log in first." not in body
