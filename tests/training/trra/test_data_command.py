"""`flexrealign data filter-length`: keeps rows by completion length, written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flexrealign.cli import main
from flexrealign.training.trra.data import load_rows


def test_filter_length(tmp_path: Path, model_dirs: dict, capsys) -> None:
    src, out = tmp_path / "in.jsonl", tmp_path / "out" / "kept.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b" * n}], "id": n}
        for n in range(1, 11)
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["data", "filter-length", "--dataset_name", str(src), "--tokenizer", str(model_dirs["ref"])]
    assert main(argv + ["--min_tokens", "4", "--max_tokens", "8", "--output", str(out)]) == 0
    assert load_rows(str(out))["id"] == [4, 5, 6, 7, 8]  # every column kept
    assert "kept 5 of 10 rows" in capsys.readouterr().out


def test_filter_length_needs_a_bound(tmp_path: Path, model_dirs: dict, capsys) -> None:
    with pytest.raises(SystemExit):
        main(
            ["data", "filter-length", "--dataset_name", "x.jsonl", "--tokenizer", "t", "--output", "o.jsonl"]
        )
    assert "min_tokens and/or --max_tokens" in capsys.readouterr().err


def test_unknown_subcommand(capsys) -> None:
    assert main(["data", "no-such-subcommand"]) == 2
    assert "filter-length" in capsys.readouterr().err
