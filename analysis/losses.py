"""The seeds' figure: loss curves of several runs drawn over each other.

Identical runs must be seen to overlap, so each curve gets its own line style and width
(solid wide underneath, dashed, dotted on top) instead of relying on colour alone. The title
says whether the files are identical to the last bit (``profiling.lossfile``).

    python -m ckptlab.analysis.losses a.txt b.txt c.csv -o losses.png   # either loss-file format
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ckptlab.profiling.lossfile import compare_loss_files, read_loss_file

__all__ = ["plot_losses", "main"]

_STYLES = [  # (linestyle, linewidth, alpha): later curves thinner, so earlier ones show
    ("-", 4.0, 0.45), ("--", 2.2, 0.9), (":", 1.6, 1.0), ("-.", 1.2, 1.0),
]


def plot_losses(paths: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str],
                labels: Sequence[str] | None = None, title: str | None = None) -> Path:
    """Draw one curve per loss file to ``out`` (PNG, written atomically; its directory is
    created); returns the path written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ckptlab.analysis.tables import write_png
    try:
        import seaborn as sns
        sns.set_theme(style="whitegrid", context="notebook")
    except ImportError:  # seaborn only styles the figure
        pass
    if not paths:
        raise ValueError("no loss files given")
    labels = list(labels) if labels else [Path(p).stem for p in paths]
    if len(labels) != len(paths):
        raise ValueError(f"{len(paths)} loss files but {len(labels)} labels")
    curves = [read_loss_file(p) for p in paths]  # malformed files fail before a figure exists
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (rows, label) in enumerate(zip(curves, labels)):
        style, width, alpha = _STYLES[i % len(_STYLES)]
        ax.plot([s for s, _ in rows], [v for _, v in rows], linestyle=style, linewidth=width,
                alpha=alpha, label=label)
    identical = all(compare_loss_files(paths[0], p) is None for p in paths[1:])
    verdict = "identical to the last bit" if identical else "NOT identical"
    ax.set_title(title or f"training loss: {len(paths)} runs, {verdict}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_png(fig, out, dpi=120)
    return out


def main(argv: Sequence[str] | None = None, prog: str = "python -m ckptlab.analysis.losses") -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Plot loss files ('step,loss' CSV or '<step> <loss>' lines).")
    parser.add_argument("loss_files", nargs="+", type=Path)
    parser.add_argument("-o", "--out", type=Path, default=Path("losses.png"),
                        help="PNG to write (default losses.png)")
    parser.add_argument("--labels", nargs="+", default=None, help="one label per file")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    for path in args.loss_files:
        if not path.is_file():
            parser.error(f"no such loss file: {path}")
    try:
        out = plot_losses(args.loss_files, args.out, args.labels, args.title)
    except ValueError as exc:
        parser.error(str(exc))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
