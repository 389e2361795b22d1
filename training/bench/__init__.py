"""``ckptlab bench``: every checkpointer kind side by side on one model (docs/PERFORMANCE.md).

spec.py (what to run, the interleaved schedule), child.py (one measured run in its own
process), probes.py (raw disk, cold reads, D2H), metrics.py (the figures), runner.py (runs the
schedule), report.py (bench.json, bench.md, bench.png), cli.py (the subcommand).
"""
