"""The evaluation report: the paper's table layout as Markdown and CSV, per-task scores, a plot.

Rows are (method, setting): the setting column is the retention ratio (Tables S1-S3) or what a
preset sweeps (K, tau, cluster ratio, lambda, frames); columns the score per benchmark, "Avg."
(mean over the benchmarks' accuracy columns), "%" (Avg. relative to the full-token row of the
same run) and FLOPs in TFLOPs by Eq. S3: in the paper's convention (n_i counts the visual tokens
only) and, beside it, with the text tokens counted too (METHOD.md section 6). Scores are
accuracies in percent; an open-ended benchmark (ActivityNet-QA, Table S3) has two columns, its
judge's accuracy and its mean 0-5 score (the score is not part of Avg.).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

FULL_METHOD = "full"


def score_columns(benchmark: str, open_ended: bool = False) -> list[str]:
    """The report columns of one benchmark (by display name)."""
    return [f"{benchmark} Accuracy", f"{benchmark} Score"] if open_ended else [benchmark]


@dataclass(frozen=True)
class ReportRow:
    """One line of the table.

    method: the sweep's method key ("full", "ours", "fastv", ...); label its display name.
    retention: the paper's label ("2%/1%": 2% enter the LLM, 1% remain after layer K).
    ratio: the retention ratio the plot puts the row at (tokens entering the LLM, or for FastV
        the share left after K, as its label's second number).
    scores: column (`score_columns`) -> accuracy in percent, or a 0-5 judge score (None: no
        question could be scored).
    tflops / tflops_with_text: mean Eq. S3 cost per question (visual tokens only / with text).
    setting: the setting column's text when it is not `retention` (a preset's swept value).
    x / series: where the plot puts the row (x None: the full model, drawn as a level line;
        otherwise at its ratio); series: its line (default: label).
    """

    method: str
    label: str
    retention: str
    ratio: float
    scores: Mapping[str, float | None]
    tflops: float | None = None
    tflops_with_text: float | None = None
    setting: str | None = None
    x: float | None = None
    series: str | None = None

    def average(self, unaveraged: Sequence[str] = ()) -> float | None:
        """Mean over the score columns not in `unaveraged`; None if any of them is missing."""
        values = [v for k, v in self.scores.items() if k not in unaveraged]
        if not values or any(v is None for v in values):
            return None
        return sum(values) / len(values)  # type: ignore[arg-type]

    @property
    def plot_x(self) -> float | None:
        if self.x is not None:
            return self.x
        return None if self.method == FULL_METHOD else self.ratio


@dataclass(frozen=True)
class TaskScore:
    """Accuracy of one row on one task (sub-task) of one benchmark.

    setting: the row's setting column (its retention label, or a preset's swept value).
    unparsed: answers without a readable letter, or judge replies that could not be read.
    score_total: an open-ended task's sum of judge scores (None for multiple choice).
    """

    label: str
    setting: str
    benchmark: str
    task: str
    questions: int
    correct: int
    unparsed: int
    score_total: float | None = None

    @property
    def accuracy(self) -> float:
        return 100.0 * self.correct / self.questions if self.questions else math.nan

    @property
    def mean_score(self) -> float | None:
        if self.score_total is None or not self.questions:
            return None
        return self.score_total / self.questions


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _fmt_score(column: str, value: float | None) -> str:
    """Accuracies with one decimal, a judge's 0-5 score with two (as Table S3)."""
    return _fmt(value, 2 if column.endswith(" Score") else 1)


def _fmt_flops(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def table_rows(
    rows: Sequence[ReportRow],
    columns: Sequence[str],
    *,
    setting_header: str = "Retention Ratio",
    unaveraged: Sequence[str] = (),
) -> list[list[str]]:
    """Header plus one list of cells per row, in Table S2's column order (`columns`: the score
    columns; `unaveraged`: those left out of Avg.)."""
    full = next((r for r in rows if r.method == FULL_METHOD), None)
    full_avg = full.average(unaveraged) if full else None
    header = ["Method", setting_header, *columns, "Avg.", "%", "TFLOPs", "TFLOPs (w/ text)"]
    body = []
    for row in rows:
        avg = row.average(unaveraged)
        share = 100.0 * avg / full_avg if avg is not None and full_avg else None
        body.append(
            [
                row.label,
                row.setting or row.retention,
                *(_fmt_score(c, row.scores.get(c)) for c in columns),
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


def task_table(
    tasks: Sequence[TaskScore], setting_header: str = "Retention Ratio"
) -> list[list[str]]:
    header = ["Method", setting_header, "Benchmark", "Task", "Questions", "Correct",
              "Unparsed", "Accuracy", "Score"]  # fmt: skip
    body = [
        [t.label, t.setting, t.benchmark, t.task, str(t.questions), str(t.correct),
         str(t.unparsed), _fmt(t.accuracy), _fmt(t.mean_score, 2)]
        for t in tasks
    ]  # fmt: skip
    return [header, *body]


def plot_scores(
    path: Path,
    rows: Sequence[ReportRow],
    x_label: str | None = None,
    unaveraged: Sequence[str] = (),
) -> None:
    """Avg. score against the rows' x, one line per series; the full model as a dashed level.
    x_label None: x is the retention ratio (log scale, ticks "2%"); otherwise a preset's swept
    setting on a linear axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    retention = x_label is None
    scale = 100.0 if retention else 1.0
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    lines: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        avg = row.average(unaveraged)
        if avg is None:
            continue
        if row.plot_x is None:
            ax.axhline(avg, linestyle="--", color="black", label=f"{row.label} ({row.retention})")
            continue
        lines.setdefault(row.series or row.label, []).append((scale * row.plot_x, avg))
    for name, points in lines.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    xs = sorted({x for points in lines.values() for x, _ in points})
    if retention:
        ax.set_xscale("log")
    if xs:  # ticks at the swept values, labelled as the table does ("2%"), not 2x10^0
        ax.set_xticks(xs, [f"{x:g}%" if retention else f"{x:g}" for x in xs])
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(x_label or "retention ratio (share of visual tokens, log scale)")
    ax.set_ylabel("Avg. accuracy (%)")
    ax.grid(True, which="both", alpha=0.3)
    if lines or rows:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(
    out_dir: str | Path,
    rows: Sequence[ReportRow],
    columns: Sequence[str],
    tasks: Sequence[TaskScore] = (),
    *,
    title: str = "tokenreel eval",
    notes: Sequence[str] = (),
    setting_header: str = "Retention Ratio",
    plot_x_label: str | None = None,
    unaveraged: Sequence[str] = (),
) -> dict[str, Path]:
    """Write report.md, report.csv, tasks.csv and scores.png into `out_dir` (see `table_rows`
    and `plot_scores` for the layout options)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cells = table_rows(rows, columns, setting_header=setting_header, unaveraged=unaveraged)
    task_cells = task_table(tasks, setting_header)
    paths = {
        "markdown": out / "report.md",
        "csv": out / "report.csv",
        "tasks_csv": out / "tasks.csv",
        "plot": out / "scores.png",
    }
    _write_csv(paths["csv"], cells)
    _write_csv(paths["tasks_csv"], task_cells)
    plot_scores(paths["plot"], rows, plot_x_label, unaveraged)
    parts = [f"# {title}", "", *(f"* {n}" for n in notes), "", _markdown_table(cells), ""]
    if tasks:
        parts += ["## Scores per task", "", _markdown_table(task_cells), ""]
    parts += [f"![scores]({paths['plot'].name})", ""]
    paths["markdown"].write_text("\n".join(parts), encoding="utf-8")
    return paths
