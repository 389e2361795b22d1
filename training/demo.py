"""``make demo``: the whole story on the tiny preset in about a minute on 2 cores.

Train with ckptlab (pccheck) checkpoints; SIGKILL the run inside the engine while it
persists a checkpoint (fault point ``before_rename``); show what recovery finds on disk;
resume with ``--load-checkpoint``; check that the loss file matches two uninterrupted runs
to the last bit; say where the plot and the traces are, and draw run A's timeline around the
checkpoint that run C lost.

    python -m ckptlab.training.demo --out demo-out
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from ckptlab.training.validate import ValidationPlan, print_verdict, run_validation

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ckptlab.training.demo",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("demo-out"))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--freq", type=int, default=10)
    parser.add_argument("--kill-at", type=int, default=30,
                        help="the checkpoint step whose write is killed (default 30)")
    args = parser.parse_args(argv)
    plan = ValidationPlan("pccheck", args.out, steps=args.steps, freq=args.freq,
                          kill_after=args.kill_at, kill_during_write=True, trace=True)
    print(f"[demo] tiny preset, {plan.steps} steps, pccheck checkpoint every {plan.freq}; "
          f"run C is SIGKILLed inside the engine while persisting step {plan.kill_after}")
    report = run_validation(plan)
    print_verdict(plan, report, [_draw_timeline(plan)])
    return 0 if report.passed else 1


def _draw_timeline(plan: ValidationPlan) -> str:
    """Run A's trace around the checkpoint whose write run C lost, as a PNG (a failure to draw
    is reported, not fatal: the demo's verdict is the losses)."""
    trace = plan.out / "trace-a.arrow"
    out = plan.out / f"timeline-a-step{plan.kill_after}.png"
    try:
        from ckptlab.analysis import plot_timeline, read_trace

        plot_timeline(read_trace(trace), out, step=plan.kill_after,
                      title=f"run A, checkpoint of step {plan.kill_after} (the one run C was killed writing)")
    except (OSError, ValueError, ImportError) as exc:
        return f"timeline: not drawn ({exc})"
    return (f"timeline of run A's checkpoint at step {plan.kill_after}: {out} "
            f"(any trace: ckptlab trace plot TRACE -o OUT.png --step N)")


if __name__ == "__main__":
    sys.exit(main())
