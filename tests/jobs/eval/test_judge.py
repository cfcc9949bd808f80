"""The ActivityNet-QA judge: reading replies, and the client against a real local HTTP server
that speaks the chat-completions protocol (mechanics only: requests, retries, parsing,
aggregation; no model's judgement). The whole open-ended path through `tokenreel eval` too."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from jobs.eval.judge import (
    JUDGE_SYSTEM_PROMPT,
    Judge,
    JudgeError,
    Judgement,
    JudgeSettings,
    judge_messages,
    parse_judgement,
)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("{'pred': 'yes', 'score': 4}", (True, 4, True)),
        ('{"pred": "no", "score": 1}', (False, 1, True)),
        ("```python\n{'pred': 'yes', 'score': 5}\n```", (True, 5, True)),
        ("```\n{'pred': 'no', 'score': 0}\n```", (False, 0, True)),
        ("Sure! {'pred': 'Yes.', 'score': 4.8} hope that helps", (True, 4, True)),  # int(4.8)
        ("{'pred': 'no', 'score': '3'}", (False, 3, True)),
        ('{"pred": true, "score": 2}', (True, 2, True)),
        ("pred: yes, score: 3", (True, 3, True)),  # no braces: the fields anywhere
        ("{'pred': 'yes'}", (False, 0, False)),  # missing score
        ("{'score': 4}", (False, 0, False)),  # missing pred
        ("{'pred': 'yes', 'score': 7}", (False, 0, False)),  # outside 0..5
        ("{'pred': 'maybe', 'score': 2}", (False, 0, False)),
        ("The answer matches well.", (False, 0, False)),
        ("", (False, 0, False)),
        ("{'pred': 'yes', 'score': 4", (True, 4, True)),  # cut off before its brace
        ("{not a dict} at all", (False, 0, False)),
    ],
)
def test_parse_judgement(reply: str, expected: tuple[bool, int, bool]) -> None:
    judgement = parse_judgement(reply)
    assert (judgement.correct, judgement.score, judgement.parsed) == expected
    assert judgement.reply == reply


def test_judge_messages_hold_the_question_the_reference_and_the_prediction() -> None:
    system, user = judge_messages("what is he doing", "running", "He runs.")
    assert system == {"role": "system", "content": JUDGE_SYSTEM_PROMPT}
    assert user["role"] == "user"
    assert (
        "Question: what is he doing\nCorrect Answer: running\nPredicted Answer: He runs.\n\n"
        in (user["content"])
    )
    assert user["content"].endswith("{'pred': 'yes', 'score': 4.8}.")


def test_settings_are_checked_and_the_endpoint_completed() -> None:
    assert JudgeSettings(url="http://h:1/v1/").endpoint == "http://h:1/v1/chat/completions"
    assert JudgeSettings(url="http://h/x/chat/completions").endpoint.endswith("x/chat/completions")
    for bad in ({"url": "ftp://x"}, {"concurrency": 0}, {"max_attempts": 0}, {"model": ""}):
        with pytest.raises(ValueError):
            JudgeSettings(**bad)
    assert "h:1" not in json.dumps(JudgeSettings(url="http://h:1/v1").identity())


# -- a local chat-completions server ---------------------------------------------------------------
class FakeJudgeServer:
    """A chat-completions endpoint on 127.0.0.1. `reply(request_body, attempt)` gives the status
    and the message content for each request (attempt: 1 for the first request carrying the same
    messages, 2 for its retry ...); `requests` records (headers, body) of every request."""

    def __init__(self, reply: Callable[[dict, int], tuple[int, str]]) -> None:
        self.reply = reply
        self.requests: list[tuple[dict, dict]] = []
        self._attempts: dict[str, int] = {}
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.requests.append((dict(self.headers), body))
                    key = json.dumps(body["messages"])
                    server._attempts[key] = server._attempts.get(key, 0) + 1
                    attempt = server._attempts[key]
                status, content = server.reply(body, attempt)
                if self.path != "/v1/chat/completions":
                    status, content = 404, "no such path"
                if status == 200:
                    payload = {
                        "id": "x",
                        "object": "chat.completion",
                        "model": body["model"],
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": content},
                                "finish_reason": "stop",
                            }
                        ],
                    }
                    data = json.dumps(payload).encode()
                else:
                    data = json.dumps({"error": {"message": content}}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _question(body: dict) -> str:
    user = body["messages"][1]["content"]
    return user.split("Question: ", 1)[1].split("\n", 1)[0]


@pytest.fixture
def judge_server() -> Iterator[Callable[..., FakeJudgeServer]]:
    servers: list[FakeJudgeServer] = []

    def start(reply: Callable[[dict, int], tuple[int, str]]) -> FakeJudgeServer:
        servers.append(FakeJudgeServer(reply))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _settings(url: str, **kwargs: object) -> JudgeSettings:
    return JudgeSettings(
        url=url, model="judge-x", key_env="TEST_JUDGE_KEY", backoff_s=0.01, **kwargs
    )


def test_judge_many_sends_the_prompt_retries_and_parses(judge_server, monkeypatch) -> None:
    monkeypatch.setenv("TEST_JUDGE_KEY", "sk-test-123")
    replies = {
        "q1": "{'pred': 'yes', 'score': 4}",
        "q2": "```python\n{'pred': 'no', 'score': 1}\n```",
        "q3": "I cannot judge this.",
        "q4": "{'pred': 'yes', 'score': 5}",
    }

    def reply(body: dict, attempt: int) -> tuple[int, str]:
        question = _question(body)
        if question == "q4" and attempt == 1:
            return 503, "overloaded"  # retried
        if question == "q3" and attempt == 1:
            return 429, "slow down"  # retried after Retry-After
        return 200, replies[question]

    server = judge_server(reply)
    results: dict[str, Judgement] = {}
    with Judge(_settings(server.url, concurrency=2)) as judge:
        requests = [(q, q, f"ref {q}", f"pred {q}") for q in replies]
        judge.judge_many(requests, lambda key, verdict: results.__setitem__(key, verdict))
    assert {q: (j.correct, j.score, j.parsed) for q, j in results.items()} == {
        "q1": (True, 4, True),
        "q2": (False, 1, True),
        "q3": (False, 0, False),
        "q4": (True, 5, True),
    }
    assert len(server.requests) == 6  # q3 and q4 twice
    for headers, body in server.requests:
        assert headers["Authorization"] == "Bearer sk-test-123"
        assert (body["model"], body["temperature"], body["max_tokens"]) == ("judge-x", 0.0, 64)
        q = _question(body)
        assert body["messages"] == judge_messages(q, f"ref {q}", f"pred {q}")


def test_judge_gives_up_after_its_attempts_and_stops_at_client_errors(
    judge_server, monkeypatch
) -> None:
    monkeypatch.setenv("TEST_JUDGE_KEY", "sk-secret-456")
    down = judge_server(lambda body, attempt: (500, "down"))
    with Judge(_settings(down.url, max_attempts=3)) as judge, pytest.raises(JudgeError) as error:
        judge.judge("q", "a", "p")
    assert len(down.requests) == 3 and "3 attempts (HTTP 500)" in str(error.value)

    # a 401 is not retried, and the key never shows in the error, even when echoed back
    refused = judge_server(lambda body, attempt: (401, "bad key sk-secret-456"))
    with Judge(_settings(refused.url)) as judge, pytest.raises(JudgeError) as error:
        judge.judge("q", "a", "p")
    assert len(refused.requests) == 1
    assert "HTTP 401" in str(error.value) and "sk-secret-456" not in str(error.value)

    # no key in the environment: no Authorization header at all
    monkeypatch.delenv("TEST_JUDGE_KEY")
    fine = judge_server(lambda body, attempt: (200, "{'pred': 'no', 'score': 2}"))
    with Judge(_settings(fine.url)) as judge:
        assert judge.judge("q", "a", "p") == Judgement(False, 2, True, "{'pred': 'no', 'score': 2}")
    assert "Authorization" not in fine.requests[0][0]


def test_judge_many_delivers_what_it_judged_before_an_error(judge_server) -> None:
    def reply(body: dict, attempt: int) -> tuple[int, str]:
        return (404, "gone") if _question(body) == "bad" else (200, "{'pred':'yes','score':3}")

    server = judge_server(reply)
    got: list[str] = []
    with Judge(_settings(server.url, concurrency=1)) as judge, pytest.raises(JudgeError):
        judge.judge_many(
            [("a", "a", "r", "p"), ("bad", "bad", "r", "p"), ("c", "c", "r", "p")],
            lambda key, verdict: got.append(key),
        )
    assert "a" in got and "bad" not in got


# -- ActivityNet-QA through `tokenreel eval` ---------------------------------------------------
AQA_QUESTIONS = [  # (video, question id, question, answer, type)
    ("red", "v_red_0", "what colour is the screen", "red", 4),
    ("red", "v_red_1", "is the screen red", "yes", 3),
    ("blue", "v_blue_0", "what colour is shown", "blue", 4),
]
AQA_REPLIES = {  # the fake judge's reply to each question: parsed, fenced, garbage
    "what colour is the screen": "{'pred': 'yes', 'score': 4}",
    "is the screen red": "```python\n{'pred': 'no', 'score': 1}\n```",
    "what colour is shown": "no idea",
}


def _activitynetqa(root: Path) -> Path:
    """lmms-eval's ActivityNet-QA layout: Parquet records, videos all_test/v_<name>.mp4."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tokenreel.sample_videos import write_video

    (root / "all_test").mkdir(parents=True)
    colours = {"red": (220, 30, 30), "blue": (30, 40, 220)}
    for name, rgb in colours.items():
        write_video(root / "all_test" / f"v_{name}.mp4", np.full((8, 64, 64, 3), rgb, np.uint8))
    rows = [
        {"video_name": v, "question_id": q, "question": text, "answer": a, "type": t}
        for v, q, text, a, t in AQA_QUESTIONS
    ]
    (root / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), root / "data" / "test-00000-of-00001.parquet")
    return root


@pytest.mark.slow
def test_activitynetqa_is_judged_through_the_eval_command(
    tmp_path, judge_server, monkeypatch, capsys
) -> None:
    from tokenreel.cli import main

    monkeypatch.setenv("TEST_JUDGE_KEY", "sk-eval-789")
    healthy = {"up": False}

    def reply(body: dict, attempt: int) -> tuple[int, str]:
        return (200, AQA_REPLIES[_question(body)]) if healthy["up"] else (403, "not yet")

    server = judge_server(reply)
    _activitynetqa(tmp_path / "data" / "ActivityNet-QA")
    out = tmp_path / "report"
    argv = [
        "eval",
        str(tmp_path / "data"),
        "--methods",
        "full,ours",
        "--ratios",
        "0.5",
        "--frames",
        "8",
        "--max-new-tokens",
        "3",
        "--model",
        "tiny-llava-ov",
        "--store",
        str(tmp_path / "store"),
        "--out",
        str(out),
        "--judge-url",
        server.url,
        "--judge-model",
        "judge-x",
        "--judge-key-env",
        "TEST_JUDGE_KEY",
        "--judge-attempts",
        "2",
    ]

    # The judge refuses: the answers are kept, the run stops with exit status 3.
    assert main(argv) == 3
    assert "rerun to continue judging" in capsys.readouterr().err
    answers = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(answers) == 1 + 2 * 3  # header + 2 rows x 3 questions

    # It is back: the rerun asks the model nothing and judges every answer.
    healthy["up"] = True
    server.requests.clear()
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert "0 answers made now, 6 resumed" in printed.err and "6 answers judged now" in printed.err
    by_question = {r["question_id"]: r for r in answers[1:] if r["row"] == "ours@0.5"}
    sent = sorted((_question(body), body["messages"][1]["content"]) for _, body in server.requests)
    assert len(sent) == 6
    for question_id, question, reference in [(q, text, a) for _, q, text, a, _ in AQA_QUESTIONS]:
        prediction = by_question[question_id]["response"]
        assert (
            question,
            judge_messages(question, reference, prediction)[1]["content"],
        ) in sent  # the raw question, the reference, the model's answer

    # Accuracy = 1 yes of 3 (the garbage reply counts as no), Score = (4 + 1 + 0) / 3.
    table = printed.out.splitlines()
    assert table[0].split("\t")[:4] == [
        "Method",
        "Retention Ratio",
        "ActivityNet-QA Accuracy",
        "ActivityNet-QA Score",
    ]
    for line in table[1:3]:
        cells = line.split("\t")
        assert cells[2:5] == ["33.3", "1.67", "33.3"]  # Avg. is over the accuracies only
    report = (out / "report.md").read_text()
    assert "unparsed judge replies (counted as 'no', 0): 2" in report  # one per row
    tasks = (out / "tasks.csv").read_text().splitlines()
    assert "Vanilla,100%,ActivityNet-QA,type 3,1,0,0,0.0,1.00" in tasks

    # Judged once: a third run sends nothing and writes the same report.
    server.requests.clear()
    assert main(argv) == 0
    assert server.requests == [] and (out / "report.md").read_text() == report
    # another judge model is another run of the judge: refused, nothing mixed
    assert main(["judge-y" if arg == "judge-x" else arg for arg in argv]) == 2
    assert "judgements.jsonl holds a run with other settings" in capsys.readouterr().err


def test_the_readme_shows_the_judge_prompt_the_code_sends() -> None:
    import re

    from jobs.eval.judge import JUDGE_USER_PROMPT

    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text(encoding="utf-8")
    system, user = re.findall(r"```text\n(.*?)\n```", readme, flags=re.DOTALL)[:2]
    assert system == JUDGE_SYSTEM_PROMPT
    assert user == JUDGE_USER_PROMPT.replace("{{", "{").replace("}}", "}")
