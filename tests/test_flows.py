"""build-and-train as Prefect flows on a real (test) Prefect server, on a tiny demo."""

import json
from pathlib import Path

import pytest

from pipelines.orchestration.flows import build_and_train
from pipelines.orchestration.registry import PIPELINE

pytestmark = pytest.mark.xdist_group("prefect")

TINY = ["demo.num_images=40", "stages.stage1.max_steps=2", "stages.stage2.max_steps=3",
        "stages.stage1.batch_size=4", "stages.stage2.batch_size=4"]


def task_states(flow_run_id) -> dict[str, str]:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    async def read():
        async with get_client() as client:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=100)
            return {r.name: r.state.name for r in runs}

    import asyncio
    return asyncio.run(read())


def run(run_dir: Path, extra: list[str] = ()):
    state = build_and_train(recipe="recipes/demo.yaml", overrides=TINY + list(extra), run_dir=str(run_dir),
                            return_state=True)
    assert state.is_completed(), state
    return state.state_details.flow_run_id, state.result()


@pytest.fixture(scope="module")
def finished_run(prefect_server, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("flows") / "run"
    flow_run_id, summary = run(run_dir)
    return run_dir, flow_run_id, summary


def test_summary_covers_every_step(finished_run):
    run_dir, _, summary = finished_run
    written = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    assert set(written["stages"]) == set(PIPELINE)
    heldout = (run_dir / "demo-data" / "heldout" / "eval_zh.jsonl").read_text(encoding="utf-8").splitlines()
    assert written["eval"]["n"] == len(heldout)
    assert 0.0 <= written["eval"]["accuracy"] <= 1.0
    assert isinstance(written["eval"]["chat"]["answer"], str)
    download = written["stages"]["download"]
    assert download["read"] == download["kept"] + sum(download["rejected"].values())
    assert written["stages"]["train"]["stage1"]["steps"] == 2 and written["stages"]["train"]["stage2"]["steps"] == 3
    assert written["stages"]["publish"]["skipped"]
    suites = written["eval"]["suites"]  # each on the stages that fit it: captions after stage 1, the rest after 2
    assert {name: sorted(cells) for name, cells in suites.items()} == {
        "captions": ["stage1"], "choice": ["stage2"], "colour": ["stage2"], "describe": ["stage2"]}
    assert suites["captions"]["stage1"]["metric"] == "cider_d" and 0 <= suites["choice"]["stage2"]["value"] <= 1
    # in the loop: stage 1 was evaluated as soon as it had trained, before stage 2 trained
    after = json.loads((run_dir / "eval" / "after-stage1.json").read_text(encoding="utf-8"))
    assert [(r["suite"], r["stage"]) for r in after["suites"]] == [("captions", "stage1")]
    assert "cider_d" in after["suites"][0]["metrics"]
    assert (run_dir / "eval" / "after-stage1.json").stat().st_mtime < (run_dir / "train" / "stage2" / "stage.json").stat().st_mtime
    report = (run_dir / "eval" / "report.md").read_text(encoding="utf-8")
    assert all(f"## {name} " in report for name in suites) and (run_dir / "eval" / "stages.png").stat().st_size > 1000
    assert any((run_dir / "eval" / "tb").glob("events.out.tfevents.*"))
    assert "correct" in written["eval"]["chat"]  # the description shown is checked against the scene
    card = (run_dir / "render" / "README.md").read_text(encoding="utf-8")
    curated = json.loads((run_dir / "curate" / "stats.json").read_text())
    assert "## Curation" in card and f"kept {curated['kept']}" in card  # the card carries curate's counts
    for step in ("download", "curate", "generate", "translate", "render", "train", "eval"):
        assert json.loads((run_dir / step / "_SUCCESS").read_text())["flow"]["fingerprint"]


def test_a_suite_that_cannot_run_is_reported_and_fails_the_step_only_when_required(finished_run):
    from pipelines.core.errors import StepFailed
    from pipelines.recipe import load_recipe
    from pipelines.steps.evaluate import STEP

    run_dir, _, _ = finished_run
    missing = ["eval.suites={gone: {kind: vqa, path: /nonexistent/eval.jsonl}}", "eval.split=null"]
    out = STEP.run(load_recipe("recipes/demo.yaml", TINY + missing, run_dir), STEP.make_options())
    assert out["suites"]["gone"]["stage2"] == {"error": "eval.suites.gone.path: file not found: /nonexistent/eval.jsonl"}
    with pytest.raises(StepFailed, match="required"):
        STEP.run(load_recipe("recipes/demo.yaml", TINY + missing + ["eval.suites.gone.required=true"], run_dir),
                 STEP.make_options())


def test_a_judge_suite_scores_our_answers_against_references_through_the_client_layer(finished_run, monkeypatch):
    from support.judge_server import JudgeServer

    from pipelines.recipe import load_recipe
    from pipelines.steps.evaluate import STEP

    run_dir, _, _ = finished_run
    rows = [json.loads(x) for x in (run_dir / "demo-data" / "heldout" / "describe_zh.jsonl").read_text().splitlines()]
    split = run_dir / "judge.jsonl"
    corpus = run_dir / "demo-data"
    split.write_text("".join(json.dumps({"image": str(corpus / r["image"]), "question": r["question"], "category": "detail",
                                         "reference": "、".join(c + "的" + k for c, k in r["shapes"]),
                                         "context": ""}, ensure_ascii=False) + "\n" for r in rows[:3]))
    monkeypatch.setenv("VCLA_TEST_JUDGE_KEY", "sk-judge-test")
    with JudgeServer(api_key="sk-judge-test") as server:
        sets = [f"eval.suites={{judged: {{kind: judge, path: {split}}}}}", "eval.split=null",
                f"eval.judge={{base_url: {server.base_url}, model: judge, api_key_env: VCLA_TEST_JUDGE_KEY, "
                f"cache_path: {run_dir / 'judge-cache.sqlite'}}}"]
        out = STEP.run(load_recipe("recipes/demo.yaml", TINY + sets, run_dir), STEP.make_options())
        assert server.stats.requests == 3
    cell = out["suites"]["judged"]["stage2"]
    assert cell["metric"] == "relative" and 0 < cell["value"] <= 125
    report = json.loads((run_dir / "eval" / "suites.json").read_text())[0]["metrics"]
    assert report["categories"]["detail"]["n"] == 3 and report["overall"]["reference_mean"] == 8


def test_first_run_computes_every_step(finished_run):
    _, flow_run_id, _ = finished_run
    states = task_states(flow_run_id)
    assert set(PIPELINE) <= set(states) and set(states.values()) == {"Completed"}
    assert any(name.startswith("spill_part") for name in states)  # render's per-file tasks


def test_rerun_does_no_work_and_a_changed_step_reruns_downstream_only(finished_run):
    run_dir, _, first = finished_run
    shards = sorted((run_dir / "render" / "data").rglob("*.parquet"))
    mtimes = {p: p.stat().st_mtime_ns for p in shards}

    flow_run_id, again = run(run_dir)
    states = task_states(flow_run_id)
    assert {states[s] for s in PIPELINE if s != "publish"} == {"Cached"}
    assert again["eval"] == first["eval"]
    assert {p: p.stat().st_mtime_ns for p in shards} == mtimes

    flow_run_id, _ = run(run_dir, ["stages.stage2.max_steps=4"])
    states = task_states(flow_run_id)
    assert [states[s] for s in ("demo-data", "download", "curate", "generate", "translate", "render")] == ["Cached"] * 6
    assert states["train"] == "Completed" and states["eval"] == "Completed"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stages"]["train"]["stage2"]["steps"] == 4
    assert (run_dir / "eval" / "after-stage1.json").is_file()  # stage 1 retrained, evaluated before stage 2
    assert (run_dir / "train.stale").is_dir() and (run_dir / "eval.stale").is_dir()  # the old ones, set aside


def test_training_one_stage_does_not_mark_the_train_step_done(prefect_server, tmp_path):
    from pipelines.orchestration.flows import STEP_FLOWS

    spec = {"recipe": "recipes/demo.yaml", "overrides": TINY, "run_dir": str(tmp_path / "run")}
    for name in ("demo-data", "download", "curate", "generate", "translate", "render"):
        assert STEP_FLOWS[name](**spec, return_state=True).is_completed()
    state = STEP_FLOWS["train"](**spec, options={"stage": "stage1"}, return_state=True)
    assert state.is_completed()
    assert (tmp_path / "run" / "train" / "stage1" / "stage.json").is_file()
    assert not (tmp_path / "run" / "train" / "stage2").exists()
    assert not (tmp_path / "run" / "train" / "_SUCCESS").exists()  # the train step is not complete

    _, summary = run(tmp_path / "run")  # build-and-train then trains what is missing
    assert summary["stages"]["train"]["stage2"]["steps"] == 3
    assert json.loads((tmp_path / "run" / "train" / "_SUCCESS").read_text())["flow"]["fingerprint"]


def test_a_step_that_left_retryable_failures_runs_again_and_downstream_redoes_only_what_healed(
    prefect_server, tmp_path, monkeypatch
):
    """translate rejects the records of requests that failed for good (500s) and says so in `_SUCCESS`
    (retry_pending); each flow run then runs it again in place, sending only those, and render is
    redone only when a retry changed translate's output."""
    from support.chat_server import ChatServer
    from support.translate_fixtures import API_KEY, KEY_ENV

    from pipelines.orchestration.flows import STEP_FLOWS

    monkeypatch.setenv(KEY_ENV, API_KEY)
    run_dir = tmp_path / "run"
    with ChatServer(api_key=API_KEY) as chat:
        sets = ["demo.num_images=40", "demo.vision_encoder=null", "translator.backend=openai",
                f"translator.base_url={chat.base_url}", f"translator.api_key_env={KEY_ENV}",
                "translator.model=test-model", "translator.memory_import=[]", "translator.max_retries=0",
                "translator.batch_segments=8"]
        spec = {"recipe": "recipes/demo.yaml", "overrides": sets, "run_dir": str(run_dir)}
        for name in ("demo-data", "download", "curate", "generate"):
            assert STEP_FLOWS[name](**spec, return_state=True).is_completed()
        llava = json.loads((run_dir / "demo-data" / "llava" / "llava_instruct.json").read_text())
        chat.add_fault("server_error", match=llava[0]["conversations"][-1]["value"], times=None)

        def run_translate_and_render() -> dict[str, str]:
            states = {}
            for name in ("translate", "render"):
                state = STEP_FLOWS[name](**spec, return_state=True)
                assert state.is_completed(), state
                states[name] = task_states(state.state_details.flow_run_id)[name]
            return states

        def flow_marker(step: str) -> dict:
            return json.loads((run_dir / step / "_SUCCESS").read_text())["flow"]

        assert run_translate_and_render() == {"translate": "Completed", "render": "Completed"}
        first = flow_marker("translate")
        pending = json.loads((run_dir / "translate" / "_SUCCESS").read_text())["retry_pending"]
        assert pending > 0 and first["summary"]["rejected"] == {"http_500": pending}
        rendered = flow_marker("render")["summary"]["kept"]
        shards = {p: p.stat().st_mtime_ns for p in (run_dir / "render" / "data").rglob("*.parquet")}

        requests, answered = chat.stats.requests, chat.stats.ok
        assert run_translate_and_render() == {"translate": "Completed", "render": "Cached"}  # nothing healed
        assert chat.stats.ok == answered and 0 < chat.stats.requests - requests <= pending, "only the failed ones"
        assert first["retry_pending"] == pending and flow_marker("translate")["output"] == first["output"]
        assert {p: p.stat().st_mtime_ns for p in shards} == shards

        chat.clear_faults()
        assert run_translate_and_render() == {"translate": "Completed", "render": "Completed"}  # healed
        healed = flow_marker("translate")
        assert healed["retry_pending"] == 0 and healed["summary"]["rejected"] == {}
        assert healed["output"] != first["output"] and flow_marker("render")["summary"]["kept"] > rendered

        requests = chat.stats.requests
        assert run_translate_and_render() == {"translate": "Cached", "render": "Cached"}
        assert chat.stats.requests == requests
