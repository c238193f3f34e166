"""The dashboard and the report as users open them: Debian's headless Chromium, offline.

Checks the rendered DOM (study name, a trial's artifact, a drawn plotly plot) and Chromium's own
network log: every request the pages made went to 127.0.0.1 or to local files. External host names
cannot even be resolved (host-resolver rules), so nothing leaves the machine. Screenshots are kept
under reports/browser-tests/ (git-ignored) for a person to look at.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "reports" / "browser-tests"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-quic", "--disable-default-apps",
    "--disable-domain-reliability", "--no-pings", "--disable-features=NetworkTimeServiceQuerying,MediaRouter,OptimizationHints",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--window-size=1400,1000",
]


@pytest.fixture(scope="module")
def chromium():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        if os.environ.get("CI"):
            pytest.fail("CI must provide Debian's chromium (see .ci/run)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return exe


def browse(exe, url, tmp, name, what="dom"):
    """Load url; return (DOM or screenshot path, URLs the page requested)."""
    profile = tmp / f"profile-{name}-{what}"
    netlog = tmp / f"netlog-{name}-{what}.json"
    args = [exe, *FLAGS, f"--user-data-dir={profile}", f"--log-net-log={netlog}", "--virtual-time-budget=20000"]
    if what == "dom":
        args += ["--dump-dom", url]
    else:
        SHOTS.mkdir(parents=True, exist_ok=True)
        args += [f"--screenshot={SHOTS / (name + '.png')}", url]
    r = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    log = json.loads(netlog.read_text())
    types = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    requested = []
    for e in log["events"]:
        p = e.get("params", {})
        if types.get(e["type"]) == "URL_REQUEST_START_JOB" and "url" in p:
            page = p.get("initiator", "") != "not an origin" or p["url"].split("#")[0] == url.split("#")[0]
            if page:
                requested.append(p["url"])
    return (r.stdout if what == "dom" else SHOTS / (name + ".png")), requested


def local(u):
    return u.startswith(("http://127.0.0.1:", "file://", "data:", "blob:"))


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("browser")
    r = subprocess.run([sys.executable, "-m", "cvae_opt.run", "--study", "cvae_re", "--trials", "3", "--epochs", "1",
                        "--train-size", "1000"], cwd=d, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return d


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_shows_the_study_its_plots_and_a_trials_artifacts(study_dir, chromium, tmp_path):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "cvae_opt.dashboard", "--port", str(port)], cwd=study_dir,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                studies = json.loads(urllib.request.urlopen(f"{base}/api/studies", timeout=2).read())
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("the dashboard did not answer")
        assert [s["study_name"] for s in studies["study_summaries"]] == ["cvae_re"]
        dom, requested = browse(chromium, f"{base}/dashboard/studies/1", tmp_path, "dashboard-study")
        assert "cvae_re" in dom and "js-plotly-plot" in dom  # the history plot was drawn
        assert requested and all(local(u) for u in requested), [u for u in requested if not local(u)]
        dom, requested = browse(chromium, f"{base}/dashboard/studies/1/trials", tmp_path, "dashboard-trials")
        assert "trial-0-samples.png" in dom and "trial-0-checkpoint.pt" in dom
        assert "Objective 0" not in dom and "mode_pr" in dom  # the study records its metric names
        assert any("/artifacts/" in u for u in requested)  # the samples plot was fetched and shown
        assert all(local(u) for u in requested), [u for u in requested if not local(u)]
        shot, _ = browse(chromium, f"{base}/dashboard/studies/1/trials", tmp_path, "dashboard-trials", what="png")
        assert shot.stat().st_size > 10_000
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_report_opens_offline_from_disk(study_dir, chromium, tmp_path):
    r = subprocess.run([sys.executable, "-m", "cvae_opt.report", "--study", "cvae_re"], cwd=study_dir,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    out = study_dir / "reports" / "cvae_re"
    dom, requested = browse(chromium, (out / "index.html").as_uri(), tmp_path, "report-index")
    assert "Study cvae_re" in dom and 'src="samples.png"' in dom and "Best trial" in dom
    assert all(local(u) for u in requested)  # file:// loads are not in the net log; any http(s) request would be
    dom, requested = browse(chromium, (out / "history.html").as_uri(), tmp_path, "report-history")
    assert "main-svg" in dom  # plotly.js, which only the local plotly.min.js provides, drew the figure
    assert all(local(u) for u in requested)
    shot, _ = browse(chromium, (out / "index.html").as_uri(), tmp_path, "report-index", what="png")
    assert shot.stat().st_size > 10_000
