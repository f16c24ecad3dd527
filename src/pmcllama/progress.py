"""Progress bars: live on a terminal, a line every 30 s in logs (CI, nohup, Slurm)."""
from __future__ import annotations

import sys


def progress(**kwargs):
    from tqdm import tqdm

    interactive = sys.stderr.isatty()
    kwargs.setdefault("mininterval", 0.5 if interactive else 30.0)
    kwargs.setdefault("dynamic_ncols", interactive)
    return tqdm(**kwargs)
