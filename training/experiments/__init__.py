"""Experiment drivers: they run checkpointers on this machine and leave results for analysis.

``affinity``: the writer-thread placement experiment (``ckptlab experiment affinity``); its
statistics are ``ckptlab.analysis.affinity`` (``ckptlab analyze OUT``).
"""
