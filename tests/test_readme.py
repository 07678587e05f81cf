"""The README stays true: its example runs, and its tables name vitlib's real keys."""

import re
import subprocess
import sys
from pathlib import Path

import vitlib

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_readme_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks, "the README has a python example"
    out = subprocess.run([sys.executable, "-c", blocks[0]], capture_output=True, text=True, check=True).stdout
    assert out.startswith("loss after 5 steps:")
    assert len(blocks[0].strip().splitlines()) <= 12


def test_readme_param_table_names_every_key():
    for style in ("seed", "lucidrains", "vit-pytorch"):
        cfg = vitlib.ViTConfig(
            image_size=4, patch_size=2, num_classes=3, dim=8, depth=1, heads=2, mlp_dim=8, style=style
        )
        for key in vitlib.param_shapes(cfg):
            name = key.replace("blocks.0.", "blocks.b.")
            if name.endswith((".gamma", ".beta")):
                name = name.rsplit(".", 1)[0] + ".gamma/beta"
            leaf = name.rsplit(".", 1)[-1]
            assert f"`{name}`" in README or f"`{leaf}`" in README, f"README's table lacks {key}"
