"""Helpers for the real-browser UI tests: headless Debian chromium driven by selenium, the UI served
in-process on a free port over a temporary workspace. No browser or driver is ever downloaded."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHOTS_ENV = "SEEKTUNE_UI_SCREENSHOTS"  # =1: write the page screenshots into docs/ui/ (committed)
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_browser() -> tuple[str, str]:
    """(browser, chromedriver) paths, or skip naming what is missing and how .ci/run installs it."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("selenium is not installed (it is in the dev extra: pip install -e '.[dev]')")
    browser = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        missing = " and ".join(n for n, p in (("chromium", browser), ("chromedriver", driver)) if not p)
        pytest.skip(f"no headless browser: {missing} not on PATH (apt-get install -y chromium chromium-driver; "
                    ".ci/run does this)")
    return browser, driver


def chrome(browser: str, driver: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000",
              "--disable-gpu", "--no-first-run", "--disable-extensions", "--disable-background-networking"):
        opts.add_argument(a)
    opts.binary_location = browser
    return webdriver.Chrome(service=Service(driver), options=opts)


class Page:
    """The few interactions the tests need, keyed by the UI's elem_ids."""

    def __init__(self, driver, url: str, shots: Path, failures: Path):
        self.d, self.url, self.shots, self.failures = driver, url, shots, failures

    def open(self) -> None:
        self.d.get(self.url)
        self.wait(lambda: self.d.find_elements("css selector", "#tab-train-button, button[role='tab']"), 60,
                  "the page never rendered its tabs")

    def wait(self, cond, timeout: float, what: str):
        t0 = time.time()
        while time.time() - t0 < timeout:
            try:
                got = cond()
            except Exception:  # an element re-rendered between find and read
                got = None
            if got:
                return got
            time.sleep(0.25)
        self.failures.mkdir(parents=True, exist_ok=True)
        self.d.save_screenshot(str(self.failures / "failure.png"))
        raise AssertionError(f"{what} (after {timeout:.0f}s)")

    def press(self, find, what: str, timeout: float = 120) -> None:
        """Click what `find()` returns, retrying while a loading overlay covers it (a busy machine)."""
        from selenium.common.exceptions import ElementClickInterceptedException, StaleElementReferenceException

        t0 = time.time()
        while True:
            try:
                el = find()
                self.d.execute_script("arguments[0].scrollIntoView({block: 'center'})", el)
                el.click()
                return
            except (ElementClickInterceptedException, StaleElementReferenceException):
                if time.time() - t0 > timeout:
                    raise AssertionError(f"{what} stayed covered for {timeout:.0f}s") from None
                time.sleep(0.5)

    def tab(self, name: str) -> None:
        def find():
            for b in self.d.find_elements("css selector", "button[role='tab']"):
                if b.text.strip() == name:
                    return b
            raise AssertionError(f"no tab {name}")

        self.press(find, f"tab {name}")
        time.sleep(0.5)

    def el(self, css: str):
        return self.d.find_element("css selector", css)

    def text(self, elem_id: str) -> str:
        return self.el(f"#{elem_id}").text

    def value(self, elem_id: str) -> str:
        return self.el(f"#{elem_id} textarea, #{elem_id} input").get_attribute("value") or ""

    def fill(self, elem_id: str, text: str, enter: bool = False, inner: str = "textarea, input") -> None:
        from selenium.webdriver.common.keys import Keys

        css = ", ".join(f"#{elem_id} {sel.strip()}" for sel in inner.split(","))
        self.press(lambda: self.el(css), elem_id)
        box = self.el(css)
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.DELETE)
        box.send_keys(text)
        if enter:
            box.send_keys(Keys.ENTER)
        box.send_keys(Keys.TAB)  # blur: gradio commits the value

    def tokens(self, elem_id: str) -> list[str]:
        """The picked values a multiselect dropdown shows."""
        return [t.text.strip() for t in self.d.find_elements("css selector", f"#{elem_id} .token")]

    def choose(self, elem_id: str, option: str) -> None:
        """Pick `option` from a multiselect dropdown's list (it takes no typed values), until it shows as picked.

        The pick is the mousedown the list listens to, sent to that very item: a click by position can land
        on the item next to it while the list slides in, and untick a run picked before."""
        for _ in range(3):
            self.press(lambda: self.el(f"#{elem_id} input"), elem_id)
            item = self.wait(lambda: [li for li in self.d.find_elements("css selector", "li[role='option']")
                                      if li.text.strip().lstrip("✓ ").strip() == option and li.is_displayed()],
                             10, f"{elem_id}: no option {option}")[0]
            self.d.execute_script("arguments[0].dispatchEvent(new MouseEvent('mousedown', {bubbles: true}))", item)
            self.d.execute_script("document.activeElement && document.activeElement.blur()")  # closed
            t0 = time.time()
            while time.time() - t0 < 5:
                if option in self.tokens(elem_id):
                    return
                time.sleep(0.25)
        raise AssertionError(f"{elem_id}: picking {option} did not select it: {self.tokens(elem_id)}")

    def click(self, elem_id: str) -> None:
        self.press(lambda: self.el(f"#{elem_id}"), elem_id)

    def unfold(self, elem_id: str) -> None:
        """Open a folded accordion (a Train-form section, the chat settings)."""
        self.press(lambda: self.el(f"#{elem_id} > button, #{elem_id} .label-wrap"), elem_id)
        time.sleep(0.3)

    def shot(self, name: str, max_height: int = 2400) -> Path:
        """The whole page (up to max_height px), dropdowns closed."""
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys

        self.shots.mkdir(parents=True, exist_ok=True)
        p = self.shots / f"{name}.png"
        self.d.execute_script("document.activeElement && document.activeElement.blur()")
        ActionChains(self.d).send_keys(Keys.ESCAPE).perform()
        self.d.execute_script("document.querySelectorAll('.options').forEach(e => e.style.display = 'none')")
        self.d.execute_script("window.scrollTo(0, 0)")
        height = self.d.execute_script("return document.documentElement.scrollHeight")
        self.d.set_window_size(1400, min(max(int(height) + 200, 1000), max_height))  # + the window frame
        time.sleep(0.5)
        self.d.save_screenshot(str(p))
        self.d.set_window_size(1400, 1000)
        return p


def shots_dir(tmp: Path) -> Path:
    return REPO / "docs" / "ui" if os.environ.get(SHOTS_ENV) == "1" else tmp / "shots"
