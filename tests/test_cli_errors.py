"""`vcla` user errors: the output ends with one line naming the key or file and what to do, exit 2
(recipe / arguments) or 1 (a step), and no traceback unless `--debug`. Cheap checks (files, keys,
images, model folders) come before a Prefect server starts or a model loads. `vcla chat` can be
greedy (`--greedy`) or repeatably sampled (`--seed`). Prefect's own lines repeat a user error's
message once at most (its traceback and the other repeats are dropped); a bug keeps all of them.

Subprocess runs get PREFECT_API_URL pointing at a port where nothing listens (NO_PREFECT): a
command that got as far as Prefect would fail there, so exit 2 with the check's message proves the
check came first.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from support.chat_server import ChatServer
from support.translate_fixtures import record, write_records

import pipelines.orchestration.flows  # noqa: F401  (Prefect sets up logging on import: before caplog attaches, not during a test)
from pipelines.core.errors import StepFailed
from pipelines.orchestration.registry import STEPS
from pipelines.steps.evaluate import EvalOptions
from pipelines.cli.main import TASK_RUNS, build_parser, main
from pipelines.recipe import RecipeError, load_recipe

REPO = Path(__file__).resolve().parent.parent
VCLA = Path(sys.executable).parent / "vcla"
NO_PREFECT = "http://127.0.0.1:9/api"
KEY_ENV = "VCLA_TEST_ERRORS_KEY"
WRONG_KEY = "sk-wrongSENTINEL-4f7Qz9Lk2Xw8"


def vcla(args: list[str], api_url: str = NO_PREFECT, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in (KEY_ENV, "OPENAI_API_KEY")}
    full.update(VCLA_PROGRESS="0", PYTHONUNBUFFERED="1", PREFECT_API_URL=api_url, OMP_NUM_THREADS="1", **env)
    return subprocess.run([str(VCLA), *args], capture_output=True, text=True, env=full, timeout=300, cwd=REPO)


def one_clear_line(result: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    """The run exited `code`, printed no traceback, and its last line holds every needle."""
    output = result.stdout + result.stderr
    assert result.returncode == code, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("vcla "), last
    for needle in needles:
        assert needle in last, last
    return last


@pytest.fixture()
def downloaded(tmp_path) -> Path:
    """A run folder whose generate step passed three English caption records through (translate's input)."""
    run = tmp_path / "run"
    write_records(run / "generate", "coco", [record("coco", i, "caption", ("assistant", f"A red car {i}."))
                                             for i in range(3)])
    return run


def openai_translator(run: Path, base_url: str = "http://127.0.0.1:9/v1") -> list[str]:
    return ["translate", "--run-dir", str(run), "--set", "translator.backend=openai", "--set",
            "translator.memory_import=[]", "--set", f"translator.base_url={base_url}", "--set",
            f"translator.api_key_env={KEY_ENV}", "--set", "translator.max_retries=0"]


# -- the API key -----------------------------------------------------------------------------------

def test_unset_api_key_is_one_line_before_prefect_and_debug_shows_the_traceback(downloaded):
    result = vcla(openai_translator(downloaded))
    one_clear_line(result, 2, "translator.api_key_env", KEY_ENV, "is not set", f"{KEY_ENV}=EMPTY")
    assert len(result.stderr.strip().splitlines()) == 1

    debug = vcla(["--debug", *openai_translator(downloaded)])
    assert debug.returncode == 2 and "Traceback" in debug.stderr
    assert f"environment variable {KEY_ENV} is not set" in debug.stderr.strip().splitlines()[-1]


def test_no_key_needed_when_translate_is_finished_or_offline(downloaded):
    """The key is checked only when the translate stage will build a translator for an endpoint."""
    from pipelines.cli.preflight import preflight

    options = argparse.Namespace(command="translate")
    recipe = load_recipe("recipes/demo.yaml", ["translator.backend=openai", "translator.memory_import=[]",
                                               f"translator.api_key_env={KEY_ENV}"], downloaded)
    with pytest.raises(RecipeError, match=KEY_ENV):
        preflight("translate", recipe, options)
    (downloaded / "translate").mkdir()
    (downloaded / "translate" / "_SUCCESS").write_text(json.dumps({"retry_pending": 0}))
    preflight("translate", recipe, options)  # finished, nothing to retry: no request will be sent
    (downloaded / "translate" / "_SUCCESS").write_text(json.dumps({"retry_pending": 2}))
    with pytest.raises(RecipeError, match=KEY_ENV):
        preflight("translate", recipe, options)
    offline = load_recipe("recipes/demo.yaml", ["translator.memory_import=[]"], downloaded)
    preflight("translate", offline, options)


def test_unset_key_message_has_one_source(tmp_path, monkeypatch):
    """The pre-flight and the backend say the same words, written once (llm/config.py)."""
    from pipelines.cli.preflight import preflight
    from translators.config import TranslatorConfig, unset_api_key_message
    from translators.memory import TranslationMemory
    from translators.openai_backend import OpenAITranslator
    from translators.protocol import TranslatorError

    monkeypatch.delenv(KEY_ENV, raising=False)
    with TranslationMemory(tmp_path / "m.sqlite") as memory, pytest.raises(TranslatorError) as backend:
        OpenAITranslator(TranslatorConfig(backend="openai", api_key_env=KEY_ENV), memory)
    recipe = load_recipe("recipes/demo.yaml", ["translator.backend=openai", "translator.memory_import=[]",
                                               f"translator.api_key_env={KEY_ENV}"], tmp_path)
    with pytest.raises(RecipeError) as early:
        preflight("translate", recipe, argparse.Namespace(command="translate"))
    assert str(backend.value) == unset_api_key_message(KEY_ENV)
    assert str(early.value) == f"{recipe.file}: {unset_api_key_message(KEY_ENV)}"
    holders = [p.relative_to(REPO).as_posix() for folder in ("pipelines", "translators", "generators", "llm")
               for p in (REPO / folder).rglob("*.py") if "is not set; export the API key" in p.read_text()]
    assert holders == ["llm/config.py"]


@pytest.mark.xdist_group("prefect")
def test_rejected_key_inside_the_flow_is_one_line_exit_1(downloaded, prefect_server):
    """A 401 happens inside the translate flow: Prefect's run logs keep one line, no traceback."""
    with ChatServer(api_key="sk-the-right-key") as server:
        args = openai_translator(downloaded, server.base_url)
        result = vcla(args, api_url=prefect_server, **{KEY_ENV: WRONG_KEY})
        debug = vcla(["--debug", *args], api_url=prefect_server, **{KEY_ENV: WRONG_KEY})
    one_clear_line(result, 1, "HTTP 401", KEY_ENV)
    assert WRONG_KEY not in result.stdout + result.stderr + debug.stdout + debug.stderr
    assert debug.returncode == 1 and "Traceback" in debug.stderr


# -- files and arguments checked before anything starts ----------------------------------------------

def test_missing_source_file_is_one_line_before_prefect(tmp_path):
    result = vcla(["download", "--run-dir", str(tmp_path), "--set", "sources.0.path=/nonexistent/urls.parquet"])
    one_clear_line(result, 2, "sources[0].path", "/nonexistent/urls.parquet", "--set sources.0.path=PATH")


WITHOUT_RAY = ("import sys; sys.modules['ray'] = None; from pipelines.cli.main import main; "
               "sys.exit(main(sys.argv[1:]))")
"""`vcla` in a process where `import ray` fails as if it were not installed (the dev install has it)."""


@pytest.mark.parametrize("command", ["download", "build-and-train"])
def test_missing_distributor_package_is_one_line_before_prefect(tmp_path, command):
    args = [command, "--run-dir", str(tmp_path), "--set", "download.distributor=ray"]
    result = subprocess.run([sys.executable, "-c", WITHOUT_RAY, *args], capture_output=True, text=True, timeout=300,
                            cwd=REPO, env={**os.environ, "PREFECT_API_URL": NO_PREFECT})
    one_clear_line(result, 2, "download.distributor: 'ray' needs the 'ray' package", "pip install ray",
                   "--set download.distributor=multiprocessing")


LLM_FROM_PATH = ["--set", "model.llm.init=null", "--set", "model.vision.path=null",
                 "--set", "model.vision.init={hidden_size: 32}"]


def test_llm_path_missing_or_empty_names_the_key_before_prefect(tmp_path):
    missing = vcla(["train", "--run-dir", str(tmp_path), *LLM_FROM_PATH, "--set", f"model.llm.path={tmp_path}/nope"])
    one_clear_line(missing, 2, f"model.llm.path: {tmp_path}/nope does not exist", "--set model.llm.path=DIR")
    (tmp_path / "empty").mkdir()
    empty = vcla(["train", "--run-dir", str(tmp_path), *LLM_FROM_PATH, "--set", f"model.llm.path={tmp_path}/empty"])
    last = one_clear_line(empty, 2, f"model.llm.path: {tmp_path}/empty has no config.json")
    assert "sentencepiece" not in empty.stderr and "tiktoken" not in last


def test_unknown_stage_and_missing_eval_split_exit_2_before_prefect(tmp_path):
    one_clear_line(vcla(["train", "--run-dir", str(tmp_path), "--stage", "stage9"]), 2,
                   "--stage stage9", "stages: stage1, stage2")
    one_clear_line(vcla(["eval", "--run-dir", str(tmp_path), "--set", "eval.split=/nonexistent/eval.jsonl"]), 2,
                   "eval.split", "/nonexistent/eval.jsonl", "--set eval.split=PATH")


@pytest.mark.parametrize("image, needle", [
    (None, "--image: required"),
    ("missing.png", "missing.png: file not found"),
    ("notes.png", "image_not_an_image"),
    ("cut.png", "image_"),
])
def test_chat_image_is_checked_before_the_model_loads(tmp_path, image, needle):
    from training.synthetic import draw

    (tmp_path / "notes.png").write_text("hello, not a picture\n")
    (tmp_path / "cut.png").write_bytes(draw("红色", "圆形")[:200])  # a truncated PNG
    args = ["chat", "--run-dir", str(tmp_path / "run"), "--text", "图中是什么？"]
    result = vcla(args + (["--image", str(tmp_path / image)] if image else []))
    one_clear_line(result, 2, needle)


def test_debug_flag_goes_before_or_after_the_command():
    assert build_parser().parse_args(["--debug", "train"]).debug is True
    assert build_parser().parse_args(["train", "--debug"]).debug is True
    assert build_parser().parse_args(["train"]).debug is False


def test_serve_checks_what_its_scheduled_runs_cannot_get_later_before_prefect(tmp_path, monkeypatch):
    """A served run gets the environment and packages `vcla serve` has: a key missing now is missing
    for every run. Files are left to the runs (a source file may appear before the next one)."""
    from pipelines.cli.preflight import preflight

    translate = ["--set", "schedules=[{flow: translate, interval_s: 3600}]", "--set", "translator.backend=openai",
                 "--set", f"translator.api_key_env={KEY_ENV}"]
    one_clear_line(vcla(["serve", "--run-dir", str(tmp_path), *translate]), 2, "translator.api_key_env", KEY_ENV)

    monkeypatch.delenv("HF_TOKEN", raising=False)
    serve = argparse.Namespace(command="serve")
    publish = ["schedules=[{flow: publish, cron: '0 3 * * *'}]"]
    with pytest.raises(StepFailed, match="publish: no Hub repo given"):
        preflight("serve", load_recipe("recipes/demo.yaml", publish, tmp_path), serve)
    with pytest.raises(StepFailed, match="publish: no Hub token: the environment variable HF_TOKEN"):
        preflight("serve", load_recipe("recipes/demo.yaml", [*publish, "publish.repo_id=me/x"], tmp_path), serve)
    nightly = ["schedules=[{flow: build-and-train, cron: '0 2 * * *'}]"]
    preflight("serve", load_recipe("recipes/demo.yaml", nightly, tmp_path), serve)  # no corpus yet: fine
    ray = load_recipe("recipes/demo.yaml", [*nightly, "download.distributor=ray"], tmp_path)
    preflight("serve", ray, serve)  # installed here (a dev dependency): fine
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "ray", None)  # as if it were not installed
        with pytest.raises(RecipeError, match="download.distributor"):
            preflight("serve", ray, serve)
    with pytest.raises(RecipeError, match="schedules: empty"):
        preflight("serve", load_recipe("recipes/demo.yaml", [], tmp_path), serve)


def test_a_prefect_server_that_does_not_start_is_one_line_exit_1(tmp_path, monkeypatch):
    from pipelines.orchestration import server

    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_UI_URL")}
    env.update(VCLA_PROGRESS="0", PYTHONUNBUFFERED="1", PREFECT_HOME=str(tmp_path / "prefect-home"),
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="0")
    result = subprocess.run([str(VCLA), "render", "--run-dir", str(tmp_path / "run")], capture_output=True, text=True,
                            env=env, timeout=300, cwd=REPO)
    one_clear_line(result, 1, "the temporary Prefect server did not answer within 0 s",
                   "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "export PREFECT_API_URL=",
                   "README: The Prefect server")

    monkeypatch.setattr(server, "_spawn", lambda port: subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"]))
    with pytest.raises(server.ServerStartError, match=r"exited at start-up 3 times \(last exit code 3;.*API_URL"):
        server.start_server(30)


# -- errors raised inside a flow ---------------------------------------------------------------------

def failing_render(monkeypatch, error: Exception) -> None:
    def boom(recipe, options):
        raise error
    monkeypatch.setitem(STEPS, "render", dataclasses.replace(STEPS["render"], run=boom))


def run_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name in ("prefect.flow_runs", "prefect.task_runs")]


@pytest.mark.xdist_group("prefect")
@pytest.mark.parametrize("error, code", [
    (RecipeError("recipes/demo.yaml: render.sft_template: no template 'x' (fix the recipe)"), 2),
    (StepFailed("render: /data/render: disk full; free some space and rerun"), 1),
])
def test_user_error_inside_a_flow_is_logged_as_one_line(prefect_server, tmp_path, monkeypatch, caplog, capsys,
                                                        error, code):
    failing_render(monkeypatch, error)
    caplog.set_level(logging.INFO)
    assert main(["render", "--run-dir", str(tmp_path)]) == code
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].endswith(str(error)) and "Traceback" not in err
    logged = [r for r in run_records(caplog) if str(error) in r.getMessage()]
    assert all(r.exc_info is None for r in run_records(caplog))
    # Prefect says it once (the task's state line), vcla's last line once more: not four times
    assert [(r.name, r.getMessage().split("(")[0]) for r in logged] == [(TASK_RUNS, "Finished in state Failed")]
    assert any(r.name == "prefect.flow_runs" and r.getMessage().startswith("Finished in state Failed")
               and f"{type(error).__name__} (message above)" in r.getMessage() for r in run_records(caplog))

    caplog.clear()
    assert main(["--debug", "render", "--run-dir", str(tmp_path)]) == code
    assert "Traceback" in capsys.readouterr().err
    assert any(r.exc_info and r.exc_info[1] is error for r in run_records(caplog))
    assert len([r for r in run_records(caplog) if str(error) in r.getMessage()]) == 3  # --debug: every line


@pytest.mark.xdist_group("prefect")
def test_a_bug_inside_a_flow_keeps_its_traceback(prefect_server, tmp_path, monkeypatch, caplog):
    bug = KeyError("the code is wrong")
    failing_render(monkeypatch, bug)
    caplog.set_level(logging.INFO)
    with pytest.raises(KeyError):
        main(["render", "--run-dir", str(tmp_path)])
    assert any(r.exc_info and r.exc_info[1] is bug for r in run_records(caplog))
    said = [(r.name, r.getMessage().replace('"', "'").split(":")[0])  # repr() quotes it "..'the code..'.."
            for r in run_records(caplog) if "the code is wrong" in r.getMessage()]
    assert said == [("prefect.task_runs", "Finished in state Failed('Task run encountered an exception KeyError"),
                    ("prefect.flow_runs", "Encountered exception during execution"),
                    ("prefect.flow_runs", "Finished in state Failed('Flow run encountered an exception")]


@pytest.mark.xdist_group("prefect")
def test_translate_without_records_is_one_line_exit_1(prefect_server, tmp_path, caplog, capsys):
    """Raised inside the flow: was a FileNotFoundError traceback."""
    caplog.set_level(logging.INFO)
    assert main(["translate", "--run-dir", str(tmp_path), "--set", "translator.memory_import=[]"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    records = tmp_path / "generate" / "records"
    assert err.strip().splitlines()[-1] == (f"vcla translate: translate: {records}: no *.jsonl record files; "
                                            "run `vcla download` and `vcla generate` first (generate passes the "
                                            "records through when the recipe has no `generate:` section)")
    assert len([r for r in run_records(caplog) if "no *.jsonl record files" in r.getMessage()]) == 1


@pytest.mark.xdist_group("prefect")
def test_bad_memory_import_file_is_one_line_exit_1(prefect_server, downloaded, tmp_path, capsys):
    """A translation-memory file that is not the exchange format: was a MemoryImportError traceback."""
    memory = tmp_path / "tm.jsonl"
    memory.write_text('{"source": "A red car 0.", "target": "一辆红色的车 0。"}\n{"source": "A red car 1.", oops\n',
                      encoding="utf-8")
    args = ["translate", "--run-dir", str(downloaded), "--set", f"translator.memory_import={json.dumps([str(memory)])}"]
    assert main(args) == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err
    assert last.startswith(f"vcla translate: translate: translator.memory_import[0]: {memory}:2: not valid JSON")
    assert "fix or delete that line" in last and "remove the file from translator.memory_import" in last
    assert not (downloaded / "translate" / "_SUCCESS").exists()


# -- model folders named by their recipe key (training/build.py) -------------------------------------

def test_model_folder_errors_name_the_recipe_key(tmp_path):
    from training.build import ModelPathError, build_tokenizer_for, visualcla_config
    from training.config import ModelConfig

    (tmp_path / "empty").mkdir()
    cfg = ModelConfig(vision={"init": {}}, llm={"path": str(tmp_path / "empty")})
    with pytest.raises(ModelPathError, match=r"^model\.llm\.path: .*/empty has no config\.json"):
        build_tokenizer_for(cfg)
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(ModelPathError, match=r"^model\.llm\.path: .*/empty has no tokenizer files"):
        build_tokenizer_for(cfg)
    cfg = ModelConfig(vision={"path": str(tmp_path / "clip")}, llm={"init": {}})
    with pytest.raises(ModelPathError, match=r"^model\.vision\.path: .*/clip does not exist"):
        visualcla_config(cfg)


# -- chat and export on a trained checkpoint ---------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny two-step stage (resampler connector: llava-hf cannot express it)."""
    from training.config import ModelConfig, StageConfig
    from training.run import train_stage
    from training.synthetic import write_synthetic_shards

    root = tmp_path_factory.mktemp("chat")
    shards = write_synthetic_shards(root / "shards", num_images=16, row_group_rows=8)
    model = ModelConfig(
        vision={"kind": "clip", "image_size": 32, "init": {"hidden_size": 32, "intermediate_size": 64,
                "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 32, "patch_size": 8}},
        connector={"kind": "resampler", "num_queries": 4, "hidden_size": 32, "num_layers": 1, "num_heads": 2},
        llm={"init": {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 1, "num_attention_heads": 2,
                      "num_key_value_heads": 2, "max_position_embeddings": 256, "vocab_size": 500}})
    stage = StageConfig(data="sft", max_steps=2, batch_size=4, max_length=160, save_steps=2, warmup_ratio=0.0,
                        trainable={"connector": "full", "llm": "full"})
    train_stage(model, "stage1", stage, shards, root / "stage1")
    return root / "stage1"


@pytest.fixture(scope="module")
def image(checkpoint) -> Path:
    from training.synthetic import draw

    path = checkpoint.parent / "red-circle.png"
    path.write_bytes(draw("红色", "圆形"))
    return path


def answer(capsys, checkpoint: Path, image: Path, *flags: str) -> str:
    args = ["chat", "--checkpoint", str(checkpoint), "--image", str(image), "--text", "图中是什么？", *flags]
    assert main(args) == 0
    return capsys.readouterr().out


def test_chat_greedy_gives_the_same_answer_and_seed_repeats_sampling(checkpoint, image, capsys):
    greedy = answer(capsys, checkpoint, image, "--greedy", "--seed", "1")
    assert greedy.strip() and answer(capsys, checkpoint, image, "--greedy", "--seed", "2") == greedy
    sampled = {seed: answer(capsys, checkpoint, image, "--seed", str(seed)) for seed in (5, 6, 7)}
    assert answer(capsys, checkpoint, image, "--seed", "5") == sampled[5]
    assert len(set(sampled.values()) | {greedy}) > 1  # without --greedy it really samples, driven by the seed


def test_chat_with_a_bad_image_never_loads_the_model(checkpoint, tmp_path, monkeypatch, capsys):
    from training.chat import ChatModel

    def load(*a, **k):
        raise AssertionError("the model was loaded before the image was checked")
    monkeypatch.setattr(ChatModel, "load", load)
    (tmp_path / "page.jpg").write_text("<html><body>404</body></html>")
    assert main(["chat", "--checkpoint", str(checkpoint), "--image", str(tmp_path / "page.jpg"), "--text", "?"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"--image {tmp_path / 'page.jpg'}" in last and "HTML" in last


def test_export_refusal_is_one_line_exit_1(checkpoint, tmp_path, capsys):
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "llava-hf", "--out", str(tmp_path / "x")]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"vcla export: export: {checkpoint}: llava-hf export needs a linear or mlp2x_gelu")
    assert "--format merged" in last


def test_eval_of_a_moved_stage_folder_names_what_is_missing(checkpoint, image, tmp_path):
    """The stage folder copied without train/base/: was a FileNotFoundError traceback after Prefect
    started; now the pre-flight names the folder (exit 1), and so does the stage run without the CLI."""
    moved = tmp_path / "elsewhere" / "stage1"
    shutil.copytree(checkpoint, moved)
    split = tmp_path / "split" / "eval.jsonl"
    split.parent.mkdir()
    shutil.copy(image, split.parent / "red-circle.png")
    split.write_text(json.dumps({"image": "red-circle.png", "question": "是什么颜色？", "answer": "红色"},
                                ensure_ascii=False) + "\n", encoding="utf-8")
    result = vcla(["eval", "--checkpoint", str(moved), "--set", f"eval.split={split}"])
    one_clear_line(result, 1, f"vcla eval: eval: cannot load {moved}: it builds on {tmp_path / 'elsewhere' / 'base'}",
                   "train/base/", "--checkpoint DIR")

    recipe = load_recipe("recipes/demo.yaml", [f"eval.split={split}"], tmp_path / "run")
    with pytest.raises(StepFailed, match=f"eval: cannot load {moved}: it builds on"):
        STEPS["eval"].run(recipe, EvalOptions(checkpoint=str(moved)))
    split.write_text(json.dumps({"image": "gone.png", "question": "是什么颜色？", "answer": "红色"},
                                ensure_ascii=False) + "\n", encoding="utf-8")
    with pytest.raises(StepFailed, match="eval: .*'gone.png' not found.*fix eval.split's image paths"):
        STEPS["eval"].run(recipe, EvalOptions(checkpoint=str(checkpoint)))


def test_interactive_chat_ends_cleanly_at_end_of_input(checkpoint, image, monkeypatch, capsys):
    typed = iter(["图中是什么？"])

    def fake_input(prompt: str) -> str:
        try:
            return next(typed)
        except StopIteration:
            raise EOFError from None  # Ctrl-D, or stdin closed
    monkeypatch.setattr("builtins.input", fake_input)
    assert main(["chat", "--checkpoint", str(checkpoint), "--image", str(image)]) == 0
    assert capsys.readouterr().out.strip()  # one answer, then a clean end instead of an EOFError traceback


# -- several images: repeated --image, and `/image PATH` lines in an interactive session ------------------

@pytest.fixture(scope="module")
def second_image(checkpoint) -> Path:
    from training.synthetic import draw

    path = checkpoint.parent / "blue-square.png"
    path.write_bytes(draw("蓝色", "正方形", seed=3))
    return path


def typing(monkeypatch, lines: list[str]) -> None:
    """`input()` returns `lines` one by one, then the end of input (Ctrl-D)."""
    typed = iter(lines)

    def fake_input(prompt: str) -> str:
        try:
            return next(typed)
        except StopIteration:
            raise EOFError from None
    monkeypatch.setattr("builtins.input", fake_input)


def test_chat_with_repeated_image_puts_them_in_order_into_the_first_message(checkpoint, image, second_image, capsys):
    """Two --image flags: `chat`'s greedy answer with both images in the first turn, in the order given;
    one --image is still `chat`'s one-image answer."""
    from training.chat import GREEDY, ChatModel, chat

    bot, pils = ChatModel.load(checkpoint), [Image.open(p).convert("RGB") for p in (image, second_image)]
    out = answer(capsys, checkpoint, image, "--image", str(second_image), "--greedy")
    assert out == chat(bot, pils, "图中是什么？", **GREEDY)[0] + "\n"
    assert answer(capsys, checkpoint, image, "--greedy") == chat(bot, pils[0], "图中是什么？", **GREEDY)[0] + "\n"


def test_chat_checks_every_image_before_the_model_loads(checkpoint, image, tmp_path, capsys):
    bad = tmp_path / "second.png"
    bad.write_text("not a picture")
    assert main(["chat", "--checkpoint", str(checkpoint), "--image", str(image), "--image", str(bad), "--text", "?"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"vcla chat: --image {bad}: cannot use it (image_not_an_image") and "PNG" in last


def test_interactive_chat_image_lines_attach_images_to_the_next_message(checkpoint, image, second_image, tmp_path,
                                                                   monkeypatch, capsys):
    """`/image PATH` after the first turn: the next message carries it (`turn_images`), as `chat` answers
    it; a bad `/image` line is one message on stderr and the session goes on."""
    from training.chat import GREEDY, ChatModel, chat

    typing(monkeypatch, ["图中是什么？", f"/image {tmp_path / 'gone.png'}", "/image", f"/image {second_image}",
                         "和这张比呢？", "还有别的吗？"])
    assert main(["chat", "--checkpoint", str(checkpoint), "--image", str(image), "--greedy"]) == 0
    out, err = capsys.readouterr()
    bot, first, second = ChatModel.load(checkpoint), Image.open(image), Image.open(second_image)
    a1, history = chat(bot, first, "图中是什么？", **GREEDY)
    a2, history = chat(bot, first, "和这张比呢？", history, turn_images=[second], **GREEDY)
    a3, history = chat(bot, first, "还有别的吗？", history, **GREEDY)
    assert out == f"{a1}\n{a2}\n{a3}\n\n" and a2.strip()  # the answers (several lines each), then the end's newline
    assert [len(h.get("images", ())) for h in history[0::2]] == [1, 1, 0]
    assert f"vcla chat: /image {tmp_path / 'gone.png'}: file not found; pass an existing image file" in err
    assert "vcla chat: /image: no file given; type /image PATH [PATH ...]" in err
    assert "[chat] 1 image(s) go with your next message" in err


def test_only_templates_with_text_in_every_turn_take_several_images():
    """`vcla chat` refuses a second image (and the web page a second upload) for stage 1's `none` template."""
    from pipelines.webui.uploads import takes_several_images

    assert not takes_several_images("none") and takes_several_images("visualcla") and takes_several_images("chatml")
