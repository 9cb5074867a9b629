"""Notebooks 05 and 06 in a real JupyterLab, driven by headless Chromium: what a user clicks is what the study gets."""

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} missing: apt-get install chromium chromium-driver (.ci/run does)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium not installed (pip install -e '.[dev]')"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(_missing() is not None, reason=str(_missing()))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, check, timeout: float = 60.0, every: float = 0.25):
    """Poll check() until it returns something truthy; fail naming what did not happen."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            got = check()
        except Exception:  # an element not drawn yet, a page still loading
            got = None
        if got:
            return got
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def study(repo, tmp_path_factory):
    """The smoke profile's samples (steps 01-03), and notebooks 05 and 06 with parameters pointing at them."""
    import papermill

    root = tmp_path_factory.mktemp("lab")
    out, work = root / "smoke", root / "work"
    exe = shutil.which("emojidiff", path=str(Path(sys.executable).parent)) or "emojidiff"
    params = repo / "params" / "smoke.yaml"
    proc = subprocess.run([exe, "run", "--params", str(params), "--out", str(out), "--only", "01", "02", "03",
                           "--no-progress"], capture_output=True, text=True, cwd=repo, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    work.mkdir()
    for name in ("05_memorisation.ipynb", "06_human_study.ipynb"):
        papermill.execute_notebook(repo / "notebooks" / name, work / name, prepare_only=True, progress_bar=False,
                                   parameters={"params_path": str(params), "out_dir": str(out)})
    return out, work


@pytest.fixture(scope="module")
def lab(study, tmp_path_factory):
    """JupyterLab on 127.0.0.1 (a free port, a random token) serving the prepared notebooks."""
    _, work = study
    port, token = _free_port(), secrets.token_hex(16)
    home = tmp_path_factory.mktemp("jupyter")
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "OMP_NUM_THREADS": "1"}
    log = open(home / "lab.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
                             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
                             "--LabApp.expose_app_in_browser=True", "--allow-root"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:

        def up():
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited: {(home / 'lab.log').read_text()[-2000:]}")
            return urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)

        _wait("JupyterLab to answer", up, timeout=60)
        yield base, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser(lab):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_script_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()


def _run_notebook(driver, base, token, name):
    """Open a notebook in JupyterLab (loading the page the first time) and run all its cells in a live kernel."""
    if not driver.current_url.startswith(f"{base}/lab"):
        driver.get(f"{base}/lab?token={token}")
        _wait("JupyterLab to load", lambda: driver.execute_script("return !!(window.jupyterapp && "
                                                                  "jupyterapp.shell && jupyterapp.commands)"))
    got = driver.execute_async_script("""
        const [path, done] = [arguments[0], arguments[arguments.length - 1]];
        jupyterapp.restored
            .then(() => jupyterapp.commands.execute('docmanager:open', {path}))
            .then(async (panel) => {
                await panel.context.ready;
                await panel.sessionContext.ready;
                jupyterapp.shell.activateById(panel.id);
                jupyterapp.commands.execute('notebook:run-all-cells');  // the page is polled for what it draws
                done(true);
            })
            .catch((e) => done(String(e)));""", name)
    assert got is True, f"could not run {name}: {got}"


def _visible_text(driver, css):
    return [e.text for e in driver.find_elements("css selector", css) if e.is_displayed()]


def _answers(csv: Path) -> list[str]:
    return csv.read_text().splitlines()[1:] if csv.is_file() else []


def test_browser_slider_and_study_answers_in_jupyterlab(study, lab, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    out, _ = study
    base, token = lab
    t0 = time.monotonic()

    # 05: the nearest-neighbour browser; move its sample slider one step with the keyboard
    _run_notebook(browser, base, token, "05_memorisation.ipynb")
    xpath = "//div[contains(@class,'widget-hslider')][.//label[normalize-space()='sample']]"
    slider = _wait("the browser's sample slider", lambda: browser.find_element("xpath", xpath), timeout=120)
    assert slider.size["width"] >= 600, f"slider only {slider.size['width']} px wide"
    caption = _wait("the browser's caption", lambda: [t for t in _visible_text(browser, ".widget-html-content")
                                                      if t.startswith("sample 1 of ")])
    n = int(caption[0].split(" of ")[1].split()[0])
    assert n > 1 and slider.find_element("css selector", ".widget-readout").text.strip() == "1"
    handle = slider.find_element("css selector", ".noUi-handle")
    handle.click()
    handle.send_keys(Keys.ARROW_RIGHT)
    moved = _wait("the caption to follow the slider", lambda: [t for t in _visible_text(
        browser, ".widget-html-content") if t.startswith(f"sample 2 of {n} ")], timeout=30)
    assert slider.find_element("css selector", ".widget-readout").text.strip() == "2", moved
    tiles = _visible_text(browser, ".widget-html-content div")
    assert any(t.startswith("sample 2 of ") and "min MSE" in t for t in tiles)
    assert any(t.startswith("#1: ") and "MSE" in t for t in tiles), tiles[:6]

    # 06: the study; a double-click on an answer records exactly one answer, a key press one more
    csv = out / "human_study" / "answers.csv"
    assert _answers(csv) == []
    _run_notebook(browser, base, token, "06_human_study.ipynb")
    left = _wait("the answer buttons", lambda: [b for b in browser.find_elements("css selector", "button")
                                                if b.text.strip() == "this one (left)" and b.is_displayed()],
                 timeout=120)[0]
    _wait("the first pair", lambda: [t for t in _visible_text(browser, ".widget-html-content")
                                     if t.startswith("0 of 10 answered")])
    time.sleep(0.6)  # a rater looks at the pair first (the widget ignores answers within 0.5 s of drawing one)
    ActionChains(browser).double_click(left).perform()
    _wait("the status to count one answer", lambda: [t for t in _visible_text(browser, ".widget-html-content")
                                                     if t.startswith("1 of 10 answered")], timeout=30)
    time.sleep(1.5)  # time for a second answer to arrive, were the double-click counted twice
    rows = _answers(csv)
    assert len(rows) == 1 and ",left," in rows[0], rows
    task = browser.find_element("xpath", "//div[contains(@class,'widget-vbox')][.//button[normalize-space()="
                                         "'this one (right)']][.//progress or .//div[contains(@class,'progress')]]")
    ActionChains(browser).move_to_element(task).send_keys(Keys.ARROW_RIGHT).perform()  # ipyevents: mouse over
    _wait("a keyboard answer", lambda: len(_answers(csv)) == 2, timeout=30)
    assert ",right," in _answers(csv)[1]
    print(f"browser checks took {time.monotonic() - t0:.1f} s after the smoke steps")
