"""report.html in a real browser: headless Chromium (Debian's ``chromium`` + ``chromium-driver``) driven by
Selenium. Loads the page offline and checks: no console errors, every image loaded, the right number of
panels, every picture from the output folder and every link local, the summary table sorts, the before/after slider
and its pickers work.

Run it alone: ``python -m pytest -q tests/evaluation/test_report_browser.py -s`` (``-s`` prints what was
checked). Skipped when Chromium or its driver is not installed (``apt-get install chromium
chromium-driver``), or without the dev dependencies (Selenium), as in ``.ci/floors``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from eval_support import cassr, describe, make_pairs, write_identity_model

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
VARIANTS = ("bicubic", "stage1", "tiles")


def _browser() -> tuple[str, str]:
    browser = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("Chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    return browser, driver


@pytest.fixture()
def report(tmp_path: Path) -> Path:
    data = make_pairs(tmp_path / "data", [(96, 128), (112, 96)])
    model = write_identity_model(tmp_path / "identity_x4.pth")
    out = tmp_path / "out"
    result = cassr(
        ["eval", data, out, "--lr", data, "--activation", model, "--steps", "0", "--only", "bicubic,stage1,tiles",
         "--variant", "tiles=--activation-tile-size 32", "--metrics", "psnr_y,ssim_y,niqe"]
    )
    assert result.exit_code == 0, describe(result)
    return out


def test_report_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    browser, driver_path = _browser()
    pytest.importorskip("selenium", reason="selenium (a dev dependency: pip install -e '.[dev]') drives the browser")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        driver.get((report / "report.html").as_uri())
        driver.execute_script("return document.readyState")
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth]);"
        )
        expected_panels = 1 + len(VARIANTS)  # HR + every variant
        assert len(images) == 2 * (expected_panels + 2)  # per image: the panels and the slider's two pictures
        broken = [src for src, complete, width in images if not complete or width == 0]
        assert broken == [], f"images that did not load: {broken}"
        sections = driver.find_elements(By.CSS_SELECTOR, "section.image")
        assert len(sections) == 2
        for section in sections:
            labels = [f.get_attribute("data-label") for f in section.find_elements(By.CSS_SELECTOR, "figure.panel")]
            assert labels == ["HR", *VARIANTS]
            assert len(section.find_elements(By.CSS_SELECTOR, "figcaption")) == expected_panels
        # offline: every picture comes from OUT, every link is a local file (or inline data)
        sources = driver.execute_script("return Array.from(document.querySelectorAll('[src]')).map(e => e.src);")
        links = driver.execute_script("return Array.from(document.querySelectorAll('[href]')).map(e => e.href);")
        assert all(src.startswith(report.as_uri() + "/") for src in sources), sources
        assert all(link.startswith(("file://", "data:")) for link in links), links

        # sorting: PSNR-Y descending puts the best variant first, ascending the worst
        doc = json.loads((report / "metrics.json").read_text())
        means = {name: v["mean"]["psnr_y"] for name, v in doc["variants"].items()}
        header = next(th for th in driver.find_elements(By.CSS_SELECTOR, "#summary th") if th.text.startswith("PSNR-Y"))

        def first_row() -> str:
            return driver.find_element(By.CSS_SELECTOR, "#summary tbody tr td").text

        header.click()
        assert header.get_attribute("aria-sort") == "ascending" and first_row() == min(means, key=means.get)
        header.click()
        assert header.get_attribute("aria-sort") == "descending" and first_row() == max(means, key=means.get)

        # the slider: keyboard moves it, the pickers swap the pictures
        compare = sections[0].find_element(By.CSS_SELECTOR, ".compare")
        over = compare.find_element(By.CSS_SELECTOR, "img.cmp-over")
        assert over.get_attribute("src").endswith("/tiles.png")
        assert "50%" in over.value_of_css_property("clip-path")
        slider = compare.find_element(By.CSS_SELECTOR, "input.cmp-range")
        slider.send_keys(Keys.ARROW_LEFT * 20)
        assert slider.get_attribute("value") == "30"
        assert "30%" in over.value_of_css_property("clip-path")
        picker = compare.find_element(By.CSS_SELECTOR, "select.cmp-b")
        picker.find_element(By.XPATH, "option[text()='stage1']").click()
        assert over.get_attribute("src").endswith("/stage1.png")
        assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", over)

        logs = driver.get_log("browser")
        errors = [entry for entry in logs if entry["level"] in ("SEVERE", "ERROR")]
        assert errors == [], errors
        print(
            f"\nreport.html in {driver.capabilities.get('browserName')} {driver.capabilities.get('browserVersion')}: "
            f"{len(images)} images loaded, {len(sections)} sections × {expected_panels} panels, "
            f"{len(sources) + len(links)} local sources and links, sort and slider work, console errors: {len(errors)}"
        )
    finally:
        driver.quit()
