"""Execute the book's chapters two at a time into jupyter-book's execution cache, before `jupyter-book build`.

    python book/prerun.py [--jobs 2]

jupyter-book 1.x executes notebooks one after the other. This fills the same jupyter-cache database
(_build/.jupyter_cache) in parallel, reading each chapter exactly as myst-nb does, so the build that follows
finds every chapter that succeeded already executed ("Using cached notebook") and only renders. It is only an
accelerator: chapters already in the cache are skipped, a chapter that fails here is not cached (the build then
executes it again and reports the failure as usual), and this script always exits 0 unless it cannot start.
Prints one line per chapter with its execution time.

Chapters therefore run concurrently and in any order: a chapter must not read a file another chapter writes
(use a temporary directory), which is also what lets a reader run any one chapter on its own.
"""

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import yaml

ROOT = Path(__file__).absolute().parent.parent  # not resolve(): a symlinked book/ serves another book


def chapters():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]] + [c["file"] for part in toc.get("parts", []) for c in part.get("chapters", [])]
    out = []
    for f in files:
        path = ROOT / f
        if path.suffix not in (".md", ".ipynb"):
            path = path.with_suffix(".md") if path.with_suffix(".md").exists() else path.with_suffix(".ipynb")
        out.append(path)
    return out


def read_like_myst_nb(path, extensions):
    """The notebook myst-nb's reader makes of a chapter (same cells, same metadata: same cache hash)."""
    from myst_nb.core.config import NbParserConfig
    from myst_nb.core.read import create_nb_reader
    from myst_parser.config.main import MdParserConfig

    text = path.read_text(encoding="utf-8")
    reader = create_nb_reader(str(path), MdParserConfig(enable_extensions=set(extensions)), NbParserConfig(), text)
    if reader is None:
        return None
    return reader.read(text)


def execute(path, extensions, timeout):
    """Worker: execute one chapter in its own directory -> (path, notebook or None, seconds, error text)."""
    from jupyter_cache.executors.utils import single_nb_execution

    nb = read_like_myst_nb(path, extensions)
    if nb is None:
        return path, None, 0.0, "not a notebook"
    result = single_nb_execution(nb, cwd=str(path.parent), allow_errors=False, timeout=timeout, meta_override=True)
    if result.err is not None:
        return path, None, result.time, result.exc_string or repr(result.err)
    return path, nb, result.time, None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()

    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    execute_cfg = config.get("execute", {})
    if execute_cfg.get("execute_notebooks") != "cache":
        print("prerun: execute_notebooks is not 'cache'; nothing to do")
        return 0
    extensions = config.get("parse", {}).get("myst_enable_extensions", [])
    timeout = execute_cfg.get("timeout", 30)
    cache = get_cache(str(ROOT / (execute_cfg.get("cache") or "_build/.jupyter_cache")))

    todo = []
    for path in chapters():
        nb = read_like_myst_nb(path, extensions)
        if nb is None:
            continue
        try:
            cache.match_cache_notebook(nb)
        except KeyError:
            todo.append(path)
    if not todo:
        print("prerun: every chapter is in the execution cache")
        return 0

    t0 = time.perf_counter()
    failed = 0
    # the longest chapters (by source size) first, so the two workers finish together
    todo.sort(key=lambda p: -p.stat().st_size)
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(execute, p, extensions, timeout) for p in todo]
        for fut in as_completed(futures):
            try:
                path, nb, seconds, error = fut.result()
            except Exception as exc:  # a worker died: the build executes that chapter itself
                failed += 1
                print(f"prerun: worker failed: {exc!r}", flush=True)
                continue
            name = path.relative_to(ROOT)
            if error is None:
                bundle = CacheBundleIn(nb, str(path), data={"execution_seconds": seconds})
                cache.cache_notebook_bundle(bundle, check_validity=False, overwrite=True)
                print(f"prerun: ok    {name}  {seconds:6.1f}s", flush=True)
            else:
                failed += 1
                last = error.strip().splitlines()[-1] if error.strip() else error
                print(f"prerun: FAIL  {name}  {seconds:6.1f}s  {last}", flush=True)
    print(
        f"prerun: {len(todo) - failed} chapters executed, {failed} failed (the build re-runs and reports those), "
        f"{time.perf_counter() - t0:.1f}s wall with {args.jobs} jobs"
    )
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
