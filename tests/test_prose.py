"""The book says only what it measured (issue 10 §2; the convention is STYLE.md's "Numbers in the prose").

For every chapter in chapters/*.md, this test reads the MyST markdown and fails naming `file:line` for:

- a measured-looking number typed in the prose: a decimal (`0.98`), scientific notation (`1e-15`, `2.3E-7`), a
  power of ten written out (`10^-7`, `10⁻¹⁵`), a percentage (`89.7%`), a "×" factor (`20×`, `×3`, `20x`). Not
  looked at: code cells and fenced code, `$$` and `{math}` maths, code spans (so every role: {glue:text}`key:.1e`,
  {typed}`89.7%`, {eq}`label`), directive options and YAML headers, link targets, labels `(name)=`, HTML
  comments, version numbers (`2.13.0`, "Python 3.11").
- a measured magnitude hidden in inline maths: `$\\approx 10^{-15}$`, `$\\sim 2\\cdot10^{-7}$` (a negative power of
  ten after \\approx, \\sim, \\simeq, ≈), scientific notation inside maths (`$1e-15$`), or an inline maths span that
  is only a negative power of ten right after "about", "around", "roughly", "of order", "near", "below"...
  (`prints about $10^{-16}$`). A number that is maths (`$\\varepsilon = 10^{-5}$`, `$1/\\sqrt{D_h}$`) is fine.
- a figure-producing cell (it calls pyplot and does not close its figure) without a `mystnb: figure: caption:`
  in its metadata, or without the `hide-input` tag;
- a code cell that touches `sys.path` (or PYTHONPATH, site.addsitedir);
- a {glue:text} (or any glue role or directive) key that no code cell of the same chapter glues.

The checker is tested first on small synthetic snippets (each kind of violation is caught, clean text passes), then
run on every chapter (one test per chapter).
"""

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "chapters").glob("*.md"))

# ---- the MyST reader: prose chunks (with line numbers) and code cells -------------------------------------------

FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,}|:{3,})\s*(?:\{(?P<name>[^}\s]+)\})?\s*(?P<arg>.*?)\s*$")
# directives whose body is not prose (the rest, admonitions, figures, dropdowns, ..., hold prose)
LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s")
NOT_PROSE = set(
    "code-cell code-block code sourcecode math raw eval-rst literalinclude mermaid raw-cell glue:math csv-table "
    "highlight parsed-literal jupyter-execute toctree tableofcontents".split()
)


@dataclass
class Cell:
    line: int  # the line of the ```{code-cell} fence
    metadata: dict
    source: str
    source_line: int  # the first line of the source


@dataclass
class Document:
    prose: list = field(default_factory=list)  # [(first_line, [lines])] chunks of consecutive prose lines
    cells: list = field(default_factory=list)  # [Cell]


def _closes(line, fence):
    stripped = line.strip()
    return bool(stripped) and set(stripped) == {fence[0]} and len(stripped) >= len(fence)


def read_myst(text):
    """Split a MyST notebook into prose chunks and code cells; line numbers are 1-based."""
    lines = text.split("\n")
    doc = Document()
    stack = []  # open fences: (fence, name, is_prose, indent)
    chunk, chunk_start = [], None
    i = 0

    def flush():
        nonlocal chunk, chunk_start
        if chunk:
            doc.prose.append((chunk_start, chunk))
        chunk, chunk_start = [], None

    def in_prose():
        return all(entry[2] for entry in stack)

    # YAML front matter
    if lines and lines[0].strip() == "---":
        j = next((k for k in range(1, len(lines)) if lines[k].strip() == "---"), None)
        if j is not None:
            i = j + 1
    while i < len(lines):
        line, number = lines[i], i + 1
        if stack and _closes(line, stack[-1][0]):
            flush()
            stack.pop()
            i += 1
            continue
        if not in_prose():
            i += 1
            continue
        match = FENCE.match(line)
        if match:
            flush()
            fence, name = match["fence"], match["name"]
            if name == "code-cell":
                i = _read_code_cell(lines, i, fence, doc)
                continue
            is_prose = name is not None and name not in NOT_PROSE
            stack.append((fence, name, is_prose, match["indent"]))
            i += 1
            if is_prose:
                i = _skip_options(lines, i)
                if match["arg"]:  # a directive's title is prose too
                    doc.prose.append((number, [" " * match.start("arg") + match["arg"]]))
            continue
        stripped = line.strip()
        if stripped.startswith("$$"):  # display maths, to the closing $$
            flush()
            rest = stripped[2:]
            if "$$" not in rest:
                i += 1
                while i < len(lines) and "$$" not in lines[i]:
                    i += 1
            i += 1
            continue
        if stripped.startswith("\\begin{"):  # amsmath environment
            flush()
            env = re.match(r"\\begin\{([^}]+)\}", stripped)[1]
            while i < len(lines) and f"\\end{{{env}}}" not in lines[i]:
                i += 1
            i += 1
            continue
        if stripped.startswith("<!--"):
            flush()
            while i < len(lines) and "-->" not in lines[i]:
                i += 1
            i += 1
            continue
        if re.fullmatch(r"\(\S+\)=", stripped) or re.fullmatch(r"\+\+\+.*", stripped) or not stripped:
            flush()
            i += 1
            continue
        if chunk_start is None:
            indent = len(line) - len(line.lstrip(" "))
            base = len(stack[-1][3]) if stack else 0
            if indent - base >= 4 and not LIST_ITEM.match(line):  # an indented code block, to the next blank line
                while i < len(lines) and lines[i].strip():
                    i += 1
                continue
            chunk_start = number
        chunk.append(line)
        i += 1
    flush()
    return doc


def _skip_options(lines, i):
    """Skip a directive's options: a `---` YAML block or `:key: value` lines right after the opening fence."""
    if i < len(lines) and lines[i].strip() == "---":
        j = i + 1
        while j < len(lines) and lines[j].strip() != "---":
            j += 1
        return j + 1
    while i < len(lines) and re.match(r"^\s*:[\w-]+:", lines[i]):
        i += 1
    return i


def _read_code_cell(lines, i, fence, doc):
    """Read a ```{code-cell} (its metadata and source); return the index after its closing fence."""
    start = i + 1
    i += 1
    metadata = {}
    if i < len(lines) and lines[i].strip() == "---":
        j = i + 1
        while j < len(lines) and lines[j].strip() != "---":
            j += 1
        metadata = yaml.safe_load("\n".join(lines[i + 1 : j])) or {}
        i = j + 1
    else:
        while i < len(lines) and re.match(r"^\s*:[\w-]+:", lines[i]):
            key, value = re.match(r"^\s*:([\w-]+):\s*(.*)$", lines[i]).groups()
            metadata[key] = yaml.safe_load(value) if value else None
            i += 1
    first = i
    while i < len(lines) and not _closes(lines[i], fence):
        i += 1
    doc.cells.append(Cell(start, metadata, "\n".join(lines[first:i]), first + 1))
    return i + 1


# ---- the checks --------------------------------------------------------------------------------------------------

NUM = r"\d+(?:\.\d+)?"
SUPERSCRIPT = "⁻⁰¹²³⁴⁵⁶⁷⁸⁹"
PROSE_PATTERNS = [
    ("scientific notation", re.compile(rf"(?<![\w.]){NUM}[eE][-+−]?\d+\b")),
    ("power of ten", re.compile(rf"\b10(?:\^[-−]?\d+|[{SUPERSCRIPT}]+)")),
    ("percentage", re.compile(rf"(?<![\w.]){NUM}\s?(?:%|per ?cent\b)")),
    # a factor, not a size: "20× faster", "20x", "by ×3" (but 8×8 digits, 16 × 16 patches are sizes)
    ("× factor", re.compile(rf"(?<![\w.×]){NUM}\s?[×x](?![\w×])(?!\s*\d)|(?<![\d.×])(?<![\d.] )×\s?{NUM}(?![\w.×])")),
    ("decimal", re.compile(r"(?<![\w.])\d*\.\d+(?![\w.]*\d)")),
]
VERSION_BEFORE = re.compile(r"\b(?:Python|torch|PyTorch|numpy|version|Sphinx|v)\s*$", re.IGNORECASE)
APPROX = r"(?:\\approx|\\sim|\\simeq|\\approxeq|\\lesssim|\\gtrsim|≈|~)"
NEG_POW10 = r"(?:\d+(?:\.\d+)?\s*(?:\\cdot|\\times|×)\s*)?10\s*\^\s*\{?\s*[-−]\s*\d+\s*\}?"
# a maths span that *starts* with ≈ or ∼ is a measured value in disguise ($\approx 10^{-15}$, $\sim 0.98$);
# $u = 2^{-53} \approx 1.1\times10^{-16}$ or $1/(2D) \approx 8\cdot10^{-3}$ is maths
MATH_APPROX_POW = re.compile(rf"^\s*{APPROX}\s*(?:[-−]\s*)?(?:{NEG_POW10}|\d*\.\d+)\s*$")
MATH_SCI = re.compile(rf"(?<![\w.]){NUM}[eE][-+−]?\d+\b")
MATH_PERCENT = re.compile(rf"{NUM}\s*\\%")  # $97.5\%$
MATH_FACTOR = re.compile(rf"^\s*{APPROX}?\s*{NUM}\s*(?:\\times|×)\s*$")  # $20\times$ (faster)
MATH_ONLY_POW = re.compile(rf"^\s*{APPROX}?\s*{NEG_POW10}\s*$")
MAGNITUDE_WORD = re.compile(r"\b(?:about|around|roughly|approximately|near|nearly|close to|order(?: of)?)\s*$", re.I)
GLUE_ROLE = re.compile(r"\{glue(?::[\w-]*)?\}(`+)(.+?)\1", re.DOTALL)
GLUE_DIRECTIVE = re.compile(r"^\s*(?:`{3,}|:{3,}|~{3,})\s*\{glue(?::[\w-]*)?\}\s+(\S+)", re.MULTILINE)
GLUE_CALL = re.compile(r"\bglue\(\s*(?P<f>[rRfF]{0,2})(?P<q>[\"'])(?P<key>.*?)(?P=q)")
PYPLOT = re.compile(
    r"\b(?:plt|pyplot)\.(?:subplots|figure|plot|imshow|matshow|bar|barh|hist|scatter|semilogy|loglog|show)\("
)
SYS_PATH = re.compile(r"\bsys\.path\b|PYTHONPATH|site\.addsitedir")


def _blank(match):
    return re.sub(r"[^\n]", " ", match.group(0))


def _line_of(chunk_start, text, offset):
    return chunk_start + text.count("\n", 0, offset)


def check_prose(doc, name="chapter"):
    """Violations in the prose chunks: [(line, reason, excerpt)]."""
    found = []
    for start, lines in doc.prose:
        text = "\n".join(lines)
        # code spans (and with them every role's content), escaped dollars, link targets, URLs, HTML tags
        text = re.sub(r"(`+)(?:.|\n)*?\1", _blank, text)
        text = re.sub(r"\\\$", "  ", text)
        text = re.sub(r"\]\([^)\s]*\)", _blank, text)
        text = re.sub(r"<https?://[^>]*>|https?://\S+", _blank, text)
        text = re.sub(r"<[^>\n]+>", _blank, text)
        # inline maths: checked for hidden magnitudes, then removed
        for math in re.finditer(r"(?<!\$)\$(?!\$)((?:[^$\\]|\\.)+?)\$", text):
            content, line = math.group(1), _line_of(start, text, math.start())
            before = text[max(0, math.start() - 40) : math.start()]
            if (
                MATH_APPROX_POW.match(content)
                or MATH_SCI.search(content)
                or MATH_PERCENT.search(content)
                or MATH_FACTOR.match(content)
            ):
                found.append((line, "measured magnitude in maths", math.group(0)))
            elif MATH_ONLY_POW.match(content) and MAGNITUDE_WORD.search(before):
                found.append((line, "measured magnitude in maths", before.split()[-1] + " " + math.group(0)))
        text = re.sub(r"(?<!\$)\$(?!\$)(?:[^$\\]|\\.)+?\$", _blank, text)
        for reason, pattern in PROSE_PATTERNS:  # most specific first; a hit is blanked (2.3e-7 is no decimal)
            for hit in list(pattern.finditer(text)):
                if reason == "decimal" and VERSION_BEFORE.search(text[: hit.start()]):
                    continue
                line = _line_of(start, text, hit.start())
                excerpt = text[max(0, hit.start() - 20) : hit.end() + 10].replace("\n", " ").strip()
                found.append((line, reason, excerpt))
            text = pattern.sub(_blank, text)
    return sorted(found)


def check_cells(doc, text):
    """Violations in the code cells and glue keys: [(line, reason, excerpt)]."""
    found = []
    glued = []
    for cell in doc.cells:
        for match in GLUE_CALL.finditer(cell.source):
            key = match["key"]
            if "f" in match["f"].lower():
                parts = re.split(r"\{[^{}]*\}", key)
                glued.append(re.compile(".+?".join(re.escape(p) for p in parts) + "$"))
            else:
                glued.append(re.compile(re.escape(key) + "$"))
        for k, line in enumerate(cell.source.split("\n")):
            if SYS_PATH.search(line) and not line.lstrip().startswith("#"):
                found.append((cell.source_line + k, "touches sys.path", line.strip()))
        code = "\n".join(line.split("#")[0] for line in cell.source.split("\n"))
        if PYPLOT.search(code) and not re.search(r"\bplt\.close\(", code):
            meta = cell.metadata or {}
            tags = meta.get("tags") or []
            caption = ((meta.get("mystnb") or {}).get("figure") or {}).get("caption")
            if not caption:
                found.append((cell.line, "figure without mystnb.figure.caption", cell.source.split("\n")[0]))
            if "hide-input" not in tags:
                found.append((cell.line, "figure cell without the hide-input tag", cell.source.split("\n")[0]))
    lines = text.split("\n")
    used = [(m.start(), m.group(2).split(":")[0].strip()) for m in GLUE_ROLE.finditer(text)]
    used += [(m.start(1), m.group(1).strip()) for m in GLUE_DIRECTIVE.finditer(text)]
    for offset, key in used:
        if not any(p.match(key) for p in glued):
            line = text.count("\n", 0, offset) + 1
            found.append((line, f"glue key {key!r} is never glued in this chapter", lines[line - 1].strip()))
    return sorted(found)


def violations(text, name="chapter.md"):
    doc = read_myst(text)
    return sorted(check_prose(doc, name) + check_cells(doc, text))


def _format(path, found):
    return "\n".join(f"{path}:{line}: {reason}: {excerpt}" for line, reason, excerpt in found)


# ---- the checker on synthetic snippets ---------------------------------------------------------------------------

HEADER = "---\njupytext:\n  text_representation:\n    format_name: myst\n---\n\n"

CLEAN = (
    HEADER
    + r"""# A clean chapter

(sec-clean)=
The error is {glue:text}`err:.1e`, the accuracy {glue:text}`acc:.1%`, and the paper reports {typed}`89.7%`
with a default $\varepsilon = 10^{-5}$ and a step $\eta = 0.1$. Inline code `x = 1e-5` and `0.5` is fine,
and so is a link [the paper](https://example.org/v1.5/page) or <https://example.org/0.5>. Python 3.11 and
torch 2.13.0 are versions, so is Version 1.26. There are 3 heads and 12 blocks; a list item ends with a dot 3.
The maths $\sqrt{2/\pi} \approx 0.798$ is maths, so is $W \sim 0.02\,\mathcal N(0, 1)$;
$u = 2^{-53} \approx 1.1\times10^{-16}$ is a definition, and a step of $10^{-6}$ is chosen.
Sizes are no factors: 8×8 digits, 16 × 16 patches, a 224x224 image.

    print(0.5, 1e-9)   # an indented code block

1. An exercise

   with a second paragraph, 3 spaces in.

$$
\mathrm{err} \approx 10^{-15} \quad 0.5
$$ (eq-clean)

```{admonition} Solution
:class: dropdown
:name: sol-1.5
It is {glue:text}`sol_val:.3f`, see {eq}`eq-clean`.
```

```python
print(1.5e-3, "50%")
```

<!-- a comment with 0.5 and 1e-3 -->

```{code-cell} ipython3
---
tags: [hide-input]
mystnb:
  figure:
    caption: What to look at.
    name: fig-clean
---
import matplotlib.pyplot as plt
from myst_nb import glue
glue("err", 1e-16, display=False)
glue("acc", 0.9, display=False)
for name in ["val"]:
    glue(f"sol_{name}", 0.5, display=False)
fig, ax = plt.subplots()
plt.show()
```

```{code-cell} ipython3
fig, ax = plt.subplots()  # an animation: closed, no figure output
html = anim.to_jshtml()
plt.close(fig)
```
"""
)

BAD_SNIPPETS = {
    "decimal": "The loss falls to 0.98 after training.",
    "scientific notation": "The relative error is 2.3e-7 against torch.",
    "scientific, capital E": "The relative error is 1E-15 here.",
    "power of ten": "It agrees to 10^-12 or so.",
    "unicode power of ten": "It agrees to 10⁻¹⁵ or so.",
    "percentage": "It reaches 97% accuracy.",
    "decimal percentage": "It reaches 97.5 % accuracy.",
    "× factor": "The fast path is 20× faster.",
    "x factor": "The fast path is 20x faster.",
    "times sign before": "It grows by ×3 per block.",
    "approx in maths": r"The error is $\approx 10^{-15}$ in float64.",
    "sim with mantissa in maths": r"The error is $\sim 2\cdot10^{-7}$ in float32.",
    "sci notation in maths": r"The error is $1e-15$ here.",
    "bare power after 'about'": r"The check prints about $10^{-16}$.",
    "heading": "## A 2.5× speed-up",
    "admonition body": "```{admonition} Solution\n:class: dropdown\nThe answer is 0.25.\n```",
    "directive title": "```{admonition} Result 0.97\nbody\n```",
    "inline maths across lines": "The value is $\n\\approx 10^{-9}$ here.",
    "approx decimal in maths": r"The ratio comes out at $\approx 0.98$.",
    "bare power after 'roughly'": r"It agrees to roughly $3\times 10^{-12}$.",
    "percentage in maths": r"It reaches $97.5\%$ accuracy.",
    "factor in maths": r"The fast path is $20\times$ faster.",
    "list item paragraph": "1. An exercise\n\n   whose paragraph says 0.37.",
}


@pytest.mark.parametrize("label", list(BAD_SNIPPETS))
def test_checker_catches_each_kind_of_measured_number(label):
    snippet = BAD_SNIPPETS[label]
    found = violations(HEADER + "# T\n\nIntro line.\n\n" + snippet + "\n")
    assert len(found) == 1, (label, found)
    line = found[0][0]
    first = (HEADER + "# T\n\nIntro line.\n\n").count("\n") + 1
    assert first <= line <= first + snippet.count("\n"), (label, found)


def test_checker_passes_clean_text():
    assert violations(CLEAN) == []


def test_checker_reports_the_right_line():
    text = CLEAN + "\nFine text.\n\nA measured 0.25 here.\n"
    found = violations(text)
    assert [(line, reason) for line, reason, _ in found] == [(text.count("\n"), "decimal")]


FIG = "```{code-cell} ipython3\n%sfig, ax = plt.subplots()\nax.plot([1, 2])\nplt.show()\n```\n"


@pytest.mark.parametrize(
    "meta, reasons",
    [
        ("", {"figure without mystnb.figure.caption", "figure cell without the hide-input tag"}),
        ("---\ntags: [hide-input]\n---\n", {"figure without mystnb.figure.caption"}),
        ("---\nmystnb:\n  figure:\n    caption: Look.\n---\n", {"figure cell without the hide-input tag"}),
        (":tags: [hide-input]\n", {"figure without mystnb.figure.caption"}),
        ("---\ntags: [hide-input]\nmystnb:\n  figure:\n    caption: Look.\n---\n", set()),
    ],
)
def test_checker_figure_cells(meta, reasons):
    found = violations(HEADER + "# T\n\n" + FIG % meta)
    assert {reason for _, reason, _ in found} == reasons
    assert all(line == HEADER.count("\n") + 3 for line, _, _ in found)


def test_checker_sys_path_and_glue_keys():
    text = HEADER + "# T\n\nSee {glue:text}`missing:.2f` and {glue:}`there`.\n\n"
    text += "```{code-cell} ipython3\nimport sys\nsys.path.insert(0, '../tests')\nglue('there', 1)\n```\n"
    text += "\n```{glue:figure} nofig\nA caption.\n```\n"
    found = violations(text)
    assert {reason for _, reason, _ in found} == {
        "touches sys.path",
        "glue key 'missing' is never glued in this chapter",
        "glue key 'nofig' is never glued in this chapter",
    }
    lines = text.split("\n")
    for line, reason, _ in found:
        needle = "sys.path.insert" if reason == "touches sys.path" else reason.split("'")[1]
        assert needle in lines[line - 1], (line, reason)


# ---- every chapter -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[p.name for p in CHAPTERS])
def test_chapter_prose_numbers_figures_glue(chapter):
    found = violations(chapter.read_text(encoding="utf-8"), chapter.name)
    assert not found, f"{len(found)} violation(s) of STYLE.md's prose-number and figure conventions:\n" + _format(
        chapter.relative_to(ROOT), found
    )
