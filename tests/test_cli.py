"""The command line: help everywhere, a run end to end, config files, one-line errors."""
from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from msabench.cli import build_parser, main


def subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return action.choices


def test_help_on_every_command_explains_every_option():
    for name, sub in subcommands().items():
        text = sub.format_help()
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"msabench {name} {action.option_strings[0]} has no help text"
        assert text


def test_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "msabench.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "run" in out.stdout and "list" in out.stdout


def test_run_writes_long_results(tmp_path, capsys):
    assert main(["run", "--method", "late-fusion", "--dataset", "synthetic-small", "--seeds", "1111",
                 "--epochs", "1", "--protocol", "none", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Non0_F1" in out and "late-fusion" in out
    rows = pd.read_csv(tmp_path / "results.csv")
    for col in ["method", "seed", "split", "condition", "metric", "value"]:
        assert col in rows.columns
    metrics = {"Has0_acc_2", "Has0_F1", "Non0_acc_2", "Non0_F1", "Mult_acc_5", "Mult_acc_7", "MAE", "Corr"}
    assert set(rows["metric"]) == metrics
    # one row per (split, condition, metric)
    assert len(rows) == 2 * 1 * len(metrics)
    assert set(rows["split"]) == {"test", "valid"}


def test_config_file_selects_method_and_params(tmp_path):
    config = tmp_path / "best.yaml"
    config.write_text("method: late-fusion\nparams:\n  hidden: 8\nprotocol: none\nepochs: 1\n")
    assert main(["run", "--config", str(config), "--seeds", "3", "--out", str(tmp_path / "o"), "--quiet"]) == 0
    rows = pd.read_csv(tmp_path / "o" / "results.csv")
    assert '"hidden": 8' in rows["params"].iloc[0]
    assert set(rows["protocol"]) == {"none"}


@pytest.mark.parametrize("argv, message", [
    (["run", "--method", "late-fusoin"], "Did you mean 'late-fusion'"),
    (["run", "--method", "late-fusion", "--protocol", "random-missin"], "Did you mean 'random-missing'"),
    (["run", "--method", "late-fusion", "--dataset", "synthetic-mosii"], "unknown dataset"),
    (["run", "--method", "late-fusion", "--set", "hiden=3"], "Did you mean 'hidden'"),
    (["run", "--method", "late-fusion", "--set", "hidden=abc"], "should be an integer"),
    (["run", "--method", "late-fusion", "--dataset", "mmsa:/nonexistent/file.pkl"], "/nonexistent/file.pkl"),
    (["run"], "no method given"),
])
def test_bad_input_is_one_line_error(argv, message, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("msabench: error:")
    assert not (tmp_path / "results.csv").exists()
