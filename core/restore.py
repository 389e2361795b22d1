"""Loading a checkpoint's tree into live objects, all or nothing.

Two passes. ``plan_restore`` walks the target and the loaded tree and checks everything it
can before anything changes: tensor shapes and dtypes, module keys, an optimizer's param
groups (count, parameters per group, the settings of another optimizer class) and its
per-parameter state, a scheduler's class and per-group lists, list lengths, entries the
target holds that the checkpoint lacks. Any of these raises ``CheckpointMismatchError``
naming the path. Only then does ``RestorePlan.apply`` change the objects, in an order that
keeps failures undoable: small objects first (user objects such as samplers, schedulers,
plain entries; each snapshotted before it loads), then optimizers (torch builds the new
state before it swaps it in, so keeping the old one by reference undoes it), modules and
tensors last (not undoable without a second copy of the model). A ``load_state_dict``
that still raises rolls back everything loaded before it and re-raises the error with a
note; one raised while modules and tensors are copied into becomes a ``CheckpointError``
saying what may be partly restored.
"""
from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ckptlab.core.errors import CheckpointError, CheckpointMismatchError
from ckptlab.core.state import StatefulRef, TensorRef, _is_stateful, dtype_name, materialize

# apply order: what can be undone first, what cannot last
SMALL, OPTIMIZER, TENSORS = 0, 1, 2


@dataclass
class _Step:
    path: str
    rank: int
    apply: Callable[[], None]
    snapshot: Callable[[], Callable[[], None]] | None  # taken just before apply; returns the undo


@dataclass
class RestorePlan:
    """Checked changes to live objects, applied in rank order by apply()."""

    steps: list[_Step] = field(default_factory=list)
    _undo: list[tuple[str, Callable[[], None]]] = field(default_factory=list)

    def add(self, path: str, rank: int, apply: Callable[[], None],
            snapshot: Callable[[], Callable[[], None]] | None = None) -> None:
        self.steps.append(_Step(path, rank, apply, snapshot))

    def apply(self) -> None:
        """Run every step; on a failure roll back what can be, then raise (module docstring)."""
        done: list[str] = []
        for step in sorted(self.steps, key=lambda s: s.rank):
            try:
                if step.snapshot is not None:
                    self._undo.append((step.path, step.snapshot()))
                step.apply()
            except BaseException as exc:
                rolled_back = self.undo()
                if step.rank == TENSORS:
                    partly = [step.path] + [p for p in done if p not in rolled_back]
                    raise CheckpointError(
                        f"loading into {step.path!r} failed after every check had passed: {exc!r}; "
                        f"may be partly restored: {', '.join(dict.fromkeys(partly))}; rolled back: "
                        f"{', '.join(rolled_back) or 'nothing'}. Load again before training on") from exc
                exc.add_note(f"ckptlab: loading {step.path!r} failed after every check had passed; "
                             f"rolled back: {', '.join(rolled_back) or 'nothing else had changed'}; "
                             f"nothing was restored")
                raise
            done.append(step.path)
        self._undo.clear()

    def undo(self) -> list[str]:
        """Undo the snapshotted steps, newest first; the paths rolled back."""
        rolled_back = []
        while self._undo:
            path, undo = self._undo.pop()
            try:
                undo()
            except Exception as exc:  # keep undoing the others; say which one stays changed
                rolled_back.append(f"not {path} (its rollback raised {exc!r})")
                continue
            rolled_back.append(path)
        return rolled_back


def _describe(t: torch.Tensor) -> str:
    return f"{dtype_name(t.dtype)}{list(t.shape)}"


def _leaf_tensor(loaded: Any, tensors: list[torch.Tensor]) -> torch.Tensor | None:
    """The tensor a loaded leaf stands for (a TensorRef, or a plain tensor of a side file)."""
    if isinstance(loaded, TensorRef):
        return materialize(loaded, tensors)
    return loaded if isinstance(loaded, torch.Tensor) else None


def _check_tensor(target: torch.Tensor, src: torch.Tensor, path: str, what: str = "the target") -> None:
    if src.shape != target.shape or src.dtype != target.dtype:
        raise CheckpointMismatchError(f"tensor {path!r}: checkpoint has {_describe(src)}, {what} is {_describe(target)}")


def _holds_live(obj: Any) -> bool:
    """Whether restoring `obj` in place would touch a tensor or a stateful object in it."""
    if isinstance(obj, (torch.Tensor, TensorRef, StatefulRef)) or _is_stateful(obj):
        return True
    if isinstance(obj, Mapping):
        return any(_holds_live(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_holds_live(v) for v in obj)
    return False


def _check_tree(current: Any, saved: Any, tensors: list[torch.Tensor], path: str) -> None:
    """Tensors of a stateful object's current state dict against the saved one (same keys)."""
    src = _leaf_tensor(saved, tensors)
    if src is not None:
        if isinstance(current, torch.Tensor):
            _check_tensor(current, src, path)
        return
    if isinstance(saved, Mapping) and isinstance(current, Mapping):
        for k, v in saved.items():
            if k in current:
                _check_tree(current[k], v, tensors, f"{path}/{k}")
    elif isinstance(saved, (list, tuple)) and isinstance(current, (list, tuple)) and len(saved) == len(current):
        for i, (c, v) in enumerate(zip(current, saved)):
            _check_tree(c, v, tensors, f"{path}/{i}")


# --- stateful objects: what each kind must match --------------------------------------------


def _check_module(module: torch.nn.Module, saved: Any, tensors: list[torch.Tensor], path: str) -> None:
    current = module.state_dict()
    if not isinstance(saved, Mapping):
        raise CheckpointMismatchError(f"{path}: the checkpoint holds no module state dict here")
    missing = [k for k in current if k not in saved]
    unexpected = [k for k in saved if k not in current]
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"{path}: model keys differ from the checkpoint "
            f"(missing in checkpoint: {missing[:5]}, unexpected in checkpoint: {unexpected[:5]})")
    _check_tree(current, saved, tensors, path)


def _settings(group: Mapping[str, Any]) -> set[str]:
    return {k for k in group if k not in ("params", "param_names")}


def check_optimizer(opt: torch.optim.Optimizer, saved: Any, tensors: list[torch.Tensor], path: str,
                    params_by_name: Mapping[str, torch.Tensor] | None = None) -> None:
    """What torch's Optimizer.load_state_dict would raise on, and what it would load silently
    but wrongly (another optimizer's settings, per-parameter state of other shapes).

    `saved` is torch's state dict (parameters by position) or DCP's (by name: pass
    `params_by_name`, the module's parameters, so that state is compared as DCP maps it)."""
    name = type(opt).__name__
    if not (isinstance(saved, Mapping) and isinstance(saved.get("param_groups"), (list, tuple))
            and isinstance(saved.get("state"), Mapping)):
        raise CheckpointMismatchError(f"{path}: the checkpoint holds no optimizer state dict here")
    groups, saved_groups = opt.param_groups, saved["param_groups"]
    if len(groups) != len(saved_groups):
        raise CheckpointMismatchError(
            f"{path}: the checkpoint has {len(saved_groups)} param groups, the {name} {len(groups)}")
    id_to_param: dict[Any, tuple[torch.Tensor, str]] = {}
    for i, (group, sg) in enumerate(zip(groups, saved_groups)):
        where = f"{path}/param_groups/{i}"
        if not isinstance(sg, Mapping) or not isinstance(sg.get("params"), (list, tuple)):
            raise CheckpointMismatchError(f"{where}: the checkpoint holds no param group here")
        if len(group["params"]) != len(sg["params"]):
            raise CheckpointMismatchError(
                f"{where}: the checkpoint's group has {len(sg['params'])} parameters, the {name}'s "
                f"{len(group['params'])}")
        mine, theirs = _settings(group), _settings(sg)
        if not (mine <= theirs or theirs <= mine):  # one a superset: torch versions add settings
            raise CheckpointMismatchError(
                f"{where}: the checkpoint was written by another optimizer than this {name} "
                f"(settings only the checkpoint has: {sorted(theirs - mine)}, only the {name} has: "
                f"{sorted(mine - theirs)})")
        for j, (pid, param) in enumerate(zip(sg["params"], group["params"])):
            if params_by_name is not None and pid in params_by_name:
                param = params_by_name[pid]
            id_to_param[pid] = (param, f"{where}/params/{j}" if params_by_name is None else f"{path}/state/{pid}")
    for pid, pstate in saved["state"].items():
        if pid not in id_to_param or not isinstance(pstate, Mapping):
            continue
        param, where = id_to_param[pid]
        current = opt.state.get(param)
        if not current:  # a fresh optimizer: nothing to compare the saved state with
            continue
        for key, value in pstate.items():
            src = _leaf_tensor(value, tensors)
            if src is not None and isinstance(current.get(key), torch.Tensor):
                _check_tensor(current[key], src, f"{where}/{key}", f"the {name}'s state")


def _is_scheduler(obj: Any) -> bool:
    return isinstance(obj, torch.optim.lr_scheduler.LRScheduler) or \
        type(obj).__name__ == "ReduceLROnPlateau"


def _check_scheduler_state(current: Mapping[str, Any], saved: Any, n_groups: int | None, name: str,
                           path: str) -> None:
    if not isinstance(saved, Mapping):
        raise CheckpointMismatchError(f"{path}: the checkpoint holds no scheduler state dict here")
    mine = {k for k in current if not str(k).startswith("_")}
    theirs = {k for k in saved if not str(k).startswith("_")}
    if not (mine <= theirs or theirs <= mine):
        raise CheckpointMismatchError(
            f"{path}: the checkpoint was written by another scheduler than this {name} "
            f"(settings only the checkpoint has: {sorted(theirs - mine)}, only the {name} has: "
            f"{sorted(mine - theirs)})")
    for key in current.keys() & saved.keys():
        cur, sv = current[key], saved[key]
        if not (isinstance(cur, (list, tuple)) and isinstance(sv, (list, tuple))) or len(cur) == len(sv):
            continue
        # per-group lists (base_lrs, _last_lr, min_lrs...) and the lists load_state_dict indexes
        if key in ("lr_lambdas", "_schedulers") or len(cur) == n_groups:
            raise CheckpointMismatchError(
                f"{path}/{key}: the checkpoint's {name} has {len(sv)} entries, this one {len(cur)}"
                + (f" (one per param group: {n_groups})" if len(cur) == n_groups else ""))
    if isinstance(current.get("_schedulers"), (list, tuple)):  # SequentialLR, ChainedScheduler
        for i, (c, s) in enumerate(zip(current["_schedulers"], saved["_schedulers"])):
            if isinstance(c, Mapping):
                _check_scheduler_state(c, s, n_groups, "scheduler", f"{path}/_schedulers/{i}")


def _check_scheduler(sched: Any, saved: Any, tensors: list[torch.Tensor], path: str) -> None:
    opt = getattr(sched, "optimizer", None)
    n_groups = len(opt.param_groups) if isinstance(opt, torch.optim.Optimizer) else None
    current = sched.state_dict()
    _check_scheduler_state(current, saved, n_groups, type(sched).__name__, path)
    _check_tree(current, saved, tensors, path)


def optimizer_snapshot(opt: torch.optim.Optimizer) -> Callable[[], None]:
    """A snapshot of an optimizer that costs no tensor copies, and its undo.

    Optimizer.load_state_dict builds a new state and new groups and swaps them in, so the old
    ones survive it; shallow copies of their dicts also survive DCP's set_optimizer_state_dict,
    which first fills a fresh optimizer's state (a step at lr 0) and sets lrs in place."""
    state = {p: dict(s) for p, s in opt.state.items()}
    groups = [dict(g) for g in opt.param_groups]

    def undo() -> None:
        opt.state = defaultdict(dict, state)
        opt.param_groups = groups
    return undo


def _object_snapshot(obj: Any) -> Callable[[], None]:
    saved = copy.deepcopy(obj.state_dict())
    return lambda: obj.load_state_dict(saved)


def _plan_stateful(plan: RestorePlan, target: Any, saved: Any, tensors: list[torch.Tensor], path: str) -> None:
    label = path or "state"
    if isinstance(target, torch.nn.Module):
        _check_module(target, saved, tensors, label)
        rank, snapshot = TENSORS, None
    elif isinstance(target, torch.optim.Optimizer):
        check_optimizer(target, saved, tensors, label)
        rank, snapshot = OPTIMIZER, lambda: optimizer_snapshot(target)
    else:
        if _is_scheduler(target):
            _check_scheduler(target, saved, tensors, label)
        else:
            _check_tree(target.state_dict(), saved, tensors, label)
        rank, snapshot = SMALL, lambda: _object_snapshot(target)
    plan.add(label, rank, lambda: target.load_state_dict(materialize(saved, tensors)), snapshot)


def _set_entry(plan: RestorePlan, container: Any, key: Any, value: Any, tensors: list[torch.Tensor],
               path: str) -> None:
    """Replace container[key] (a dict entry or a list item) by the loaded value, undoably."""
    def snapshot() -> Callable[[], None]:
        had, old = (key in container, container.get(key)) if isinstance(container, Mapping) else (True, container[key])

        def undo() -> None:
            if had:
                container[key] = old
            else:
                del container[key]
        return undo

    def apply() -> None:
        container[key] = materialize(value, tensors)
    plan.add(path, SMALL, apply, snapshot)


def _plan(plan: RestorePlan, target: Any, loaded: Any, tensors: list[torch.Tensor], path: str) -> bool:
    """Check `loaded` against `target` and plan restoring it in place; False when the target
    cannot take it in place (its parent then replaces it by the loaded value)."""
    if isinstance(loaded, StatefulRef):
        if not _is_stateful(target):
            return False
        _plan_stateful(plan, target, loaded.state, tensors, path)
        return True
    src = _leaf_tensor(loaded, tensors)
    if src is not None:
        if not isinstance(target, torch.Tensor):
            return False
        _check_tensor(target, src, path)

        def copy_in() -> None:
            with torch.no_grad():
                target.copy_(src)
        plan.add(path, TENSORS, copy_in)
        return True
    if isinstance(loaded, Mapping) and isinstance(target, Mapping):
        for k, v in loaded.items():
            plan_entry(plan, target, k, v, tensors, f"{path}/{k}" if path else str(k))
        for k, v in target.items():
            if k not in loaded and _holds_live(v):
                raise CheckpointMismatchError(
                    f"{f'{path}/{k}' if path else k!r}: the target holds "
                    f"{type(v).__name__ if not isinstance(v, torch.Tensor) else 'a tensor'} "
                    f"the checkpoint does not have")
        return True
    if isinstance(loaded, (list, tuple)) and isinstance(target, (list, tuple)):
        if len(loaded) != len(target):
            if _holds_live(target) or _holds_live(loaded):
                raise CheckpointMismatchError(
                    f"{path!r}: the checkpoint has a {type(loaded).__name__} of {len(loaded)}, the target a "
                    f"{type(target).__name__} of {len(target)}")
            if isinstance(target, list):  # plain values only: the caller's list takes them
                _set_entry(plan, _WholeList(target), 0, loaded, tensors, path)
                return True
            return False
        in_place = [_plan(plan, t, v, tensors, f"{path}/{i}") for i, (t, v) in enumerate(zip(target, loaded))]
        if isinstance(target, list):
            for i, done in enumerate(in_place):
                if not done:
                    _set_entry(plan, target, i, loaded[i], tensors, f"{path}/{i}")
            return True
        # a tuple cannot change: its live contents were restored in place and it stays the
        # caller's; one with nothing live in it is a plain value its parent replaces
        return any(in_place)
    return False


class _WholeList:
    """A list seen as one entry (key 0), so that _set_entry replaces its contents in place."""

    def __init__(self, items: list) -> None:
        self._items = items

    def __getitem__(self, key: int) -> list:
        return list(self._items)

    def __setitem__(self, key: int, value: list) -> None:
        self._items[:] = value


def plan_entry(plan: RestorePlan, target: Mapping[str, Any], key: Any, loaded: Any, tensors: list[torch.Tensor],
               path: str) -> None:
    """Check and plan one entry of a mapping: restored in place, or replaced by the loaded
    value (where the mapping can take it; the returned state has it either way)."""
    if not (key in target and _plan(plan, target[key], loaded, tensors, path)) and isinstance(target, MutableMapping):
        _set_entry(plan, target, key, loaded, tensors, path)


def plan_restore(target: Mapping[str, Any], tree: Any, tensors: list[torch.Tensor]) -> RestorePlan:
    """Check everything (module docstring) and return the plan; raises before any change."""
    plan = RestorePlan()
    _plan(plan, target, tree, tensors, "")
    return plan


def restore(target: Mapping[str, Any] | None, tree: Any, tensors: list[torch.Tensor]) -> dict[str, Any]:
    """Load `tree` into the live objects of `target`, all or nothing (module docstring), or
    just build it when `target` is None. Returns the plain loaded state (state dicts instead
    of objects)."""
    if target is not None:
        plan_restore(target, tree, tensors).apply()
    return materialize(tree, tensors)
