"""Faults while writing results: a full disk at any file of a run, stale temporary files, Ctrl-C during a grid.

The full disk is injected (a writer raising ``OSError(ENOSPC)`` from the n-th write of a given file on, like a
file system that stays full); the expected row counts come from the protocol and the MOSI metric set as the field
defines them (MMSA), not from the code under test.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from msabench import outputs, runner
from msabench.cli import main
from msabench.outputs import WriteFailed, atomic_write_text, clean_stale_temps, temp_path
from msabench.store import ResultsStore, StoreError, StoreWriteFailed

# random-missing: missing ratio 0.0, 0.1, ..., 1.0; MOSI-style regression metrics (MMSA); test + valid splits
CONDITIONS = 11
MOSI_METRICS = {"Has0_acc_2", "Has0_F1", "Non0_acc_2", "Non0_F1", "Mult_acc_5", "Mult_acc_7", "MAE",
                "Corr"}
SPLITS = 2
ROWS_PER_RUN = CONDITIONS * len(MOSI_METRICS) * SPLITS  # 176, as the 880 rows for 5 runs


def run_args(out: Path, seeds: str, *extra: str) -> list[str]:
    return ["run", "--method", "late-fusion", "--dataset", "synthetic-small", "--protocol", "random-missing",
            "--seeds", seeds, "--epochs", "1", "--threads", "1", "--quiet", "--save-predictions", "--save-model",
            "--out", str(out), *extra]


class FullDisk:
    """From the ``nth`` write of a file named ``target`` on, every write raises ENOSPC (the disk stays full)."""

    def __init__(self, target: str, nth: int) -> None:
        self.target, self.nth, self.seen, self.full = target, nth, 0, False

    def check(self, path: object) -> None:
        name = Path(getattr(path, "name", path)).name
        if name == self.target or name.startswith(f".{self.target}.tmp-"):
            self.seen += 1
            self.full = self.full or self.seen >= self.nth
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real_to_csv, real_to_parquet = pd.DataFrame.to_csv, pd.DataFrame.to_parquet
        real_write_text, real_write_bytes, real_save = Path.write_text, Path.write_bytes, torch.save

        def to_csv(frame, path=None, *a, **k):
            if path is not None:
                self.check(path)
            return real_to_csv(frame, path, *a, **k)

        def to_parquet(frame, path=None, *a, **k):
            self.check(path)
            return real_to_parquet(frame, path, *a, **k)

        def write_text(p, *a, **k):
            self.check(p)
            return real_write_text(p, *a, **k)

        def write_bytes(p, *a, **k):
            self.check(p)
            return real_write_bytes(p, *a, **k)

        def save(obj, f, *a, **k):
            self.check(f)
            return real_save(obj, f, *a, **k)

        monkeypatch.setattr(pd.DataFrame, "to_csv", to_csv)
        monkeypatch.setattr(pd.DataFrame, "to_parquet", to_parquet)
        monkeypatch.setattr(Path, "write_text", write_text)
        monkeypatch.setattr(Path, "write_bytes", write_bytes)
        monkeypatch.setattr(torch, "save", save)


def temporaries(out: Path) -> list[Path]:
    """Hidden files/directories anywhere under ``out`` (every temporary of the store is hidden)."""
    return [p for p in out.rglob(".*")]


def check_complete(out: Path, runs: int) -> pd.DataFrame:
    """``runs`` whole runs in ``out``, each with all its rows once, and results.csv equal to runs/."""
    rows = ResultsStore(out).rows()
    assert len(rows) == runs * ROWS_PER_RUN
    assert set(rows["metric"]) == MOSI_METRICS
    assert not rows.duplicated(["run_id", "split", "condition", "metric"]).any()
    assert rows.groupby("run_id").size().eq(ROWS_PER_RUN).all()
    results = pd.read_csv(out / "results.csv", dtype={"run_id": str})
    assert len(results) == runs * ROWS_PER_RUN and set(results["run_id"]) == set(rows["run_id"])
    for key in rows["run_id"].unique():
        assert {p.name for p in (out / "runs" / key).iterdir()} == {"rows.csv", "predictions.csv", "model.pt",
                                                                       "run.json"}
    return rows


TRAINED: dict[str, object] = {}
REAL_EXECUTE_RUN = runner.execute_run


def trained_once(spec, options, dataset=None):
    """The real run, trained once per test session (the faults are in writing, not in training)."""
    if spec.key not in TRAINED:
        TRAINED[spec.key] = REAL_EXECUTE_RUN(spec, options, dataset)
    return TRAINED[spec.key]


@pytest.mark.parametrize("target, nth, kept", [
    ("rows.csv", 2, 1),         # first file of the second run
    ("predictions.csv", 2, 1),  # a middle file
    ("model.pt", 2, 1),         # a middle file (torch)
    ("run.json", 2, 1),         # the last file, which marks a run finished
    ("results.csv", 1, 2),      # after every run was stored
])
def test_full_disk_is_one_line_and_a_rerun_completes(tmp_path, monkeypatch, capsys, target, nth, kept):
    out = tmp_path / "out"
    monkeypatch.setattr(runner, "REBUILD_EVERY_S", 1e9)  # results.csv only at the end, however slow the machine
    monkeypatch.setattr(runner, "execute_run", trained_once)
    disk = FullDisk(target, nth)
    with monkeypatch.context() as m:
        disk.install(m)
        assert main(run_args(out, "1111,1112")) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("msabench: error: cannot write ") and "No space left on device (ENOSPC)" in err
    assert "free space" in err and "--out" in err and "rerun" in err
    if target == "results.csv":
        assert str(out / "results.csv") in err
    else:
        assert "/runs/" in err and err.split(":")[2].strip().endswith(target)
        assert f"{kept} run finished and was kept in {out} ({kept} of 2 runs of this grid are stored)" in err
    # nothing half-written: the kept runs are whole, the failed one is absent, no temporary is left
    store = ResultsStore(out)
    assert len(store.keys()) == kept
    assert len(store.rows()) == kept * ROWS_PER_RUN
    assert temporaries(out) == []
    kept_rows = store.rows()
    kept_files = {p: p.stat().st_ino for p in (out / "runs").glob("*/*")}

    # the same command with space again finishes the grid without repeating or duplicating anything
    assert main(run_args(out, "1111,1112")) == 0
    rows = check_complete(out, 2)
    again = rows[rows["run_id"].isin(kept_rows["run_id"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(again[kept_rows.columns], kept_rows)
    assert {p: p.stat().st_ino for p in kept_files} == kept_files  # kept runs were skipped, not written again
    assert temporaries(out) == []


def test_write_failed_message_per_cause(tmp_path):
    path = tmp_path / "x.csv"
    cases = {errno.ENOSPC: "free space", errno.EDQUOT: "quota", errno.EACCES: "permissions",
             errno.EPERM: "permissions", errno.EROFS: "read-only", errno.EIO: "check that directory"}
    for code, advice in cases.items():
        text = str(WriteFailed(path, OSError(code, os.strerror(code)), flag="--out"))
        assert text.startswith(f"cannot write {path}: {os.strerror(code)} ({errno.errorcode[code]}); ")
        assert advice in text and "--out" in text and "\n" not in text


def test_atomic_write_removes_its_temporary_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "board.md"
    target.write_text("old")

    def fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(WriteFailed, match="No space left"):
        outputs.atomic_write(target, fail)
    assert target.read_text() == "old" and sorted(tmp_path.iterdir()) == [target]

    def interrupted(tmp: Path) -> None:
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        outputs.atomic_write(target, interrupted)
    assert target.read_text() == "old" and sorted(tmp_path.iterdir()) == [target]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    out = tmp_path / "out"
    (out / "runs").mkdir(parents=True)
    (out / "cache" / "corrkd-teacher").mkdir(parents=True)
    host, dead, live = outputs.host_tag(), dead_pid(), os.getpid()
    old = time.time() - 3600
    stale = [out / f".results.csv.tmp-{host}-{dead}", out / f".results.parquet.tmp-{host}-{dead}",
             out / f".results-{dead}.csv", out / "cache" / "corrkd-teacher" / f"abc.pt.{dead}.partial"]
    alive = [out / f".results.csv.tmp-{host}-{live}", out / f".results-{live}.csv",
             out / "cache" / "corrkd-teacher" / f"abc.pt.{live}.partial",
             out / f".results.csv.tmp-otherhost-{dead}",  # another machine's process: cannot tell, keep (a day)
             out / "notes.txt", out / ".hidden-user-file"]
    for p in stale + alive:
        p.write_text("x")
        os.utime(p, (old, old))
    fresh_pid_only = out / f".results-{dead}.parquet"  # no host in the name: only once a few minutes old
    fresh_pid_only.write_text("x")
    stale_dir = out / "runs" / f".tmp-abc-{host}-{dead}-xyz"
    live_dir = out / "runs" / f".tmp-def-{host}-{live}-xyz"
    for d in (stale_dir, live_dir):
        d.mkdir()
        (d / "rows.csv").write_text("x")

    store = ResultsStore(out)
    store.ensure_writable()  # what 'msabench run' and 'tune' do first
    for p in stale + [stale_dir]:
        assert not p.exists(), p
    for p in alive + [fresh_pid_only, live_dir]:
        assert p.exists(), p
    assert clean_stale_temps(out) == []  # nothing left to remove


def test_leaderboard_and_plot_clean_stale_temporaries_and_fail_in_one_line(tmp_path, monkeypatch, capsys):
    out = tmp_path / "runs"
    assert main(run_args(out, "1111")) == 0
    boards = tmp_path / "boards"
    boards.mkdir()
    stale = boards / f".board.md.tmp-{outputs.host_tag()}-{dead_pid()}"
    stale.write_text("half")
    assert main(["leaderboard", str(out), "--out", str(boards / "board.md")]) == 0
    assert not stale.exists() and (boards / "board.md").read_text().strip()
    figs = tmp_path / "figs"
    figs.mkdir()
    stale_fig = figs / f".x.png.tmp-{outputs.host_tag()}-{dead_pid()}"
    stale_fig.write_text("half")
    assert main(["plot", "heatmap", str(out), "--out", str(figs), "--format", "png"]) == 0
    assert not stale_fig.exists() and list(figs.glob("*.png"))
    capsys.readouterr()

    def enospc(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", enospc)
    assert main(["leaderboard", str(out), "--out", str(boards / "new.md")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"msabench: error: cannot write {boards / 'new.md'}: No space left on device (ENOSPC); "
                   f"free space on that file system or choose another --out")
    assert sorted(p.name for p in boards.iterdir()) == ["board.md"]

    import matplotlib.figure

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", enospc)
    assert main(["plot", "heatmap", str(out), "--out", str(tmp_path / "figs2"), "--format", "png"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No space left on device (ENOSPC)" in err and "--out" in err
    assert list((tmp_path / "figs2").iterdir()) == []


def test_unwritable_directory(tmp_path, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        if os.access(out, os.W_OK):
            pytest.skip("running as root (or with CAP_DAC_OVERRIDE): chmod does not stop writes here")
        assert main(run_args(out / "r", "1111")) == 2  # found before any training: a usage error
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"msabench: error: cannot write {out / 'r'}: Permission denied (EACCES)")
    finally:
        out.chmod(0o700)


def test_unusable_out_is_found_first_and_named(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match=f"cannot write {blocker / 'out'}: Not a directory \\(ENOTDIR\\); .*--out"):
        ResultsStore(blocker / "out").ensure_writable()
    assert issubclass(StoreWriteFailed, StoreError) and issubclass(StoreWriteFailed, WriteFailed)
    assert temp_path(tmp_path / "f.csv").name.startswith(".f.csv.tmp-")
    atomic_write_text(tmp_path / "f.csv", "a\n")
    assert (tmp_path / "f.csv").read_text() == "a\n"


# Ctrl-C ------------------------------------------------------------------------------------------------------
def interrupt_grid(out: Path, seeds: int, extra: list[str], whole_group: bool) -> tuple[int, str, int]:
    """Start a grid in a child process, send SIGINT once its first run is stored (to the process group, as a
    terminal does, with ``whole_group``); returns (exit status, stderr, runs stored when the signal went)."""
    args = run_args(out, ",".join(str(1111 + i) for i in range(seeds)), *extra)
    args = [a for a in args if a not in ("--save-model",)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "msabench.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not ResultsStore(out).keys():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no run finished in 300 s"
            time.sleep(0.05)
        assert proc.poll() is None
        stored_at_signal = len(ResultsStore(out).keys())
        if whole_group:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, err, stored_at_signal


@pytest.mark.parametrize("extra, whole_group", [([], False),
                                                pytest.param(["--workers", "2"], True, marks=pytest.mark.slow)],
                         ids=["sequential", "workers"])
def test_ctrl_c_keeps_finished_runs_and_a_rerun_continues(tmp_path, capsys, extra, whole_group):
    out, seeds = tmp_path / "out", 3
    rc, err, stored_at_signal = interrupt_grid(out, seeds, extra, whole_group)
    lines = err.strip().splitlines()
    assert rc == 130, err
    assert "Traceback" not in err and len(lines) == 1, err
    stored = len(ResultsStore(out).keys())
    assert stored_at_signal <= stored < seeds
    word = "run finished and was" if stored == 1 else "runs finished and were"
    assert lines[0] == (f"msabench: interrupted: {stored} {word} kept in {out} ({stored} of {seeds} runs of this "
                        f"grid are stored); rerunning the same command continues")
    assert temporaries(out) == []
    before = ResultsStore(out).rows()
    assert len(before) == stored * ROWS_PER_RUN

    args = [a for a in run_args(out, ",".join(str(1111 + i) for i in range(seeds))) if a != "--save-model"]
    assert main(args) == 0
    rows = ResultsStore(out).rows()
    assert len(rows) == seeds * ROWS_PER_RUN
    assert not rows.duplicated(["run_id", "split", "condition", "metric"]).any()
    assert set(before["run_id"]) <= set(rows["run_id"])
    infos = [json.loads(p.read_text()) for p in (out / "runs").glob("*/run.json")]
    assert sorted(i["seed"] for i in infos) == [1111 + i for i in range(seeds)]


def test_ctrl_c_while_a_run_is_being_stored_waits_until_it_is_stored(tmp_path, monkeypatch):
    """SIGINT arriving in the middle of ResultsStore.save: the run is stored whole, then KeyboardInterrupt."""
    from msabench.store import RunRecord

    rows = pd.DataFrame({"run_id": "k1", "split": "test", "condition": ["0.0", "0.1"], "metric": "MAE",
                         "value": [0.5, 0.7]})
    store = ResultsStore(tmp_path)
    store.ensure_writable()
    real_to_csv = pd.DataFrame.to_csv

    def to_csv_then_ctrl_c(frame, path=None, *a, **k):
        result = real_to_csv(frame, path, *a, **k)
        if Path(str(path)).name == "rows.csv":
            os.kill(os.getpid(), signal.SIGINT)  # delivered now, at the next bytecode
        return result

    monkeypatch.setattr(pd.DataFrame, "to_csv", to_csv_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        store.save(RunRecord(key="k1", info={"run_id": "k1"}, rows=rows))
    assert store.keys() == {"k1"} and temporaries(tmp_path) == []
    assert sorted(p.name for p in (tmp_path / "runs" / "k1").iterdir()) == ["rows.csv", "run.json"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


class SwallowsCtrlC:
    """An object whose ``__del__`` receives the Ctrl-C: Python prints and ignores an exception raised there."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # the handler runs here, inside __del__
            pass


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_ctrl_c_swallowed_by_a_destructor_still_stops_the_grid(tmp_path, monkeypatch, capsys):
    """A Ctrl-C that lands in a ``__del__`` (a progress bar's, say) is lost to Python; the grid must still stop
    after the run in progress and say so."""
    calls = []

    def run_with_lost_interrupt(spec, options, dataset=None):
        calls.append(spec.seed)
        if len(calls) == 1:
            SwallowsCtrlC()  # created and destroyed at once
        return trained_once(spec, options, dataset)

    monkeypatch.setattr(runner, "execute_run", run_with_lost_interrupt)
    out = tmp_path / "out"
    assert main(run_args(out, "1111,1112")) == 130
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1] == (f"msabench: interrupted: 1 run finished and was kept in {out} (1 of 2 runs of "
                                    f"this grid are stored); rerunning the same command continues")
    assert calls == [1111] and len(ResultsStore(out).keys()) == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_report_fails_in_one_line_and_leaves_no_temporary(tmp_path, monkeypatch, capsys):
    out = tmp_path / "runs"
    assert main(run_args(out, "1111")) == 0
    site = tmp_path / "site"
    site.mkdir()
    stale = site / f".index.html.tmp-{outputs.host_tag()}-{dead_pid()}"
    stale.write_text("half")
    real_write_text = Path.write_text

    def full_at_index(p, *a, **k):
        if ".index.html" in p.name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write_text(p, *a, **k)

    monkeypatch.setattr(Path, "write_text", full_at_index)
    assert main(["report", str(out), "--out", str(site), "--reported", ""]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"msabench: error: cannot write {site / 'index.html'}: No space left on device (ENOSPC); "
                   f"free space on that file system or choose another --out")
    assert not stale.exists() and not (site / "index.html").exists() and temporaries(site) == []


def test_tuning_storage_on_a_full_disk_is_one_line(tmp_path, monkeypatch, capsys):
    """Optuna's SQLite storage reports a full disk as SQLAlchemy's OperationalError around sqlite3's, not as an
    OSError: it still ends in one line with exit code 1."""
    import sqlite3

    import sqlalchemy.exc

    from msabench import tune_cli

    def full_disk(*args, **kwargs):
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.OperationalError as exc:
            raise sqlalchemy.exc.OperationalError("INSERT INTO trials ...", {}, exc) from exc

    monkeypatch.setattr(tune_cli, "tune", full_disk)
    code = main(["tune", "--method", "late-fusion", "--protocol", "modality-missing", "--dataset", "synthetic-small",
                 "--trials", "1", "--epochs", "1", "--out", str(tmp_path / "t"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and "Traceback" not in err[0]
    assert "tuning storage" in err[0] and "(ENOSPC)" in err[0] and "free space" in err[0]


def test_other_errors_are_not_taken_for_a_full_disk(tmp_path, monkeypatch):
    from msabench import tune_cli

    def boom(*args, **kwargs):
        raise RuntimeError("something else entirely")

    monkeypatch.setattr(tune_cli, "tune", boom)
    with pytest.raises(RuntimeError, match="something else"):
        main(["tune", "--method", "late-fusion", "--protocol", "modality-missing", "--dataset", "synthetic-small",
              "--trials", "1", "--epochs", "1", "--out", str(tmp_path / "t"), "--quiet"])
