"""Packed stores (``msabench pack``): every run's rows once, compressed; everything reads them as before."""
from __future__ import annotations

import csv
import gzip
import io

import pandas as pd
import pytest

from msabench.cli import main
from msabench.store import PACKED_ROWS, ResultsStore, StoreError, read_rows
from tests.test_store import make_record


def _store(tmp_path, keys=("aaa", "bbb", "ccc")):
    store = ResultsStore(tmp_path)
    store.ensure_writable()
    for i, key in enumerate(keys):
        store.save(make_record(key, n_conditions=3 + i, value0=0.1 * i + 1 / 3))
    store.rebuild_results()
    return store


def test_pack_keeps_every_row_once_and_removes_the_duplicates(tmp_path):
    store = _store(tmp_path)
    before = ResultsStore(tmp_path).rows()
    path = store.pack()
    assert path == tmp_path / PACKED_ROWS
    assert not list(store.runs_dir.glob("*/rows.csv"))
    assert not (tmp_path / "results.csv").exists()
    assert all((store.runs_dir / k / "run.json").exists() for k in ("aaa", "bbb", "ccc"))
    # the packed file read with the standard library alone: 3 + 4 + 5 rows, floats exactly as stored
    with gzip.open(path, "rt", newline="") as fh:
        records = list(csv.DictReader(fh))
    assert len(records) == 12
    assert [r["run_id"] for r in records] == ["aaa"] * 3 + ["bbb"] * 4 + ["ccc"] * 5
    assert float(records[0]["value"]) == 1 / 3 and records[0]["condition"] == "0.0"
    after = ResultsStore(tmp_path).rows()
    pd.testing.assert_frame_equal(before, after)
    pd.testing.assert_frame_equal(read_rows([tmp_path]), before)
    assert ResultsStore(tmp_path).run_rows("bbb")["value"].tolist() == [0.1 + 1 / 3 + i for i in range(4)]


def test_runs_added_after_packing_are_read_and_folded_in_by_the_next_pack(tmp_path):
    store = _store(tmp_path, keys=("aaa",))
    first = store.pack().read_bytes()
    assert first[3] == 0 and first[4:8] == bytes(4)  # gzip header: no FNAME flag (temporary names differ), mtime 0
    assert store.pack().read_bytes() == first  # the same rows give the same bytes
    later = ResultsStore(tmp_path)
    later.save(make_record("zzz", value0=7.0))
    rows = later.rows()
    assert rows.groupby("run_id").size().to_dict() == {"aaa": 3, "zzz": 3}
    assert (tmp_path / "runs" / "zzz" / "rows.csv").exists()
    later.pack()
    assert not (tmp_path / "runs" / "zzz" / "rows.csv").exists()
    assert ResultsStore(tmp_path).rows().groupby("run_id").size().to_dict() == {"aaa": 3, "zzz": 3}


def test_a_run_without_rows_is_a_one_line_error(tmp_path):
    store = _store(tmp_path, keys=("aaa",))
    (store.runs_dir / "aaa" / "rows.csv").unlink()
    with pytest.raises(StoreError, match="no rows.*delete runs/aaa and rerun"):
        ResultsStore(tmp_path).rows()


def test_cli_pack(tmp_path, capsys):
    _store(tmp_path / "study")
    assert main(["pack", str(tmp_path / "study")]) == 0
    assert "the rows of 3 runs packed" in capsys.readouterr().out
    assert main(["pack", str(tmp_path / "nothing")]) == 2
    assert "has no runs/ directory" in capsys.readouterr().err
    (tmp_path / "empty" / "runs").mkdir(parents=True)
    assert main(["pack", str(tmp_path / "empty")]) == 2
    assert "nothing to pack" in capsys.readouterr().err


def test_packed_rows_match_an_independent_reading_of_the_per_run_files(tmp_path):
    store = _store(tmp_path)
    text = {k: (store.runs_dir / k / "rows.csv").read_text() for k in ("aaa", "bbb", "ccc")}
    store.pack()
    with gzip.open(tmp_path / PACKED_ROWS, "rt", newline="") as fh:
        packed = fh.read()
    header = text["aaa"].splitlines()[0]
    expected = header + "\n" + "".join("\n".join(t.splitlines()[1:]) + "\n" for t in text.values())
    assert list(csv.reader(io.StringIO(packed))) == list(csv.reader(io.StringIO(expected)))
