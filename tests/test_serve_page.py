"""The attention page in a real browser: headless Chromium driven by selenium against `mt serve`.

Skips cleanly when selenium, Chromium or chromedriver is missing (`.ci/run` installs Debian's
`chromium` and `chromium-driver`). MT_SERVE_SCREENSHOT=PATH also saves the screenshot there
(that is how docs/serve.png is made).
"""

from __future__ import annotations

import os
import shutil

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
webdriver = pytest.importorskip("selenium.webdriver")

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from mt.files import read_lines  # noqa: E402
from serve_server import Server, call  # noqa: E402

WAIT_S = 120  # a bound on a hang, not a speed requirement
# without these, Chromium in a closed network stalls on first-run, sync and update requests
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,800", "--hide-scrollbars"]


def find(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None)
    if path is None:
        pytest.skip(f"{name} not found (apt-get install chromium chromium-driver)")
    return path


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = find("chromium")
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=find("chromedriver")))
    yield driver
    driver.quit()


@pytest.fixture
def server(toy_run):
    server = Server(toy_run / "run")
    yield server
    assert server.stop() == 0


def wait(driver, condition):
    return WebDriverWait(driver, WAIT_S).until(lambda d: condition(d))


def highlighted(driver) -> tuple[int, int, int]:
    """(active tokens, lines drawn, heatmap cells in focus)."""
    return tuple(driver.execute_script("""
        const lines = [...document.querySelectorAll('#lines line')].filter(l => l.style.display !== 'none');
        return [document.querySelectorAll('#lines .token.active').length, lines.length,
                document.querySelectorAll('#heatmaps td.focus').length];"""))


def test_page_translates_and_shows_attention(server, browser, toy_run, tmp_path):
    sentence = read_lines(toy_run / "data/test.src")[3]
    (expected,) = call(server.url, "/v1/translate", {"text": [sentence], "attention": True})[1]["results"]
    rows, cols = len(expected["attention"]["target_tokens"]), len(expected["attention"]["source_tokens"])

    browser.get(server.url + "/")
    wait(browser, lambda d: "step" in d.find_element(By.ID, "model-info").text)
    box = browser.find_element(By.ID, "source")
    box.send_keys(sentence + Keys.ENTER)
    wait(browser, lambda d: d.find_element(By.ID, "translation").text)
    assert browser.find_element(By.ID, "translation").text == expected["translation"]
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#heatmaps td.cell"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#heatmaps td.cell")) == rows * cols
    assert browser.find_elements(By.CSS_SELECTOR, "#heatmaps td.aligned")  # the word alignments are marked

    assert highlighted(browser) == (0, rows * cols, 0)
    source_tokens = browser.find_elements(By.CSS_SELECTOR, "#lines .token.col")
    ActionChains(browser).move_to_element(source_tokens[0]).perform()
    assert highlighted(browser) == (1, rows, rows)  # who looked at the first source token
    target_tokens = browser.find_elements(By.CSS_SELECTOR, "#lines .token.row")
    ActionChains(browser).move_to_element(target_tokens[min(2, rows - 1)]).perform()
    assert highlighted(browser) == (1, cols, cols)  # where the third output token looked
    browser.save_screenshot(str(tmp_path / "serve.png"))
    if os.environ.get("MT_SERVE_SCREENSHOT"):
        browser.save_screenshot(os.environ["MT_SERVE_SCREENSHOT"])

    # from the keyboard: arrow keys move between tokens; the selects choose what is shown
    browser.execute_script("arguments[0].focus()", target_tokens[0])
    ActionChains(browser).send_keys(Keys.ARROW_DOWN).perform()
    assert browser.switch_to.active_element.get_attribute("data-index") == "1"
    heads = len(expected["attention"]["attention"]["cross"][0])
    Select(browser.find_element(By.ID, "head")).select_by_value("all")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#heatmaps .panel")) == heads
    Select(browser.find_element(By.ID, "kind")).select_by_value("encoder")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#heatmaps td.cell")) == heads * cols * cols
