"""The old name of ``ckptlab.analysis.losses``, kept so ``python -m ckptlab.analysis.plot_losses``
goes on working; new code imports ``ckptlab.analysis.losses``."""
from __future__ import annotations

import sys

from ckptlab.analysis.losses import main, plot_losses

__all__ = ["plot_losses", "main"]

if __name__ == "__main__":
    sys.exit(main(prog="python -m ckptlab.analysis.plot_losses"))
