"""The translate stage when requests fail: an endpoint that is not there fails the stage at once
(and says which and why), a few failed requests do not, and the next run retries what failed."""

from __future__ import annotations

import json
import socket
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from support.chat_server import ChatServer
from support.loopback import LoopbackHTTPServer
from support.translate_fixtures import API_KEY, KEY_ENV, make_recipe, read_jsonl, record, write_records

from pipelines.core.errors import StepFailed
from pipelines.steps.translate import run_translate
from llm.config import scrub_url

WORDS = [f"w{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(80)]  # a unique word per caption


def captions(n: int, marked_from: int = 10**9, mark: str = "zzq") -> list:
    """`n` one-segment caption records; those from `marked_from` on carry `mark`, to aim faults at."""
    return [record("coco", i, "caption", ("assistant", f"A red car near the {WORDS[i]} street"
                                           + (f" by the {mark}." if i >= marked_from else ".")))
            for i in range(n)]


def recipe_for(tmp_path: Path, base_url: str, **extra):
    settings = {"batch_segments": 4, "concurrency": 2, "max_retries": 2, "backoff_base_s": 0.01,
                "backoff_max_s": 0.05, "timeout_s": 5.0, **extra}
    return make_recipe(tmp_path, backend="openai", base_url=base_url, api_key_env=KEY_ENV, model="test-model",
                       **settings)


class _Always(BaseHTTPRequestHandler):
    """An endpoint that answers every request with the same error (`status`, `error`)."""

    protocol_version = "HTTP/1.1"
    status, error, requests = 503, {"message": "no healthy upstream", "type": "server_error"}, 0

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        type(self).requests += 1
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = json.dumps({"error": self.error}).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def always(status: int, error: dict) -> Iterator[tuple[str, type[_Always]]]:
    """(base_url, handler class: `.requests` so far) of a loopback endpoint answering only `status`."""
    handler = type("Always", (_Always,), {"status": status, "error": error, "requests": 0})
    httpd = LoopbackHTTPServer(handler)
    httpd.start()
    try:
        yield httpd.origin + "/v1", handler
    finally:
        httpd.stop()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on leaving: connections are refused


@pytest.fixture
def down(request, monkeypatch) -> Iterator[tuple[str, str, Callable[[], int] | None]]:
    """(base_url, cause, requests seen so far) of an endpoint that never answers."""
    monkeypatch.setenv(KEY_ENV, API_KEY)
    if request.param == "refused":
        yield f"http://127.0.0.1:{_closed_port()}/v1", "connection_error", None
    elif request.param == "dropped":
        with ChatServer(api_key=API_KEY) as srv:
            srv.add_fault("disconnect", times=None)  # accepts, reads, closes: no HTTP answer
            yield srv.base_url, "connection_error", lambda: srv.stats.requests
    else:  # a gateway whose model server is down
        with always(503, {"message": "no healthy upstream", "type": "server_error"}) as (url, handler):
            yield url, "http_503", lambda: handler.requests


@pytest.mark.parametrize("down", ["refused", "dropped", "gateway_503"], indirect=True)
def test_an_unreachable_endpoint_fails_the_stage_at_once_and_the_next_run_sends_everything(down, tmp_path):
    base_url, cause, seen = down
    in_dir, out_dir = tmp_path / "download", tmp_path / "translate"
    write_records(in_dir, "coco", captions(40))  # 10 requests of 4, in 5 windows of 2

    with pytest.raises(StepFailed) as err:
        run_translate(recipe_for(tmp_path, base_url, window_records=8), in_dir, out_dir)

    message = str(err.value)
    assert message.startswith("translate: endpoint " + base_url) and "is unreachable" in message
    assert f"({cause}: gave up after 3 attempts" in message and "no request of this run got an answer" in message
    assert "run the same command again" in message
    if seen is not None:  # fail fast: the requests of the 2 windows in flight, 3 attempts each; not 10 x 3
        assert seen() <= 4 * 3
    assert not (out_dir / "_SUCCESS").exists()

    with ChatServer(api_key=API_KEY) as healthy:  # the endpoint is back (here: at another address)
        stats = run_translate(recipe_for(tmp_path, healthy.base_url), in_dir, out_dir)
        assert healthy.stats.segments == 40
    assert stats.kept == 40 and stats.rejected_total == 0 and (out_dir / "_SUCCESS").is_file()


@pytest.mark.parametrize("status, error, says", [
    (429, {"message": "You exceeded your current quota, please check your plan and billing details.",
           "type": "insufficient_quota", "code": "insufficient_quota"},
     rf"HTTP 429 insufficient_quota .*\${KEY_ENV} has no quota left"),
    (404, {"message": "The model `test-model` does not exist.", "type": "invalid_request_error",
           "code": "model_not_found"},
     rf"HTTP 404 for model 'test-model': .* does not exist.*Check translator.base_url, translator.model"),
])
def test_an_answer_no_retry_can_change_fails_the_stage_after_one_request(status, error, says, monkeypatch, tmp_path):
    """A 404 (unknown model) or OpenAI's 429 `insufficient_quota` (not a rate limit): no retries, no
    second request, and the stage fails naming the endpoint."""
    monkeypatch.setenv(KEY_ENV, API_KEY)
    write_records(tmp_path / "download", "coco", captions(40))
    with always(status, error) as (url, handler):
        with pytest.raises(StepFailed, match=rf"^translate: {url}: {says}"):
            run_translate(recipe_for(tmp_path, url, concurrency=1), tmp_path / "download", tmp_path / "translate")
        assert handler.requests == 1
    assert not (tmp_path / "translate" / "_SUCCESS").exists()


def test_messages_name_the_endpoint_without_credentials():
    assert scrub_url("https://user:pw@llm.example:8000/v1?api_key=x#frag") == "https://llm.example:8000/v1"


def test_an_endpoint_that_stops_answering_keeps_what_it_answered_and_fails_the_stage(monkeypatch, tmp_path):
    monkeypatch.setenv(KEY_ENV, API_KEY)
    in_dir, out_dir = tmp_path / "download", tmp_path / "translate"
    write_records(in_dir, "coco", captions(80, marked_from=24))  # 6 requests answered, then 14 that are not
    with ChatServer(api_key=API_KEY) as srv:
        recipe = recipe_for(tmp_path, srv.base_url, concurrency=1, max_retries=1, window_records=8)
        srv.add_fault("disconnect", match="zzq", times=None)

        with pytest.raises(StepFailed, match=r"it stopped answering: the last 3 requests got none, after 6 that did "
                                              r"\(connection_error: gave up after 2 attempts"):
            run_translate(recipe, in_dir, out_dir)

        assert srv.stats.ok == 6
        # fail fast: at most the dead requests of the windows in flight (2 batches each) and of the one
        # before, 2 attempts each; not all 14
        assert srv.stats.requests <= 6 + 6 * 2
        assert not (out_dir / "_SUCCESS").exists()
        db = sqlite3.connect(tmp_path / "tm.sqlite")
        assert db.execute("SELECT COUNT(*) FROM tm WHERE qa_ok = 1").fetchone()[0] == 24, "the answers are kept"
        db.close()

        srv.clear_faults()
        stats = run_translate(recipe, in_dir, out_dir)
        assert srv.stats.segments == 24 + 56, "the rerun sends only what got no answer"
    assert stats.kept == 80 and stats.rejected_total == 0


def test_failed_requests_among_answered_ones_are_rejections_retried_by_the_next_run(monkeypatch, tmp_path):
    """A request that fails for good (a 500, or even a dropped connection once others were answered)
    rejects its records and the stage completes; `_SUCCESS` says how many to retry, and its
    `output_digest` changes only when a retry changed the output."""
    monkeypatch.setenv(KEY_ENV, API_KEY)
    in_dir, out_dir = tmp_path / "download", tmp_path / "translate"
    data = captions(24)
    write_records(in_dir, "coco", data)
    with ChatServer(api_key=API_KEY) as srv:
        recipe = recipe_for(tmp_path, srv.base_url, concurrency=1, max_retries=0)
        srv.add_fault("server_error", match=WORDS[9], times=None)  # request 3 (records 8-11)
        srv.add_fault("disconnect", match=WORDS[21], times=None)  # request 6, the last (records 20-23)

        stats = run_translate(recipe, in_dir, out_dir)
        done = json.loads((out_dir / "_SUCCESS").read_text())
        assert dict(stats.rejected) == {"http_500": 4, "connection_error": 4} and done["retry_pending"] == 8
        assert stats.extra["requests_answered"] == 4
        assert stats.extra["requests_failed_http_500"] == stats.extra["requests_failed_connection_error"] == 1
        rejected = read_jsonl(out_dir / "rejected" / "translate.jsonl")
        assert sorted(r["id"] for r in rejected) == sorted(r.id for r in data[8:12] + data[20:24])

        sent, requests = srv.stats.segments, srv.stats.requests
        again = run_translate(recipe, in_dir, out_dir)  # the faults persist: nothing heals
        assert srv.stats.requests == requests + 2 and srv.stats.segments == sent, "only the 2 failed requests"
        assert json.loads((out_dir / "_SUCCESS").read_text())["output_digest"] == done["output_digest"]
        assert again.kept == 16 and again.extra["memory_hits"] == 16

        srv.clear_faults()
        healed = run_translate(recipe, in_dir, out_dir)
        assert srv.stats.segments == sent + 8
    after = json.loads((out_dir / "_SUCCESS").read_text())
    assert healed.kept == 24 and after["retry_pending"] == 0 and after["output_digest"] != done["output_digest"]


@pytest.mark.xdist_group("prefect")
def test_vcla_translate_exits_1_for_an_unreachable_endpoint_and_later_runs_retry_what_failed(
    prefect_server, monkeypatch, tmp_path, capfd
):
    """Through the command line and the Prefect flow: exit 1 naming the endpoint while it is down,
    no completion markers; once it is back each `vcla translate` sends only what is still missing."""
    from pipelines.cli.main import main

    monkeypatch.setenv(KEY_ENV, API_KEY)
    run_dir = tmp_path / "run"
    write_records(run_dir / "generate", "coco", captions(12))  # 3 requests of 4
    out_dir = run_dir / "translate"
    with ChatServer(api_key=API_KEY) as srv:
        sets = ["translator.backend=openai", f"translator.base_url={srv.base_url}", f"translator.api_key_env={KEY_ENV}",
                "translator.model=test-model", "translator.memory_import=[]", "translator.batch_segments=4",
                "translator.max_retries=1", "translator.backoff_base_s=0.01", "translator.concurrency=1"]
        command = ["translate", "--recipe", "demo", "--run-dir", str(run_dir)] + [a for s in sets for a in ("--set", s)]

        srv.add_fault("disconnect", times=None)
        assert main(command) == 1
        err = capfd.readouterr().err
        assert f"vcla translate: translate: endpoint {srv.base_url} (model 'test-model') is unreachable" in err
        assert "(connection_error: gave up after 2 attempts" in err
        assert not (out_dir / "_SUCCESS").exists()

        srv.clear_faults()
        srv.add_fault("server_error", match=WORDS[5], times=None)  # the endpoint is back, but fails one request
        assert main(command) == 0
        assert srv.stats.segments == 8 and json.loads((out_dir / "_SUCCESS").read_text())["retry_pending"] == 4
        assert json.loads((out_dir / "_SUCCESS").read_text())["flow"]["summary"]["rejected"] == {"http_500": 4}

        srv.clear_faults()
        assert main(command) == 0  # not a cache hit: the 4 records are retried
        assert srv.stats.segments == 12 and json.loads((out_dir / "_SUCCESS").read_text())["flow"]["retry_pending"] == 0
        assert len(read_jsonl(out_dir / "records" / "coco.jsonl")) == 12

        requests, marked = srv.stats.requests, (out_dir / "_SUCCESS").stat().st_mtime_ns
        assert main(command) == 0  # now it is: the task body (which would rewrite the marker) does not run
        assert srv.stats.requests == requests and (out_dir / "_SUCCESS").stat().st_mtime_ns == marked


def _done(out_dir: Path) -> dict:
    return json.loads((out_dir / "_SUCCESS").read_text())


def test_a_qa_failure_keeps_the_stage_pending_for_max_qa_reruns_only(monkeypatch, tmp_path):
    """A segment the model always answers in English fails QA on every run: it keeps the stage pending
    for MAX_QA_RERUNS reruns, then no longer (it stays rejected) and the stage is complete."""
    from pipelines.steps.translate import MAX_QA_RERUNS

    assert MAX_QA_RERUNS == 2
    monkeypatch.setenv(KEY_ENV, API_KEY)
    in_dir, out_dir = tmp_path / "download", tmp_path / "translate"
    data = captions(12, marked_from=11)  # 3 requests of 4; record 11 carries the mark
    write_records(in_dir, "coco", data)
    with ChatServer(api_key=API_KEY) as srv:
        recipe = recipe_for(tmp_path, srv.base_url, concurrency=1, max_retries=0)
        srv.add_fault("english_echo", match="zzq", times=None)

        seen = []
        for _ in range(3):
            segments = srv.stats.segments
            stats = run_translate(recipe, in_dir, out_dir)
            seen.append((dict(stats.rejected), _done(out_dir)["retry_pending"], _done(out_dir)["qa_reruns"]))
            assert srv.stats.segments - segments == (12 if not seen[:-1] else 1) + 1  # + its strict retry
        assert seen == [({"untranslated": 1}, 1, 0), ({"untranslated": 1}, 1, 1), ({"untranslated": 1}, 0, 2)]
        assert [r["id"] for r in read_jsonl(out_dir / "rejected" / "translate.jsonl")] == [data[11].id]

        requests = srv.stats.requests
        assert run_translate(recipe, in_dir, out_dir).to_dict() == stats.to_dict()  # complete: nothing sent
        assert srv.stats.requests == requests


def test_a_failed_request_keeps_the_stage_pending_after_the_qa_cap(monkeypatch, tmp_path):
    """The same QA failure, and a request (records 0-3) that fails on every run: once the QA failure no
    longer counts, the failed request still keeps the stage pending, until it is answered."""
    monkeypatch.setenv(KEY_ENV, API_KEY)
    in_dir, out_dir = tmp_path / "download", tmp_path / "translate"
    write_records(in_dir, "coco", captions(12, marked_from=11))
    with ChatServer(api_key=API_KEY) as srv:
        recipe = recipe_for(tmp_path, srv.base_url, concurrency=1, max_retries=0)
        srv.add_fault("english_echo", match="zzq", times=None)
        srv.add_fault("server_error", match=WORDS[2], times=None)

        seen = []
        for run in range(5):
            if run == 4:
                srv.clear_faults()  # the endpoint answers the request now; record 11 still comes back in English
                srv.add_fault("english_echo", match="zzq", times=None)
            stats = run_translate(recipe, in_dir, out_dir)
            seen.append((_done(out_dir)["retry_pending"], _done(out_dir)["qa_reruns"]))
            assert dict(stats.rejected) == ({"untranslated": 1, "http_500": 4} if run < 4 else {"untranslated": 1})
        assert seen == [(5, 0), (5, 1), (4, 2), (4, 3), (0, 4)]
        assert stats.kept == 11

        requests = srv.stats.requests
        run_translate(recipe, in_dir, out_dir)
        assert srv.stats.requests == requests


def test_reruns_for_failed_requests_alone_do_not_use_up_the_qa_reruns(monkeypatch, tmp_path):
    """Two runs whose only failures are requests (a 500), then that batch is answered but one of its
    segments fails QA: it still gets MAX_QA_RERUNS reruns (the QA count starts when QA first fails)."""
    monkeypatch.setenv(KEY_ENV, API_KEY)
    in_dir, out_dir = tmp_path / "download", tmp_path / "translate"
    write_records(in_dir, "coco", captions(12, marked_from=11))
    with ChatServer(api_key=API_KEY) as srv:
        recipe = recipe_for(tmp_path, srv.base_url, concurrency=1, max_retries=0)
        srv.add_fault("server_error", match="zzq", times=None)  # the request of records 8-11

        seen = []
        for run in range(5):
            if run == 2:  # the endpoint answers that request now, but record 11 in English
                srv.clear_faults()
                srv.add_fault("english_echo", match="zzq", times=None)
            stats = run_translate(recipe, in_dir, out_dir)
            seen.append((dict(stats.rejected), _done(out_dir)["retry_pending"]))
    assert seen == [({"http_500": 4}, 4), ({"http_500": 4}, 4),
                    ({"untranslated": 1}, 1), ({"untranslated": 1}, 1), ({"untranslated": 1}, 0)]


@pytest.mark.parametrize("qa_reruns, pending", [(0, 1 + 1 + 1 + 2 + 1), (2, 1 + 1 + 1)])
def test_which_rejections_keep_the_stage_pending(qa_reruns, pending):
    """No answer (a timeout, a 429, a 503) always; an answer that will come back the same (failed QA, a 400
    for this segment) until the QA cap; a bad record never."""
    from pipelines.steps.translate import _retry_pending

    rejected = {"timeout": 1, "http_429": 1, "http_503": 1, "http_400": 2, "untranslated": 1, "bad_record": 3}
    assert _retry_pending(rejected, qa_reruns) == pending


# requests over the endpoint's context length ------------------------------------------------

def _translate_direct(server: ChatServer, tmp_path: Path, units: list[list[str]], **extra) -> tuple[list, dict]:
    import asyncio

    from translators.config import TranslatorConfig
    from translators.memory import TranslationMemory
    from translators.openai_backend import OpenAITranslator
    from translators.protocol import Segment

    cfg = TranslatorConfig(backend="openai", base_url=server.base_url, api_key_env=KEY_ENV, model="test-model",
                           memory_path=str(tmp_path / "tm.sqlite"), backoff_base_s=0.01, timeout_s=5.0,
                           max_retries=1, **extra)

    async def go() -> tuple[list, dict]:
        with TranslationMemory(cfg.memory_path) as memory:
            translator = OpenAITranslator(cfg, memory)
            try:
                return await translator.translate([[Segment(t) for t in u] for u in units]), translator.report()
            finally:
                await translator.aclose()

    return asyncio.run(go())


@pytest.mark.parametrize("style", ["openai", "vllm", "413"])
def test_a_batch_over_the_context_length_is_split_until_it_fits(style, monkeypatch, tmp_path):
    """400 `context_length_exceeded` (OpenAI), 400 "maximum context length" (vLLM) or 413: the
    batch is sent again in halves, down to what fits; nothing is rejected, nothing retried as is."""
    monkeypatch.setenv(KEY_ENV, API_KEY)
    units = [[f"A red car near the {w} street."] for w in WORDS[:6]] + [[f"What is the {w}?", f"A cat by the {w}."]
                                                                           for w in WORDS[6:8]]
    with ChatServer(api_key=API_KEY, max_segments=3, context_error=style) as srv:  # type: ignore[arg-type]
        results, _ = _translate_direct(srv, tmp_path, units, batch_segments=16, concurrency=2)
        over = sum(1 for s, n in srv.stats.statuses.items() if s in (400, 413) for _ in range(n))
    assert all(r.ok for unit in results for r in unit), [r.verdict for unit in results for r in unit]
    assert srv.stats.segments == 10, "every segment translated once, in requests that fit"
    assert over >= 1 and srv.stats.ok >= 4


def test_a_single_segment_over_the_context_length_is_rejected_as_too_long(monkeypatch, tmp_path):
    monkeypatch.setenv(KEY_ENV, API_KEY)
    units = [[f"A red car near the {w} street."] for w in WORDS[:4]]
    with ChatServer(api_key=API_KEY, max_segments=0) as srv:
        results, _ = _translate_direct(srv, tmp_path, units, batch_segments=4, concurrency=1)
    verdicts = [unit[0].verdict for unit in results]
    assert all(v.reasons == ("too_long",) for v in verdicts), verdicts
    assert all("one segment of" in v.detail and "context length" in v.detail for v in verdicts), verdicts
    assert srv.stats.requests == 1 + 2 + 4, "halved down to single segments, each sent once, no retries"
