"""The evaluation report: Table S2's layout as Markdown and CSV, per-task accuracies, a plot.

Rows are (method, retention ratio); columns the score per benchmark, "Avg." (mean over the
benchmarks of the run), "%" (Avg. relative to the full-token row of the same run) and FLOPs in
TFLOPs by Eq. S3: in the paper's convention (n_i counts the visual tokens only) and, beside it,
with the text tokens counted too (METHOD.md section 6). Scores are accuracies in percent.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

FULL_METHOD = "full"


@dataclass(frozen=True)
class ReportRow:
    """One line of the table.

    method: the sweep's method key ("full", "ours", "fastv", ...); label its display name.
    retention: the paper's label ("2%/1%": 2% enter the LLM, 1% remain after layer K).
    ratio: the retention ratio the plot puts the row at (tokens entering the LLM, or for FastV
        the share left after K, as its label's second number).
    scores: benchmark display name -> accuracy in percent (None: no question could be scored).
    tflops / tflops_with_text: mean Eq. S3 cost per question (visual tokens only / with text).
    """

    method: str
    label: str
    retention: str
    ratio: float
    scores: Mapping[str, float | None]
    tflops: float | None = None
    tflops_with_text: float | None = None

    @property
    def average(self) -> float | None:
        values = list(self.scores.values())
        if not values or any(v is None for v in values):
            return None
        return sum(values) / len(values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class TaskScore:
    """Accuracy of one row on one task (sub-task) of one benchmark."""

    label: str
    retention: str
    benchmark: str
    task: str
    questions: int
    correct: int
    unparsed: int

    @property
    def accuracy(self) -> float:
        return 100.0 * self.correct / self.questions if self.questions else math.nan


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _fmt_flops(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def table_rows(rows: Sequence[ReportRow], benchmarks: Sequence[str]) -> list[list[str]]:
    """Header plus one list of cells per row, in Table S2's column order."""
    full = next((r for r in rows if r.method == FULL_METHOD), None)
    full_avg = full.average if full else None
    header = ["Method", "Retention Ratio", *benchmarks, "Avg.", "%", "TFLOPs", "TFLOPs (w/ text)"]
    body = []
    for row in rows:
        avg = row.average
        share = 100.0 * avg / full_avg if avg is not None and full_avg else None
        body.append(
            [
                row.label,
                row.retention,
                *(_fmt(row.scores.get(b)) for b in benchmarks),
                _fmt(avg),
                _fmt(share),
                _fmt_flops(row.tflops),
                _fmt_flops(row.tflops_with_text),
            ]
        )
    return [header, *body]


def _markdown_table(cells: list[list[str]]) -> str:
    header, *body = cells
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _write_csv(path: Path, cells: list[list[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(cells)


def task_table(tasks: Sequence[TaskScore]) -> list[list[str]]:
    header = ["Method", "Retention Ratio", "Benchmark", "Task", "Questions", "Correct",
              "Unparsed", "Accuracy"]  # fmt: skip
    body = [
        [t.label, t.retention, t.benchmark, t.task, str(t.questions), str(t.correct),
         str(t.unparsed), _fmt(t.accuracy)]
        for t in tasks
    ]  # fmt: skip
    return [header, *body]


def plot_score_vs_retention(path: Path, rows: Sequence[ReportRow]) -> None:
    """Avg. score against retention ratio, one line per method; the full model as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    by_method: dict[str, list[ReportRow]] = {}
    for row in rows:
        if row.average is not None:
            by_method.setdefault(row.method, []).append(row)
    for method, method_rows in by_method.items():
        if method == FULL_METHOD:
            ax.axhline(method_rows[0].average, linestyle="--", color="black",
                       label=f"{method_rows[0].label} (100%)")  # fmt: skip
            continue
        method_rows.sort(key=lambda r: r.ratio)
        xs = [100.0 * r.ratio for r in method_rows]
        ax.plot(xs, [r.average for r in method_rows], marker="o", label=method_rows[0].label)
    ax.set_xscale("log")
    ratios = sorted(
        {100.0 * r.ratio for rs in by_method.values() for r in rs if r.method != FULL_METHOD}
    )
    if ratios:  # ticks at the swept ratios, labelled as the table does ("2%"), not 2x10^0
        ax.set_xticks(ratios, [f"{x:g}%" for x in ratios])
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("retention ratio (share of visual tokens, log scale)")
    ax.set_ylabel("Avg. accuracy (%)")
    ax.grid(True, which="both", alpha=0.3)
    if by_method:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(
    out_dir: str | Path,
    rows: Sequence[ReportRow],
    benchmarks: Sequence[str],
    tasks: Sequence[TaskScore] = (),
    *,
    title: str = "tokenreel eval",
    notes: Sequence[str] = (),
) -> dict[str, Path]:
    """Write report.md, report.csv, tasks.csv and score_vs_retention.png into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cells = table_rows(rows, benchmarks)
    paths = {
        "markdown": out / "report.md",
        "csv": out / "report.csv",
        "tasks_csv": out / "tasks.csv",
        "plot": out / "score_vs_retention.png",
    }
    _write_csv(paths["csv"], cells)
    _write_csv(paths["tasks_csv"], task_table(tasks))
    plot_score_vs_retention(paths["plot"], rows)
    parts = [f"# {title}", "", *(f"* {n}" for n in notes), "", _markdown_table(cells), ""]
    if tasks:
        parts += ["## Accuracy per task", "", _markdown_table(task_table(tasks)), ""]
    parts += [f"![score vs retention]({paths['plot'].name})", ""]
    paths["markdown"].write_text("\n".join(parts), encoding="utf-8")
    return paths
