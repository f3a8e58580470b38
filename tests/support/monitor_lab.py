"""A ``conveyor monitor`` process for the monitor tests, and headless Chromium
(Debian's ``chromium`` and ``chromium-driver``, driven with Selenium; no browser is
downloaded)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from processes import Proc, wait_for

#: Where the tests copy what a person should look at (ignored by git).
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str, token: str | None = None) -> Any:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def get_text(url: str, token: str | None = None) -> str:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(response.read().decode())


@contextmanager
def monitor_process(app_spec: str, cwd: Path, env: dict[str, str], *args: str,
                    port: int | None = None) -> Iterator[tuple[Proc, str]]:
    """``conveyor -A app_spec monitor`` on a free port; yields it and its base URL
    once it serves."""
    port = port or free_port()
    proc = Proc([sys.executable, "-m", "conveyor.cli", "-A", app_spec, "monitor",
                 "--port", str(port), "--interval", "0.5", *args], cwd, env,
                log=cwd / f"monitor-{port}.log")
    with proc:
        proc.wait_output("conveyor monitor on", 30)
        yield proc, f"http://127.0.0.1:{port}"


def chromium_paths() -> tuple[str, str]:
    """The paths of Debian's ``chromium`` and ``chromedriver``; skips (fails under
    ``CONVEYOR_REQUIRE_SERVICES=1``) when they are missing."""
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if browser and driver:
        return browser, driver
    reason = ("headless Chromium is missing: apt-get install -y chromium chromium-driver "
              "(.ci/run installs them)")
    if os.environ.get("CONVEYOR_REQUIRE_SERVICES") == "1":
        pytest.fail(reason + " (CONVEYOR_REQUIRE_SERVICES=1)", pytrace=False)
    pytest.skip(reason)


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium under Selenium, logging the page's console."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = chromium_paths()
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not fetch anything
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--disable-gpu", "--window-size=1400,1300", "--no-first-run",
                "--disable-extensions", "--disable-background-networking"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def javascript_errors(driver: Any) -> list[str]:
    """The console messages of level SEVERE (uncaught errors, failed loads)."""
    return [entry["message"] for entry in driver.get_log("browser")
            if entry.get("level") == "SEVERE"]


def keep_screenshot(driver: Any, tmp_path: Path, name: str) -> Path:
    """Save a screenshot in the test's tmp dir and a copy under ``test-artifacts/``;
    returns the copy's path."""
    shot = tmp_path / name
    driver.save_screenshot(str(shot))
    ARTIFACTS.mkdir(exist_ok=True)
    kept = ARTIFACTS / name
    shutil.copyfile(shot, kept)
    return kept


__all__ = ["ARTIFACTS", "chromium", "free_port", "get_json", "get_text",
           "javascript_errors", "keep_screenshot", "monitor_process", "wait_for"]
