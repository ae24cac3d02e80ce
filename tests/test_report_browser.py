"""The reports (a run's and a bench's) in a real headless Chromium: every figure renders with data in it,
and the page shows it.

Needs Debian's `chromium` (scripts/setup.sh installs it with apt-get when run as root); skips otherwise.
"""

import json
import re
import shutil
import subprocess

import pytest
from test_report_export import make_bench, make_run

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--disable-dev-shm-usage"]
FIGURES = {"metric-curves", "label-balance", "table6", "screen-counts"}
# Measures each inline figure after layout and writes the numbers into the DOM for --dump-dom.
PROBE = """<script>
const out = [...document.querySelectorAll('figure.plot svg')].map(s => {
  const r = s.getBoundingClientRect();
  return {name: s.dataset.figure, w: r.width, h: r.height, top: r.top + window.scrollY,
          paths: s.querySelectorAll('path').length, texts: s.querySelectorAll('text').length,
          marks: s.querySelectorAll('g[id^="bench-"] use').length};
});
const pre = document.createElement('pre'); pre.id = 'probe';
pre.textContent = JSON.stringify({figures: out, height: document.documentElement.scrollHeight,
                                  images: document.images.length});
document.body.appendChild(pre);
</script>"""


def chromium():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        why = "apt-get is not available" if not shutil.which("apt-get") else "run scripts/setup.sh as root"
        pytest.skip(f"headless chromium is not installed ({why}; Debian packages chromium, chromium-driver)")
    return exe


def browse(exe, tmp_path, *args):
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    cmd = [exe, *FLAGS, f"--user-data-dir={profile}", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    make_run(tmp, tmp / "run", rounds=1)
    return tmp / "run" / "report.html"


@pytest.fixture(scope="module")
def bench_report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser-bench")
    return tmp / "bench" / "report.html", make_bench(tmp)


def measure(exe, tmp_path, report):
    """The layout probe's numbers for `report`, rendered at 1280 px."""
    probe = report.parent / "probe.html"        # beside the report, so its relative links resolve
    probe.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
    dom = browse(exe, tmp_path, "--window-size=1280,3600", "--dump-dom", probe.as_uri())
    m = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert m, "the page did not run its layout probe"
    return json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def test_every_figure_renders_with_data(report, tmp_path):
    info = measure(chromium(), tmp_path, report)
    figs = {f["name"]: f for f in info["figures"]}
    assert set(figs) == FIGURES
    for name, f in figs.items():
        assert f["w"] > 900 and f["h"] > 120, (name, f)          # laid out at the page width, not collapsed
        assert f["paths"] >= 10 and f["texts"] >= 5, (name, f)    # bars, lines, markers and axis labels
    assert info["images"] == 0                                    # nothing to fetch: all figures are inline SVG


def test_screenshot_shows_the_figures(report, tmp_path):
    PIL = pytest.importorskip("PIL.Image")
    exe = chromium()
    shot = tmp_path / "report.png"
    browse(exe, tmp_path, f"--screenshot={shot}", "--window-size=1280,3600", report.as_uri())
    img = PIL.open(shot).convert("RGB")
    assert img.size == (1280, 3600)
    colors = img.getcolors(maxcolors=1 << 20)
    assert len(colors) > 200                                      # a page, not a blank or error screen

    def near(rgb, tol=12):
        return sum(n for n, c in colors if all(abs(a - b) <= tol for a, b in zip(c, rgb)))
    assert near((0x4C, 0x78, 0xA8)) > 2000                        # the palette's blue (lines, bars)
    assert near((0xF5, 0x85, 0x18)) > 1000                        # and its orange (test curve, second label)
    assert near((0x54, 0xA2, 0x4B)) > 1000                        # kept generations (green)
    print(f"screenshot: {shot}")


def test_bench_figure_renders_with_data(bench_report, tmp_path):
    PIL = pytest.importorskip("PIL.Image")
    exe = chromium()
    report, res = bench_report
    info = measure(exe, tmp_path, report)
    (fig,) = info["figures"]
    assert fig["name"] == "bench-comparison" and fig["w"] > 900 and fig["h"] > 120, fig
    assert fig["paths"] >= 10 and fig["texts"] >= 5, fig
    assert fig["marks"] == 2 * len(res["runs"]), fig              # each run: a seed dot and a point vs. tokens
    assert info["images"] == 0
    shot = tmp_path / "bench.png"
    browse(exe, tmp_path, f"--screenshot={shot}", "--window-size=1280,1600", report.as_uri())
    colors = PIL.open(shot).convert("RGB").getcolors(maxcolors=1 << 20)

    def near(rgb, tol=12):
        return sum(n for n, c in colors if all(abs(a - b) <= tol for a, b in zip(c, rgb)))
    for rgb in ((0x4C, 0x78, 0xA8), (0xF5, 0x85, 0x18), (0x54, 0xA2, 0x4B)):   # S3, ZeroGen, gold data
        assert near(rgb) > 150, rgb
    print(f"screenshot: {shot}")
