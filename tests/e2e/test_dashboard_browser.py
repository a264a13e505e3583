"""The dashboard in a real browser: headless Chromium (Debian package) driven by Selenium
through Debian's chromedriver, against `triage api` on loopback, with an exam scored and
delivered by the embedded product (storescu -> `triage serve`). Each page is checked on
what a person sees; screenshots are saved under the test's temp directory."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_results_to_archive import _listener_up
from tests.integration.listener_helpers import free_port, storescu
from tests.integration.product_helpers import TRIAGE, Stack, exam_status, small_exam, wait_until

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def product(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str, str, str]]:
    """(stack, API base URL, viewer token, admin token) with one delivered exam."""
    if shutil.which("chromium") is None or shutil.which("chromedriver") is None:
        pytest.skip("chromium not installed (apt-get install chromium chromium-driver)")
    root = tmp_path_factory.mktemp("dashboard")
    port, api_port = free_port(), free_port()
    stack = Stack(root / "stack", extra_env={"TRIAGE_DICOM_PORT": str(port),
                                             "TRIAGE_API_PORT": str(api_port)})
    try:
        serve = stack.spawn("serve", TRIAGE_API_PORT=str(free_port()))
        _listener_up(stack, port)
        uid, files = small_exam(root / "exam", seed=41)
        sent = storescu(port, files)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        wait_until(lambda: exam_status(stack.db, uid) == "delivered", 240, "exam delivered",
                   stack.logs)
        serve.stop()
        stack.spawn("api")
        base = f"http://127.0.0.1:{api_port}"

        def token(role: str, name: str) -> str:
            out = subprocess.run([TRIAGE, "tokens", "create", "--role", role, "--name", name],
                                 env=stack.env, capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, out.stdout + out.stderr
            return out.stdout.strip().splitlines()[-1].split()[-1]

        viewer, admin = token("viewer", "reading-room-1"), token("admin", "pacs-admin")
        import httpx

        def api_up() -> bool:
            try:
                return httpx.get(base + "/dashboard/login", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(api_up, 90, "API up", stack.logs)
        yield stack, base, viewer, admin
    finally:
        stack.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _login(driver: object, base: str, token: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(base + "/dashboard/login")  # type: ignore[attr-defined]
    driver.find_element(By.ID, "token").send_keys(token)  # type: ignore[attr-defined]
    driver.find_element(By.ID, "login").click()  # type: ignore[attr-defined]


def _text(driver: object, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.ID, element_id).text)  # type: ignore[attr-defined]


def test_a_viewer_sees_the_worklist_and_the_exam_but_not_the_uncalibrated_score(
    product: tuple[Stack, str, str, str], browser: object, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    _, base, viewer, _ = product
    _login(browser, base, "trg_wrong")
    assert "Unknown or revoked token" in _text(browser, "login-error")
    _login(browser, base, viewer)
    worklist = _text(browser, "worklist")
    browser.save_screenshot(str(tmp_path / "worklist.png"))  # type: ignore[attr-defined]
    assert "NOT TRIAGED" in worklist and "delivered" in worklist
    assert "(admins only)" in worklist  # demo weights: the score is for admins only
    assert "not verified" in worklist  # the reason a person reads
    browser.find_element(By.CSS_SELECTOR, "#worklist tr.exam a").click()  # type: ignore[attr-defined]
    assert _text(browser, "exam-status") == "delivered"
    members = _text(browser, "members")
    assert "gmic-testing-small" in members and "synthetic_demo" in members
    latest = _text(browser, "latest-run")
    assert "UNCALIBRATED / INVESTIGATIONAL" in latest and "admins only" in latest
    thumbs = browser.find_elements(By.CSS_SELECTOR, "#overlays img.thumb")  # type: ignore[attr-defined]
    assert len(thumbs) == 4
    assert all(browser.execute_script(  # type: ignore[attr-defined]
        "return arguments[0].complete && arguments[0].naturalWidth > 0", t) for t in thumbs)
    assert not browser.find_elements(By.ID, "retry")  # type: ignore[attr-defined]
    browser.save_screenshot(str(tmp_path / "exam.png"))  # type: ignore[attr-defined]


def test_an_admin_sees_history_with_plots_and_drift_and_the_system_page(
    product: tuple[Stack, str, str, str], browser: object, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    _, base, _, admin = product
    _login(browser, base, admin)
    assert "(admins only)" not in _text(browser, "worklist")  # admins see the score
    browser.get(base + "/dashboard/history")  # type: ignore[attr-defined]
    assert browser.find_elements(By.CSS_SELECTOR, "#weekly-plot svg g.box")  # type: ignore[attr-defined]
    assert "reference period" in _text(browser, "drift")
    browser.save_screenshot(str(tmp_path / "history.png"))  # type: ignore[attr-defined]
    browser.get(base + "/dashboard/system")  # type: ignore[attr-defined]
    assert _text(browser, "queue-depth") == "0"
    assert "gmic-testing-small" in _text(browser, "weights")
    assert "No exam is being scored." in _text(browser, "workers")
    browser.save_screenshot(str(tmp_path / "system.png"))  # type: ignore[attr-defined]
