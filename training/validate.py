"""The seeds' validation, automated: two uninterrupted runs and one killed then resumed.

    python -m ckptlab.training.validate --checkpointer pccheck --steps 150 --freq 50 \\
        --kill-after 50 --out runs/validate-pccheck

Run A and run B train ``--steps`` steps with a checkpoint every ``--freq``. Run C is killed
with SIGKILL after step ``--kill-after`` (``--fail-at-step``, after waiting for the issued
checkpoints to be durable, as the seeds did), then resumed with ``--load-checkpoint``. The
three loss files must be byte-identical: A = B shows the training is deterministic, A = C
that the checkpoint restores everything. ``--kill-during-write`` instead kills run C inside
the engine while it persists the checkpoint of step ``--kill-after`` (fault injection,
``pccheck`` only), so C resumes from the checkpoint before it. Each run is its own process;
logs, loss files, summaries, the verdict (JSON) and the plot land in ``--out``. Exit 0 when
the files match, 1 when they do not or a run misbehaves, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from ckptlab.core.commit import LOCK_NAME
from ckptlab.core.fault_spec import FAULTS_ENV
from ckptlab.profiling.lossfile import compare_loss_files, read_loss_file
from ckptlab.training.presets import get_preset

__all__ = ["ValidationPlan", "ValidationReport", "run_validation", "main"]


@dataclass(frozen=True)
class ValidationPlan:
    checkpointer: str
    out: Path
    steps: int = 150
    freq: int = 50
    kill_after: int = 50
    preset: str = "tiny"
    model_dtype: str = "fp32"
    device: str = "auto"
    seed: int = 0
    kill_during_write: bool = False
    trace: bool = False
    train_args: tuple[str, ...] = ()
    timeout_s: float = 3600.0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.freq < 1:
            raise ValueError("--steps and --freq must be >= 1")
        if not 1 <= self.kill_after < self.steps:
            raise ValueError(f"--kill-after must be in 1..{self.steps - 1}, got {self.kill_after}")
        if self.checkpointer == "none":
            raise ValueError("--checkpointer none cannot resume; pick a real checkpointer")
        try:
            get_preset(self.preset)
        except KeyError as exc:  # before any run starts, naming the known presets
            raise ValueError(f"--preset: {exc.args[0]}") from None
        if self.kill_during_write:
            if self.checkpointer != "pccheck":
                raise ValueError("--kill-during-write uses the engine's fault points: "
                                 "--checkpointer pccheck only")
            if self.kill_after % self.freq:
                raise ValueError(f"--kill-during-write needs --kill-after ({self.kill_after}) "
                                 f"to be a checkpoint step (a multiple of --freq {self.freq})")


@dataclass
class RunRecord:
    name: str
    command: list[str]
    returncode: int
    seconds: float
    log: str
    summary: dict | None = None


@dataclass
class ValidationReport:
    plan: dict
    runs: list[RunRecord] = field(default_factory=list)
    resumed_from: int | None = None
    after_crash: list[str] = field(default_factory=list)
    mismatches: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    plot: str | None = None

    @property
    def passed(self) -> bool:
        return not self.mismatches and not self.problems


def _train_command(plan: ValidationPlan, name: str, *extra: str) -> list[str]:
    out = plan.out
    cmd = [sys.executable, "-m", "ckptlab.training.cli", "--checkpointer", plan.checkpointer,
           "--preset", plan.preset, "--model-dtype", plan.model_dtype, "--device", plan.device,
           "--seed", str(plan.seed), "--training-steps", str(plan.steps),
           "--checkpoint-freq", str(plan.freq), "--ckpt-dir", str(out / f"ckpt-{name[0]}"),
           "--loss-file", str(out / f"loss-{name[0]}.txt"), "--no-progress",
           "--summary-json", str(out / f"summary-{name}.json"), *plan.train_args, *extra]
    if plan.trace:
        cmd += ["--trace", str(out / f"trace-{name}.arrow")]
    return cmd


def _run(plan: ValidationPlan, name: str, cmd: list[str], env: dict[str, str]) -> RunRecord:
    log = plan.out / f"run-{name}.log"
    print(f"[validate] run {name}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env,
                              timeout=plan.timeout_s, check=False)
    summary_path = plan.out / f"summary-{name}.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    record = RunRecord(name, cmd, proc.returncode, time.perf_counter() - t0, str(log), summary)
    print(f"[validate] run {name}: exit {proc.returncode} after {record.seconds:.1f} s", flush=True)
    return record


# What a validation writes into its --out directory; a new validation there starts clean.
_RESULT_DIRS = ("ckpt-a", "ckpt-b", "ckpt-c")
_RESULT_FILES = ("loss-*.txt", "summary-*.json", "trace-*.arrow", "run-*.log", "timeline-*.png", "losses.png",
                 "verdict.json")


def _remove_previous_results(out: Path) -> None:
    """Remove the results of an earlier validation in ``out`` (only the names it writes):
    stale checkpoints would make the fresh runs refuse their --ckpt-dir, and stale traces
    would be listed as this run's."""
    removed = [d for d in _RESULT_DIRS if (out / d).is_dir()]
    for d in removed:
        shutil.rmtree(out / d)
    files = [f for pattern in _RESULT_FILES for f in out.glob(pattern) if f.is_file()]
    for f in files:
        f.unlink()
    if removed or files:
        print(f"[validate] removed the previous validation's results in {out} "
              f"({len(removed)} checkpoint directories, {len(files)} files)", flush=True)


def run_validation(plan: ValidationPlan) -> ValidationReport:
    """Run A, B, C (killed) and C (resumed); compare; plot. Never raises for a failed run."""
    plan.out.mkdir(parents=True, exist_ok=True)
    _remove_previous_results(plan.out)
    report = ValidationReport(plan={k: str(v) for k, v in asdict(plan).items()})
    env = {k: v for k, v in os.environ.items() if k != FAULTS_ENV}
    for name in ("a", "b"):
        report.runs.append(_run(plan, name, _train_command(plan, name), env))
    if plan.kill_during_write:
        crash_env = {**env, FAULTS_ENV: f"point=before_rename,step={plan.kill_after},action=kill"}
        crash = _run(plan, "c-killed", _train_command(plan, "c-killed"), crash_env)
    else:
        crash = _run(plan, "c-killed", _train_command(
            plan, "c-killed", "--fail-at-step", str(plan.kill_after), "--fail-after-durable"), env)
    report.runs.append(crash)
    ckpt_c = plan.out / "ckpt-c"
    report.after_crash = sorted(p.name for p in ckpt_c.iterdir() if p.name != LOCK_NAME) if ckpt_c.is_dir() else []
    if crash.returncode != -signal.SIGKILL:
        report.problems.append(f"run c-killed exited {crash.returncode}, expected death by "
                               f"SIGKILL ({-signal.SIGKILL})")
    # The newest checkpoint that must have survived the kill (0: none, a fresh start).
    expected = plan.kill_after - plan.freq if plan.kill_during_write else plan.kill_after
    expected = max(0, expected - expected % plan.freq)
    resume_flags = ["--load-checkpoint"] + (["--allow-fresh-start"] if expected == 0 else [])
    resumed = _run(plan, "c-resumed", _train_command(plan, "c-resumed", *resume_flags), env)
    report.runs.append(resumed)
    for record in report.runs:
        if record.name != "c-killed" and record.returncode != 0:
            report.problems.append(
                f"run {record.name} exited {record.returncode}; see {record.log}")
    if resumed.summary:
        report.resumed_from = resumed.summary.get("resumed_from")
    if resumed.returncode == 0 and report.resumed_from != (expected or None):
        report.problems.append(f"run c-resumed restarted from step {report.resumed_from}, "
                               f"expected {expected}")
    _compare(plan, report)
    return report


def _compare(plan: ValidationPlan, report: ValidationReport) -> None:
    files = {n: plan.out / f"loss-{n}.txt" for n in ("a", "b", "c")}
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        report.problems.append(f"missing loss files: {', '.join(missing)}")
        return
    for other in ("b", "c"):
        mismatch = compare_loss_files(files["a"], files[other])
        if mismatch is not None:
            report.mismatches[f"a-vs-{other}"] = str(mismatch)
    lines = len(read_loss_file(files["a"]))
    if lines != plan.steps:
        report.problems.append(f"{files['a']} has {lines} lines, expected {plan.steps}")
    try:
        from ckptlab.analysis.losses import plot_losses
        report.plot = str(plot_losses(
            [files["a"], files["b"], files["c"]], plan.out / "losses.png",
            labels=["run A (uninterrupted)", "run B (uninterrupted)",
                    f"run C (SIGKILL after step {plan.kill_after}, resumed)"],
            title=f"{plan.checkpointer}, {plan.preset} {plan.model_dtype}: "
                  f"{plan.steps} steps, checkpoint every {plan.freq}"))
    except Exception as exc:  # the verdict stands without the figure
        report.problems.append(f"plot failed: {exc!r}")


def print_verdict(plan: ValidationPlan, report: ValidationReport, notes: Sequence[str] = ()) -> None:
    how = ("killed inside the engine while persisting" if plan.kill_during_write
           else "SIGKILL after")
    print(f"validate {plan.checkpointer} on {plan.preset} {plan.model_dtype}: {plan.steps} "
          f"steps, checkpoint every {plan.freq}, run C {how} step {plan.kill_after}, "
          f"resumed from step {report.resumed_from}")
    held = ", ".join(report.after_crash) or "nothing"
    print(f"  after the kill, {plan.out / 'ckpt-c'} held: {held}")
    compared = all((plan.out / f"loss-{n}.txt").exists() for n in "abc")
    for pair in ("a-vs-b", "a-vs-c"):
        verdict = report.mismatches.get(pair, "identical to the last bit")
        print(f"  loss {pair.replace('-vs-', ' vs ')}: {verdict if compared else 'not compared'}")
    for problem in report.problems:
        print(f"  problem: {problem}")
    if report.plot:
        print(f"  plot: {report.plot}")
    traces = sorted(plan.out.glob("trace-*"))
    if traces:
        print(f"  traces: {', '.join(str(t) for t in traces)}")
    for note in notes:
        print(f"  {note}")
    print("PASS: the three loss files are identical to the last bit" if report.passed
          else "FAIL")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ckptlab.training.validate",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpointer", required=True,
                        choices=["torchsave", "pccheck", "dcp", "dcp-async"])
    parser.add_argument("--out", type=Path, required=True, help="directory for all outputs")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--freq", type=int, default=50, help="checkpoint every N steps")
    parser.add_argument("--kill-after", type=int, default=50, help="SIGKILL run C after step N")
    parser.add_argument("--kill-during-write", action="store_true",
                        help="kill run C inside the engine while it persists that checkpoint")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--model-dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trace", action="store_true", help="pass --trace to every run")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per run")
    parser.add_argument("train_args", nargs=argparse.REMAINDER,
                        help="after '--': more flags for every training run")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    extra = tuple(a for a in args.train_args if a != "--")
    try:
        plan = ValidationPlan(args.checkpointer, args.out, args.steps, args.freq,
                              args.kill_after, args.preset, args.model_dtype, args.device,
                              args.seed, args.kill_during_write, args.trace, extra, args.timeout)
    except ValueError as exc:
        parser.error(str(exc))
    report = run_validation(plan)
    print_verdict(plan, report)
    (plan.out / "verdict.json").write_text(json.dumps(
        {"passed": report.passed, **asdict(report)}, indent=2, default=str) + "\n")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
