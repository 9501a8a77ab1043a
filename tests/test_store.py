"""The results store: atomic runs, stale temporary directories, keys, results.csv rebuilt from runs/."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from msabench import store as store_mod
from msabench.store import ResultsStore, RunRecord, StoreError, read_rows, read_rows_csv


def make_record(key: str, n_conditions: int = 3, value0: float = 0.5) -> RunRecord:
    rows = pd.DataFrame({
        "run_id": key,
        "method": "m",
        "split": "test",
        "condition": [f"{0.1 * i:.1f}" for i in range(n_conditions)],  # "0.0": a label, not a number
        "metric": "MAE",
        "value": [value0 + i for i in range(n_conditions)],
    })
    preds = pd.DataFrame({"run_id": key, "split": "test", "condition": "0.0", "sample_id": ["a", "b"],
                          "label": [1.0, -1.0], "prediction": [0.5, -0.25]})
    return RunRecord(key=key, info={"run_id": key, "seed": 1}, rows=rows, predictions=preds)


def dead_pid() -> int:
    """The id of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_save_has_keys_and_no_duplicates(tmp_path):
    store = ResultsStore(tmp_path)
    store.ensure_writable()
    assert store.keys() == set() and not store.has("aaa")
    assert store.save(make_record("aaa")) is True
    assert store.save(make_record("bbb", value0=2.0)) is True
    assert store.save(make_record("aaa", value0=99.0)) is False  # a finished run is never overwritten
    assert store.keys() == {"aaa", "bbb"} and store.has("aaa")
    rows = store.rows()
    assert len(rows) == 6
    assert rows.groupby("run_id").size().to_dict() == {"aaa": 3, "bbb": 3}
    assert rows.loc[rows["run_id"] == "aaa", "value"].tolist() == [0.5, 1.5, 2.5]
    assert store.run_info("aaa") == {"run_id": "aaa", "seed": 1}
    assert store.predictions("aaa")["prediction"].tolist() == [0.5, -0.25]
    assert not list(store.runs_dir.glob(".tmp-*"))


def test_killed_writer_leaves_nothing_and_is_cleaned(tmp_path):
    store = ResultsStore(tmp_path)
    store.ensure_writable()
    store.save(make_record("done"))
    host = store_mod._host()
    # what a process killed in the middle of save leaves behind: a hidden temporary directory, partial files
    stale = store.runs_dir / f".tmp-half-{host}-{dead_pid()}-x1y2"
    stale.mkdir()
    (stale / "rows.csv").write_text("run_id,value\nhalf,1.0\n")
    # one being written right now by a live process (this one) must not be touched
    live = store.runs_dir / f".tmp-busy-{host}-{os.getpid()}-z9"
    live.mkdir()
    (live / "rows.csv").write_text("run_id,value\nbusy,1.0\n")
    assert store.keys() == {"done"}
    assert set(store.rows()["run_id"]) == {"done"}
    store.ensure_writable()  # what every 'msabench run' does first
    assert not stale.exists()
    assert live.exists()
    assert store.keys() == {"done"}


def test_crash_before_rename_stores_nothing(tmp_path, monkeypatch):
    store = ResultsStore(tmp_path)
    store.ensure_writable()

    def die(*args, **kwargs):
        raise SystemExit("killed")

    monkeypatch.setattr(store_mod.os, "rename", die)
    with pytest.raises(SystemExit):
        store.save(make_record("ccc"))
    monkeypatch.undo()
    assert store.keys() == set() and not store.has("ccc")
    assert store.rows().empty
    assert store.save(make_record("ccc")) is True  # the same run can be stored later
    assert store.keys() == {"ccc"}


def test_directory_without_run_json_is_not_a_run(tmp_path):
    store = ResultsStore(tmp_path)
    store.ensure_writable()
    broken = store.runs_dir / "ddd"
    broken.mkdir()
    (broken / "rows.csv").write_text("run_id,value\nddd,7.0\n")
    assert store.keys() == set() and not store.has("ddd")
    assert store.save(make_record("ddd")) is True
    assert store.rows()["value"].tolist() == [0.5, 1.5, 2.5]


def test_rebuild_results_csv_and_parquet(tmp_path):
    store = ResultsStore(tmp_path)
    store.ensure_writable()
    for i, key in enumerate(["k1", "k2", "k3"]):
        store.save(make_record(key, value0=float(i)))
    rows = store.rebuild_results()
    assert len(rows) == 9
    csv = read_rows_csv(tmp_path / "results.csv")
    assert csv["condition"].tolist()[:3] == ["0.0", "0.1", "0.2"]
    assert sorted(csv["value"].tolist()) == sorted([0.0, 1.0, 2.0, 1.0, 2.0, 3.0, 2.0, 3.0, 4.0])
    # results.csv is derived: deleting it loses nothing
    (tmp_path / "results.csv").unlink()
    again = ResultsStore(tmp_path).rebuild_results()
    assert len(again) == 9 and (tmp_path / "results.csv").exists()
    pq = pd.read_parquet(tmp_path / "results.parquet")
    pd.testing.assert_frame_equal(pq.sort_values(["run_id", "condition"]).reset_index(drop=True),
                                  csv.sort_values(["run_id", "condition"]).reset_index(drop=True),
                                  check_dtype=False)
    via_dir = read_rows([tmp_path])
    via_csv = read_rows([tmp_path / "results.csv"])
    assert len(via_dir) == len(via_csv) == 9
    assert not list(tmp_path.glob(".results-*"))


def test_unwritable_output_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="--out"):
        ResultsStore(blocker / "out").ensure_writable()


def test_run_json_is_written_last(tmp_path, monkeypatch):
    """run.json marks a finished run, so it must be the last file written into the temporary directory."""
    store = ResultsStore(tmp_path)
    store.ensure_writable()
    order: list[str] = []
    real_write_text = store_mod.Path.write_text
    real_to_csv = pd.DataFrame.to_csv

    def spy_write_text(self, *args, **kwargs):
        order.append(self.name)
        return real_write_text(self, *args, **kwargs)

    def spy_to_csv(self, path=None, *args, **kwargs):
        order.append(os.path.basename(str(path)))
        return real_to_csv(self, path, *args, **kwargs)

    monkeypatch.setattr(store_mod.Path, "write_text", spy_write_text)
    monkeypatch.setattr(pd.DataFrame, "to_csv", spy_to_csv)
    store.save(make_record("eee"))
    monkeypatch.undo()
    assert order[-1] == "run.json" and set(order) == {"rows.csv", "predictions.csv", "run.json"}
    assert json.loads((store.runs_dir / "eee" / "run.json").read_text())["run_id"] == "eee"
