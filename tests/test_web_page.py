"""The web page at `/`, in a real headless browser (Debian's chromium driven by selenium through
Debian's chromedriver; nothing is downloaded).

The page loads without console errors, shows the served model as the API describes it (sha256,
species, cutoff, parity plots), its live charts fill from the server's own metrics, submitting the
prefilled structure shows the energy the JSON API gives for the same structure, and a bad structure
shows the server's own error message. For a model with an active set (served in-process) the
card names it and the form shows the API's max γ. A screenshot is kept outside the repository
($ACESERVER_SCREENSHOT_DIR, default the test's temporary folder).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path

import httpx
import pytest

from _http_support import TMP, Server, ready, structure_json

pytestmark = pytest.mark.timeout(300)
MODEL = "Si-tiny"       # shipped, with fit errors and parity plots


def _driver():
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    missing = [n for n, p in (("chromium", chromium), ("chromedriver (chromium-driver)", chromedriver)) if not p]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium (the test extra)")
    if missing:
        reason = f"needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(f"CI installs the browser; {reason}")
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1800", "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(chromedriver), options=options)


def _wait(condition, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_web_page_in_headless_chromium():
    from selenium.webdriver.common.by import By

    with Server([MODEL]) as server:
        info = httpx.get(f"{server.url}/v1/models/{MODEL}", timeout=10).json()
        driver = _driver()
        try:
            driver.get(server.url + "/")
            card = _wait(lambda: driver.find_elements(By.CSS_SELECTOR, f'.model[data-model="{MODEL}"]'),
                         what="the model card")[0]
            text = card.text
            assert info["sha256"] in text
            assert "species\nSi" in text and "cutoff\n5.500 Å" in text
            assert f"{info['length_basis']} functions" in text and f"{info['committee_size']} members" in text
            assert "E (eV/atom)" in text and "F (eV/Å)" in text          # fit errors with units
            images = _wait(lambda: [i for i in card.find_elements(By.TAG_NAME, "img")
                                    if driver.execute_script("return arguments[0].naturalWidth", i) > 0],
                           what="parity plots")
            assert len(images) == 2

            # submit the prefilled structure; the page shows what the JSON API computes for it
            xyz = driver.find_element(By.ID, "calc-xyz").get_attribute("value")
            driver.find_element(By.ID, "calc-submit").click()
            shown = _wait(lambda: driver.find_element(By.ID, "calc-energy").get_attribute("data-value"),
                          what="the energy")
            from ase.io import read
            import io

            atoms = read(io.StringIO(xyz), format="extxyz")
            api = httpx.post(f"{server.url}/v1/models/{MODEL}/calculate", timeout=60, json={"structure": {
                "numbers": atoms.numbers.tolist(), "positions": atoms.positions.tolist(),
                "cell": atoms.cell.array.tolist(), "pbc": atoms.pbc.tolist()}}).json()
            assert float(shown) == pytest.approx(api["results"][0]["energy"], rel=1e-12, abs=1e-9)
            # max γ of the form's structure where the model has an active set, else the page says so
            gamma = driver.find_element(By.ID, "calc-gamma")
            if info["gamma_available"]:
                assert "active set (γ)\nSi:" in text
                expected = httpx.post(f"{server.url}/v1/models/{MODEL}/calculate", timeout=60, json={
                    "structure": {"numbers": atoms.numbers.tolist(), "positions": atoms.positions.tolist(),
                                  "cell": atoms.cell.array.tolist(), "pbc": atoms.pbc.tolist()},
                    "properties": ["max_gamma"]}).json()["results"][0]["max_gamma"]
                assert float(gamma.get_attribute("data-value")) == pytest.approx(expected, rel=1e-12)
            else:
                assert "active set (γ)\nnone" in text
                assert "no active set" in gamma.text and gamma.get_attribute("data-value") == ""
            assert driver.find_element(By.ID, "calc-sha").text == info["sha256"]
            rows = driver.find_elements(By.CSS_SELECTOR, "#calc-forces tbody tr")
            assert len(rows) == len(atoms)
            assert "eV/Å³" in driver.find_element(By.ID, "calc-section").text

            # the live charts fill from /metrics.json (a line once two polls have happened)
            _wait(lambda: driver.find_elements(By.CSS_SELECTOR, "#chart-rate polyline"), what="the rate chart")
            _wait(lambda: driver.find_elements(By.CSS_SELECTOR, "#chart-latency polyline"), what="latency chart")
            _wait(lambda: "calculate requests" in driver.find_element(By.ID, "totals").text, what="totals")
            assert _console_errors(driver) == []

            shots = Path(os.environ.get("ACESERVER_SCREENSHOT_DIR", TMP))
            shots.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(shots / "web-page.png"))
            print(f"screenshot: {shots / 'web-page.png'}")

            # a bad structure: the page shows the server's own message
            bad = xyz.replace("\nSi ", "\nC ", 1)
            expected = httpx.post(f"{server.url}/v1/models/{MODEL}/calculate", content=bad, timeout=60,
                                  headers={"Content-Type": "chemical/x-extxyz"}).json()
            assert expected["kind"] == "unknown_element"
            area = driver.find_element(By.ID, "calc-xyz")
            area.clear()
            area.send_keys(bad)
            driver.find_element(By.ID, "calc-submit").click()
            error = _wait(lambda: driver.find_element(By.ID, "calc-error").text, what="the error message")
            assert expected["message"] in error
            assert not driver.find_element(By.ID, "calc-result").is_displayed()
            # the only console entry now is the browser's note of the 422 response itself
            assert all("422" in m for m in _console_errors(driver))
        finally:
            driver.quit()


@contextlib.contextmanager
def _job_clicked(tmp_path, body):
    """A server with jobs, the job of `body` submitted, the page open and the job's row clicked:
    (server, driver, job id); the page must have logged no console errors by the end."""
    from selenium.webdriver.common.by import By

    with Server([MODEL, "--jobs-dir", str(tmp_path / "jobs")]) as server:
        job = httpx.post(f"{server.url}/v1/jobs", json=body, timeout=30).json()["ids"][0]
        driver = _driver()
        try:
            driver.get(server.url + "/")
            link = _wait(lambda: driver.find_elements(By.CSS_SELECTOR, f'tr[data-job="{job}"] a'), what="the job row")
            link[0].click()
            yield server, driver, job
            assert _console_errors(driver) == []
        finally:
            driver.quit()


def test_jobs_list_and_live_energy_plot(tmp_path):
    """A running MD job is listed; clicking it plots its energies from the frame stream as they come
    (the plotted last energy is a frame's energy per atom as the API gives it)."""
    from ase.build import bulk
    from selenium.webdriver.common.by import By

    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(2)
    body = {"kind": "md", "write_every": 20, "parameters": {"steps": 200_000, "seed": 1},
            "structure": structure_json(atoms)}
    with _job_clicked(tmp_path, body) as (server, driver, job):
        _wait(lambda: int(driver.find_element(By.ID, "job-plot").get_attribute("data-frames") or 0) >= 3,
              what="three frames plotted")
        assert len(driver.find_elements(By.CSS_SELECTOR, "#job-plot polyline")) == 2   # E_pot and E_tot
        shown = float(driver.find_element(By.ID, "job-plot").get_attribute("data-last-energy"))
        httpx.delete(f"{server.url}/v1/jobs/{job}", timeout=30)
        lines = httpx.get(f"{server.url}/v1/jobs/{job}/frames", timeout=60).text.splitlines()
        energies = {json.loads(x)["energy"] / len(atoms) for x in lines}
        assert shown in energies


def test_relax_many_job_plots_one_line_per_structure(tmp_path):
    """A relax_many job's frames interleave its structures: the plot draws one E_pot line each."""
    from ase.build import bulk
    from selenium.webdriver.common.by import By

    cells = [bulk("Si", "diamond", a=a) for a in (5.3, 5.43, 5.6)]
    body = {"kind": "relax_many", "parameters": {"fmax": 0.01, "cell_filter": True},
            "structures": [structure_json(c) for c in cells]}
    with _job_clicked(tmp_path, body) as (server, driver, job):
        _wait(lambda: "ended" in driver.find_element(By.ID, "job-plot-title").text, what="the whole stream")
        assert len(driver.find_elements(By.CSS_SELECTOR, "#job-plot polyline")) == len(cells)


def test_web_page_shows_max_gamma():
    """A model with an active set (built as in test_uncertainty_frontends), served in-process by
    uvicorn: the card names its active set and the form shows the API's max_gamma."""
    import threading

    import uvicorn
    from selenium.webdriver.common.by import By

    from _http_support import free_port
    from aceserver.serving.http import ModelRegistry, ServedModel, create_app
    from test_uncertainty_frontends import model_with_active_set

    model = model_with_active_set()
    port = free_port()
    app = create_app(ModelRegistry([ServedModel("si-gamma", model, None)]))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: ready(url), timeout=300, what="the in-process server")
        driver = _driver()
        try:
            driver.get(url + "/")
            card = _wait(lambda: driver.find_elements(By.CSS_SELECTOR, '.model[data-model="si-gamma"]'),
                         what="the model card")[0]
            assert f"active set (γ)\nSi: {model.descriptor_sizes['Si']} rows" in card.text
            xyz = driver.find_element(By.ID, "calc-xyz").get_attribute("value")
            driver.find_element(By.ID, "calc-submit").click()
            shown = _wait(lambda: driver.find_element(By.ID, "calc-gamma").get_attribute("data-value"),
                          what="max γ")
            expected = httpx.post(f"{url}/v1/models/si-gamma/calculate?properties=max_gamma", content=xyz,
                                  headers={"Content-Type": "chemical/x-extxyz"}, timeout=60).json()
            assert float(shown) == expected["results"][0]["max_gamma"]
            assert any(w in driver.find_element(By.ID, "calc-gamma").text
                       for w in ("interpolation", "mild extrapolation", "unreliable"))
            assert _console_errors(driver) == []
        finally:
            driver.quit()
    finally:
        server.should_exit = True
        thread.join(30)


