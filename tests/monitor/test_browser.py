"""The dashboard in a real browser: Debian's headless Chromium driven by
Selenium through /usr/bin/chromedriver (nothing downloaded), loading the
gmetad served on loopback for the article's two-node cluster."""
from __future__ import annotations

import os
import re
import shutil
import tempfile

import pytest

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def _browser_problem() -> str | None:
    try:
        import selenium
        del selenium
    except ImportError:
        return "needs selenium (pip install -e .[test])"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"needs {path} (apt-get install chromium chromium-driver)"
    return None


@pytest.fixture
def browser():
    problem = _browser_problem()
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the browser test but: {problem}", pytrace=False)
        pytest.skip(problem)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not fetch anything
    profile = tempfile.mkdtemp(prefix="halb-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
              "--disable-default-apps", "--disable-extensions", f"--user-data-dir={profile}",
              "--window-size=1280,1000"):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    drv.set_page_load_timeout(20)
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _points(d: str) -> int:
    return len(re.findall(r"[ML]\s*-?[0-9.]+,-?[0-9.]+", d))


def test_dashboard_in_chromium(cluster, browser):
    from selenium.webdriver.common.by import By

    _, base, _ = cluster
    browser.get(base + "/")
    assert "Grid Report" in browser.title
    h2 = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "h2.cluster")]
    assert h2 == ["Mon Cluster"]
    hosts = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "a.hostlink")]
    assert hosts == ["N1", "N2"]
    assert browser.find_element(By.CSS_SELECTOR, ".hosts-up").text == "2"
    # the graphs are SVG rendered by the server, with data: a path through several points
    paths = browser.find_elements(By.CSS_SELECTOR, "div.host-graphs svg.graph path.series")
    assert len(paths) == 2
    for p in paths:
        assert _points(p.get_attribute("d")) >= 2
    # the cluster's graphs (all hosts): load, CPU, memory, network
    cluster_paths = browser.find_elements(By.CSS_SELECTOR, "div.cluster-graphs svg.graph path.series")
    assert len(cluster_paths) == 4 and all(_points(p.get_attribute("d")) >= 2 for p in cluster_paths)
    # follow the link to N2's page
    browser.find_element(By.LINK_TEXT, "N2").click()
    assert browser.find_element(By.CSS_SELECTOR, "h1.hostname").text.startswith("N2")
    assert "/host/Mon%20Cluster/N2" in browser.current_url
    graphs = browser.find_elements(By.CSS_SELECTOR, "svg.graph")
    assert len(graphs) >= 4
    drawn = [g for g in graphs if g.find_elements(By.CSS_SELECTOR, "path.series")]
    assert len(drawn) >= 4
    # choose another period and one metric with the form
    browser.get(browser.current_url.split("?")[0] + "?r=day&m=mem_free")
    titles = [t.text for t in browser.find_elements(By.CSS_SELECTOR, "svg.graph text")]
    assert any("N2 mem_free (last day)" in t for t in titles)
    box = browser.find_element(By.CSS_SELECTOR, 'input[name="m"][value="mem_free"]')
    assert box.is_selected()
