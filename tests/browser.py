"""A real browser for the UI tests: Debian's Chromium driven by Playwright (PyPI), screenshots kept after the run.

Playwright's own browser download cannot work here, so it drives the system browser (`chromium`, installed by the
set-up: Makefile). Screenshots go to `.test-artifacts/screenshots/` in the repository (or QUANTFLOW_SCREENSHOTS), so
a run leaves them to look at.
"""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHOTS = Path(os.environ.get("QUANTFLOW_SCREENSHOTS", ROOT / ".test-artifacts" / "screenshots"))


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "chromium is not installed: the set-up installs it (make setup: apt-get install chromium)"
    return found


@contextmanager
def page(width: int = 1400, height: int = 1000):
    """A fresh page in headless Chromium; failures in the page's own console are collected on `page.errors`."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox", "--disable-gpu"])
        try:
            pg = browser.new_page(viewport={"width": width, "height": height})
            pg.set_default_timeout(30_000)
            pg.errors = []
            pg.on("pageerror", lambda e: pg.errors.append(str(e)))
            yield pg
        finally:
            browser.close()


def shot(pg, name: str) -> Path:
    """Save a full-page screenshot and print where it is (pytest -s shows it; the path is stable)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    pg.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def form_field(scope, *labels: str):
    """The Prefect schema-form property reached by its labels, outermost first ('Base', 'Source')."""
    for label in labels:
        scope = scope.locator(
            f"xpath=.//span[contains(@class,'schema-form-property__label') and normalize-space()='{label} (Optional)']"
            "/ancestor::div[contains(concat(' ', normalize-space(@class), ' '), ' schema-form-property ')][1]").first
    return scope


def _open(pg, field):
    """Open a Prefect select: it opens from the keyboard (a click only focuses it)."""
    field.locator(".p-select-button__control").first.focus()
    pg.keyboard.press("ArrowDown")
    pg.get_by_role("listbox").wait_for()
    pg.get_by_role("option").first.wait_for()  # the list fills after it opens


def choose(pg, field, option: str) -> None:
    """Pick `option` in a Prefect select field."""
    _open(pg, field)
    pg.get_by_role("option").filter(has_text=option).first.click()


def select_options(pg, field) -> list[str]:
    _open(pg, field)
    options = [t.strip() for t in pg.get_by_role("option").all_inner_texts()]
    pg.keyboard.press("Escape")
    return options
