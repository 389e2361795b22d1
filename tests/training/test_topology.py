"""The topology reader (training/experiments/topology.py) and the numa-* placements on recorded
sysfs/procfs trees of a 2-socket x86 node and a GH200's Grace (fixtures/topology/README.md),
and on this machine's own /."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from ckptlab.core.config import parse_cpu_list
from ckptlab.training.experiments.affinity import Unplaceable, place
from ckptlab.training.experiments.topology import read_topology

FIXTURES = Path(__file__).parent / "fixtures" / "topology"
X86, GRACE = FIXTURES / "x86_2socket", FIXTURES / "grace_72"


@pytest.fixture(scope="module")
def x86():
    return read_topology(X86, "/scratch/ckpt")


@pytest.fixture(scope="module")
def grace():
    return read_topology(GRACE, "/home/u/ckpt")


def test_x86_nodes_cores_and_the_scratch_nvme(x86):
    assert x86.nodes == {0: parse_cpu_list("0-55,112-167"), 1: parse_cpu_list("56-111,168-223")}
    assert x86.siblings(3) == (3, 115) and x86.siblings(170) == (58, 170)
    assert x86.package_of[55] == 0 and x86.package_of[56] == 1 and x86.package_of[168] == 1
    s = x86.storage
    assert (s.mount_point, s.majmin, s.device, s.controllers, s.numa_node) == ("/scratch", "259:3", "nvme1n1",
                                                                               ("nvme1",), 1)
    assert [q.queue for q in s.irqs] == [f"nvme1q{k}" for k in range(1, 17)], "q0 (admin) is not an I/O queue"
    assert s.irq_cpus == tuple(range(0, 112, 7))
    assert all(q.affinity_file == "effective_affinity_list" for q in s.irqs) and s.irqs[0].count == 1201
    assert s.notes == () and x86.notes == ()
    d = x86.to_dict()
    assert d["physical_cores"] == 112 and d["smt"] == 2 and d["storage"]["irq_cpus"] == "0,7,14,21,28,35,42,49,56,63,70,77,84,91,98,105"


def test_x86_the_root_file_system_is_the_boot_nvme_partition_on_socket_0():
    s = read_topology(X86, "/home/me").storage
    assert (s.mount_point, s.device, s.controllers, s.numa_node) == ("/", "nvme0n1p2", ("nvme0",), 0)
    assert s.irq_cpus == (0, 56)
    tmp = read_topology(X86, "/scratch/tmp fs/x").storage   # mountinfo's \040 is a space
    assert tmp.mount_point == "/scratch/tmp fs" and tmp.numa_node is None
    assert "not a block device" in tmp.notes[0]


def test_grace_one_cpu_node_eight_without_cpus_and_a_multipath_nvme(grace):
    assert grace.nodes[0] == tuple(range(72)) and all(grace.nodes[n] == () for n in range(1, 9))
    assert grace.cpu_nodes() == [0] and grace.siblings(17) == (17,)
    s = grace.storage
    assert (s.device, s.controllers, s.numa_node) == ("nvme0n1p2", ("nvme0",), 0)
    assert len(s.irqs) == 64 and s.irq_cpus == (*range(0, 16, 2), *range(16, 72))
    assert grace.to_dict()["smt"] == 1 and s.notes == ()


# The sets below are worked out by hand from the fixture's README, not from the code.
@pytest.mark.parametrize("placement, threads, writers", [
    ("numa-local", 4, "56,70,84,98"),          # node 1's 56 cores, every 14th, first threads
    ("numa-local", 58, "56-111,168,196"),      # all 56 cores, then 2 siblings spread
    ("numa-local-noirq", 4, "57,71,85,99"),    # cores 56,63,...,105 (and siblings) take the IRQs
    ("numa-remote", 4, "0,14,28,42"),          # node 0, same rule
])
def test_numa_placements_on_x86(x86, placement, threads, writers):
    cell = place(placement, threads, range(224), x86)
    assert cell.writer_cpus == parse_cpu_list(writers) and cell.training_cpus == tuple(range(224))
    assert cell.note == ""


@pytest.mark.parametrize("placement, threads, writers", [
    ("numa-local", 4, "0,18,36,54"),
    ("numa-local-noirq", 4, "1,5,9,13"),       # only 1,3,...,15 receive no queue interrupt
    ("numa-local-noirq", 8, "1,3,5,7,9,11,13,15"),
])
def test_numa_placements_on_grace(grace, placement, threads, writers):
    assert place(placement, threads, range(72), grace).writer_cpus == parse_cpu_list(writers)


def test_what_grace_cannot_place_says_why(grace):
    with pytest.raises(Unplaceable, match=r"no NUMA node other than the NVMe's node 0 .*node\(s\) 1-8 have none"):
        place("numa-remote", 1, range(72), grace)
    with pytest.raises(Unplaceable, match="needs 9 CPUs .*may use 8: 1,3,5,7,9,11,13,15"):
        place("numa-local-noirq", 9, range(72), grace)


def test_the_allowed_cpus_narrow_the_node(x86):
    assert place("numa-local", 2, range(0, 64), x86).writer_cpus == (56, 60)
    with pytest.raises(Unplaceable, match="node 1 has no allowed CPUs"):
        place("numa-local", 1, range(0, 56), x86)


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / src.name
    shutil.copytree(src, dst, symlinks=True)
    return dst


def test_missing_files_degrade_with_reasons(tmp_path):
    root = _copy(X86, tmp_path)
    (root / "sys/devices/pci0000:b0/0000:b0:01.0/0000:b1:00.0/numa_node").write_text("-1\n")
    shutil.rmtree(root / "proc/irq/203")
    for cpu in (5, 6):
        topo = root / f"sys/devices/system/cpu/cpu{cpu}/topology"
        (topo / "core_cpus_list").unlink()
    (root / "sys/devices/system/cpu/cpu6/topology/thread_siblings_list").write_text("6,118\n")
    t = read_topology(root, "/scratch/x")
    assert t.siblings(6) == (6, 118) and t.siblings(5) == (5,)
    assert any("CPU(s) 5 " in n for n in t.notes)
    s = t.storage
    assert s.numa_node is None and any("numa_node is -1" in n for n in s.notes)
    assert any("IRQ 203 (nvme1q3)" in n for n in s.notes) and len(s.irqs) == 16
    with pytest.raises(Unplaceable, match="NUMA node is unknown .*numa_node is -1.* 2 NUMA nodes"):
        place("numa-local", 1, range(224), t)
    (root / "proc/interrupts").unlink()
    (root / "proc/self/mountinfo").unlink()
    bare = read_topology(root, "/scratch/x")
    assert bare.storage.numa_node is None and "mountinfo unreadable" in bare.storage.notes[0]
    empty = read_topology(tmp_path / "nothing", "/x")
    assert empty.nodes == {} and any("no NUMA nodes" in n for n in empty.notes)


def test_this_machine_reads_and_the_placements_degrade_with_a_reason(tmp_path):
    t = read_topology("/", os.fspath(tmp_path))
    allowed = sorted(os.sched_getaffinity(0))
    assert set(allowed) <= set(t.core_of) or not t.core_of
    if t.storage.numa_node is not None and t.storage.irqs:
        pytest.skip("this machine has an NVMe with a known NUMA node: nothing to degrade")
    if len(t.cpu_nodes()) != 1:
        pytest.skip(f"{len(t.cpu_nodes())} NUMA nodes with CPUs here")
    local = place("numa-local", 1, allowed, t)
    noirq = place("numa-local-noirq", 1, allowed, t)
    assert local.writer_cpus == noirq.writer_cpus == (allowed[0],)
    assert local.writer_cpus == place("compact", 1, allowed).writer_cpus   # one node, one thread: compact
    if t.storage.numa_node is None:
        assert local.note.startswith("NVMe NUMA node unknown (") and "only one with allowed CPUs" in local.note
    assert "numa-local-noirq = numa-local" in noirq.note
    assert local.note in local.describe()
    with pytest.raises(Unplaceable, match="no remote node|no NUMA node other than"):
        place("numa-remote", 1, allowed, t)
