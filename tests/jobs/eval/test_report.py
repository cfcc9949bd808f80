"""Report files: Table S2's layout in Markdown and CSV, the per-task CSV, and the plot."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from jobs.eval.report import ReportRow, TaskScore, table_rows, write_report

BENCHES = ["MVBench", "VideoMME"]
ROWS = [
    ReportRow("full", "LLaVA-OV", "100%", 1.0, {"MVBench": 60.0, "VideoMME": 40.0}, 2.0, 2.5),
    ReportRow("fastv", "FastV", "100%/2%", 0.02, {"MVBench": 45.0, "VideoMME": 35.0}, 1.2, 1.6),
    ReportRow("ours", "Ours", "2%/1%", 0.02, {"MVBench": 50.0, "VideoMME": 40.0}, 0.1, 0.5),
    ReportRow("ours", "Ours", "10%/5%", 0.10, {"MVBench": 55.0, "VideoMME": 40.0}, 0.3, 0.7),
    ReportRow("uniform", "Uniform", "2%", 0.02, {"MVBench": None, "VideoMME": 30.0}),
]


def test_table_average_share_of_full_and_missing_scores() -> None:
    header, full, fastv, ours, _ours10, uniform = table_rows(ROWS, BENCHES)
    assert header == ["Method", "Retention Ratio", "MVBench", "VideoMME", "Avg.", "%",
                      "TFLOPs", "TFLOPs (w/ text)"]  # fmt: skip
    assert full[4:6] == ["50.0", "100.0"]
    assert fastv[4:6] == ["40.0", "80.0"]
    assert ours[:6] == ["Ours", "2%/1%", "50.0", "40.0", "45.0", "90.0"]
    assert ours[6:] == ["0.1", "0.5"]
    assert uniform[2] == "-" and uniform[4:] == ["-", "-", "-", "-"]


def test_write_report_files(tmp_path: Path) -> None:
    tasks = [TaskScore("Ours", "2%/1%", "MVBench", "action_count", 4, 3, 1)]
    paths = write_report(tmp_path / "out", ROWS, BENCHES, tasks, title="t", notes=["model: x"])
    with paths["csv"].open(newline="") as f:
        cells = list(csv.reader(f))
    assert cells == table_rows(ROWS, BENCHES)
    with paths["tasks_csv"].open(newline="") as f:
        task_cells = list(csv.reader(f))
    assert task_cells[1] == ["Ours", "2%/1%", "MVBench", "action_count", "4", "3", "1", "75.0", "-"]
    markdown = paths["markdown"].read_text()
    assert "| Ours | 2%/1% | 50.0 | 40.0 | 45.0 | 90.0 | 0.1 | 0.5 |" in markdown
    assert "* model: x" in markdown and "scores.png" in markdown
    image = np.asarray(Image.open(paths["plot"]).convert("RGB"))
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 10  # something was drawn


def test_open_ended_columns_and_a_swept_setting() -> None:
    columns = ["MVBench", "ActivityNet-QA Accuracy", "ActivityNet-QA Score"]
    full_scores = dict(zip(columns, [60.0, 50.0, 3.5], strict=True))
    ours_scores = dict(zip(columns, [45.0, 45.0, 3.125], strict=True))
    rows = [
        ReportRow("full", "Vanilla", "100%", 1.0, full_scores, setting="-"),
        ReportRow("ours", "Ours", "2%/1%", 0.02, ours_scores, setting="18", x=18.0),
    ]
    header, full, ours = table_rows(
        rows, columns, setting_header="K", unaveraged=["ActivityNet-QA Score"]
    )
    assert header[:5] == ["Method", "K", *columns]
    assert full[:7] == ["Vanilla", "-", "60.0", "50.0", "3.50", "55.0", "100.0"]
    assert ours[:7] == ["Ours", "18", "45.0", "45.0", "3.12", "45.0", "81.8"]
