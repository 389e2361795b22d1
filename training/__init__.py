"""Reference training for ckptlab: the seeds' Llama-style model, deterministic data, one loop.

Import through the namespace (``from ckptlab.training.loop import train``); this file stays
empty of imports so that ``python -m training.train_pccheck`` does not load a second copy.
"""
