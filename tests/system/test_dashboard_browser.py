"""The control plane's web dashboard in a real headless browser (Debian's chromium, driven by Selenium).

One lab (prefix ``vmdash``): the demo mesh (tests/system/demo_mesh.py) with a control plane, the client VM
``web`` and the server VM ``api``, whose WorkloadGroup has an httpGet probe (1 s period). The control
plane scrapes its agents every second (``--graph-scrape-interval 1s``) and the page polls every second
(``?refresh=1000``). The browser runs on this host and reaches the control plane's HTTP port, which
listens on 127.0.0.1 in its own namespace, through tests/netns_forward.py.

Checked as a user would see it: both VMs healthy in the workload list; api turning unhealthy on the page
once its application (the probe's target) stops; the web -> api edge of the service graph with a
non-zero rate after traffic; an invalid config file listed on the config page; the VM detail page. No
page logs a browser console message at SEVERE level. Screenshots of every state are written to
``build/test-artifacts/dashboard/`` in the checkout, or ``$VMAGENT_TEST_ARTIFACTS/dashboard/`` (the path
is printed; ``pytest -s`` shows it).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import require_root, require_tool
from tests.netns_forward import LoopbackForward
from tests.system.demo_mesh import API_URL, web_and_api_mesh
from vmagent.common.constants import CP_HTTP_PORT
from vmagent.lab.mesh import MeshLab
from vmagent.lab.wait import wait_for

PERIOD = 1

GROUPS = f"""\
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {{name: web, namespace: demo}}
spec:
  metadata: {{labels: {{app: web}}}}
  template: {{serviceAccount: web, ports: {{http: 8080}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {{name: api, namespace: demo}}
spec:
  metadata: {{labels: {{app: api}}}}
  template: {{serviceAccount: api, ports: {{http: 8080}}}}
  probe:
    periodSeconds: {PERIOD}
    failureThreshold: 2
    timeoutSeconds: 1
    httpGet: {{path: /healthz, port: 8080}}
"""

# A VirtualService whose http route is not a list: refused with the file and the field named.
BAD_VS = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: broken, namespace: demo}
spec:
  hosts: [api.demo.svc.cluster.local]
  http: not-a-list
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshLab]:
    require_root()
    require_tool("curl")
    with web_and_api_mesh(
        Path(tmp_path_factory.mktemp("vmdash")),
        "vmdash",
        "10.230.88.0/24",
        cp_args=["--graph-scrape-interval", "1s"],
        groups=GROUPS,
    ) as lab:
        yield lab


ARTIFACTS = Path(__file__).parents[2] / "build" / "test-artifacts" / "dashboard"


@pytest.fixture(scope="module")
def shots() -> Path:
    """Where the screenshots go: ``$VMAGENT_TEST_ARTIFACTS/dashboard``, else ``build/test-artifacts/dashboard``
    in the checkout (not pytest's tmp dir, which keeps only the last three runs of the machine)."""
    root = os.environ.get("VMAGENT_TEST_ARTIFACTS")
    d = Path(root) / "dashboard" if root else ARTIFACTS
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    print(f"\ndashboard screenshots: {d}")
    return d


@pytest.fixture(scope="module")
def browser(mesh: MeshLab) -> Iterator[Any]:
    require_tool("chromium")
    require_tool("chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-proxy-server", "--window-size=1280,900"):  # fmt: skip
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    assert mesh.cp is not None
    forward = LoopbackForward(mesh.cp.ns, CP_HTTP_PORT)
    driver = webdriver.Chrome(options=opts, service=Service("/usr/bin/chromedriver"))
    driver.base = f"http://127.0.0.1:{forward.port}"  # type: ignore[attr-defined]
    try:
        yield driver
    finally:
        driver.quit()
        forward.close()


def open_page(browser: Any, fragment: str) -> None:
    browser.get(f"{browser.base}/ui?refresh=1000#/{fragment}")


def severe(browser: Any) -> list[str]:
    """Console messages at SEVERE level since the last call (the log is drained by reading it)."""
    return [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def rows(browser: Any) -> dict[str, str]:
    """group ("demo/api") -> health, as the workload table shows it (read in one script: the page
    replaces its content on every refresh)."""
    found: dict[str, str] = browser.execute_script(
        "const out = {};"
        "for (const tr of document.querySelectorAll('tr[data-group]'))"
        "  out[tr.dataset.group] = tr.querySelector('td.health').textContent;"
        "return out;"
    )
    return found


def text(browser: Any, css: str) -> str:
    """The text of the first element ``css`` selects ("" when none does)."""
    found: str = browser.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';", css
    )
    return found


def edge(browser: Any, source: str, destination: str) -> dict[str, str] | None:
    """The graph's edge as drawn: its rate attribute and its label."""
    found: dict[str, str] | None = browser.execute_script(
        "for (const g of document.querySelectorAll('svg#graph g.edge'))"
        "  if (g.dataset.source === arguments[0] && g.dataset.destination === arguments[1])"
        "    return {rps: g.dataset.rps, label: g.querySelector('text').textContent};"
        "return null;",
        source,
        destination,
    )
    return found


def test_dashboard_pages(mesh: MeshLab, browser: Any, shots: Path) -> None:
    from selenium.webdriver.common.by import By

    # The workload list: both VMs, healthy, with agent version, certificate expiry and xDS state.
    open_page(browser, "workloads")
    wait_for(
        lambda: rows(browser) == {"demo/api": "healthy", "demo/web": "healthy"},
        timeout=60,
        interval=0.5,
        what="both VMs healthy on the workload page",
    )
    view = text(browser, "#view")
    assert "0.1.0" in view and "synced" in view and "(in " in view, view
    browser.save_screenshot(str(shots / "01-workloads-healthy.png"))
    assert severe(browser) == []

    # Traffic web -> api; the graph shows the edge with a non-zero rate, error rate and p99.
    web = mesh.vms["web"]
    for _ in range(20):
        r = web.curl(API_URL)
        assert r.stdout.endswith("\n200"), r.stdout
    open_page(browser, "graph")

    def moving() -> dict[str, str] | None:
        e = edge(browser, "demo/web", "demo/api")
        return e if e is not None and float(e["rps"]) > 0 else None

    try:
        e = wait_for(moving, timeout=60, interval=0.5, what="the web -> api edge with a non-zero rate")
    finally:
        assert mesh.cp is not None
        print("graph:", mesh.cp.api("/api/v1/dashboard/graph"))
    label = e["label"]
    assert "req/s" in label and "0.0 % err" in label and "p99" in label, label
    browser.save_screenshot(str(shots / "02-graph.png"))
    assert severe(browser) == []

    # Config objects and validation issues.
    open_page(browser, "config")
    wait_for(
        lambda: text(browser, 'tr[data-object="WorkloadGroup demo/api"]'), timeout=30, what="the config page"
    )
    assert "None: every config file and object is valid." in text(browser, "#issues")
    # an invalid file shows up on the open page, naming the file and the field
    assert mesh.cp is not None
    mesh.cp.write_config("40-bad.yaml", BAD_VS)
    issues = wait_for(
        lambda: (t := text(browser, "#issues")) and "40-bad.yaml" in t and t,
        timeout=30,
        interval=0.5,
        what="the invalid file on the config page",
    )
    assert "VirtualService demo/broken: spec.http: expected a list" in issues, issues
    browser.save_screenshot(str(shots / "03-config-invalid-file.png"))
    (mesh.cp.config_dir / "40-bad.yaml").unlink()
    wait_for(lambda: "None:" in text(browser, "#issues"), timeout=30, interval=0.5, what="the issue gone")
    assert severe(browser) == []

    # One VM's page, reached by its link.
    open_page(browser, "workloads")
    # (found and clicked again if a refresh replaced the row in between)
    wait_for(
        lambda: browser.find_element(By.CSS_SELECTOR, 'tr[data-group="demo/api"] a').click() or True,
        timeout=30,
        what="a click on api's link",
    )
    detail = wait_for(lambda: text(browser, "#detail"), timeout=30, what="api's detail page")
    assert "spiffe://cluster.local/ns/demo/sa/api" in detail
    wait_for(
        lambda: text(browser, 'tr[data-edge="demo/web->demo/api"]'),
        timeout=30,
        what="the web -> api edge on api's page",
    )
    browser.save_screenshot(str(shots / "04-vm-api.png"))
    assert severe(browser) == []

    # api's probe fails (its application stops): the open page turns it unhealthy by itself.
    api = mesh.vms["api"]
    api.stop_apps()
    stopped = time.monotonic()
    wait_for(
        lambda: (
            browser.execute_script("return document.getElementById('detail')?.dataset.health") == "unhealthy"
        ),
        timeout=60,
        interval=0.2,
        what="api unhealthy on its page",
    )
    print(f"api unhealthy on the page {time.monotonic() - stopped:.1f}s after its app stopped")
    browser.save_screenshot(str(shots / "05-vm-api-unhealthy.png"))
    open_page(browser, "workloads")
    wait_for(
        lambda: rows(browser) == {"demo/api": "unhealthy", "demo/web": "healthy"},
        timeout=30,
        interval=0.2,
        what="api unhealthy, web healthy on the workload page",
    )
    assert "health:" in text(browser, 'tr[data-group="demo/api"] td.error')
    browser.save_screenshot(str(shots / "06-workloads-api-unhealthy.png"))
    assert severe(browser) == []
    assert len(list(shots.glob("*.png"))) == 6, sorted(shots.iterdir())
