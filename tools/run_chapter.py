"""Execute MyST-notebook chapters top to bottom, outside the book build; exit 1 on the first error.

python tools/run_chapter.py chapters/05_layernorm.md [more.md ...]
"""

import sys
import time
from pathlib import Path

import jupytext
import nbclient

root = Path(__file__).resolve().parent.parent
failed = 0
for path in sys.argv[1:]:
    nb = jupytext.read(path)
    t0 = time.perf_counter()
    try:
        nbclient.NotebookClient(
            nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(root / "chapters")}}
        ).execute()
        print(f"ok    {path}  {time.perf_counter() - t0:.1f}s")
    except nbclient.exceptions.CellExecutionError as exc:
        failed += 1
        print(f"FAIL  {path}\n{exc}")
sys.exit(1 if failed else 0)
