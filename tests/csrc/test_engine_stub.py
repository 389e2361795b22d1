"""csrc/_engine.pyi against the module it describes (ckptlab._engine, csrc/bindings.cpp).

Fails when the two drift:
  * every public name of the module and of each class (Engine, IoLog, FaultInjector) is in the stub, and the stub names nothing
    more (its TypedDicts are type-only, marked @type_check_only, and absent at run time);
    properties are properties on both sides;
  * each function's and method's parameters (__init__ included) have the names, order
    and defaults that pybind11 reports in the first line of its __doc__;
  * every function, method, property and constant is called or read on a tiny real engine
    (and a real I/O log and fault injector),
    and each value conforms to the stub's annotation: TypedDicts have exactly their keys, in
    order, numpy columns their dtypes, lists and tuples their element types;
  * the stub installed beside the module is csrc/_engine.pyi.
A binding added without its stub entry, or a stub entry this test does not exercise, fails.
"""
from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from ckptlab import _engine

ROOT = Path(__file__).resolve().parents[2]
STUB = ROOT / "csrc" / "_engine.pyi"
_NO_DEFAULT = object()
_NOT_LITERAL = object()


# ---------------------------------------------------------------------------------------
# The stub, read as a syntax tree

class Stub:
    def __init__(self, path: Path) -> None:
        tree = ast.parse(path.read_text(), str(path))
        self.functions: dict[str, ast.FunctionDef] = {}
        self.constants: dict[str, ast.expr] = {}
        self.aliases: dict[str, ast.expr] = {}
        self.typeddicts: dict[str, list[tuple[str, ast.expr]]] = {}
        self.type_only: set[str] = set()
        self.classes: dict[str, dict[str, ast.FunctionDef]] = {}
        self.properties: dict[str, set[str]] = {}
        for node in tree.body:
            if isinstance(node, ast.FunctionDef):
                self.functions[node.name] = node
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                self.constants[node.target.id] = node.annotation
            elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                self.aliases[node.targets[0].id] = node.value
            elif isinstance(node, ast.ClassDef):
                if any(isinstance(b, ast.Name) and b.id == "TypedDict" for b in node.bases):
                    self.typeddicts[node.name] = [(n.target.id, n.annotation) for n in node.body
                                                  if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]
                    if any(isinstance(d, ast.Name) and d.id == "type_check_only" for d in node.decorator_list):
                        self.type_only.add(node.name)
                else:
                    methods = {n.name: n for n in node.body if isinstance(n, ast.FunctionDef)}
                    self.classes[node.name] = methods
                    self.properties[node.name] = {
                        name for name, fn in methods.items()
                        if any(isinstance(d, ast.Name) and d.id == "property" for d in fn.decorator_list)}

    def runtime_names(self) -> set[str]:
        names = set(self.functions) | set(self.constants) | set(self.classes)
        return {n for n in names if not n.startswith("_")}


@pytest.fixture(scope="module")
def stub() -> Stub:
    return Stub(STUB)


def _literal(node: ast.expr | None):
    if node is None:
        return _NO_DEFAULT
    if isinstance(node, ast.Constant) and node.value is Ellipsis:
        return _NOT_LITERAL
    try:
        value = ast.literal_eval(node)
    except ValueError:
        return _NOT_LITERAL
    return list(value) if isinstance(value, (list, tuple)) else value


def _stub_params(fn: ast.FunctionDef, method: bool) -> list[tuple[str, object]]:
    args = fn.args
    assert not args.vararg and not args.kwarg and not args.kwonlyargs and not args.posonlyargs, fn.name
    params = args.args[1:] if method else args.args
    defaults = [None] * (len(args.args) - len(args.defaults)) + list(args.defaults)
    defaults = defaults[1:] if method else defaults
    return [(p.arg, _literal(d)) for p, d in zip(params, defaults)]


# ---------------------------------------------------------------------------------------
# pybind11's signature line: "name(a: T, b: U = 3) -> R"

def _split_top_level(text: str) -> list[str]:
    parts, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if text[start:].strip():
        parts.append(text[start:])
    return [p.strip() for p in parts]


def _runtime_params(obj, method: bool) -> list[tuple[str, object]]:
    line = (obj.__doc__ or "").splitlines()[0]
    assert "(" in line, f"no pybind11 signature in {obj!r}.__doc__: {line!r}"
    inner = line[line.index("(") + 1:line.rindex(") ->")]
    params = []
    for part in _split_top_level(inner):
        name, _, rest = part.partition(":")
        default = _NO_DEFAULT
        if " = " in rest:
            text = rest.split(" = ", 1)[1]
            try:
                default = ast.literal_eval(text)
                default = list(default) if isinstance(default, (list, tuple)) else default
            except (ValueError, SyntaxError):
                default = _NOT_LITERAL
        params.append((name.strip(), default))
    if method:
        assert params and params[0][0] == "self", line
        params = params[1:]
    return params


def _same_params(runtime: list[tuple[str, object]], stub: list[tuple[str, object]]) -> bool:
    if [n for n, _ in runtime] != [n for n, _ in stub]:
        return False
    for (_, r), (_, s) in zip(runtime, stub):
        if (r is _NO_DEFAULT) != (s is _NO_DEFAULT):
            return False
        if r is not _NO_DEFAULT and _NOT_LITERAL not in (r, s) and r != s:
            return False
    return True


# ---------------------------------------------------------------------------------------
# Names and signatures

def test_installed_stub_is_the_source_stub():
    installed = Path(_engine.__file__).with_name("_engine.pyi")
    assert installed.is_file(), f"{installed} missing: rebuild (pip install -e .) so CMake installs the stub"
    assert installed.read_text() == STUB.read_text(), "installed _engine.pyi is stale: rebuild"


def test_module_names_match(stub):
    runtime = {n for n in dir(_engine) if not n.startswith("_")}
    assert runtime - stub.runtime_names() == set(), "in the module, missing from csrc/_engine.pyi"
    assert stub.runtime_names() - runtime == set(), "in csrc/_engine.pyi, not in the module"
    assert stub.type_only == set(stub.typeddicts), "TypedDicts must be @type_check_only"
    assert not any(hasattr(_engine, n) for n in stub.typeddicts)


@pytest.mark.parametrize("cls", ["Engine", "IoLog", "FaultInjector"])
def test_class_names_and_properties_match(stub, cls):
    methods = stub.classes[cls]
    runtime = {n for n in dir(getattr(_engine, cls)) if not n.startswith("_")}
    in_stub = {n for n in methods if not n.startswith("_")}
    assert runtime - in_stub == set(), f"{cls} members missing from the stub"
    assert in_stub - runtime == set(), f"{cls} members in the stub only"
    runtime_props = {n for n in runtime if isinstance(getattr(getattr(_engine, cls), n), property)}
    assert runtime_props == stub.properties[cls]


def test_every_stub_class_is_checked(stub):
    assert set(stub.classes) == {"Engine", "IoLog", "FaultInjector"}


def test_function_parameters_match(stub):
    for name, fn in stub.functions.items():
        got, want = _runtime_params(getattr(_engine, name), method=False), _stub_params(fn, method=False)
        assert _same_params(got, want), f"{name}: module {got} != stub {want}"


def test_method_parameters_match(stub):
    for cls, methods in stub.classes.items():
        for name, fn in methods.items():
            if name in stub.properties[cls]:
                continue
            got = _runtime_params(getattr(getattr(_engine, cls), name), method=True)
            want = _stub_params(fn, method=True)
            assert _same_params(got, want), f"{cls}.{name}: module {got} != stub {want}"


def test_the_parameter_check_sees_a_drift(stub):
    """The comparison itself: a renamed parameter or a changed default is a mismatch."""
    fn = stub.classes["Engine"]["__init__"]
    want = _stub_params(fn, method=True)
    got = _runtime_params(_engine.Engine.__init__, method=True)
    assert _same_params(got, want)
    assert not _same_params([("directory", g[1]) if g[0] == "dir" else g for g in got], want)
    assert not _same_params([(n, 5) if n == "writer_threads" else (n, d) for n, d in got], want)
    assert not _same_params(got[:-1], want)


# ---------------------------------------------------------------------------------------
# Values of real calls against the annotations

class Conformance:
    def __init__(self, stub: Stub) -> None:
        self.stub = stub

    def check(self, value, ann: ast.expr, where: str) -> None:
        s = self.stub
        if isinstance(ann, ast.Constant) and ann.value is None:
            assert value is None, f"{where}: {value!r} is not None"
        elif isinstance(ann, ast.BinOp) and isinstance(ann.op, ast.BitOr):
            errors = []
            for option in (ann.left, ann.right):
                try:
                    self.check(value, option, where)
                    return
                except AssertionError as e:
                    errors.append(str(e))
            raise AssertionError(" / ".join(errors))
        elif isinstance(ann, ast.Name) and ann.id in s.aliases:
            self.check(value, s.aliases[ann.id], where)
        elif isinstance(ann, ast.Name) and ann.id in s.typeddicts:
            fields = s.typeddicts[ann.id]
            assert isinstance(value, dict), f"{where}: {type(value).__name__}, not a dict ({ann.id})"
            assert list(value) == [k for k, _ in fields], f"{where}: keys {list(value)} != {ann.id} {[k for k, _ in fields]}"
            for key, field_ann in fields:
                self.check(value[key], field_ann, f"{where}[{key!r}]")
        elif isinstance(ann, ast.Name):
            kinds = {"int": int, "str": str, "bool": bool, "float": float}
            assert ann.id in kinds, f"{where}: the test does not know the annotation {ann.id}"
            ok = isinstance(value, kinds[ann.id]) and (ann.id != "int" or not isinstance(value, bool))
            assert ok, f"{where}: {value!r} is not {ann.id}"
        elif isinstance(ann, ast.Subscript):
            base = ast.unparse(ann.value)
            args = ann.slice.elts if isinstance(ann.slice, ast.Tuple) else [ann.slice]
            if base == "Literal":
                assert value in [ast.literal_eval(a) for a in args], f"{where}: {value!r} not in {ast.unparse(ann)}"
            elif base == "npt.NDArray":
                dtype = np.dtype(ast.unparse(args[0]).removeprefix("np."))
                assert isinstance(value, np.ndarray) and value.dtype == dtype and value.ndim == 1, \
                    f"{where}: {getattr(value, 'dtype', type(value))} is not a 1-d {dtype} array"
            elif base in ("list", "Sequence"):
                assert isinstance(value, list if base == "list" else (list, tuple)), f"{where}: {value!r} not a {base}"
                for i, item in enumerate(value):
                    self.check(item, args[0], f"{where}[{i}]")
            elif base == "tuple":
                assert isinstance(value, tuple), f"{where}: {value!r} is not a tuple"
                if len(args) == 2 and isinstance(args[1], ast.Constant) and args[1].value is Ellipsis:
                    for i, item in enumerate(value):
                        self.check(item, args[0], f"{where}[{i}]")
                else:
                    assert len(value) == len(args), f"{where}: {value!r} has not {len(args)} items"
                    for i, (item, a) in enumerate(zip(value, args)):
                        self.check(item, a, f"{where}[{i}]")
            else:
                raise AssertionError(f"{where}: the test does not know the annotation {base}")
        else:
            raise AssertionError(f"{where}: the test does not know the annotation {ast.unparse(ann)}")


def _exercise(tmp_path: Path) -> dict[str, list]:
    """Calls every binding once or more; returns their results by stub name."""
    seen: dict[str, list] = {}

    def rec(name, value):
        seen.setdefault(name, []).append(value)
        return value

    e = _engine
    data = os.urandom(3 * 65536)
    buf = np.frombuffer(data, np.uint8)
    rec("crc32c", e.crc32c(data, crc=0))
    rec("crc32c_ptr", e.crc32c_ptr(buf.ctypes.data, buf.nbytes, crc=1))
    rec("crc32c_implementation", e.crc32c_implementation())
    rec("fault_points", e.fault_points())
    rec("coordinator_fault_points", e.coordinator_fault_points())
    rec("io_op_names", e.io_op_names())
    rec("validate_fault_spec", e.validate_fault_spec(spec="point=before_rename,action=kill"))
    rec("phase_names", e.phase_names())
    rec("trace_columns", e.trace_columns())
    rec("durability_mutations", e.durability_mutations())
    rec("probe_direct_io", e.probe_direct_io(dir=str(tmp_path)))
    rec("probe_direct_io", e.probe_direct_io(str(tmp_path / "missing")))
    rec("monotonic_ns", e.monotonic_ns())
    rec("current_cpu", e.current_cpu())
    rec("allowed_cpus", e.allowed_cpus())
    rec("current_tid", e.current_tid())
    rec("trace_overhead_ns", e.trace_overhead_ns(iterations=10, records=True))
    rec("FORMAT_VERSION", e.FORMAT_VERSION)
    rec("MANIFEST_NAME", e.MANIFEST_NAME)

    blob = tmp_path / "blob"
    blob.write_bytes(data)
    dst = np.zeros(100, np.uint8)
    tasks = [(str(blob), 0, 65536, e.crc32c(data[:65536]), 0, [(5, dst.ctypes.data, 100)]),
             (str(blob), 65536, 65536, 123, 1, [])]
    r = rec("read_verified", e.read_verified(tasks=tasks, threads=2, trace=True, ckpt_id=7, step=3))
    assert r["failures"] and len(r["records"]["t_begin_ns"]) and r["thread_names"], r

    d = tmp_path / "ckpt"
    d.mkdir()
    arr = np.arange(40_000, dtype=np.float32)
    segs = [(arr.ctypes.data, arr.nbytes, 0)]
    eng = e.Engine(dir=str(d), writer_threads=1, max_inflight=1, chunk_bytes=65536, staging_bytes=65536 * 2,
                   keep_last=0, trace=True, prefault=False, faults="point=before_rename,step=2,action=eio")
    try:
        rec("Engine.submit", eng.submit(step=1, meta_json="{}", segments=segs, total_bytes=arr.nbytes))
        rec("Engine.wait", eng.wait(timeout=None))
        rec("Engine.submit", eng.submit(2, "{}", segs, arr.nbytes))
        rec("Engine.wait", eng.wait())
        rec("Engine.take_failure", eng.take_failure())
        rec("Engine.take_failure", eng.take_failure())
        sid = rec("Engine.open_stream", eng.open_stream(step=3, meta_json="{}", total_bytes=100))
        chunk = rec("Engine.acquire_chunk", eng.acquire_chunk(id=sid))
        rec("Engine.queue_chunk", eng.queue_chunk(id=sid, chunk=chunk[0]))
        rec("Engine.seal", eng.seal(id=sid))
        sid = eng.open_stream(4, "{}", 100)
        rec("Engine.abort", eng.abort(id=sid, reason="test"))
        eng.wait()
        for prop in ("last_committed_step", "inflight", "io_mode", "direct_io_note", "writer_cpus",
                     "chunk_assignment", "pin_failures", "staging_region", "staging_free_buffers", "staging_buffers", "staging_touched_bytes",
                     "trace_dropped"):
            rec(f"Engine.{prop}", getattr(eng, prop))
        rec("Engine.commit_records", eng.commit_records())
        rec("Engine.drain_trace", eng.drain_trace())
        rec("Engine.thread_names", eng.thread_names())
    finally:
        rec("Engine.close", eng.close())
    assert [f is None for f in seen["Engine.take_failure"]] == [False, True], seen["Engine.take_failure"]
    assert [c["ok"] for c in seen["Engine.commit_records"][0]] == [True, False, True, False]

    log = e.IoLog(path=str(tmp_path / "io.log"), record_data=True)
    rec("IoLog.op", log.op(op="mkdir", path="/d/x", err=0))
    rec("IoLog.write", log.write(path="/d/x/f", offset=4, data=b"abc", err=0))
    rec("IoLog.fallocate", log.fallocate(path="/d/x/f", offset=0, nbytes=8192, err=0))
    rec("IoLog.rename", log.rename(src="/d/x", dst="/d/y", err=2))
    rec("IoLog.mark", log.mark(kind="close", detail="pid=1"))
    faults = e.FaultInjector(spec="point=before_rename,ckpt=2,action=enospc")
    rec("FaultInjector.hit", faults.hit(point="before_rename", ckpt=1, step=5, log=log))
    rec("FaultInjector.hit", faults.hit("before_rename", 2, 6, log))
    rec("FaultInjector.hit", faults.hit("before_rename", 2, 6))
    rec("FaultInjector.armed", faults.armed)
    rec("FaultInjector.spec", faults.spec)
    rec("IoLog.path", log.path)
    rec("IoLog.records", log.records)
    assert seen["FaultInjector.hit"] == [(0, False), (28, False), (0, False)]
    assert log.records == 8  # five operations, two point markers, one inject marker
    return seen


def test_real_values_conform_to_the_stub(stub, tmp_path):
    seen = _exercise(tmp_path)
    expected = {}
    for name, fn in stub.functions.items():
        expected[name] = fn.returns
    for name, ann in stub.constants.items():
        expected[name] = ann
    for cls, methods in stub.classes.items():
        for name, fn in methods.items():
            if name != "__init__":
                expected[f"{cls}.{name}"] = fn.returns
    assert set(seen) == set(expected), "exercise every stub entry (and only those) in _exercise()"
    check = Conformance(stub)
    for name, values in seen.items():
        for value in values:
            check.check(value, expected[name], name)


def test_the_value_check_sees_a_drift(stub):
    check = Conformance(stub)
    failure = {"ckpt_id": 1, "step": 2, "op": "rename", "path": "/x", "errno": 5, "message": "m"}
    check.check(failure, ast.parse("CheckpointFailure", mode="eval").body, "ok")
    for bad in ({**failure, "extra": 1}, {k: v for k, v in failure.items() if k != "errno"},
                {**failure, "errno": "5"}):
        with pytest.raises(AssertionError):
            check.check(bad, ast.parse("CheckpointFailure", mode="eval").body, "bad")
    with pytest.raises(AssertionError):
        check.check(np.zeros(3, np.uint16), ast.parse("npt.NDArray[np.int16]", mode="eval").body, "bad")


def test_mypy_reads_the_installed_stub(tmp_path):
    """mypy (in the test extra) on the installed stub: it passes --strict, and
    code importing ckptlab._engine from this environment gets its types (py.typed is there)."""
    api = pytest.importorskip("mypy.api")
    use = tmp_path / "use_engine.py"
    use.write_text(
        "from ckptlab._engine import Engine, read_verified\n"
        "def f(e: Engine) -> None:\n"
        "    reveal_type(e.wait(0.5))\n"
        "    failure = e.take_failure()\n"
        "    if failure is not None:\n"
        "        reveal_type(failure['errno'])\n"
        "    reveal_type(read_verified([])['failures'][0]['kind'])\n")
    common = ["--no-incremental", "--cache-dir", str(tmp_path / "cache"), "--python-executable", sys.executable]
    out, err, rc = api.run([*common, "--strict", str(STUB)])
    assert rc == 0, out + err
    out, err, rc = api.run([*common, str(use)])
    assert rc == 0, out + err
    revealed = [line.split("Revealed type is ", 1)[1].strip('"').removeprefix("builtins.")
                for line in out.splitlines() if "Revealed type is " in line]
    assert revealed[:2] == ["bool", "int"], out
    assert "Literal['truncated'] | Literal['checksum'] | Literal['io']" in out, out
