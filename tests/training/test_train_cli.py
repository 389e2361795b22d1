"""Bad input gets a clear message and exit code 2; the entry points parse the seeds' flags."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from ckptlab.training.cli import add_train_subcommand, build_parser, main


def _exit_code_and_stderr(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--preset", "huge"], "unknown preset 'huge'; known presets: tiny, seed-1024"),
    (["--training-steps", "-5"], "must be >= 0, got -5"),
    (["--checkpoint-freq", "-1"], "must be >= 0"),
    (["--batch-size", "0"], "must be >= 1"),
    (["--fail-at-step", "-1"], "must be >= 1, got -1"),
    (["--checkpointer", "s3"], "invalid choice"),
    (["--model-dtype", "fp8"], "invalid choice"),
    (["--training-steps", "4", "--fail-at-step", "9"], "would never fire"),
    (["--load-checkpoint"], "--checkpointer none keeps no checkpoints"),
    (["--n-heads", "5"], "not divisible"),
    (["--snapshot", "async"], "invalid choice"),
    (["--checkpointer", "torchsave", "--snapshot", "deferred"], "--snapshot deferred is a pccheck mode"),
    (["--checkpointer", "pccheck", "--writer-cpus", "1-x"], "--writer-cpus: '1-x' is not a CPU"),
    (["--checkpointer", "pccheck", "--writer-cpus", "100000"], "--writer-cpus: CPU 100000 not available"),
    (["--checkpointer", "torchsave", "--writer-cpus", "0"], "--writer-cpus places the pccheck engine's writer threads; torchsave has none"),
    (["--device", "tpu"], "--device tpu: not a device ckptlab trains on"),
    (["--device", "meta"], "--device meta: not a device ckptlab trains on"),
    (["--chunk-mb", "0.1"], "--chunk-mb: must be a multiple of 0.0625 MiB (64 KiB)"),
    (["--chunk-mb", "0"], "--chunk-mb: must be a multiple of 0.0625 MiB (64 KiB)"),
    (["--chunk-mb", "16M"], "--chunk-mb: expected MiB as a number, got '16M'"),
])
def test_bad_input_is_an_argparse_error(argv: list[str], message: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _exit_code_and_stderr(argv, capsys)
    assert code == 2
    assert message in err


def test_chunk_mb_sets_the_chunk_in_bytes_and_core_messages_say_mib() -> None:
    from ckptlab.training.cli import config_from_args, flag_message

    cfg = config_from_args(build_parser().parse_args(["--chunk-mb", "0.25"]))
    assert cfg.checkpoint.chunk_bytes == 256 * 1024
    assert config_from_args(build_parser().parse_args([])).checkpoint.chunk_bytes == 16 << 20
    assert "(default 16)" in " ".join(build_parser().format_help().split())
    assert flag_message("CheckpointConfig.chunk_bytes=262144 is too small") == "--chunk-mb 0.25 is too small"


def test_prefault_staging_is_a_switch_off_by_default() -> None:
    from ckptlab.training.cli import build_parser, config_from_args

    def prefault(*argv: str) -> bool:
        return config_from_args(build_parser().parse_args(list(argv))).checkpoint.prefault_staging

    assert prefault() is False and prefault("--no-prefault-staging") is False
    assert prefault("--prefault-staging") is True
    assert prefault("--prefault-staging", "--no-prefault-staging") is False  # the last one wins


def test_load_checkpoint_without_one_exits_2_unless_fresh_start_allowed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--checkpointer", "dcp", "--ckpt-dir", str(tmp_path / "ck"), "--training-steps",
              "2", "--load-checkpoint", "--no-progress"]
    code, err = _exit_code_and_stderr(common, capsys)
    assert code == 2
    assert "nothing to resume from" in err and "--allow-fresh-start" in err
    assert not (tmp_path / "ck").exists()
    code, err = _exit_code_and_stderr(common + ["--allow-fresh-start"], capsys)
    assert code == 0, err
    assert "starting fresh" in err


def test_fresh_run_refuses_a_directory_with_checkpoints(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--checkpointer", "dcp", "--ckpt-dir", str(tmp_path / "ck"), "--training-steps",
              "2", "--checkpoint-freq", "2", "--no-progress"]
    assert _exit_code_and_stderr(common, capsys)[0] == 0
    code, err = _exit_code_and_stderr(common, capsys)
    assert code == 2 and "already holds checkpoint step 2" in err


@pytest.mark.filterwarnings("ignore:.*skipping corrupt checkpoint:RuntimeWarning")  # pccheck reading dcp's
@pytest.mark.parametrize("first, second", [("pccheck", "dcp"), ("dcp", "pccheck")])
def test_a_fresh_run_never_writes_over_another_kinds_checkpoints(
        first: str, second: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ck = tmp_path / "ck"
    run = ["--ckpt-dir", str(ck), "--training-steps", "4", "--checkpoint-freq", "2", "--no-progress"]
    assert _exit_code_and_stderr(["--checkpointer", first, *run], capsys)[0] == 0
    before = {p.name: sorted(q.name for q in p.iterdir()) for p in ck.glob("step_*")}
    for extra in ([], ["--load-checkpoint", "--allow-fresh-start"]):
        code, err = _exit_code_and_stderr(["--checkpointer", second, *run, *extra], capsys)
        assert code == 2, err
        assert "step_000000000002, step_000000000004" in err and "Not starting fresh over them" in err
    assert {p.name: sorted(q.name for q in p.iterdir()) for p in ck.glob("step_*")} == before


def test_summary_and_loss_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    loss = tmp_path / "loss.txt"
    code = main(["--training-steps", "3", "--loss-file", str(loss), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "tiny fp32" in out and "iteration: mean" in out
    assert [line.split()[0] for line in loss.read_text().splitlines()] == ["1", "2", "3"]


def test_subcommand_registers_on_a_console_script() -> None:
    parser = argparse.ArgumentParser(prog="ckptlab")
    add_train_subcommand(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "--checkpointer", "pccheck", "--training-steps", "5"])
    assert args.checkpointer == "pccheck" and args.training_steps == 5 and callable(args.func)


@pytest.mark.parametrize("module, kind", [("training.train_checkp", "torchsave"),
                                          ("training.train_pccheck", "pccheck")])
def test_seed_entry_points_default_to_their_checkpointer(module: str, kind: str) -> None:
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=repo,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert f"(default {kind})" in proc.stdout
    assert build_parser(kind).parse_args([]).checkpointer == kind


def test_fault_flag_kills_the_run_inside_the_engine(tmp_path):
    """`ckptlab train --fault` arms the engine's fault points for that run."""
    ckpt = tmp_path / "ckpt"
    cmd = [sys.executable, "-m", "ckptlab.core.cli", "train", "--checkpointer", "pccheck", "--preset", "tiny",
           "--training-steps", "6", "--checkpoint-freq", "2", "--ckpt-dir", str(ckpt), "--no-progress",
           "--loss-file", str(tmp_path / "loss.txt"), "--fault", "point=before_rename,ckpt=2,action=kill"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    from ckptlab.core import list_checkpoints

    assert [i.step for i in list_checkpoints(ckpt)] == [2]  # checkpoint 2 (step 4) never committed


def test_bad_fault_flag_is_a_clear_error(tmp_path):
    cmd = [sys.executable, "-m", "ckptlab.core.cli", "train", "--preset", "tiny", "--training-steps", "2",
           "--ckpt-dir", str(tmp_path / "c"), "--no-progress", "--fault", "point=nowhere"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown point 'nowhere'" in proc.stderr


# -- a resume that cannot happen says so once and leaves the directory as it was -------------

def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and mtime: what "left as it was" compares."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def _flip_newest_data(ck: Path, which: str = "newest") -> Path:
    steps = sorted(ck.glob("step_*"))
    for step in (steps if which == "all" else steps[-1:]):
        data = sorted(p for p in step.iterdir() if p.name != "MANIFEST")[0]
        with open(data, "r+b") as f:
            f.seek(data.stat().st_size // 2)
            byte = f.read(1)[0]
            f.seek(-1, 1)
            f.write(bytes([byte ^ 0x10]))
    return steps[-1]


@pytest.mark.parametrize("kind", ["torchsave", "pccheck"])
@pytest.mark.parametrize("where", ["missing", "empty", "corrupt"])
def test_a_failed_resume_says_it_once_and_changes_nothing(
        where: str, kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ck = tmp_path / "ck"
    run = ["--checkpointer", kind, "--ckpt-dir", str(ck), "--training-steps", "2", "--no-progress"]
    if where != "missing":
        ck.mkdir()
    if where == "corrupt":
        assert _exit_code_and_stderr([*run, "--checkpoint-freq", "1"], capsys)[0] == 0
        _flip_newest_data(ck, "all")
        (ck / ".ckptlab.lock").unlink()  # a copied-in directory without one must not gain one
    before = _tree(ck) if ck.exists() else None
    code, err = _exit_code_and_stderr([*run, "--load-checkpoint"], capsys)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ckptlab train: error: --load-checkpoint"), err
    assert err.count(str(ck)) == 1 and err.count("no valid checkpoint") <= 1, err
    what_to_do = {"missing": "does not exist", "empty": "holds no checkpoints", "corrupt": "checksum"}[where]
    assert what_to_do in err, err
    assert ("--allow-fresh-start" in err) == (where != "corrupt"), err  # it refuses a corrupt dir
    if where == "corrupt":
        assert err.count("step_000000000002") == 1 and err.count("step_000000000001") == 1, err
        assert "new --ckpt-dir" in err, err
    assert (_tree(ck) if ck.exists() else None) == before


def test_the_lock_file_of_a_failed_resume_is_removed_only_while_no_one_holds_it(tmp_path: Path) -> None:
    """Between the open and the removal another run may have taken the lock: its file stays
    (unlinking it would leave that run excluding no one)."""
    from ckptlab.core.commit import LOCK_NAME, DirectoryLock
    from ckptlab.training.loop import _remove_lock_file

    held = DirectoryLock(str(tmp_path))
    _remove_lock_file(tmp_path)
    assert (tmp_path / LOCK_NAME).exists()
    held.release()
    _remove_lock_file(tmp_path)
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_skipped_corrupt_checkpoint_is_reported_once_by_the_cli(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The real CLI's stderr (a subprocess: pytest would capture the warning and the log)."""
    ck = tmp_path / "ck"
    run = ["--checkpointer", "pccheck", "--ckpt-dir", str(ck), "--checkpoint-freq", "2", "--no-progress"]
    assert _exit_code_and_stderr([*run, "--training-steps", "4"], capsys)[0] == 0
    newest = _flip_newest_data(ck)
    proc = subprocess.run([sys.executable, "-m", "ckptlab.training.cli", *run, "--training-steps", "4",
                           "--load-checkpoint"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count(newest.name) == 1, proc.stderr
    assert "ckptlab train: warning: skipping corrupt checkpoint" in proc.stderr, proc.stderr
    assert "resumed from step 2" in proc.stderr


def test_a_csv_loss_file_resumes_byte_identical(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--loss-file x.csv` through a resume: the header once, cut back to the checkpoint, appended."""
    import shutil

    ck, loss = tmp_path / "ck", tmp_path / "loss_trace_pccheck.csv"
    run = ["--checkpointer", "pccheck", "--ckpt-dir", str(ck), "--training-steps", "4", "--checkpoint-freq", "2",
           "--keep-last", "0", "--loss-file", str(loss), "--no-progress"]
    assert _exit_code_and_stderr(run, capsys)[0] == 0
    uninterrupted = loss.read_bytes()
    assert uninterrupted.startswith(b"step,loss\n1,") and uninterrupted.count(b"\n") == 5
    shutil.rmtree(ck / "step_000000000004")  # as if killed before checkpoint 4 was durable
    code, err = _exit_code_and_stderr([*run, "--load-checkpoint"], capsys)
    assert code == 0 and "resumed from step 2" in err, err
    assert loss.read_bytes() == uninterrupted


@pytest.mark.parametrize("form", ["space", "equals"])
@pytest.mark.parametrize("via", ["train-module", "ckptlab-train"])
def test_load_checkpoint_given_a_directory_says_it_is_a_switch(
        via: str, form: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--load-checkpoint DIR` or `--load-checkpoint=DIR` (natural guesses) is refused naming
    --ckpt-dir, not with argparse's bare "unrecognized arguments" / "ignored explicit
    argument"; nothing is created."""
    ckpt = tmp_path / "ck"
    flag = ["--load-checkpoint", str(ckpt)] if form == "space" else [f"--load-checkpoint={ckpt}"]
    argv = ["--checkpointer", "dcp", "--training-steps", "2", *flag, "--no-progress"]
    if via == "train-module":
        code, err = _exit_code_and_stderr(argv, capsys)
    else:
        from ckptlab.core.cli import main as ckptlab_main
        try:
            code = ckptlab_main(["train", *argv])
        except SystemExit as exc:
            code = exc.code
        err = capsys.readouterr().err
    assert code == 2
    assert "--load-checkpoint takes no value" in err and f"--ckpt-dir {ckpt}" in err, err
    assert not ckpt.exists()


def test_a_stray_argument_is_still_unrecognized(capsys: pytest.CaptureFixture[str]) -> None:
    """Only a value after --load-checkpoint gets the switch's message."""
    code, err = _exit_code_and_stderr(["stray", "--load-checkpoint"], capsys)
    error = err.strip().splitlines()[-1]
    assert code == 2 and error.endswith("error: unrecognized arguments: stray") and "takes no value" not in err, err


def test_load_checkpoint_shows_as_a_switch_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    from ckptlab.training.cli import build_parser
    text = build_parser().format_help()
    assert "[--load-checkpoint]" in text and "LOAD_CHECKPOINT" not in text, text
    assert build_parser().parse_args(["--load-checkpoint"]).load_checkpoint is True
    assert build_parser().parse_args([]).load_checkpoint is False
