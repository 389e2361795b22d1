"""Fault injection and crash-consistency campaigns (docs/FAULTS.md).

    spec       the fault spec language (point=NAME[,ckpt=K][,step=S][,hit=N][,action=...])
    iolog      reading the engine's recorded file-system operations
    replay     crash states a power cut may leave, rebuilt from an I/O log
    bitrot     damage to committed checkpoints
    payload    PRNG-filled test states (any mix or tear is detectable)
    oracle     what must hold after a crash
    saver      the light child process the campaign crashes
    tiers      the campaign's tiers; campaign: the runner (``ckptlab campaign``)

Importing this package does not import torch (the saver child must start fast).
"""
from ckptlab.faults.spec import (
    FAULTS_ENV,
    IO_LOG_DATA_ENV,
    IO_LOG_ENV,
    FaultRule,
    add_fault_arguments,
    apply_fault_arguments,
    child_env,
    fault_points,
    join,
    parse,
    validate,
)

__all__ = [
    "FAULTS_ENV",
    "IO_LOG_DATA_ENV",
    "IO_LOG_ENV",
    "FaultRule",
    "add_fault_arguments",
    "apply_fault_arguments",
    "child_env",
    "fault_points",
    "join",
    "parse",
    "validate",
]
