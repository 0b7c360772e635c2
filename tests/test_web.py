"""The web page (``/``) and the offline API docs (``/docs``, ``/redoc``) against a real ``lieprop serve``.

Plain-HTTP tests check that every asset the pages reference is served by lieprop (relative URLs, 200, nothing from
other hosts) and that the page loads without the API key while ``/v1`` keeps requiring it. Browser tests drive
headless Debian Chromium with Selenium (apt: ``chromium chromium-driver``; PyPI: ``selenium``). They skip when either
is missing, unless ``LIEPROP_REQUIRE_BROWSER=1`` (set by .ci/run), which makes a missing browser a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
from test_service import make_tiny_bundle, start_server

KEY = "web-s3cret"
WATER_XYZ = "3\nwater\nO 0 0 0.117\nH 0 0.757 -0.469\nH 0 -0.757 -0.469\n"
PAGES = ("/", "/docs", "/redoc")
STATIC = Path(__file__).resolve().parent.parent / "lieprop" / "service" / "static"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One keyed server for the module: the page must load without the key and send it to /v1."""
    tmp = tmp_path_factory.mktemp("web")
    s = start_server(tmp, make_tiny_bundle(tmp / "tiny.pt"), "--no-warmup", env={"LIEPROP_API_KEY": KEY})
    yield s
    s.stop()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.base_url, timeout=30) as c:
        yield c


# --------------------------------------------------------------------------------------------------
# Plain HTTP


def references(html: str) -> list[str]:
    """The URLs a page loads: <script src>, <link href>, <img src>, and the ES module imports of a script."""
    tags = re.findall(r"<(?:script|link|img)\b[^>]*?\b(?:src|href)=[\"']([^\"']+)[\"']", html)
    imports = re.findall(r"^\s*import\b[^;]*?from\s+[\"']([^\"']+)[\"']", html, flags=re.M)
    return tags + imports


EXTERNAL = re.compile(r"https?://(?!www\.w3\.org/)[^\s\"'<>)]+")  # an XML namespace is a name, not a request


def test_the_page_and_its_assets_need_no_key_but_the_api_does(http):
    for path in (*PAGES, "/static/app.js", "/static/vendor/3dmol-2.5.5/3Dmol-min.js", "/openapi.json"):
        assert http.get(path).status_code == 200, path
    assert http.get("/v1/models").status_code == 401
    assert http.get("/v1/properties", headers={"X-API-Key": KEY}).status_code == 200
    csp = http.get("/").headers["content-security-policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp


def test_every_asset_of_the_pages_is_served_here_and_points_nowhere_else(http):
    seen: dict[str, str] = {}
    todo = [(page, page) for page in PAGES]
    while todo:
        url, page = todo.pop()
        if url in seen:
            continue
        response = http.get(url)
        assert response.status_code == 200, (url, page)
        seen[url] = response.headers["content-type"]
        if "/vendor/" in url:  # minified third-party bundles name URLs (licenses, links) they never load
            continue
        text = response.text
        assert not EXTERNAL.findall(text), (url, EXTERNAL.findall(text)[:5])
        if url.endswith((".html", ".js")) or url in PAGES:
            for ref in references(text):
                assert not re.match(r"^([a-z]+:)?//", ref), (url, ref)  # relative: served by lieprop
                todo.append((urlsplit(urljoin(f"http://host{url}", ref)).path, url))
    vendored = {u for u in seen if "/vendor/" in u}
    assert {u.rsplit("/", 1)[1] for u in vendored} == {"swagger-ui-bundle.js", "swagger-ui.css",
                                                       "redoc.standalone.js", "3Dmol-min.js"}
    for url in vendored:  # each vendored package has its license next to it
        assert http.get(url.rsplit("/", 1)[0] + "/LICENSE").status_code == 200, url
    assert (STATIC / "vendor" / "README.md").is_file()
    assert not list(STATIC.rglob("*.map")), "no source maps"


def test_return_geometry_is_opt_in(http):
    item = {"id": "water", "numbers": [8, 1, 1], "positions": [[0, 0, 0.1173], [0, 0.7572, -0.4692],
                                                                [0, -0.7572, -0.4692]]}
    head = {"X-API-Key": KEY}
    plain = http.post("/v1/predict", json={"molecules": [item], "properties": ["homo"]}, headers=head).json()
    assert "geometry" not in plain["results"][0]
    body = {"molecules": [item, {"smiles": "CO"}, {"smiles": "C1CC"}], "properties": ["homo"],
            "return_geometry": True}
    results = http.post("/v1/predict", json=body, headers=head).json()["results"]
    assert results[0]["geometry"] == {"numbers": item["numbers"], "positions": item["positions"]}
    # the same values (to float32 rounding: batched with other molecules, the network's sums may run in another order)
    alone, batched = plain["results"][0]["properties"]["homo"], results[0]["properties"]["homo"]
    assert batched["unit"] == alone["unit"] and batched["value"] == pytest.approx(alone["value"], rel=1e-6)
    assert results[1]["geometry"]["numbers"] == [6, 8, 1, 1, 1, 1]
    assert len(results[1]["geometry"]["positions"]) == 6 and results[1]["provenance"]["conformer"]["method"]
    assert "geometry" not in results[2] and results[2]["error"]["code"] == "invalid_smiles"


# --------------------------------------------------------------------------------------------------
# A real browser


def _browser_problem() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    missing = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    if missing:
        return f"{' and '.join(missing)} not found (apt-get install chromium chromium-driver)"
    return None


@pytest.fixture(scope="module")
def browser():
    problem = _browser_problem()
    if problem:
        if os.environ.get("LIEPROP_REQUIRE_BROWSER") == "1":
            pytest.fail(f"LIEPROP_REQUIRE_BROWSER=1 but {problem}")
        pytest.skip(f"no headless browser: {problem}")
    driver = headless_chromium()
    yield driver
    driver.quit()


def headless_chromium(width: int = 1366, height: int = 900):
    """Debian's Chromium, headless, driven by its chromedriver, with the performance log on."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}",
                "--enable-unsafe-swiftshader", "--use-angle=swiftshader", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-default-apps",
                "--disable-sync"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_page_load_timeout(30)
    return driver


def wait_for(driver, predicate, timeout: float = 20, what: str = "the page"):
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    try:  # the page redraws as results arrive: an element found a moment ago may be gone, so look again
        return WebDriverWait(driver, timeout, poll_frequency=0.05,
                             ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)
                             ).until(lambda d: predicate(d))
    except Exception as exc:
        logs = [e["message"] for e in driver.get_log("browser")]
        raise AssertionError(f"timed out waiting for {what}; browser console: {logs}") from exc


def requests_made(driver) -> list[tuple[str, str | None]]:
    """(url, blocked reason) of every request the page started since the last call (Chrome's performance log)."""
    started, blocked = {}, {}
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message["method"] == "Network.requestWillBeSent":
            started[params["requestId"]] = params["request"]["url"]
        elif message["method"] == "Network.loadingFailed":
            blocked[params["requestId"]] = params.get("blockedReason")
    return [(url, blocked.get(rid)) for rid, url in started.items()]


def assert_all_local(driver, server) -> list[str]:
    """Every request went to the server (or stayed in the browser: data:, blob:); one the page's
    Content-Security-Policy blocked never left the browser. Returns the URLs."""
    made = requests_made(driver)
    local = (server.base_url + "/", "data:", "blob:", "about:")
    leaving = [(url, why) for url, why in made if not url.startswith(local) and why != "csp"]
    assert not leaving, leaving
    return [url for url, _ in made]


def open_page_with_key(driver, server):
    from selenium.webdriver.common.by import By

    driver.get(server.base_url + "/")
    # a key kept from an earlier test would load the properties twice (at page load and on submit), redrawing the
    # checkboxes under our feet: start from a page that has no key, so that they are drawn once, after the submit
    driver.execute_script("sessionStorage.clear()")
    driver.get(server.base_url + "/")
    wait_for(driver, lambda d: "API key" in d.find_element(By.ID, "status").text, what="the 401 hint")
    key = driver.find_element(By.ID, "api-key")
    key.clear()
    key.send_keys(KEY)
    driver.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "input[name=property][value=homo]"),
             what="the property checkboxes")
    for name in ("homo", "u0"):  # homo is checked by default, u0 is not
        box = driver.find_element(By.CSS_SELECTOR, f"input[name=property][value={name}]")
        if not box.is_selected():
            box.click()


def test_typed_smiles_give_a_table_with_units_errors_in_their_row_and_a_3d_view(browser, server):
    from selenium.webdriver.common.by import By

    browser.get(server.base_url + "/")
    wait_for(browser, lambda d: "API key" in d.find_element(By.ID, "status").text, what="the 401 hint")
    open_page_with_key(browser, server)
    browser.find_element(By.ID, "molecules").send_keys("CCO ethanol\nC1CC ring-not-closed\n")
    browser.find_element(By.ID, "predict").click()
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#results tbody tr"), what="the results table")
    headers = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#results thead th")]
    assert "homo [eV]" in headers and "u0 [eV]" in headers, headers
    ok = browser.find_element(By.CSS_SELECTOR, "#results tr[data-id=ethanol]")
    value = ok.find_elements(By.CSS_SELECTOR, "td.num")[0].text
    assert re.fullmatch(r"-?[0-9.]+(e-?[0-9]+)?", value), value
    bad = browser.find_element(By.CSS_SELECTOR, "#results tr[data-id=ring-not-closed]")
    assert bad.find_element(By.CSS_SELECTOR, ".error-code").text == "invalid_smiles"
    assert "unclosed ring" in bad.text
    assert browser.find_element(By.ID, "results").get_attribute("aria-live") == "polite"
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#viewer canvas"), what="the 3D viewer canvas")
    caption = browser.find_element(By.ID, "viewer-caption").text
    assert "ETKDGv3" in caption and "MMFF94" in caption and "seed" in caption, caption
    assert not browser.find_element(By.ID, "download").get_attribute("disabled")
    assert_all_local(browser, server)


def test_a_pasted_xyz_declared_as_a_force_field_geometry_is_answered_and_captioned_so(browser, server):
    """The checkbox under the input sends relaxed_with=forcefield (REST), and the 3D view's caption says what the
    user said about the geometry; unchecked, it says nothing of the kind."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    def predict_water(force_field: bool) -> str:
        open_page_with_key(browser, server)
        Select(browser.find_element(By.ID, "input-kind")).select_by_value("xyz")
        box = browser.find_element(By.ID, "forcefield")
        if box.is_selected() != force_field:
            box.click()
        browser.find_element(By.ID, "molecules").send_keys(WATER_XYZ)
        browser.find_element(By.ID, "predict").click()
        wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#results tbody tr.ok"), what="the results")
        return wait_for(browser, lambda d: "as given" in d.find_element(By.ID, "viewer-caption").text
                        and d.find_element(By.ID, "viewer-caption").text, what="the 3D view's caption")

    assert "relaxed with a force field as you said" in predict_water(True)
    assert "force field" not in predict_water(False)
    assert_all_local(browser, server)


def test_an_uploaded_csv_runs_as_a_job_and_shows_the_bad_rows_error(browser, server, tmp_path):
    from selenium.webdriver.common.by import By

    csv = tmp_path / "library.csv"
    csv.write_text("smiles,name\nCCO,ethanol\nC1CC,broken\nCC(=O)O,acetic-acid\n")
    open_page_with_key(browser, server)
    browser.find_element(By.ID, "file").send_keys(str(csv))
    browser.find_element(By.ID, "predict").click()
    # the table is redrawn while the job runs: wait for the finished job, then read the settled table
    wait_for(browser, lambda d: "succeeded" in d.find_element(By.ID, "job-state").text
             and d.find_elements(By.CSS_SELECTOR, "#results tr[data-id=broken]"), timeout=45,
             what="the job's results")
    code = wait_for(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#results tr[data-id=broken] .error-code").text,
                    what="the bad row's error code")
    assert code == "invalid_smiles"
    assert len(browser.find_elements(By.CSS_SELECTOR, "#results tr.ok")) == 2
    assert browser.find_element(By.ID, "job-progress").get_attribute("value") == "1"
    link = browser.find_element(By.ID, "job-results")
    assert link.is_displayed() and link.get_attribute("href").endswith("/results?format=csv")
    assert_all_local(browser, server)


def test_swagger_ui_and_redoc_render_offline(browser, server):
    from selenium.webdriver.common.by import By

    browser.get(server.base_url + "/docs")
    wait_for(browser, lambda d: any(e.text == "/v1/predict" for e in
                                    d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")),
             what="Swagger UI's operations")
    block = browser.find_element(By.CSS_SELECTOR, ".opblock-post")
    assert "POST" in block.text and "/v1/predict" in block.text
    urls = assert_all_local(browser, server)
    assert any(u.endswith("/openapi.json") for u in urls) and any("swagger-ui-bundle.js" in u for u in urls)

    browser.get(server.base_url + "/redoc")
    wait_for(browser, lambda d: "Predict properties of molecules" in d.find_element(By.TAG_NAME, "body").text,
             what="ReDoc's operations")
    assert_all_local(browser, server)
