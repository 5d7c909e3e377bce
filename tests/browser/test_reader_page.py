"""The offline reader page in headless Chromium: reader id, answers by click and keyboard, reload,
window/level on canvas pixels, CSV export, and scoring of the exported file."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from synthcxr.reader_study.kit import ReaderStudyConfig, build_study
from synthcxr.reader_study.score import score_files
from synthcxr.reader_study.sources import array_source

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")
if CHROMIUM is None or DRIVER is None:
    pytest.skip("needs Debian chromium + chromium-driver (apt-get install chromium chromium-driver)",
                allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install selenium)")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

RES = 16
N_EACH = 4


@pytest.fixture()
def study(tmp_path, tiny_prepared):
    rng = np.random.default_rng(4)
    fake = (rng.random((10, RES, RES)) * 255).astype(np.uint8)
    cfg = ReaderStudyConfig.from_section(dict(n_real=N_EACH, n_fake=N_EACH, seed=9, labels=["Effusion", "Nodule", "No_Finding"]))
    key = build_study(tiny_prepared, array_source(fake), tmp_path / "reader_kit", tmp_path / "answer_key" / "key.csv",
                      cfg)
    return tmp_path, key


@pytest.fixture()
def driver(tmp_path):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    opts = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,800", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    opts.binary_location = CHROMIUM
    opts.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    drv = webdriver.Chrome(options=opts, service=webdriver.ChromeService(DRIVER))
    drv.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    drv.downloads = downloads
    yield drv
    drv.quit()


def wait_for(drv, js, timeout=10.0):
    return WebDriverWait(drv, timeout).until(lambda d: d.execute_script(js))


def shown(drv):
    """Name of the image painted on the canvas (waits until the current image is decoded)."""
    return wait_for(drv, "const c=document.getElementById('view');"
                         "const want=document.getElementById('image-name').textContent;"
                         "return c.dataset.image === want ? want : null;")


def canvas_pixels(drv) -> np.ndarray:
    data = drv.execute_script(
        "const c=document.getElementById('view');"
        "return Array.from(c.getContext('2d').getImageData(0,0,c.width,c.height).data);"
    )
    return np.asarray(data, dtype=np.uint8).reshape(RES, RES, 4)


def start(drv, reader):
    box = drv.find_element(By.ID, "reader-id")
    box.clear()
    box.send_keys(reader, Keys.ENTER)
    wait_for(drv, "return document.getElementById('overlay').classList.contains('hidden')")


def test_reader_page_end_to_end(study, driver, tmp_path):
    folder, key = study
    truth = dict(zip(key["image"], key["truth"]))
    names = list(key["image"])
    flip = {"real": "fake", "fake": "real"}
    plan = {n: (truth[n] if i % 3 else flip[truth[n]], i % 5 + 1) for i, n in enumerate(names)}  # 3 of 8 wrong

    driver.get((folder / "reader_kit" / "index.html").as_uri())
    assert driver.find_element(By.ID, "overlay").is_displayed()
    driver.find_element(By.ID, "reader-id").send_keys("bad id!", Keys.ENTER)
    assert "letters" in driver.find_element(By.ID, "reader-error").text
    start(driver, "R07")
    assert driver.find_element(By.ID, "reader-label").text == "R07"

    # first half by mouse clicks
    for i, name in enumerate(names[:N_EACH]):
        assert shown(driver) == name
        ans, conf = plan[name]
        driver.find_element(By.ID, f"btn-{ans}").click()
        driver.find_element(By.CSS_SELECTOR, f"#confidence button[data-conf='{conf}']").click()
        if i == 0:
            driver.find_element(By.CSS_SELECTOR, "#findings input[value='Effusion']").click()
        driver.find_element(By.ID, "next").click()
    assert f"answered {N_EACH} / {2 * N_EACH}" in driver.find_element(By.ID, "progress").text

    # reload mid-way: answers and position survive
    driver.refresh()
    assert driver.find_element(By.ID, "reader-id").get_attribute("value") == "R07"
    assert f"{N_EACH} saved answer" in driver.find_element(By.ID, "resume-note").text
    start(driver, "R07")
    assert shown(driver) == names[N_EACH]
    body = driver.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.ARROW_LEFT)
    assert shown(driver) == names[N_EACH - 1]
    prev_ans, prev_conf = plan[names[N_EACH - 1]]
    assert "sel" in driver.find_element(By.ID, f"btn-{prev_ans}").get_attribute("class")
    assert "sel" in driver.find_element(By.CSS_SELECTOR, f"#confidence button[data-conf='{prev_conf}']").get_attribute("class")
    body.send_keys(Keys.ARROW_RIGHT)

    # second half by keyboard
    for name in names[N_EACH:]:
        assert shown(driver) == name
        ans, conf = plan[name]
        body.send_keys("r" if ans == "real" else "f", str(conf), Keys.ARROW_RIGHT)
    wait_for(driver, f"return document.getElementById('progress').textContent.includes('answered {2 * N_EACH} /')")

    # window/level: canvas starts as the PNG's exact pixels; dragging and sliders change them as the LUT says
    last = names[-1]
    original = np.asarray(Image.open(folder / "reader_kit" / "images" / last))
    assert shown(driver) == last
    px = canvas_pixels(driver)
    assert np.array_equal(px[..., 0], original) and np.all(px[..., 3] == 255)
    canvas = driver.find_element(By.ID, "view")
    ActionChains(driver).move_to_element(canvas).click_and_hold().move_by_offset(-155, 40).release().perform()
    width = float(driver.find_element(By.ID, "ww-out").text)
    level = float(driver.find_element(By.ID, "wl-out").text)
    assert (width, level) == (100.0, 147.5)
    lo = level - width / 2
    expected = np.clip(np.floor((original.astype(float) - lo) * 255 / width + 0.5), 0, 255)
    after = canvas_pixels(driver)[..., 0].astype(float)
    assert not np.array_equal(after, original)
    assert np.abs(after - expected).max() <= 1
    driver.execute_script("const s=document.getElementById('ww'); s.value=40; s.dispatchEvent(new Event('input'));")
    assert driver.find_element(By.ID, "ww-out").text == "40"
    narrow = canvas_pixels(driver)[..., 0].astype(float)
    assert np.std(narrow) > np.std(after)  # a narrower window stretches contrast
    body.send_keys("w")
    assert np.array_equal(canvas_pixels(driver)[..., 0], original)

    driver.save_screenshot(str(tmp_path / "reader_page.png"))
    if os.environ.get("SYNTHCXR_SCREENSHOT_DIR"):
        shutil.copy(tmp_path / "reader_page.png", Path(os.environ["SYNTHCXR_SCREENSHOT_DIR"]) / "reader_page.png")

    # export: the button downloads a CSV; exportCSV(false) returns the same text
    driver.find_element(By.ID, "export").click()
    deadline = time.time() + 15
    files: list[Path] = []
    while time.time() < deadline:
        files = [p for p in driver.downloads.glob("*.csv")]
        if files and not list(driver.downloads.glob("*.crdownload")):
            break
        time.sleep(0.1)
    assert len(files) == 1, f"no CSV downloaded into {driver.downloads}: {list(driver.downloads.iterdir())}"
    assert files[0].name.startswith("answers_R07_")
    text = driver.execute_script("return window.exportCSV(false)")
    assert files[0].read_text() == text
    answers = pd.read_csv(files[0], keep_default_na=False)
    assert list(answers.columns) == ["reader", "image", "answer", "confidence", "findings", "timestamp"]
    assert len(answers) == 2 * N_EACH and set(answers["reader"]) == {"R07"}
    for _, row in answers.iterrows():
        assert (row["answer"], row["confidence"]) == plan[row["image"]]
    assert answers.set_index("image").loc[names[0], "findings"] == "Effusion"
    assert all(pd.to_datetime(answers["timestamp"], utc=True).notna())

    summary = score_files(folder / "answer_key" / "key.csv", [files[0]], tmp_path / "scores")
    assert summary["readers"]["R07"]["correct"] == 5 and summary["readers"]["R07"]["accuracy"] == pytest.approx(5 / 8)

    # another reader on the same browser starts empty; the first reader's answers stay stored
    driver.find_element(By.ID, "switch-reader").click()
    start(driver, "R08")
    assert "answered 0 /" in driver.find_element(By.ID, "progress").text
    assert driver.execute_script("return window.exportCSV(false)").strip() == "reader,image,answer,confidence,findings,timestamp"
