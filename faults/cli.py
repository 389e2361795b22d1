"""``ckptlab campaign``: registered on the ckptlab console script (entry point ``campaign``).

    add_parser(subparsers)  adds the ``campaign`` subcommand (its func is :func:`run`)
    run(args) -> int        runs it from parsed arguments
"""
from __future__ import annotations

import argparse

from ckptlab.faults.campaign import add_arguments, run_from_args


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "campaign", help="crash-consistency campaign: kill, fail, power-cut and corrupt; recover; check",
        description="Run crash-consistency tiers against the engine (docs/FAULTS.md). Exit status 1 on any "
                    "violation.")
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    return run_from_args(args)
