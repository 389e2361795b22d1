"""The machine's CPU and storage topology as the placement experiment needs it, read from sysfs
and procfs under a *root directory* (``/`` on a real machine, a recorded tree in tests).

What is read (every path relative to ``root``):

- NUMA nodes: ``sys/devices/system/node/node*/cpulist`` (a node may have no CPUs: GPU memory
  on a GH200 is such a node);
- per CPU: ``sys/devices/system/cpu/cpuN/topology/core_cpus_list`` (older kernels:
  ``thread_siblings_list``; the CPUs of its physical core, SMT siblings included),
  ``physical_package_id`` and ``cluster_id``;
- the block device under a directory: the longest mount point of ``proc/self/mountinfo``
  holding it gives ``MAJ:MIN``; ``sys/dev/block/MAJ:MIN`` (a symlink into ``sys/devices``)
  is resolved; a partition is taken to its disk; an NVMe namespace to its controller
  (``.../nvme/nvmeN/...``, or the ``nvmeN`` entries of a native-multipath
  ``nvme-subsystem`` directory); the device's NUMA node is the first ``numa_node`` file
  walking up from the controller (or disk) towards ``sys/devices`` (-1 = the firmware does
  not say);
- the controller's I/O queue interrupts: lines of ``proc/interrupts`` named ``nvmeNqK``
  (K >= 1; ``q0`` is the admin queue, which does not carry reads or writes), their per-CPU
  counts, and ``proc/irq/IRQ/effective_affinity_list`` (where the kernel delivers them),
  else ``smp_affinity_list`` (where it may).

Anything missing or unreadable becomes ``None`` / empty with a sentence in ``notes`` saying
what and why; reading never raises for a machine that lacks a file. It lives with the
experiment driver (training/experiments/) because only the driver's placements use it: the
checkpointer takes explicit CPUs (``CheckpointConfig.writer_cpus``) and needs no topology.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckptlab.core.config import parse_cpu_list
from ckptlab.profiling.metadata import cpu_list_string

_CONTROLLER = re.compile(r"^nvme\d+$")
_NAMESPACE = re.compile(r"^(nvme\d+)(?:c\d+)?n\d+(?:p\d+)?$")
_SUBSYSTEM = re.compile(r"^nvme-subsys\d+$")


@dataclass(frozen=True)
class QueueIrq:
    """One NVMe I/O queue's interrupt."""

    irq: int
    queue: str                  # e.g. "nvme1q3"
    cpus: tuple[int, ...]       # where it is delivered; () = unknown
    affinity_file: str | None   # "effective_affinity_list", "smp_affinity_list" or None
    count: int                  # interrupts so far, all CPUs together

    def to_dict(self) -> dict[str, Any]:
        return {"irq": self.irq, "queue": self.queue, "cpus": cpu_list_string(self.cpus),
                "affinity_file": self.affinity_file, "count": self.count}


@dataclass(frozen=True)
class Storage:
    """The block device under a directory, its NUMA node and (NVMe) its queues' interrupts."""

    directory: str
    mount_point: str | None = None
    majmin: str | None = None
    device: str | None = None                 # e.g. "nvme1n1p2", "vda"
    controllers: tuple[str, ...] = ()         # e.g. ("nvme1",); () = not NVMe or unknown
    numa_node: int | None = None              # None = unknown (see notes)
    irqs: tuple[QueueIrq, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def irq_cpus(self) -> tuple[int, ...]:
        """CPUs the NVMe I/O queue interrupts are delivered to."""
        return tuple(sorted({c for q in self.irqs for c in q.cpus}))

    def to_dict(self) -> dict[str, Any]:
        return {"directory": self.directory, "mount_point": self.mount_point, "majmin": self.majmin,
                "device": self.device, "controllers": list(self.controllers), "numa_node": self.numa_node,
                "irq_cpus": cpu_list_string(self.irq_cpus), "irqs": [q.to_dict() for q in self.irqs],
                "notes": list(self.notes)}


@dataclass(frozen=True)
class Topology:
    """NUMA nodes, physical cores and (optionally) the storage under the experiment's directory."""

    root: str
    nodes: dict[int, tuple[int, ...]] = field(default_factory=dict)   # node -> its CPUs (may be ())
    core_of: dict[int, tuple[int, ...]] = field(default_factory=dict)  # CPU -> the CPUs of its core
    package_of: dict[int, int] = field(default_factory=dict)
    cluster_of: dict[int, int] = field(default_factory=dict)
    storage: Storage | None = None
    notes: tuple[str, ...] = ()

    def cpu_nodes(self) -> list[int]:
        """The nodes that have CPUs."""
        return [n for n, cpus in sorted(self.nodes.items()) if cpus]

    def siblings(self, cpu: int) -> tuple[int, ...]:
        """The CPUs sharing ``cpu``'s physical core (itself included; itself alone if unknown)."""
        return self.core_of.get(cpu, (cpu,))

    def to_dict(self) -> dict[str, Any]:
        """What the experiment manifest records."""
        cores = {self.siblings(c) for cpus in self.nodes.values() for c in cpus} or set(self.core_of.values())
        return {"root": self.root,
                "nodes": {str(n): cpu_list_string(cpus) for n, cpus in sorted(self.nodes.items())},
                "physical_cores": len(cores), "cpus": len(self.core_of),
                "smt": max((len(c) for c in cores), default=1),
                "packages": sorted(set(self.package_of.values())),
                "storage": None if self.storage is None else self.storage.to_dict(),
                "notes": list(self.notes)}


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _cpus(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return parse_cpu_list(text)
    except ValueError:
        return None


def _int(text: str | None) -> int | None:
    try:
        return None if text is None else int(text)
    except ValueError:
        return None


def _index(name: str, prefix: str) -> int | None:
    rest = name.removeprefix(prefix)
    return int(rest) if rest != name and rest.isdigit() else None


def read_nodes(root: Path, notes: list[str]) -> dict[int, tuple[int, ...]]:
    base = root / "sys/devices/system/node"
    nodes: dict[int, tuple[int, ...]] = {}
    for d in sorted(base.glob("node*")) if base.is_dir() else []:
        n = _index(d.name, "node")
        if n is None:
            continue
        cpus = _cpus(_read(d / "cpulist"))
        if cpus is None:
            notes.append(f"{d.relative_to(root)}/cpulist unreadable: node {n}'s CPUs unknown")
            continue
        nodes[n] = cpus
    if not nodes:
        notes.append(f"no NUMA nodes under {base} (kernel without NUMA or no sysfs): NUMA nodes unknown")
    return nodes


def read_cpus(root: Path, notes: list[str]) -> tuple[dict[int, tuple[int, ...]], dict[int, int], dict[int, int]]:
    base = root / "sys/devices/system/cpu"
    core_of: dict[int, tuple[int, ...]] = {}
    package_of: dict[int, int] = {}
    cluster_of: dict[int, int] = {}
    missing = []
    for d in sorted(base.glob("cpu*")) if base.is_dir() else []:
        cpu = _index(d.name, "cpu")
        if cpu is None:
            continue
        topo = d / "topology"
        core = _cpus(_read(topo / "core_cpus_list")) or _cpus(_read(topo / "thread_siblings_list"))
        if core is None:
            missing.append(cpu)
        else:
            core_of[cpu] = core
        for name, into in (("physical_package_id", package_of), ("cluster_id", cluster_of)):
            value = _int(_read(topo / name))
            if value is not None:
                into[cpu] = value
    if missing:
        notes.append(f"no core_cpus_list or thread_siblings_list for CPU(s) {cpu_list_string(missing)} "
                     f"(offline, or an old kernel): each counts as its own core")
    if not core_of and not missing:
        notes.append(f"no CPUs under {base}: physical cores unknown")
    return core_of, package_of, cluster_of


def _unescape(field_: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_)


def mount_of(root: Path, directory: str) -> tuple[str, str, str] | None:
    """(mount point, MAJ:MIN, source) of the longest mount holding ``directory``, from
    ``root/proc/self/mountinfo``; None when unreadable."""
    text = _read(root / "proc/self/mountinfo")
    if text is None:
        return None
    path = os.path.normpath(directory)
    best = None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 10 or "-" not in parts:
            continue
        majmin, mnt = parts[2], _unescape(parts[4])
        source = parts[parts.index("-") + 2]
        inside = path == mnt or path.startswith(mnt.rstrip("/") + "/")
        if inside and (best is None or len(mnt) >= len(best[0])):
            best = (mnt, majmin, source)
    return best


def _numa_node_up(start: Path, stop: Path) -> tuple[int | None, Path | None]:
    """The first ``numa_node`` walking up from ``start`` to ``stop`` (exclusive)."""
    d = start
    while d != stop and stop in d.parents:
        value = _int(_read(d / "numa_node"))
        if value is not None:
            return value, d
        d = d.parent
    return None, None


def read_storage(root: Path, directory: str) -> Storage:
    """The block device under ``directory`` (a path on the machine ``root`` describes)."""
    notes: list[str] = []
    mount = mount_of(root, directory)
    if mount is None:
        return Storage(directory, notes=(f"{root / 'proc/self/mountinfo'} unreadable: the device under "
                                         f"{directory} is unknown",))
    mnt, majmin, source = mount
    link = root / "sys/dev/block" / majmin
    if not link.exists():
        return Storage(directory, mnt, majmin, notes=(f"{directory} is on {source} ({majmin}), which is not a "
                                                      f"block device in sys/dev/block (a virtual or network file "
                                                      f"system): no NUMA node or NVMe queues",))
    disk = Path(os.path.realpath(link))
    device = disk.name
    if (disk / "partition").exists():
        disk = disk.parent
    devices = Path(os.path.realpath(root / "sys/devices"))
    parts = disk.parts
    controllers: list[Path] = []
    if "nvme" in parts and parts.index("nvme") + 1 < len(parts) and _CONTROLLER.match(parts[parts.index("nvme") + 1]):
        controllers = [Path(*parts[:parts.index("nvme") + 2])]
    elif any(_SUBSYSTEM.match(p) for p in parts):
        subsys = Path(*parts[:next(i for i, p in enumerate(parts) if _SUBSYSTEM.match(p)) + 1])
        controllers = [Path(os.path.realpath(c)) for c in sorted(subsys.iterdir()) if _CONTROLLER.match(c.name)]
        if not controllers:
            notes.append(f"{device} is an NVMe multipath namespace, but {subsys.name} lists no controller")
    elif _NAMESPACE.match(disk.name):
        ctrl = root / "sys/class/nvme" / _NAMESPACE.match(disk.name).group(1)
        if ctrl.exists():
            controllers = [Path(os.path.realpath(ctrl))]
    names = tuple(c.name for c in controllers)
    node, where = None, None
    for start in controllers or [disk]:
        node, where = _numa_node_up(start, devices)
        if node is not None:
            break
    if node is None:
        notes.append(f"no numa_node file above {disk.relative_to(devices.parent) if devices.parent in disk.parents else disk}"
                     f": {device}'s NUMA node is unknown")
    elif node < 0:
        notes.append(f"{where.relative_to(devices.parent)}/numa_node is -1: the firmware does not say which NUMA "
                     f"node {device} is attached to")
        node = None
    if not names:
        notes.append(f"{directory} is on {device}, not an NVMe device: no NVMe queue interrupts")
        return Storage(directory, mnt, majmin, device, (), node, (), tuple(notes))
    irqs = read_queue_irqs(root, names, notes)
    return Storage(directory, mnt, majmin, device, names, node, irqs, tuple(notes))


def read_queue_irqs(root: Path, controllers: tuple[str, ...], notes: list[str]) -> tuple[QueueIrq, ...]:
    """The I/O queue interrupts of ``controllers`` from ``proc/interrupts`` and ``proc/irq``."""
    text = _read(root / "proc/interrupts")
    if text is None:
        notes.append("proc/interrupts unreadable: the NVMe queues' interrupt CPUs are unknown")
        return ()
    lines = text.splitlines()
    ncpu = len(lines[0].split()) if lines else 0
    pattern = re.compile(rf"^({'|'.join(map(re.escape, controllers))})q(\d+)$")
    out = []
    for line in lines[1:]:
        head, _, rest = line.partition(":")
        fields = rest.split()
        m = pattern.match(fields[-1]) if fields else None
        if not head.strip().isdigit() or m is None or int(m.group(2)) == 0:
            continue
        irq = int(head)
        count = sum(int(v) for v in fields[:ncpu] if v.isdigit())
        cpus, used = (), None
        for name in ("effective_affinity_list", "smp_affinity_list"):
            value = _cpus(_read(root / "proc/irq" / str(irq) / name))
            if value:
                cpus, used = value, name
                break
        if used is None:
            notes.append(f"IRQ {irq} ({fields[-1]}): no readable affinity in proc/irq/{irq}: its CPUs are unknown")
        out.append(QueueIrq(irq, fields[-1], cpus, used, count))
    if not out:
        notes.append(f"no I/O queue interrupts of {', '.join(controllers)} in proc/interrupts "
                     f"(polled queues, or another interrupt naming)")
    return tuple(sorted(out, key=lambda q: q.irq))


def read_topology(root: str | os.PathLike = "/", directory: str | None = None) -> Topology:
    """The topology under ``root``; with ``directory``, also the storage holding it."""
    base = Path(root)
    notes: list[str] = []
    nodes = read_nodes(base, notes)
    core_of, package_of, cluster_of = read_cpus(base, notes)
    storage = None if directory is None else read_storage(base, directory)
    return Topology(os.fspath(root), nodes, core_of, package_of, cluster_of, storage, tuple(notes))
