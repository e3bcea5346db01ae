"""`umop demo` (the README's `make demo`) end to end in its quick mode, 2 seeds: the study report, the
pictures and the summary with its one sentence."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from umop.engine.demo import run_demo

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_demo_writes_the_report_pictures_and_sentence(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO_ROOT)  # the cells run `python -m umop.cli` from the working directory
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "demo"
    result = run_demo(out, quick=True, seeds=(0, 1), num_pictures=2,
                      overrides=["model.options.fpn_channels=32", "data.min_size=64", "data.max_size=64"])
    assert result["failed_cells"] == [] and result["quick"] is True
    assert json.loads((out / "summary.json").read_text())["sentence"] == result["sentence"]
    assert result["sentence"].startswith("pfl minus focal: AP") or "no seed has AP for both" in result["sentence"]
    assert (out / "study.html").is_file() and (out / "study.md").is_file()
    assert {c["status"] for c in json.loads((out / "study.json").read_text())["cells"]} == {"finished"}
    for variant in ("focal", "pfl"):
        assert len(list((out / "pictures" / variant).glob("*.png"))) == 2
    printed = capsys.readouterr().out
    assert "[demo] report:" in printed and result["sentence"] in printed
