"""The reports (a run's and a bench's) in a real headless Chromium: every figure renders with data in it,
and the page shows it.

Needs Debian's `chromium` (scripts/setup.sh installs it with apt-get when run as root); skips otherwise.
"""

import json
import re
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.slow     # a real headless Chromium per report

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


def render(exe, tmp_path, report):
    """One Chromium pass over `report` at 1280 x 3600 px: (the layout probe's numbers, a screenshot file)."""
    probe = report.parent / "probe.html"        # beside the report, so its relative links resolve
    probe.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
    shot = tmp_path / f"{report.parent.name}.png"
    try:
        dom = browse(exe, tmp_path, "--window-size=1280,3600", f"--screenshot={shot}", "--dump-dom", probe.as_uri())
    finally:
        probe.unlink()                          # the run directory is shared with other tests
    m = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert m, "the page did not run its layout probe"
    assert shot.exists(), "no screenshot"
    return json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&")), shot


@pytest.fixture(scope="module")
def run_page(request, tmp_path_factory):
    """The shared run of conftest.small_run (made by test_report_export.make_run), rendered once."""
    exe = chromium()                            # skip before the run is made
    run = request.getfixturevalue("small_run")[0]
    return render(exe, tmp_path_factory.mktemp("browser"), run / "report.html")


@pytest.fixture(scope="module")
def bench_page(request, tmp_path_factory):
    """The shared bench of conftest.small_bench (test_report_export.make_bench), rendered once; and its result."""
    exe = chromium()
    bench, res = request.getfixturevalue("small_bench")
    info, shot = render(exe, tmp_path_factory.mktemp("browser-bench"), bench / "report.html")
    return info, shot, res


def test_every_figure_renders_with_data(run_page):
    info, _ = run_page
    figs = {f["name"]: f for f in info["figures"]}
    assert set(figs) == FIGURES
    for name, f in figs.items():
        assert f["w"] > 900 and f["h"] > 120, (name, f)          # laid out at the page width, not collapsed
        assert f["paths"] >= 10 and f["texts"] >= 5, (name, f)    # bars, lines, markers and axis labels
    assert info["images"] == 0                                    # nothing to fetch: all figures are inline SVG


def colour_counter(shot, size):
    """near(rgb): how many pixels of the screenshot are within 12 of that colour."""
    PIL = pytest.importorskip("PIL.Image")
    img = PIL.open(shot).convert("RGB")
    assert img.size == size
    colors = img.getcolors(maxcolors=1 << 20)
    assert len(colors) > 200                                      # a page, not a blank or error screen

    def near(rgb, tol=12):
        return sum(n for n, c in colors if all(abs(a - b) <= tol for a, b in zip(c, rgb)))
    return near


def test_screenshot_shows_the_figures(run_page):
    _, shot = run_page
    near = colour_counter(shot, (1280, 3600))
    assert near((0x4C, 0x78, 0xA8)) > 2000                        # the palette's blue (lines, bars)
    assert near((0xF5, 0x85, 0x18)) > 1000                        # and its orange (test curve, second label)
    assert near((0x54, 0xA2, 0x4B)) > 1000                        # kept generations (green)
    print(f"screenshot: {shot}")


def test_bench_figure_renders_with_data(bench_page):
    info, shot, res = bench_page
    (fig,) = info["figures"]
    assert fig["name"] == "bench-comparison" and fig["w"] > 900 and fig["h"] > 120, fig
    assert fig["paths"] >= 10 and fig["texts"] >= 5, fig
    assert fig["marks"] == 2 * len(res["runs"]), fig              # each run: a seed dot and a point vs. tokens
    assert info["images"] == 0
    near = colour_counter(shot, (1280, 3600))
    for rgb in ((0x4C, 0x78, 0xA8), (0xF5, 0x85, 0x18), (0x54, 0xA2, 0x4B)):   # S3, ZeroGen, gold data
        assert near(rgb) > 150, rgb
    print(f"screenshot: {shot}")
