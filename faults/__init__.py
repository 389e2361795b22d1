"""Fault injection and crash-consistency campaigns (docs/FAULTS.md).

    iolog      reading a recorded I/O log (the engine's, or a Python writer's: one format)
    replay     crash states a power cut may leave, rebuilt from an I/O log
    damage     damage to committed checkpoints (the bitrot tier applies it)
    payload    PRNG-filled test states (any mix or tear is detectable)
    oracle     what must hold after a crash
    saver      the light child process the campaign crashes (the engine, no torch)
    torchsave_saver  the torchsave child (same states and ack log, imports torch)
    tiers      the campaign's tiers, one module each; campaign: the runner (``ckptlab campaign``)

The fault spec language itself is production plumbing: ``ckptlab.core.fault_spec``.
This file imports nothing, so ``python -m ckptlab.faults.saver`` starts without torch.
"""
