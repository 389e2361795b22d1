"""``ckptlab bench``: every checkpointer kind side by side on one model (docs/PERFORMANCE.md).

spec.py (what to run, the interleaved schedule), child.py (one measured run in its own
process; the raw-disk, cold-read and D2H probes it runs are core/storage_probe.py's, shared
with ``ckptlab tune``), metrics.py (the figures), runner.py (runs the schedule), report.py (bench.json, bench.md, bench.png), cli.py (the subcommand).
"""
