"""gmetad's dashboard of the cluster itself, in the real headless Chromium
(Debian's chromium + chromedriver through Selenium): the demo's cluster with
`halb exporter`, gmond on both nodes, gmetad on the client polling them.
The page (never reloaded by the test: it refreshes itself) shows who holds
the VIP, the virtual service with its real servers and check states, the
events, markers on the graphs; a real server that stops, then a crash of
the director's node, change it the way a person expects; screenshots of
each state are kept in the test's directory and differ."""
from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import threading
import time

import pytest
from lab_cluster import ObservedCluster, wait_for

from halb.demo import HALB
from halb.lab.netns import stop_popen

pytestmark = [pytest.mark.root, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WEB_PORT = 8080


class Forwarder:
    """127.0.0.1:port on this machine -> an address inside a lab node (the
    browser runs here, gmetad in the client's namespace)."""

    def __init__(self, lab, node, addr):
        self.lab, self.node, self.addr = lab, node, addr
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(64)
        self.port = self.ls.getsockname()[1]
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _pump(self, a, b):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _accept(self):
        while not self.stopped:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            try:
                up = self.lab.socket(self.node)
                up.connect(self.addr)
            except OSError:
                c.close()
                continue
            threading.Thread(target=self._pump, args=(c, up), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, c), daemon=True).start()

    def close(self):
        self.stopped = True
        self.ls.close()


@pytest.fixture
def browser():
    problems = []
    try:
        import selenium  # noqa: F401
    except ImportError:
        problems.append("selenium (pip install -e .[test])")
    problems += [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if problems:
        msg = f"needs {', '.join(problems)}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the browser test but it {msg}", pytrace=False)
        pytest.skip(msg)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")
    profile = tempfile.mkdtemp(prefix="halb-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
              "--disable-default-apps", "--disable-extensions", f"--user-data-dir={profile}",
              "--window-size=1280,2400"):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    drv.set_page_load_timeout(30)
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def observed(tmp_path):
    c = ObservedCluster()
    extra = {}
    try:
        c.up()
        lab = c.lab
        for node in ("N1", "N2"):
            ip = lab.node(node).ip
            log = open(c.base / node / "gmond.out", "a")
            extra[f"gmond-{node}"] = lab.popen(node, HALB + ["gmond", "--bind", ip, "--interval", "1", "--tmax", "1"],
                                               stdout=log, stderr=log)
        conf = c.base / "gmetad.conf"
        conf.write_text(f'data_source "Mon Cluster" 1 {lab.node("N1").ip}:8649 {lab.node("N2").ip}:8649\n')
        cip = lab.node("client0").ip
        log = open(c.base / "gmetad.out", "a")
        extra["gmetad"] = lab.popen("client0", HALB + ["gmetad", "-c", conf, "--listen", f"{cip}:{WEB_PORT}",
                                                       "--data-dir", c.base / "rrds"], stdout=log, stderr=log)
        fwd = Forwarder(lab, "client0", (cip, WEB_PORT))
        yield c, extra, f"http://127.0.0.1:{fwd.port}", tmp_path
        fwd.close()
    finally:
        for p in extra.values():
            stop_popen(p, 10)
        if c.lab is not None:
            c.down()


def test_dashboard_shows_the_cluster_through_a_real_server_stop_and_a_failover(observed, browser):
    from selenium.webdriver.common.by import By

    c, extra, base, tmp = observed
    lab = c.lab
    rip2 = f"{lab.node('N2').rip}:80"
    css = lambda sel: browser.find_elements(By.CSS_SELECTOR, sel)

    def text(sel):
        return " | ".join(e.text for e in css(sel))

    def page_shows(pred, timeout, what):
        # the page is loaded once; it must refresh itself
        return wait_for(lambda: pred(), timeout, what, step=0.5)

    browser.get(base + "/")
    c.curl(6)   # traffic for the graphs and the counters
    page_shows(lambda: "N1" in text("tr.vip td.holder") and len(css("table.service tr.real")) == 2
               and all(e.get_attribute("data-check") == "up" for e in css("table.service tr.real")),
               60, "the VIP held by N1 and both real servers up")
    vip_row = css("tr.vip")[0]
    assert lab.vip in vip_row.text and vip_row.get_attribute("data-holders") == "N1"
    svc = css("table.service")[0]
    assert svc.get_attribute("data-service") == f"TCP {lab.vip}:80" and svc.get_attribute("data-node") == "N1"
    assert "Route" in svc.text and " rr " in svc.text         # Direct Return, the article's scheduler
    page_shows(lambda: css("div.lb-graphs svg.graph path.series"), 30, "per real server graphs")
    assert any(" check" in e.get_attribute("data-metric") for e in css("div.lb-graphs [data-metric]"))
    assert "group_acquired" in text("table.events")
    assert css("p.source-down") == []
    browser.save_screenshot(str(tmp / "1-before.png"))

    # Apache on N2 stops: the director removes it; the page says so by itself
    lab.apache_stop("N2")
    row = lambda: next((e for e in css("table.service tr.real") if e.get_attribute("data-real") == rip2), None)
    page_shows(lambda: row() is not None and row().get_attribute("data-check") == "down"
               and "not in the table" in row().text, 30, "N2's real server shown down and out of the table")
    page_shows(lambda: any(e.get_attribute("data-kind") == "real_removed" and rip2 in e.text
                           for e in css("tr.event")), 15, "the removal in the events")
    page_shows(lambda: css("svg.graph line.marker[data-kind='real_removed']"), 15, "a marker on the graphs")
    browser.save_screenshot(str(tmp / "2-real-server-down.png"))
    lab.apache_start("N2")
    page_shows(lambda: row() is not None and row().get_attribute("data-check") == "up", 30, "N2 back up")

    # N1 crashes: N2 takes the VIP and the table
    c.crash("N1")
    extra.pop("gmond-N1", None)
    page_shows(lambda: css("tr.vip") and css("tr.vip")[0].get_attribute("data-holders") == "N2"
               and css("table.service") and css("table.service")[0].get_attribute("data-node") == "N2",
               40, "the VIP and the service on N2")
    ev = text("table.events")
    assert "node_dead" in ev and "N1" in ev
    kinds = [(e.get_attribute("data-node"), e.get_attribute("data-kind")) for e in css("tr.event")]
    assert ("N2", "group_acquired") in kinds and ("N2", "node_dead") in kinds
    page_shows(lambda: any(e.get_attribute("data-node") == "N1" and e.get_attribute("data-up") == "0"
                           for e in css("span.exporter")), 15, "N1's exporter shown not answering")
    page_shows(lambda: css("svg.graph line.marker[data-kind='node_dead']"), 15, "the failover marked on the graphs")
    browser.save_screenshot(str(tmp / "3-after-failover.png"))

    # every gmond gone: the data source is shown not answering, not as "0 up, 0 down"
    stop_popen(extra.pop("gmond-N2"), 10)
    page_shows(lambda: css("p.source-down"), 20, "the data source shown not answering")
    assert "not answering" in text("p.source-down") and css(".hosts-up") == []
    browser.save_screenshot(str(tmp / "4-source-down.png"))

    shots = [(tmp / n).read_bytes() for n in ("1-before.png", "2-real-server-down.png", "3-after-failover.png",
                                              "4-source-down.png")]
    assert all(s.startswith(b"\x89PNG") for s in shots) and len(set(shots)) == 4
