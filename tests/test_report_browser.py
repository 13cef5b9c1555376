"""The HTML report in a real browser: headless Chromium renders it and dumps its DOM.

The session fixture installs Debian's ``chromium`` with apt-get when it is missing
(``sudo -n`` when not root) and skips, saying why, only when that fails. The report has no
script, so image decoding is checked twice from the outside: every ``<img class="plot">``
``data:`` URI of the browser's DOM decodes to a PNG in Python, and the screenshot of the
report with figures has far more coloured pixels than the same report without them.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from rtopt_lab import dashboard as d
from rtopt_lab.gates import GateVerdict, combine
from rtopt_lab.ope import evaluate
from rtopt_lab.policies import FixedPolicy, LinUCB, fit_from_log

pytestmark = pytest.mark.slow

_NAMES = ("chromium", "chromium-browser")
_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync")


def _find_chromium() -> str | None:
    for name in _NAMES:
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of a chromium binary, installed with apt-get when absent."""
    found = _find_chromium()
    if found:
        return found
    if shutil.which("apt-get") is None:
        pytest.skip("chromium is not installed and apt-get is not available to install it")
    if os.geteuid() == 0:
        prefix: list[str] = []
    elif shutil.which("sudo"):
        prefix = ["sudo", "-n"]
    else:
        pytest.skip("chromium is not installed; installing it needs root or sudo (apt-get install -y chromium)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}

    def apt(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*prefix, "apt-get", *args], capture_output=True, text=True, env=env,
                              timeout=1200, check=False)

    result = apt("install", "-y", "chromium")
    if result.returncode != 0:                      # stale package lists: update, then retry
        apt("update")
        result = apt("install", "-y", "chromium")
    found = _find_chromium()
    if result.returncode != 0 or found is None:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        pytest.skip(f"could not install chromium with apt-get (exit {result.returncode}): {' | '.join(tail)}")
    return found


def _run(binary: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    cmd = [binary, *_FLAGS, f"--user-data-dir={profile}", *args]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"chromium did not finish within 120 s: {' '.join(cmd)}")
    assert out.returncode == 0, f"chromium failed ({out.returncode}): {out.stderr[-2000:]}"
    return out


def _screenshot(binary: str, tmp: Path, page: Path, name: str) -> np.ndarray:
    png = tmp / f"{name}.png"
    _run(binary, tmp, "--hide-scrollbars", f"--screenshot={png}", "--window-size=1280,2000", page.as_uri())
    assert png.exists(), "chromium wrote no screenshot"
    return mpimg.imread(png)


def _coloured(pixels: np.ndarray) -> int:
    """Pixels with a saturated colour (plot markers, lines, bars; text is black or grey)."""
    rgb = pixels[..., :3]
    return int((rgb.max(axis=-1) - rgb.min(axis=-1) > 0.2).sum())


def _inked(pixels: np.ndarray) -> int:
    """Pixels that are not (near) white."""
    return int((pixels[..., :3].min(axis=-1) < 0.85).sum())


class _Dom(HTMLParser):
    def __init__(self):
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data):
        self.text.append(data)

    def find(self, tag: str, **attrs: str) -> list[dict[str, str]]:
        return [a for t, a in self.elements if t == tag and all(
            (k == "class_" and v in a.get("class", "").split()) or a.get(k) == v for k, v in attrs.items())]


@pytest.fixture(scope="module")
def reports(sim, tmp_path_factory):
    """The same evaluation reported with and without figures."""
    log = sim.simulate_log(3000, logging_policy="epsilon", epsilon=0.3, seed=5)
    policies = {"production": FixedPolicy(sim.catalog), "linucb": fit_from_log(LinUCB(sim.catalog), log)}
    results = evaluate(log, policies, estimators=("ips", "dr"), baseline="production", progress=False).to_frame()
    ref, cur = d.split_by_time(log)
    drift = d.drift_table(ref, cur)
    figures = {"OPE estimates against the baseline": d.forest_plot(results),
               "Pareto front of quality against tokens": d.pareto_plot(d.pareto_frame(d.arm_points(log))),
               "Drift between the two halves of the log": d.drift_plot(drift)}
    gates = {"linucb": combine(GateVerdict("trust_region", "pass"),
                               GateVerdict("quality_floor", "fail", ("quality ci_low 0.41 < floor 0.45",)),
                               gate="all")}
    tmp = tmp_path_factory.mktemp("browser")
    kw = dict(title="Weekly evaluation <linucb>", results=results, gates=gates,
              phases={"production": "general", "linucb": "shadow"}, generated_at=datetime(2026, 1, 5, tzinfo=UTC))
    full = d.write_report(tmp / "report.html", figures=figures, extra_tables={"Drift": drift}, **kw)
    bare = d.write_report(tmp / "bare.html", **kw)
    return full, bare, results, figures, tmp


def test_screenshot_is_rendered_with_the_figures(chromium, reports):
    full, bare, _, _, tmp = reports
    shot = _screenshot(chromium, tmp, full, "full")
    assert shot.shape[:2] == (2000, 1280)
    assert shot[..., :3].std() > 0.05, "the screenshot is blank"
    plain = _screenshot(chromium, tmp, bare, "bare")
    assert plain[..., :3].std() > 0.02, "the report without figures rendered blank"
    # the decoded figures (forest, Pareto and drift plots start within the first 2000 px)
    # add ink and colour that the same report without figures does not have
    assert _coloured(shot) > 2 * _coloured(plain) + 2000, (_coloured(shot), _coloured(plain))
    assert _inked(shot) > _inked(plain) + 20_000, (_inked(shot), _inked(plain))


def test_browser_dom_has_summary_gates_and_decodable_plots(chromium, reports):
    full, _, results, figures, tmp = reports
    out = _run(chromium, tmp, "--dump-dom", full.as_uri())
    dom = _Dom()
    dom.feed(out.stdout)
    assert dom.find("h1", id="title") and "Weekly evaluation <linucb>" in "".join(dom.text)
    rows = dom.find("tr", class_="candidate")
    assert sorted(r["data-candidate"] for r in rows) == sorted(results["candidate"].unique())
    assert dom.find("section", id="summary") and dom.find("table", id="summary-table")
    assert dom.find("section", id="gates")
    gate = dom.find("div", class_="gate")
    assert [g["data-status"] for g in gate] == ["fail"]
    assert "quality_floor: quality ci_low 0.41 < floor 0.45" in "".join(dom.text)
    assert not dom.find("script") and not dom.find("link")
    imgs = dom.find("img", class_="plot")
    assert [i["alt"] for i in imgs] == list(figures)
    for img in imgs:
        assert img["src"].startswith("data:image/png;base64,")
        png = base64.b64decode(img["src"].split(",", 1)[1], validate=True)
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        pixels = mpimg.imread(io.BytesIO(png), format="png")
        assert min(pixels.shape[:2]) > 100 and pixels[..., :3].std() > 0.01
    assert dom.find("table", id="table-drift")


_MEASURE = """<script>
(() => {
  const page = document.documentElement;
  const out = {viewport: page.clientWidth, page_scroll_width: page.scrollWidth, tables: {}};
  for (const t of document.querySelectorAll("table[id]")) {
    const wrap = t.parentElement;
    out.tables[t.id] = {right: t.getBoundingClientRect().right, width: t.scrollWidth,
                        wrap_class: wrap.className, wrap_overflow_x: getComputedStyle(wrap).overflowX,
                        wrap_right: wrap.getBoundingClientRect().right, wrap_client_width: wrap.clientWidth,
                        wrap_scroll_width: wrap.scrollWidth};
  }
  document.body.setAttribute("data-layout", JSON.stringify(out));
})();
</script>"""


def _layout(binary: str, tmp: Path, report: Path, width: int) -> dict:
    """Where the browser laid out every table at a window ``width`` px wide.

    The report itself has no script and forbids any (CSP); a copy without the CSP meta tag
    and with a measuring script at the end of the body is rendered instead, and the script
    writes the boxes into the DOM that ``--dump-dom`` prints.
    """
    import json
    import re

    text = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", report.read_text(encoding="utf-8"))
    page = tmp / f"measure-{width}.html"
    page.write_text(text.replace("</body>", f"{_MEASURE}</body>"), encoding="utf-8")
    out = _run(binary, tmp, "--dump-dom", f"--window-size={width},1200", page.as_uri())
    dom = _Dom()
    dom.feed(out.stdout)
    body = dom.find("body")
    assert body and body[0].get("data-layout"), "the measuring script did not run"
    return json.loads(body[0]["data-layout"])


@pytest.mark.parametrize("width", [1400, 700])
def test_wide_tables_stay_inside_the_page_or_scroll_in_their_wrapper(chromium, reports, width):
    full, _, _, _, tmp = reports
    layout = _layout(chromium, tmp, full, width)
    vw = layout["viewport"]
    assert layout["page_scroll_width"] <= vw, f"the page scrolls sideways at {width} px: {layout}"
    drift = layout["tables"]["table-drift"]
    for name, box in layout["tables"].items():
        inside = box["right"] <= vw + 0.5
        scrolls = (box["wrap_class"] == "table-wrap" and box["wrap_overflow_x"] in ("auto", "scroll")
                   and box["wrap_right"] <= vw + 0.5)
        assert inside or scrolls, f"{name} is cut off at {width} px: {box} (viewport {vw})"
    if width == 1400:   # the drift table fits a desktop window whole
        assert drift["right"] <= vw and drift["wrap_scroll_width"] <= drift["wrap_client_width"]
    else:               # and scrolls inside its wrapper on a narrow one, the page itself does not
        assert drift["wrap_scroll_width"] > drift["wrap_client_width"] and drift["wrap_overflow_x"] == "auto"
