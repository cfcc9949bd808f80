"""bench/gpu_suite.py: the smoke run's plumbing and outputs (never its speed), a failing or
overrunning section, the `@serve.batch`-like batcher, and what the suite imports."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUITE_PATH = ROOT / "bench" / "gpu_suite.py"
NEVER = ("ray", "s3fs", "sqlalchemy", "fastapi", "starlette")


def load_suite() -> ModuleType:
    """bench/ is not a package: the script, imported by path."""
    if "gpu_suite" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gpu_suite", SUITE_PATH)
        module = importlib.util.module_from_spec(spec)
        sys.modules["gpu_suite"] = module  # dataclasses look their module up here
        spec.loader.exec_module(module)
    return sys.modules["gpu_suite"]


suite = load_suite()


def run_suite(out: Path, *args: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
    command = [sys.executable, str(SUITE_PATH), "--smoke", "--out", str(out), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("gpu_suite")
    return run_suite(out), out


def positive(value: object) -> bool:
    return isinstance(value, float | int) and math.isfinite(value) and value > 0


def test_smoke_run_measures_every_section_and_writes_its_files(smoke) -> None:
    process, out = smoke
    assert process.returncode == 0, process.stdout[-4000:] + process.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == sorted(suite.RESULT_FILES)
    report = json.loads((out / "gpu_suite.json").read_text())
    assert report["smoke"] is True
    assert report["model"] == "tiny-llava-ov"
    assert list(report["sections"]) == list(suite.SECTIONS)
    for name, section in report["sections"].items():
        assert section["status"] == "ok", (name, section.get("error"))
        assert section["rows"], name
        assert not section.get("skipped"), name

    encoder = report["sections"]["encoder"]
    assert [r["videos"] for r in encoder["rows"]] == list(suite.SMOKE.encoder_batches)
    for row in encoder["rows"]:
        assert row["tokens_per_video"] == suite.SMOKE.frames * 9  # tiny model: 3 x 3 per frame
        for key in ("bare_s", "hook_s", "bare_videos_per_s", "hook_videos_per_s", "score_s"):
            assert positive(row[key]), (key, row)

    outer = report["sections"]["outer"]
    assert [r["frames"] for r in outer["rows"]] == list(suite.SMOKE.outer_frames)
    for row in outer["rows"]:
        assert row["tokens"] == row["frames"] * 196
        assert row["kept"] == max(1, round(0.02 * row["tokens"]))
        assert positive(row["single_s"]) and positive(row["batch_s_per_video"])

    answer = {r["key"]: r for r in report["sections"]["answer"]["rows"]}
    assert list(answer) == ["full", "retained", "merged", "fastv", "hf_generate"]
    tokens = suite.SMOKE.frames * 9
    assert answer["full"]["visual_in"] == answer["full"]["visual_after"] == tokens
    assert answer["retained"]["visual_in"] == answer["merged"]["visual_in"] == 1  # 2% of 72
    assert answer["fastv"]["visual_in"] == tokens > answer["fastv"]["visual_after"]
    for key in ("full", "retained", "merged", "fastv", "hf_generate"):
        assert positive(answer[key]["ttft_s"]) and positive(answer[key]["decode_tok_s"]), key

    serve = report["sections"]["serve"]
    assert [(r["concurrency"], r["scheduler"]) for r in serve["rows"]] == [
        (c, s) for c in suite.SMOKE.concurrency for s in ("continuous", "static")
    ]
    for row in serve["rows"]:
        assert row["requests"] == max(8, 2 * row["concurrency"])
        assert 1 <= row["mean_batch"] <= row["concurrency"]
        assert 0 < row["p50_s"] <= row["p99_s"]
        assert positive(row["questions_per_s"])

    reuse = serve["prefix_reuse"]
    assert reuse["same_answers"] is True and reuse["cached_prompt_tokens"] == reuse["prefix_rows"]
    assert 0 < reuse["expected_flops_drop"] < 1 and 0 < reuse["flops_drop"] < 1

    by_name = {t["target"]: t for t in report["targets"]}
    assert by_name["indexing / bare encoder"]["met"] is None  # needs Ray: not measured here
    pairs = {(r["concurrency"], r["scheduler"]): r for r in serve["rows"]}
    assert by_name["continuous / static questions/s, 16 concurrent"]["measured"] == pytest.approx(
        pairs[16, "continuous"]["questions_per_s"] / pairs[16, "static"]["questions_per_s"]
    )
    assert by_name["TTFT all tokens / 2%/1%"]["measured"] == pytest.approx(
        answer["full"]["ttft_s"] / answer["merged"]["ttft_s"]
    )
    assert by_name["TTFT HF generate, all tokens / 2%/1%"]["measured"] == pytest.approx(
        answer["hf_generate"]["ttft_s"] / answer["merged"]["ttft_s"]
    )


def test_markdown_is_the_report_rendered(smoke) -> None:
    process, out = smoke
    report = json.loads((out / "gpu_suite.json").read_text())
    table = (out / "gpu_suite.md").read_text()
    assert table == suite.markdown(report)
    assert table in process.stdout  # printed last, for the device tool's output tail
    assert "SMOKE RUN" in table
    for heading in ("Vision encoder", "Outer stage", "Answer path", "Serving engine", "Targets"):
        assert heading in table
    assert "| (c) 2%/1% merge K=3 | 1 -> 1 |" in table  # the tiny model's 4 layers: K = 3
    assert "Repeated question over one video: TTFT" in table
    assert "| continuous | 16 |" in table and "| static | 16 |" in table


def test_no_section_loads_ray_s3fs_or_sqlalchemy(smoke) -> None:
    _, out = smoke
    report = json.loads((out / "gpu_suite.json").read_text())
    for name, section in report["sections"].items():
        assert section["forbidden_loaded"] == [], name
        assert not set(NEVER) & set(section["packages"]), name
    # The sections do import what they measure (the record is not empty by accident).
    assert {"torch", "transformers"} <= set(report["sections"]["answer"]["packages"])
    assert {"serving", "storage", "pydantic"} <= set(report["sections"]["serve"]["packages"])


def test_importing_the_suite_loads_only_the_standard_library() -> None:
    code = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('gpu_suite', {str(SUITE_PATH)!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "sys.modules['gpu_suite'] = module\n"
        "spec.loader.exec_module(module)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    process = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    top = {name.partition(".")[0] for name in json.loads(process.stdout)}
    assert not top & {*NEVER, "torch", "transformers", "pydantic", "fastapi"}


def test_a_failing_section_is_reported_and_the_next_one_still_runs(tmp_path: Path) -> None:
    # The GPU machine without the carried wheels: pydantic cannot be imported.
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "pydantic.py").write_text("raise ImportError('pydantic is not installed here')\n")
    out = tmp_path / "out"
    process = run_suite(out, "--sections", "serve", "outer", pythonpath=fake)
    assert process.returncode == 1
    report = json.loads((out / "gpu_suite.json").read_text())
    serve, outer = report["sections"]["serve"], report["sections"]["outer"]
    assert serve["status"] == "failed"
    assert "pydantic is not installed here" in serve["error"]
    assert outer["status"] == "ok" and outer["rows"]
    table = (out / "gpu_suite.md").read_text()
    assert "status **failed**" in table and "pydantic is not installed here" in table


def test_a_section_past_its_cap_is_killed_and_reported(tmp_path: Path) -> None:
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "pydantic.py").write_text("import time\ntime.sleep(3600)\n")  # hangs the serve child
    out = tmp_path / "out"
    process = run_suite(out, "--sections", "serve", "--cap", "serve=5", pythonpath=fake)
    assert process.returncode == 1
    report = json.loads((out / "gpu_suite.json").read_text())
    assert report["sections"]["serve"]["status"] == "timeout"
    assert report["sections"]["serve"]["cap_s"] == 5


@pytest.mark.parametrize("bad", ["nosuch=5", "serve=soon", "serve=0"])
def test_a_bad_cap_is_a_clear_error(bad: str) -> None:
    with pytest.raises(ValueError, match="--cap"):
        suite.parse_caps([bad])


class FakeEngine:
    """prepare/answer_batch as AnswerEngine has them; answers carry the job in `completion`."""

    def __init__(self, fail: bool = False) -> None:
        self.batches: list[int] = []
        self.fail = fail

    async def prepare(self, job: int) -> SimpleNamespace:
        return SimpleNamespace(job=job, enqueued=0.0)

    def answer_batch(self, prepared: list[SimpleNamespace]) -> list[SimpleNamespace]:
        if self.fail:
            raise RuntimeError("out of memory")
        self.batches.append(len(prepared))
        return [SimpleNamespace(tokens=SimpleNamespace(completion=p.job)) for p in prepared]


def test_answer_load_answers_every_question_once_in_bounded_batches() -> None:
    engine = FakeEngine()
    load = suite.answer_load(engine, list(range(23)), concurrency=5, max_batch_size=2)
    assert sorted(load["completion_tokens"]) == list(range(23))
    assert len(load["latencies_s"]) == 23
    assert load["batch_sizes"] == engine.batches
    assert sum(engine.batches) == 23 and max(engine.batches) == 2


def test_answer_load_batches_waiting_questions_together() -> None:
    # Every client waits on its answer, so with a long batch wait each batch is all of them.
    engine = FakeEngine()
    suite.answer_load(engine, list(range(12)), concurrency=4, max_batch_size=4, batch_wait_s=5)
    assert engine.batches == [4, 4, 4]


def test_answer_load_passes_a_failed_batch_on() -> None:
    with pytest.raises(RuntimeError, match="out of memory"):
        suite.answer_load(FakeEngine(fail=True), [1, 2], concurrency=2, max_batch_size=2)
