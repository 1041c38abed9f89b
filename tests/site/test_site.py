"""The built site, checked in a real browser as a reader uses it.

Run by ``make test-site`` (which builds the site first); skipped by ``make test``, which must
not need a browser. It serves ``_build/html`` on 127.0.0.1, opens every page of ``_toc.yml``
in headless Chromium (Debian's ``chromium`` driven by Selenium through Debian's
``chromium-driver``) and asserts, for each page:

- no JavaScript error (uncaught exceptions, rejected promises, console errors, failed loads);
- nothing is fetched from outside the site (readers behind a firewall, and CI, have no CDN);
- MathJax has typeset every equation (no raw ``$$`` or ``\\begin`` left, no TeX error);
- every image has loaded, and images in outputs carry alt text and a caption;
- every internal link points to a page that exists, and to an anchor on it that exists;
- on notebook pages: the stamp line matches the notebook's stamp, the Colab button opens
  this notebook from the repository named in ``_config.yml``, the download button serves
  this notebook, and widget outputs say that they need a live kernel;
- what a reader sees (issue 16): no Markdown table left as raw pipe text; nothing wider than
  the text column unless it scrolls inside its own box with a visible cue (_static/resnorm.js);
  no figure whose smallest text is displayed below 9 pt (its drawn width comes from the PNG's
  size and dpi, its displayed width from the browser); on chapter pages, the goals admonition
  under the title, an Exercises section, and solution cells hidden.

Every page is also opened at a phone's width (390 px), where the same overflow check runs. It
checks that search finds "LayerNorm" and saves screenshots of every page under
``_build/screenshots/``: ``NAME.png`` (the first screen at 1280 px), ``NAME-full.png`` (the whole
page; a long page continues in ``NAME-full-2.png``, ...), and ``NAME-390.png``,
``NAME-390-full.png`` (the same at 390 px).
"""

from __future__ import annotations

import functools
import html.parser
import struct
import http.server
import json
import os
import shutil
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

if os.environ.get("RESNORM_SITE_TEST") != "1":
    pytest.skip("browser test of the built site: run it with `make test-site`", allow_module_level=True)

webdriver = pytest.importorskip("selenium.webdriver", reason="pip install -r requirements-site.txt")
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402

from resnorm import plotting, stamps  # noqa: E402

ROOT = Path(os.environ.get("RESNORM_SITE_ROOT", Path(__file__).resolve().parents[2]))
HTML = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"
WIDTH, HEIGHT = 1280, 900
PHONE_WIDTH = 390  # a common phone's CSS width
FULL_PAGE_MAX_HEIGHT = 12000  # px; a longer page is saved in several "-full" tiles
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"

# Flags that make Chromium quiet on a closed network: without the background-networking
# ones it keeps opening connections (updates, sync, field trials) that get refused.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
    f"--window-size={WIDTH},{HEIGHT}",
]

# Installed before any page script runs: records uncaught errors, rejected promises and
# resources that failed to load (the capture phase sees <script>/<img>/<link> errors).
ERROR_HOOK = """
window.__siteErrors = [];
window.addEventListener('error', function (e) {
  var t = e.target;
  if (t && t !== window && (t.src || t.href)) {
    window.__siteErrors.push('failed to load ' + (t.src || t.href));
  } else {
    window.__siteErrors.push('uncaught ' + (e.message || e) + ' at ' + e.filename + ':' + e.lineno);
  }
}, true);
window.addEventListener('unhandledrejection', function (e) {
  window.__siteErrors.push('unhandled rejection: ' + (e.reason && (e.reason.stack || e.reason)));
});
"""


# --------------------------------------------------------------------------- the site


def _config() -> dict:
    import yaml

    return yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))


def _pages() -> list[tuple[str, Path]]:
    """(html path relative to the site root, source file) for every page of the toc."""
    pages = []
    for src in stamps.toc_files(ROOT):
        rel = src.relative_to(ROOT).with_suffix(".html").as_posix()
        pages.append((rel, src))
    return pages


PAGES = _pages()


def _chapter_pages() -> set[str]:
    """Pages under the parts "Foundations" and "The Transformer": they open with goals and end with exercises."""
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    return {f"{entry['file']}.html" for part in toc.get("parts", []) if part.get("caption") in ("Foundations", "The Transformer")
            for entry in part.get("chapters", [])}


CHAPTER_PAGES = _chapter_pages()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # one line per request would drown pytest's output
        pass


@pytest.fixture(scope="session")
def site_url():
    if not (HTML / "index.html").exists():
        pytest.fail(f"{HTML}/index.html is missing: build the site first (`make book`, or `make test-site`)")
    # Sphinx copies _static/ only when some page is rebuilt: after a change to resnorm.css or
    # resnorm.js alone, `make book` leaves the old copies in place and this test would check them.
    stale = [p.name for p in sorted((ROOT / "_static").glob("resnorm.*"))
             if not (HTML / "_static" / p.name).is_file() or (HTML / "_static" / p.name).read_bytes() != p.read_bytes()]
    if stale:
        pytest.fail(f"the built site has old copies of _static/{stale}: rebuild it (`make clean test-site`)")
    shutil.rmtree(SHOTS, ignore_errors=True)  # no screenshot of a page that is no longer in the toc
    handler = functools.partial(_QuietHandler, directory=str(HTML))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def _find(env: str, names: list[str], extra: list[str] = ()) -> str | None:
    if os.environ.get(env):
        return os.environ[env]
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return next((p for p in extra if Path(p).is_file()), None)


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    chromium = _find("CHROMIUM", ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"])
    driver_path = _find(
        "CHROMEDRIVER",
        ["chromedriver"],
        ["/usr/lib/chromium/chromedriver", f"{os.environ.get('CHROMEWEBDRIVER', '/nonexistent')}/chromedriver"],
    )
    if not chromium or not driver_path:
        pytest.fail(
            "the site test needs Chromium and its driver: `apt-get install chromium chromium-driver` "
            f"(found browser={chromium}, driver={driver_path}; or set CHROMIUM and CHROMEDRIVER)"
        )
    options = Options()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(60)
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": ERROR_HOOK})
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", _metrics(HEIGHT))
    yield driver
    driver.quit()


# --------------------------------------------------------------------------- helpers


def _drain_logs(driver) -> tuple[list[dict], list[str]]:
    """Console entries and the URLs of all network requests since the last call."""
    console = driver.get_log("browser")
    requests = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            requests.append(message["params"]["request"]["url"])
    return console, requests


def _open(driver, url: str) -> None:
    _drain_logs(driver)
    driver.get(url)
    deadline = time.monotonic() + 30
    while driver.execute_script("return document.readyState") != "complete":
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} did not finish loading in 30 s")
        time.sleep(0.1)


def _wait_for_mathjax(driver) -> str:
    driver.set_script_timeout(45)
    return driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        const t0 = Date.now();
        (function poll() {
          if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
            MathJax.startup.promise.then(() => done('ok'), (e) => done('MathJax failed: ' + e));
          } else if (Date.now() - t0 > 30000) {
            done('MathJax was never loaded (script missing or blocked?)');
          } else {
            setTimeout(poll, 100);
          }
        })();
        """
    )


def _load_all_images(driver) -> list[dict]:
    """Scroll through the page (lazy images load on view), then report every <img>."""
    driver.execute_script("window.scrollTo(0, document.body.scrollHeight)")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        pending = driver.execute_script(
            "return Array.from(document.images).filter(i => !i.complete).length"
        )
        if not pending:
            break
        time.sleep(0.2)
    driver.execute_script("window.scrollTo(0, 0)")
    return driver.execute_script(
        """
        return Array.from(document.images).map(i => ({
          src: i.currentSrc || i.src, alt: i.getAttribute('alt'), width: i.naturalWidth,
          complete: i.complete, in_output: !!i.closest('.cell_output, .output'),
          in_article: !!i.closest('article'),
          captioned: !!(i.closest('figure') && i.closest('figure').querySelector('figcaption'))}));
        """
    )


class _Ids(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("id", "name") and value:
                self.ids.add(value)


@functools.lru_cache(maxsize=None)
def _ids_in(path: Path) -> frozenset[str]:
    parser = _Ids()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return frozenset(parser.ids)


def _broken_internal_links(hrefs: list[str], base: str) -> list[str]:
    broken = []
    for href in sorted(set(hrefs)):
        if not href.startswith(base):
            continue  # external (checked where it matters: the Colab and repository buttons)
        parts = urllib.parse.urlsplit(href)
        rel = urllib.parse.unquote(parts.path[len(urllib.parse.urlsplit(base).path):])
        target = HTML / rel
        if rel == "" or rel.endswith("/"):
            target = target / "index.html"
        if not target.is_file():
            broken.append(f"{href} (no file {target.relative_to(HTML)})")
            continue
        fragment = urllib.parse.unquote(parts.fragment)
        if fragment and target.suffix == ".html" and fragment not in _ids_in(target):
            broken.append(f"{href} (no id {fragment!r} in {target.relative_to(HTML)})")
    return broken


def _screenshot(driver, name: str, width: int = WIDTH) -> None:
    """``NAME.png``: what a reader sees first; ``NAME-full.png``, then ``NAME-full-2.png``, ...:
    the whole page, in tiles of at most FULL_PAGE_MAX_HEIGHT px."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(SHOTS / f"{name}.png"))
    total = driver.execute_script("return document.documentElement.scrollHeight")
    tile = min(total, FULL_PAGE_MAX_HEIGHT)
    # A viewport as tall as the tile lays the page out as a reader scrolling through would see it
    # (capturing "beyond the viewport" instead shifts the theme's fixed sidebars).
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", _metrics(tile, width))
    try:
        for k, top in enumerate(range(0, total, tile)):
            driver.execute_script(f"window.scrollTo(0, {top})")
            time.sleep(0.3)
            suffix = "" if k == 0 else f"-{k + 1}"
            driver.save_screenshot(str(SHOTS / f"{name}-full{suffix}.png"))
    finally:
        driver.execute_script("window.scrollTo(0, 0)")
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", _metrics(HEIGHT, width))


def _metrics(height: int, width: int = WIDTH) -> dict:
    return {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}


def _errors(driver, console: list[dict]) -> list[str]:
    found = list(driver.execute_script("return window.__siteErrors || []"))
    found += [f"console {e['level']}: {e['message']}" for e in console if e["level"] == "SEVERE"]
    return found


def _colab_url(notebook: Path) -> str:
    config = _config()
    repo = config["repository"]
    url = urllib.parse.urlsplit(repo["url"])
    assert url.netloc == "github.com", f"_config.yml repository.url should be a github.com URL, not {repo['url']!r}"
    org_repo = url.path.strip("/").removesuffix(".git")
    book_path = (repo.get("path_to_book") or "").strip("/")
    rel = notebook.relative_to(ROOT / book_path if book_path else ROOT).as_posix()
    prefix = f"{book_path}/" if book_path else ""
    colab = config["launch_buttons"]["colab_url"].rstrip("/")
    return f"{colab}/github/{org_repo}/blob/{repo.get('branch', 'main')}/{prefix}{rel}"


# --------------------------------------------------------------------------- what a reader sees

# Text of the article that the reader sees as prose or output (not code they read as code).
RAW_PIPE_TABLES_JS = """
const article = document.querySelector('article.bd-article') || document.querySelector('main');
const walker = document.createTreeWalker(article, NodeFilter.SHOW_TEXT);
const found = [];
for (let n = walker.nextNode(); n; n = walker.nextNode()) {
  const el = n.parentElement;
  if (el.closest('.cell_input, script, style, mjx-container') || (el.closest('code') && !el.closest('.cell_output'))) continue;
  if (!el.checkVisibility({visibilityProperty: true})) continue;  // not rendered
  // a separator row: |---|, or |—| once the typographer has turned --- into an em dash
  if (/\\|\\s*:?(-{3,}|[\\u2013\\u2014]+):?\\s*\\|/.test(n.textContent)) found.push(n.textContent.trim().slice(0, 80));
}
return found;
"""

# Elements wider than the article's column: cut off, unless inside a box that scrolls sideways, and
# such a box must carry the scroll cue of _static/resnorm.js (a class and a visible hint after it).
# The check does not set the cues itself: the page's script must have done so on its own.
OVERFLOW_JS = """
const article = document.querySelector('article.bd-article') || document.querySelector('main');
const column = article.getBoundingClientRect();
const problems = [];
const describe = (el) => {
  const section = el.closest('section[id]');
  const cls = typeof el.className === 'string' && el.className.trim() ? '.' + el.className.trim().split(/\\s+/).slice(0, 2).join('.') : '';
  const text = (el.textContent || el.getAttribute('alt') || '').trim().replace(/\\s+/g, ' ').slice(0, 70);
  return el.tagName.toLowerCase() + cls + ' (section ' + (section ? '#' + section.id : '?') + '): ' + JSON.stringify(text);
};
for (const el of article.querySelectorAll('*')) {
  // inside an equation (and its hidden MathML copy for screen readers) only the container counts;
  // lines inside a code box scroll with it
  if (el.parentElement && el.parentElement.closest('mjx-container, pre')) continue;
  // not rendered: display none, visibility hidden, or inside a collapsed cell (closed <details>)
  if (!el.checkVisibility({visibilityProperty: true})) continue;
  const style = getComputedStyle(el);
  if (style.position === 'fixed') continue;
  const box = el.getBoundingClientRect();
  if (box.width === 0 || box.height === 0) continue;
  const overflows = el.scrollWidth > el.clientWidth + 2;
  if (style.overflowX === 'auto' || style.overflowX === 'scroll') {
    el.setAttribute('data-site-test-scroller', '');
    const hintId = el.getAttribute('data-scroll-hint');
    const hint = hintId && document.getElementById(hintId);
    const cued = el.classList.contains('resnorm-overflows') && hint && hint.offsetHeight > 0
      && getComputedStyle(hint).visibility === 'visible';
    if (overflows && !cued) {
      problems.push('scrolls sideways without a scroll cue (' + el.scrollWidth + ' px in a ' + el.clientWidth + ' px box): ' + describe(el));
    }
  } else if ((style.overflowX === 'hidden' || style.overflowX === 'clip') && overflows && !style.display.startsWith('inline')) {
    // (inline math clips its italic overhang by a few px, and wraps: only blocks are checked)
    problems.push('content cut off (overflow hidden, ' + el.scrollWidth + ' px in ' + el.clientWidth + ' px): ' + describe(el));
  }
  if (el.parentElement && el.parentElement.closest('[data-site-test-scroller]')) continue;
  if (box.right > column.right + 1 || box.left < column.left - 1) {
    problems.push('wider than the column (' + Math.round(box.left) + '..' + Math.round(box.right) + ' px, column '
      + Math.round(column.left) + '..' + Math.round(column.right) + ' px): ' + describe(el));
  }
}
if (document.documentElement.scrollWidth > window.innerWidth + 1) {
  problems.push('the whole page scrolls sideways (' + document.documentElement.scrollWidth + ' px wide at ' + window.innerWidth + ' px)');
}
return problems.slice(0, 25);
"""

FIGURES_JS = """
const article = document.querySelector('article.bd-article') || document.querySelector('main');
return Array.from(article.querySelectorAll('img')).filter(i => i.checkVisibility()).map(i => ({
  src: i.currentSrc || i.src, displayed: i.getBoundingClientRect().width, natural: i.naturalWidth,
  figure: (i.closest('figure') && i.closest('figure').querySelector('figcaption')
           ? i.closest('figure').querySelector('figcaption').textContent.trim().slice(0, 60) : i.getAttribute('alt') || '').trim()}));
"""

CHAPTER_JS = """
// checkVisibility: the content of a closed <details> (a hide-cell cell) still has boxes in
// Chromium, but it is not rendered (content-visibility: hidden)
const visible = (el) => !!el && el.checkVisibility({visibilityProperty: true}) && el.offsetHeight > 0;
const article = document.querySelector('article.bd-article');
const goals = article.querySelector('.admonition.chapter-goals');
const firstSection = article.querySelector('section section');
const solutions = Array.from(article.querySelectorAll('.cell.tag_solution'));
return {
  goals: visible(goals),
  goalsFirst: !!goals && (!firstSection || goals.compareDocumentPosition(firstSection) & Node.DOCUMENT_POSITION_FOLLOWING),
  goalsText: goals ? goals.textContent : '',
  exercises: visible(article.querySelector('section#exercises')),
  solutions: solutions.length,
  shownSolutions: solutions.filter(c => visible(c.querySelector('.cell_input'))).length,
};
"""


def _png_drawn_width_in(path: Path) -> float | None:
    """The width a PNG was drawn at, in inches: its pixels over the dpi in its pHYs chunk (matplotlib writes it)."""
    from resnorm import plotting

    data = path.read_bytes()
    dpi = plotting.png_dpi(data)
    return None if dpi is None else struct.unpack(">I", data[16:20])[0] / dpi


def _svg_smallest_text_scale(path: Path) -> tuple[float, float] | None:
    """(smallest font size, viewBox width) of an SVG, both in its user units; None without text."""
    import re
    import xml.etree.ElementTree as ET

    root = ET.parse(path).getroot()
    view_box = root.get("viewBox")
    if view_box:
        width = float(view_box.split()[2])
    else:
        width = float(re.match(r"[\d.]+", root.get("width", "0")).group(0) or 0)
    sizes = []
    for el in root.iter():
        size = el.get("font-size") or ""
        style = el.get("style") or ""
        match = re.search(r"font-size:\s*([\d.]+)", style) or re.search(r"font:[^;]*?([\d.]+)px", style)
        if match:
            size = match.group(1)
        if size:
            sizes.append(float(re.match(r"[\d.]+", size).group(0)))
    return (min(sizes), width) if sizes and width else None


def _small_figures(driver, site_url: str) -> list[str]:
    """Figures whose smallest text is displayed below plotting.MIN_FONT_PT.

    A PNG drawn W in wide and shown D CSS px wide is scaled by D / (W x 96); its smallest text is
    the style's smallest font (the hygiene test refuses smaller ``fontsize=`` in the notebooks).
    An SVG's text is scaled by D / (its viewBox width), its font sizes read from the file.
    """
    problems = []
    smallest = plotting.smallest_font_pt()
    for img in driver.execute_script(FIGURES_JS):
        if not img["src"].startswith(site_url) or not img["displayed"]:
            continue
        path = HTML / urllib.parse.unquote(urllib.parse.urlsplit(img["src"]).path[len(urllib.parse.urlsplit(site_url).path):])
        if path.suffix == ".png":
            drawn_in = _png_drawn_width_in(path)
            if drawn_in is None:
                problems.append(f"figure without a dpi in its PNG (draw it with resnorm.plotting): {img['figure']!r}")
                continue
            shown_pt = smallest * img["displayed"] / (drawn_in * 96)
        elif path.suffix == ".svg":
            text = _svg_smallest_text_scale(path)
            if text is None:
                continue
            font_units, width_units = text
            shown_pt = font_units * img["displayed"] / width_units * 0.75  # CSS px -> pt
        else:
            continue
        if shown_pt < plotting.MIN_FONT_PT - 0.05:
            problems.append(
                f"figure text displayed at {shown_pt:.1f} pt (< {plotting.MIN_FONT_PT:g} pt): {img['figure']!r} "
                f"({path.name}, shown {img['displayed']:.0f} px wide)"
            )
    return problems


def _overflow_with_cells_expanded(driver) -> list[str]:
    """The overflow check once more, with every collapsed cell (hide-input, hide-cell) opened as a
    reader would: the scroll cue must follow (resnorm.js listens for the toggle)."""
    opened = driver.execute_script(
        "const closed = Array.from(document.querySelectorAll('article details:not([open])'));"
        "closed.forEach(d => { d.open = true; d.setAttribute('data-site-test-opened', ''); });"
        "return closed.length;"
    )
    if not opened:
        return []
    time.sleep(0.5)  # the toggle events fire asynchronously; resnorm.js updates 100 ms later
    try:
        return driver.execute_script(OVERFLOW_JS)
    finally:
        driver.execute_script(
            "document.querySelectorAll('[data-site-test-opened]').forEach(d => {"
            " d.open = false; d.removeAttribute('data-site-test-opened'); });"
        )


def _chapter_problems(driver) -> list[str]:
    found = driver.execute_script(CHAPTER_JS)
    problems = []
    if not found["goals"] or not found["goalsFirst"]:
        problems.append("no visible 'In this chapter' goals admonition (class chapter-goals) before the first section")
    elif "You will learn" not in found["goalsText"] or "You should know" not in found["goalsText"]:
        problems.append("the goals admonition should say 'You will learn' and 'You should know'")
    if not found["exercises"]:
        problems.append("no visible Exercises section (## Exercises at the end of the chapter)")
    if found["solutions"] == 0:
        problems.append("no solution cell (a code cell tagged solution and hide-cell) in the exercises")
    if found["shownSolutions"]:
        problems.append(f"{found['shownSolutions']} solution cell(s) shown on the page: tag them hide-cell")
    return problems


def _page_name(page: str) -> str:
    return page.removesuffix(".html").replace("/", "__")


# --------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("page,source", PAGES, ids=[p for p, _ in PAGES])
def test_page(browser, site_url, page, source):
    driver = browser
    _open(driver, site_url + page)
    problems: list[str] = []

    has_math = driver.execute_script("return document.querySelectorAll('.math').length")
    if has_math:
        status = _wait_for_mathjax(driver)
        if status != "ok":
            problems.append(status)
        math = driver.execute_script(
            """
            const math = Array.from(document.querySelectorAll('.math'));
            const untypeset = math.filter(m => !m.querySelector('mjx-container')).map(m => m.textContent.slice(0, 80));
            const errors = Array.from(document.querySelectorAll('mjx-merror')).map(e => e.getAttribute('data-mjx-error') || e.textContent);
            // raw TeX left in prose: text outside code, scripts and typeset math
            const walker = document.createTreeWalker(document.querySelector('main') || document.body, NodeFilter.SHOW_TEXT);
            const raw = [];
            for (let n = walker.nextNode(); n; n = walker.nextNode()) {
              if (n.parentElement.closest('pre, code, script, style, mjx-container, .highlight, .output, .cell_output')) continue;
              if (/\\$\\$|\\\\begin\\{|\\\\frac|\\\\mathrm/.test(n.textContent)) raw.push(n.textContent.trim().slice(0, 80));
            }
            return {untypeset, errors, raw};
            """
        )
        problems += [f"equation not typeset by MathJax: {m!r}" for m in math["untypeset"]]
        problems += [f"MathJax error: {m!r}" for m in math["errors"]]
        problems += [f"raw TeX left in the text: {m!r}" for m in math["raw"]]

    for img in _load_all_images(driver):
        if not img["width"]:
            problems.append(f"image did not load: {img['src']}")
        if img["in_output"] and (not img["alt"] or img["alt"].strip() == "" or img["alt"].endswith((".png", ".svg", ".jpg"))):
            problems.append(f"output image without alt text: {img['src'][-60:]} (set mystnb.image.alt in the cell metadata)")
        if img["in_output"] and not img["captioned"]:
            problems.append(f"output image without a caption: {img['src'][-60:]} (set mystnb.figure.caption in the cell metadata)")
        if img["in_article"] and not img["in_output"] and (not (img["alt"] or "").strip() or img["alt"].endswith((".png", ".svg", ".jpg"))):
            problems.append(f"image without alt text: {img['src'][-60:]} (a figure directive's :alt: option)")

    hrefs = driver.execute_script("return Array.from(document.querySelectorAll('a[href]')).map(a => a.href)")
    problems += [f"broken internal link: {b}" for b in _broken_internal_links(hrefs, site_url)]

    if source.suffix == ".ipynb":
        problems += _notebook_page_problems(driver, site_url, page, source, hrefs)

    problems += [f"Markdown table shown as raw text: {t!r}" for t in driver.execute_script(RAW_PIPE_TABLES_JS)]
    problems += driver.execute_script(OVERFLOW_JS)
    problems += [f"in an expanded cell: {p}" for p in _overflow_with_cells_expanded(driver)]
    problems += _small_figures(driver, site_url)
    if page in CHAPTER_PAGES:
        problems += _chapter_problems(driver)

    _screenshot(driver, _page_name(page))
    console, requests = _drain_logs(driver)
    problems += _errors(driver, console)
    outside = sorted({u for u in requests if not u.startswith((site_url, "data:", "blob:", "about:"))})
    problems += [f"fetched from outside the site (fails offline): {u}" for u in outside]
    assert not problems, f"{page}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("page,source", PAGES, ids=[p for p, _ in PAGES])
def test_page_on_a_phone(browser, site_url, page, source):
    """At 390 px wide nothing may be cut off either: wide blocks scroll inside their box, with the cue."""
    driver = browser
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", _metrics(HEIGHT, PHONE_WIDTH))
    try:
        _open(driver, site_url + page)
        if driver.execute_script("return document.querySelectorAll('.math').length"):
            _wait_for_mathjax(driver)
        _load_all_images(driver)
        problems = driver.execute_script(OVERFLOW_JS)
        _screenshot(driver, f"{_page_name(page)}-{PHONE_WIDTH}", width=PHONE_WIDTH)
    finally:
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", _metrics(HEIGHT))
    assert not problems, f"{page} at {PHONE_WIDTH} px:\n  " + "\n  ".join(problems)


def _notebook_page_problems(driver, site_url, page, source, hrefs) -> list[str]:
    problems = []
    nb = stamps.read_notebook(source)
    stamp = stamps.get_stamp(nb)
    shown = driver.execute_script(
        "const s = document.querySelector('.resnorm-stamp'); return s && s.offsetHeight > 0 ? s.textContent : null"
    )
    if shown is None:
        problems.append("no visible .resnorm-stamp line (execute it with `python -m resnorm.execute`)")
    elif stamp is None or not shown.startswith(stamps.stamp_line(stamp)):
        problems.append(f"the stamp on the page ({shown[:90]!r}...) does not match the notebook's stamp")

    colab = _colab_url(source)
    colab_links = [h for h in hrefs if h.startswith("https://colab.research.google.com/")]
    if colab not in colab_links:
        problems.append(f"no Colab button to {colab} (found {colab_links})")

    source_rel = source.relative_to(ROOT).as_posix()
    downloads = [h for h in hrefs if h.endswith(".ipynb") and h.startswith(site_url)]
    if not downloads:
        problems.append("no download button for the .ipynb")
    for href in downloads:
        served = HTML / urllib.parse.unquote(href[len(site_url):])
        if not served.is_file():
            problems.append(f"download button points to a missing file: {href}")
        elif not served.as_posix().endswith(source_rel):
            problems.append(f"download button serves {served.relative_to(HTML)}, not {source_rel}")
        elif [c["source"] for c in json.loads(served.read_text(encoding="utf-8"))["cells"]] != [c["source"] for c in nb["cells"]]:
            problems.append(f"the downloadable {served.relative_to(HTML)} differs from {source_rel}: rebuild the site")

    notes = driver.execute_script(
        f"""
        return Array.from(document.querySelectorAll('script[type="{WIDGET_MIME}"]')).map(s =>
          getComputedStyle(s.parentElement, '::before').content);
        """
    )
    problems += [f"a widget output without the 'needs a live kernel' note (got {n!r})" for n in notes if "live kernel" not in n]
    return problems


def test_root_redirects_to_the_first_page(browser, site_url):
    _open(browser, site_url)
    deadline = time.monotonic() + 10
    first = PAGES[0][0]
    while not browser.current_url.endswith(first) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert browser.current_url.endswith(first), f"{site_url} should open {first}, got {browser.current_url}"


@pytest.mark.parametrize("query", ["LayerNorm"])
def test_search_finds(browser, site_url, query):
    _open(browser, f"{site_url}search.html?q={urllib.parse.quote(query)}")
    deadline = time.monotonic() + 30
    results: list[str] = []
    while time.monotonic() < deadline:
        results = browser.execute_script(
            "return Array.from(document.querySelectorAll('#search-results ul.search li a')).map(a => a.href)"
        )
        if results:
            break
        time.sleep(0.2)
    _screenshot(browser, f"search-{query}")
    console, _ = _drain_logs(browser)
    assert results, f"search for {query!r} returned nothing"
    assert all(r.startswith(site_url) for r in results)
    assert not _broken_internal_links(results, site_url)
    assert not _errors(browser, console), _errors(browser, console)
