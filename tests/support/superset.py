"""Drive Superset dashboards in a real headless Chromium: log in, open a dashboard, wait until
every chart has finished (drawn, empty or failed), read what each shows, apply a native filter.

Used by tests/test_dashboards.py and bench/dashboards.py.
"""

from __future__ import annotations

import re
import time
import urllib.parse
from dataclasses import dataclass

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

# What each chart on the page shows, read in one pass by the browser: its title, its state
# (loading, error, empty or drawn) and a fingerprint of what it draws (text and canvas pixels).
_CHARTS_JS = """
// Polling passes withPixels = false: textContent, not innerText (no layout, no PNG encoding),
// to leave the page's main thread to the charts being drawn.
const withPixels = arguments[0];
const textOf = (e) => (withPixels ? e.innerText : e.textContent) || '';
const hash = (s) => {
  let h = 0;
  for (let i = 0; i < s.length; i++) h = (h * 31 + s.charCodeAt(i)) | 0;
  return h;
};
const drawn = (body, canvases, text) =>
  canvases.length || body.querySelector('svg, table tbody tr') || text.trim();
return [...document.querySelectorAll('.dashboard-component-chart-holder')]
  .filter((holder) => holder.querySelector('[data-test="slice-header"]'))
  .map((holder) => {
    const titled = holder.querySelector('[data-test="editable-title"]') || holder;
    const body = holder.querySelector('[data-test="chart-container"]') || holder;
    const text = textOf(body);
    const error = holder.querySelector('.ant-alert-error, [role="alert"]');
    const canvases = [...body.querySelectorAll('canvas')];
    let pixels = 0;
    for (const c of withPixels ? canvases : []) {
      try { pixels = (pixels * 31 + hash(c.toDataURL())) | 0; } catch (e) {}
    }
    let state = 'drawn';
    if (holder.querySelector('.loading, [data-test="loading-indicator"]')) state = 'loading';
    else if (error) state = 'error';
    else if (/No results were returned/.test(textOf(holder))) state = 'empty';
    else if (!drawn(body, canvases, text)) state = 'loading';
    return {
      title: textOf(titled).trim(), state, text: text.slice(0, 2000),
      error: error ? textOf(error).slice(0, 500) : '',
      fingerprint: String(hash(text)) + ':' + String(pixels), canvases: canvases.length,
    };
  });
"""


@dataclass(frozen=True)
class Chart:
    title: str
    state: str  # drawn, empty, error, loading
    text: str
    error: str
    fingerprint: str
    canvases: int


@dataclass(frozen=True)
class Opened:
    slug: str
    seconds: float  # from navigation to the last chart finished
    charts: list[Chart]
    # each /api/v1/chart/data request (its URL names the chart) and its seconds, browser-timed
    chart_queries: list[tuple[str, float]]


class DashboardBrowser:
    """One logged-in browser session with a Superset at ``base_url``."""

    def __init__(self, browser: webdriver.Chrome, base_url: str) -> None:
        self.browser = browser
        self.base_url = base_url.rstrip("/")
        self.finished_at = 0.0  # monotonic time the last wait_finished saw every chart finished
        self.refused: set[str] = set()  # hosts the content security policy refused

    def login(self, username: str, password: str, attempts: int = 3) -> None:
        """Log in through the form. The form is drawn by the page's scripts, which may draw it
        again while keys are being typed (the typing is then lost): another attempt."""
        for attempt in range(1, attempts + 1):
            self.browser.get(f"{self.base_url}/login/")
            self._wait(lambda: self.browser.find_elements(By.ID, "username"), 30, "the form")
            self.browser.find_element(By.ID, "username").send_keys(username)
            self.browser.find_element(By.ID, "password").send_keys(password + Keys.ENTER)
            try:
                self._wait(lambda: "/login" not in self.browser.current_url, 20, "the login")
                return
            except TimeoutError:
                if attempt == attempts:
                    raise

    def charts(self, pixels: bool = True) -> list[Chart]:
        """The charts on the page; ``pixels``: fingerprint canvases too (PNG-encodes each)."""
        return [Chart(**c) for c in self.browser.execute_script(_CHARTS_JS, pixels)]

    def open(self, slug: str, expected_charts: int, timeout_s: float = 60) -> Opened:
        """Open the dashboard and wait until its ``expected_charts`` charts have all finished."""
        self.browser.get("about:blank")
        started = time.monotonic()
        self.browser.get(f"{self.base_url}/superset/dashboard/{slug}/")
        charts = self.wait_finished(expected_charts, timeout_s)
        seconds = self.finished_at - started
        queries = self.browser.execute_script(
            "return performance.getEntriesByType('resource')"
            ".filter(e => e.name.includes('/api/v1/chart/data'))"
            ".map(e => [e.name, e.duration / 1000])"
        )
        return Opened(slug, seconds, charts, [(str(u), float(d)) for u, d in queries])

    def hosts_loaded(self) -> set[str]:
        """Every host the current page loaded something from, less those whose loads the
        content security policy refused (Chromium lists a refused request among the page's
        resources, and says on its console that it blocked it)."""
        asked = self.browser.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
        for entry in self.browser.get_log("browser"):  # the console since the last call
            message = entry["message"]
            if entry.get("source") == "security" and (
                "has been blocked" in message or "Refused to" in message
            ):
                for url in re.findall(r"'(https?://[^']+)'", message):
                    self.refused.add(urllib.parse.urlsplit(url).netloc)
        return {urllib.parse.urlsplit(str(u)).netloc for u in asked} - self.refused

    def settled(self, animation_s: float = 1.5) -> list[Chart]:
        """The charts once their animations are over, canvases fingerprinted by their pixels."""
        time.sleep(animation_s)
        return self.charts(pixels=True)

    def wait_finished(self, expected_charts: int, timeout_s: float = 60) -> list[Chart]:
        """Until every chart is drawn, empty or failed, twice in a row 0.2 s apart (a chart that
        re-queries after a filter passes through loading); the charts (canvases not
        fingerprinted: see ``settled``)."""
        deadline = time.monotonic() + timeout_s
        finished_before = False
        while time.monotonic() < deadline:
            seen_at = time.monotonic()
            charts = self.charts(pixels=False)
            finished = len(charts) >= expected_charts and all(c.state != "loading" for c in charts)
            if finished and finished_before:
                return charts
            if finished and not finished_before:
                # when every chart was first seen finished (the next look only confirms it)
                self.finished_at = seen_at
            finished_before = finished
            time.sleep(0.2)
        states = {c.title: c.state for c in self.charts(pixels=False)}
        raise TimeoutError(f"charts not finished after {timeout_s} s: {states}")

    def choose(self, filter_name: str, value: str) -> None:
        """Pick ``value`` in the native select filter named ``filter_name``, apply it, and wait
        until the charts have reacted (one is loading again, or shows other text)."""
        before = [c.fingerprint for c in self.charts(pixels=False)]
        control = self.browser.find_element(
            By.XPATH,
            f'//h4[@data-test="filter-control-name"][normalize-space()="{filter_name}"]'
            "/ancestor::div[contains(concat(' ', @class, ' '), ' ant-form-item ')][1]"
            '//div[@data-test="form-item-value"]',
        )
        control.click()
        search = control.find_element(By.CSS_SELECTOR, "input")
        search.send_keys(value)
        option = f'//div[contains(@class, "ant-select-item-option")][@title="{value}"]'
        self._wait(lambda: self.browser.find_elements(By.XPATH, option), 20, f"option {value}")
        self.browser.find_element(By.XPATH, option).click()
        search.send_keys(Keys.ESCAPE)
        apply = self.browser.find_element(By.CSS_SELECTOR, '[data-test="filter-bar__apply-button"]')
        self._wait(apply.is_enabled, 10, "the Apply button")
        apply.click()

        def reacted() -> bool:
            now = self.charts(pixels=False)
            return any(c.state == "loading" for c in now) or [c.fingerprint for c in now] != before

        self._wait(reacted, 30, f"the charts to react to {filter_name} = {value}")

    def _wait(self, condition: object, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():  # type: ignore[operator]
                return
            time.sleep(0.2)
        raise TimeoutError(f"waited {timeout_s} s for {what}")
