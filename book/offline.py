"""Sphinx extension (loaded from _config.yml, `sphinx: local_extensions`): keep the built book offline.

1. matplotlib's `Animation.to_jshtml()` output links Font Awesome 4 from a CDN for its player buttons. The theme
   already ships Font Awesome (its script turns `<i class="fa fa-play">` into inline SVG icons), so the link is
   dropped from every raw-HTML cell output.
2. After the build, every written page is scanned for resources the browser would fetch from another host
   (`<script src>`, `<link rel=stylesheet|preload|icon ... href>`, `<img|iframe|source|video|audio|embed src>`
   with http(s):// or protocol-relative addresses). Each one is a warning, so `jupyter-book build -W` fails.
"""

import re
from pathlib import Path

from docutils import nodes
from sphinx.util import logging

logger = logging.getLogger(__name__)

# matplotlib/_animation_data.py: <link rel="stylesheet" href="https://maxcdn.bootstrapcdn.com/font-awesome/...">
JSHTML_FONT_AWESOME = re.compile(r"<link\s+rel=\"stylesheet\"\s+href=\"https?://[^\"]*font-awesome[^\"]*\"\s*/?>")

REMOTE = r"(?:https?:)?//"
REMOTE_RESOURCE = re.compile(
    rf"<script\b[^>]*\bsrc=[\"']{REMOTE}[^\"']*[\"']"
    rf"|<(?:img|iframe|source|video|audio|embed|track)\b[^>]*\bsrc=[\"']{REMOTE}[^\"']*[\"']"
    rf"|<link\b(?=[^>]*\brel=[\"'](?:stylesheet|preload|modulepreload|prefetch|preconnect|icon|shortcut icon)[\"'])"
    rf"[^>]*\bhref=[\"']{REMOTE}[^\"']*[\"']",
    re.IGNORECASE,
)


def drop_jshtml_cdn_link(app, doctree, docname):
    for node in doctree.findall(nodes.raw):
        if "html" not in node.get("format", "").split():
            continue
        text = node.astext()
        if JSHTML_FONT_AWESOME.search(text):
            node.children = [nodes.Text(JSHTML_FONT_AWESOME.sub("", text))]


def check_no_remote_resources(app, exception):
    if exception is not None or app.builder.format != "html":
        return
    outdir = Path(app.outdir)
    for page in sorted(outdir.rglob("*.html")):
        if "_static" in page.relative_to(outdir).parts:
            continue
        found = REMOTE_RESOURCE.findall(page.read_text(encoding="utf-8", errors="replace"))
        for tag in found:
            logger.warning("%s loads a remote resource (the book must work offline): %s", page.relative_to(outdir), tag)


def setup(app):
    app.connect("doctree-resolved", drop_jshtml_cdn_link)
    app.connect("build-finished", check_no_remote_resources)
    return {"version": "0.1", "parallel_read_safe": True, "parallel_write_safe": True}
