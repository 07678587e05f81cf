"""Browser tests of the built book (_build/html) in headless Chromium, offline.

Run by `make booktest` (part of `make test`, after `make book`):

    BOOK_TESTS=1 pytest -q -m book tests/test_book.py

The book is served from a localhost http.server thread on a free port; every request to anything else is
blocked and recorded. For every page in _toc.yml: no console errors, no failed or blocked requests, maths
typeset by MathJax (no raw TeX left, no TeX errors), every <img> decoded, exercise dropdowns open on click,
saved widget state rendered, one search field, no header bar over the book's title, a favicon (no 404). The
training chapter must have a kernel-free player (matplotlib `to_jshtml`) whose frame changes when its slider
moves. A screenshot of the attention chapter goes to docs/screenshot.png.

With BOOK_TESTS=1 a missing build or a missing chromium is a failure; without it (plain `pytest`) a skip.
BOOK_ROOT=<dir> tests another book (its _toc.yml and _build/html) instead of this repository's.
"""

import functools
import http.server
import os
import re
import shutil
import threading
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.book

REPO = Path(__file__).resolve().parent.parent
ROOT = Path(os.environ.get("BOOK_ROOT", REPO))
HTML = ROOT / "_build" / "html"
SCREENSHOT = REPO / "docs" / "screenshot.png"
SCREENSHOT_PAGE = "chapters/06_attention"
PLAYER_PAGE = "chapters/11_training"
NO_MATHS = {"chapters/00_preface"}  # pages allowed to have no equation at all

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-dev-shm-usage",
    "--disable-domain-reliability",
    "--disable-extensions",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
]

# Raw TeX left in the rendered text means MathJax did not run (or the markup was not recognised as maths).
RAW_TEX = re.compile(r"\$\$|\\\(|\\\)|\\\[|\\\]|\\begin\{|\$[^$\n]{0,80}?\\[a-zA-Z]+")


def toc_pages(root=ROOT):
    """Docnames in reading order, from _toc.yml (jb-book format: root, parts -> chapters)."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    pages = [toc["root"]]
    for part in toc.get("parts", []):
        pages += [c["file"] for c in part.get("chapters", [])]
    pages += [c["file"] for c in toc.get("chapters", [])]
    return [p.removesuffix(".md").removesuffix(".ipynb") for p in pages]


PAGES = toc_pages()


def _unavailable(reason):
    if os.environ.get("BOOK_TESTS") == "1":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def base_url():
    if not (HTML / "index.html").is_file():
        _unavailable(f"{HTML} has no built book: run `make book` first")
    handler = functools.partial(_QuietHandler, directory=str(HTML))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        _unavailable("chromium is not installed (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Visit:
    """One page opened in a fresh context; `problems` collects console errors and bad requests."""

    def __init__(self, browser, base_url, page_name):
        self.base_url = base_url
        self.url = f"{base_url}/{page_name}.html"
        self.console_errors = []
        self.blocked = []
        self.failed = []
        self.context = browser.new_context(viewport={"width": 1280, "height": 1000}, service_workers="block")
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.console_errors.append(f"uncaught: {exc}"))
        self.page.on("requestfailed", self._request_failed)
        self.page.on("response", self._response)
        response = self.page.goto(self.url, wait_until="load")
        assert response is not None and response.ok, f"{self.url}: HTTP {response and response.status}"
        self.settle()

    def _local(self, url):
        return url.startswith(self.base_url + "/") or url.startswith(("data:", "blob:", "about:"))

    def _route(self, route):
        if self._local(route.request.url):
            route.continue_()
        else:
            self.blocked.append(route.request.url)
            route.abort()

    def _console(self, msg):
        if msg.type == "error":
            self.console_errors.append(f"{msg.text} ({msg.location.get('url', '')}:{msg.location.get('lineNumber')})")

    def _request_failed(self, request):
        if self._local(request.url):
            self.failed.append(f"{request.url}: {request.failure}")

    def _response(self, response):
        if response.status >= 400:
            self.failed.append(f"{response.url}: HTTP {response.status}")

    def settle(self):
        """Wait for MathJax's first typeset, every <img> to load or fail, and saved widgets to render."""
        self.page.evaluate(
            """async () => {
                if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
                await Promise.all(Array.from(document.images).map(img => img.complete ? null :
                    new Promise(done => { img.addEventListener('load', done); img.addEventListener('error', done); })));
            }"""
        )
        views = self.page.locator('script[type="application/vnd.jupyter.widget-view+json"]').count()
        if views:
            self.page.wait_for_function(
                "n => document.querySelectorAll('.jupyter-widgets').length >= n", arg=views, timeout=15_000
            )

    def problems(self):
        return (
            [f"console error: {m}" for m in self.console_errors]
            + [f"blocked non-local request: {u}" for u in self.blocked]
            + [f"failed request: {u}" for u in self.failed]
        )

    def close(self):
        self.context.close()


@pytest.fixture(scope="module")
def reports(browser, base_url):
    """Open every page once (lazily) and keep what the tests look at."""
    cache = {}

    def get(page_name):
        if page_name not in cache:
            visit = Visit(browser, base_url, page_name)
            try:
                info = visit.page.evaluate(
                    """() => {
                        const main = document.querySelector('main') || document.body;
                        const maths = Array.from(main.querySelectorAll('.math'));
                        const text = main.cloneNode(true);
                        text.querySelectorAll('pre, code, script, style, textarea, .highlight, mjx-container, '
                            + 'mjx-assistive-mml').forEach(e => e.remove());
                        return {
                            mjx: main.querySelectorAll('mjx-container').length,
                            tex_errors: Array.from(main.querySelectorAll('mjx-merror'))
                                             .map(e => e.getAttribute('data-mjx-error') || e.textContent),
                            untypeset: maths.filter(m => !m.querySelector('mjx-container'))
                                            .map(m => m.textContent.slice(0, 100)),
                            text: text.textContent,
                            images: Array.from(document.images).map(i => ({
                                src: (i.currentSrc || i.src).slice(0, 120), w: i.naturalWidth, h: i.naturalHeight})),
                            widget_state: !!document.querySelector(
                                'script[type="application/vnd.jupyter.widget-state+json"]'),
                            widget_views: document.querySelectorAll(
                                'script[type="application/vnd.jupyter.widget-view+json"]').length,
                            widgets: document.querySelectorAll('.jupyter-widgets').length,
                            search_fields: Array.from(document.querySelectorAll(
                                    'input[type=search], .search-button-field, button.search-button'))
                                .filter(e => e.getClientRects().length > 0
                                             && getComputedStyle(e).visibility !== 'hidden')
                                .map(e => e.className || e.tagName),
                            header_bar: (() => {
                                const h = document.querySelector('#pst-header');
                                return h && h.getClientRects().length ? h.getBoundingClientRect().height : 0;
                            })(),
                            title_covered: (() => {
                                // the book's title in the sidebar: is its first line what a reader sees there?
                                const t = document.querySelector('.logo__title');
                                if (!t) return 'no .logo__title on the page';
                                // a long table of contents scrolls the sidebar to the page's own entry: look at the
                                // sidebar as a reader scrolled to its top sees it (a header bar would still cover it)
                                for (let e = t.parentElement; e; e = e.parentElement) e.scrollTop = 0;
                                const r = t.getClientRects()[0];
                                if (!r) return 'the title is not displayed';
                                const hit = document.elementFromPoint(r.left + Math.min(20, r.width / 2),
                                                                      r.top + r.height / 2);
                                return hit && (t.contains(hit) || hit.contains(t)) ? null
                                    : `covered by <${hit && hit.tagName} class="${hit && hit.className}">`;
                            })(),
                        };
                    }"""
                )
                info["dropdowns"] = check_dropdowns(visit.page)
                info["problems"] = visit.problems()  # after the clicks, so their errors count too
            finally:
                visit.close()
            cache[page_name] = info
        return cache[page_name]

    return get


def check_dropdowns(page):
    """Every `:class: dropdown` admonition starts closed; clicking its title shows its body. -> list of errors."""
    errors = []
    boxes = page.locator("main .admonition.dropdown")
    for i in range(boxes.count()):
        box = boxes.nth(i)
        body = box.locator(":scope > :not(.admonition-title)").first
        title = box.locator(":scope > .admonition-title").first
        if "toggle-hidden" not in (box.get_attribute("class") or "") or body.is_visible():
            errors.append(f"dropdown {i} is not collapsed on load")
            continue
        box.scroll_into_view_if_needed()
        title.click()
        try:
            body.wait_for(state="visible", timeout=2_000)
        except Exception:
            errors.append(f"dropdown {i} did not open when its title was clicked")
    return errors


@pytest.mark.parametrize("page_name", PAGES + ["search", "genindex"])
def test_page_loads_without_errors_or_network(reports, page_name):
    problems = reports(page_name)["problems"]
    assert not problems, f"{page_name}.html:\n" + "\n".join(problems)


@pytest.mark.parametrize("page_name", PAGES + ["search", "genindex"])
def test_one_search_field_and_the_title_in_view(reports, page_name):
    """One search entry point per page (the sidebar's), no second header bar, the book's title not covered."""
    info = reports(page_name)
    assert len(info["search_fields"]) == 1, f"{page_name}.html: visible search fields: {info['search_fields']}"
    assert info["header_bar"] == 0, f"{page_name}.html: a header bar of {info['header_bar']} px across the top"
    assert info["title_covered"] is None, f"{page_name}.html: the book's title: {info['title_covered']}"


def test_favicon_is_served(browser, base_url):
    """/favicon.ico (the browser's default request) and every page's <link rel=icon> answer 200 with an image."""
    visit = Visit(browser, base_url, PAGES[0])
    try:
        hrefs = visit.page.eval_on_selector_all("link[rel~=icon]", "ls => ls.map(l => l.href)")
        assert hrefs, f"{PAGES[0]}.html has no <link rel=icon>"
        for url in [f"{base_url}/favicon.ico", *hrefs]:
            response = visit.context.request.get(url)
            assert response.status == 200, f"{url}: HTTP {response.status}"
            assert len(response.body()) > 100, f"{url}: {len(response.body())} bytes"
        assert not visit.problems(), "\n".join(visit.problems())
    finally:
        visit.close()


@pytest.mark.parametrize("page_name", PAGES)
def test_maths_is_typeset(reports, page_name):
    info = reports(page_name)
    assert not info["untypeset"], f"{page_name}.html: maths not typeset by MathJax: {info['untypeset'][:5]}"
    assert not info["tex_errors"], f"{page_name}.html: TeX errors in typeset maths: {info['tex_errors'][:5]}"
    raw = [m.group(0) for m in RAW_TEX.finditer(info["text"])]
    assert not raw, f"{page_name}.html: raw TeX left in the text: {raw[:5]}"
    if page_name not in NO_MATHS:
        assert info["mjx"] > 0, f"{page_name}.html: no typeset maths (no mjx-container) on a chapter page"


@pytest.mark.parametrize("page_name", PAGES)
def test_images_decode(reports, page_name):
    bad = [img["src"] for img in reports(page_name)["images"] if img["w"] == 0 or img["h"] == 0]
    assert not bad, f"{page_name}.html: images that did not decode: {bad}"


@pytest.mark.parametrize("page_name", PAGES)
def test_dropdowns_open(reports, page_name):
    errors = reports(page_name)["dropdowns"]
    assert not errors, f"{page_name}.html: " + "; ".join(errors)


@pytest.mark.parametrize("page_name", PAGES)
def test_saved_widgets_render(reports, page_name):
    info = reports(page_name)
    if info["widget_views"]:
        assert info["widget_state"], f"{page_name}.html: widget views but no saved widget state"
        assert info["widgets"] >= info["widget_views"], f"{page_name}.html: saved widgets did not render"


def test_training_player_slider_changes_frame(browser, base_url):
    """The training chapter's kernel-free player: moving the slider shows another frame."""
    visit = Visit(browser, base_url, PLAYER_PAGE)
    try:
        page = visit.page
        sliders = page.locator("main input[type=range]")
        assert sliders.count() > 0, f"{PLAYER_PAGE}.html has no player (no <input type=range>; use to_jshtml)"
        slider = sliders.first
        lo, hi = float(slider.get_attribute("min") or 0), float(slider.get_attribute("max") or 100)
        assert hi > lo, f"the player has a single frame (min={lo}, max={hi})"
        frame_js = """s => {
            const box = s.closest('.animation') || s.parentElement.parentElement;
            const img = box.querySelector('img'), canvas = box.querySelector('canvas');
            if (img) return {src: img.currentSrc || img.src, w: img.naturalWidth};
            if (canvas) return {src: canvas.toDataURL(), w: canvas.width};
            return null;
        }"""
        before = slider.evaluate(frame_js)
        assert before is not None and before["w"] > 0, "no decoded frame next to the slider"
        value_before = slider.input_value()
        slider.scroll_into_view_if_needed()
        slider.focus()
        page.keyboard.press("End")  # a real key press: the browser moves the slider and fires `input`
        page.wait_for_timeout(300)
        assert slider.input_value() != value_before, "the slider did not move"
        after = slider.evaluate(frame_js)
        assert after is not None and after["w"] > 0, "the frame after moving the slider did not decode"
        assert after["src"] != before["src"], "moving the slider did not change the displayed frame"
        assert not visit.problems(), "\n".join(visit.problems())
    finally:
        visit.close()


def test_screenshot(browser, base_url):
    """docs/screenshot.png: the attention chapter as a reader sees it (typeset maths, figures)."""
    page_name = SCREENSHOT_PAGE if SCREENSHOT_PAGE in PAGES else PAGES[0]
    visit = Visit(browser, base_url, page_name)
    try:
        SCREENSHOT.parent.mkdir(exist_ok=True)
        visit.page.screenshot(path=str(SCREENSHOT))
        assert SCREENSHOT.stat().st_size > 10_000
        assert not visit.problems(), "\n".join(visit.problems())
    finally:
        visit.close()


def test_search_finds_a_chapter(browser, base_url):
    """The offline search page (searchindex.js) answers a query with links to chapters."""
    visit = Visit(browser, base_url, "search")
    try:
        visit.page.goto(f"{base_url}/search.html?q=softmax", wait_until="load")
        hits = visit.page.locator("#search-results ul.search li")
        hits.first.wait_for(timeout=10_000)
        assert hits.count() > 0
        assert not visit.problems(), "\n".join(visit.problems())
    finally:
        visit.close()
