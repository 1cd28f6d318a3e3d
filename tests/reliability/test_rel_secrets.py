"""Secrets come from the environment only and are never written anywhere.

1. The translate stage with a sentinel key against a loopback server that repeats the request's
   Authorization header in every error body (429, 500, 400, requests that exhaust their
   retries, a rejected key): no file, log record, stdout/stderr or exception text holds the key.
2. The demo (`vcla build-and-train` on recipes/demo.yaml, shrunk with --set) in a subprocess,
   with sentinel values in OPENAI_API_KEY (the translator really sends it: it talks to the
   loopback chat server, echoing auth in errors) and HF_TOKEN (the publish stage really sends
   it: to the loopback fake Hub, which also echoes auth in errors). Every file under the run
   folder, the Prefect home, HOME, HF_HOME and TMPDIR, and all output, is searched.
3. Recipe fields cannot carry secrets: a token in publish.token_env, a key in translator.base_url.

"Searched" means: the raw bytes, base64 and URL-quoted forms, and the last 16 characters alone
(a truncated echo), inside Parquet files (decoded) and gzip files (decompressed) too.
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
from support.chat_server import ChatServer
from support.hub_server import FakeHub
from support.translate_fixtures import make_recipe, read_jsonl, record, write_records

from pipelines.steps.publish import PublishError, run_publish
from pipelines.recipe import RecipeError, load_recipe
from pipelines.core.errors import StepFailed
from pipelines.steps.translate import run_translate
from translators.config import TranslatorConfig

REPO = Path(__file__).resolve().parents[2]
OPENAI_KEY = "sk-relSENTINEL-openai-Zq7Wd0x9Lm3Kp2VtR8"
HUB_TOKEN = "hf_relSENTINELhubToken4Gx2Jc8Nw5Bv1Yh"
KEY_ENV = "VCLA_REL_SECRET_KEY"


def forms(secret: str) -> dict[str, bytes]:
    return {"raw": secret.encode(), "base64": base64.b64encode(secret.encode()).rstrip(b"="),
            "url-quoted": quote(secret, safe="").encode(), "tail": secret[-16:].encode()}


def file_bytes(path: Path) -> list[bytes]:
    """What a reader of the file could see: the bytes, plus decoded Parquet / decompressed gzip."""
    data = [path.read_bytes()]
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        data.append(json.dumps(pq.read_table(path).to_pylist(), default=str, ensure_ascii=False).encode())
    elif path.suffix == ".gz":
        data.append(gzip.decompress(data[0]))
    return data


def leaks(secrets: list[str], roots: list[Path], texts: dict[str, str]) -> list[str]:
    """Every place a form of a secret appears; empty when clean."""
    found = []
    for secret in secrets:
        for form, needle in forms(secret).items():
            for root in roots:
                for path in (p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
                    if any(needle in chunk for chunk in file_bytes(path)):
                        found.append(f"{form} of {secret[:6]}... in {path}")
            found += [f"{form} of {secret[:6]}... in {name}" for name, text in texts.items()
                      if needle.decode() in text]
    return found


def files_under(roots: list[Path]) -> int:
    return sum(1 for root in roots for p in root.rglob("*") if p.is_file())


# -- 1. the translate stage, with the key echoed in every error --------------------------------
def test_translate_with_auth_echoed_in_error_bodies_never_writes_or_prints_the_key(
    monkeypatch, tmp_path, capfd, caplog
):
    caplog.set_level(logging.DEBUG)  # openai's and httpx's own debug logs included
    monkeypatch.setenv(KEY_ENV, OPENAI_KEY)
    words = [f"w{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(30)]  # a unique word per caption
    records = [record("coco", i, "caption", ("assistant", f"A red car near the cats on the {w} street."))
               for i, w in enumerate(words)]
    write_records(tmp_path / "download", "coco", records)
    with ChatServer(api_key=OPENAI_KEY, echo_auth=True, reject_json_mode=True) as server:
        server.add_fault("rate_limit", times=2, retry_after="0")
        server.add_fault("server_error", times=2)
        server.add_fault("server_error", match="wah street", times=None)  # exhausts its retries: a rejection
        recipe = make_recipe(tmp_path, backend="openai", base_url=server.base_url, api_key_env=KEY_ENV,
                             model="test-model", batch_segments=4, backoff_base_s=0.01, max_retries=4)
        stats = run_translate(recipe, tmp_path / "download", tmp_path / "translate")
        echoed = sum(n for status, n in server.stats.statuses.items() if status >= 400)  # bodies echoing the key
    with ChatServer(api_key="sk-a-different-key", echo_auth=True) as other:  # 401 echoing our key
        recipe = make_recipe(tmp_path / "again", backend="openai", base_url=other.base_url, api_key_env=KEY_ENV,
                             model="test-model")
        (tmp_path / "again").mkdir()
        with pytest.raises(StepFailed, match="HTTP 401") as err:  # the stage reports the translator's error
            run_translate(recipe, tmp_path / "download", tmp_path / "again" / "translate")

    rejected = read_jsonl(tmp_path / "translate" / "rejected" / "translate.jsonl")
    # the request carrying "wah street" (4 segments a request) failed for good; its records are rejected
    assert {r["reason"] for r in rejected} == {"http_500"} and 1 <= len(rejected) <= 4
    assert "wah street" in json.dumps(rejected) and all("gave up after 5 attempts" in r["detail"] for r in rejected)
    assert stats.extra["json_mode_disabled"] == 1 and stats.extra["retries"] >= 4 and echoed > 10
    out = capfd.readouterr()
    texts = {"stdout": out.out, "stderr": out.err, "logs": caplog.text, "401 error": str(err.value)}
    assert "***" in caplog.text or "***" in json.dumps(rejected), "the echoes reached us, redacted"
    assert files_under([tmp_path]) >= 8 and caplog.text
    assert leaks([OPENAI_KEY], [tmp_path], texts) == []


# -- 2. the demo, end to end in a subprocess ---------------------------------------------------
@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    from pipelines.demo.corpus import generate_demo
    from pipelines.recipe import DemoConfig

    tmp = tmp_path_factory.mktemp("secrets-demo")
    # The corpus is deterministic: pick a segment of it for the translator to fail on for good.
    probe = generate_demo(tmp / "probe", DemoConfig(num_images=40, seed=0)) and tmp / "probe"
    failing = json.loads((probe / "llava" / "llava_instruct.json").read_text())[0]["conversations"][-1]["value"]
    homes = {name: tmp / name for name in ("home", "prefect", "hf-home", "tmpdir")}
    for folder in homes.values():
        folder.mkdir()
    with ChatServer(api_key=OPENAI_KEY, echo_auth=True) as chat, FakeHub(token=HUB_TOKEN) as hub:
        hub.echo_auth_in_errors = True
        chat.add_fault("rate_limit", times=1, retry_after="0")
        chat.add_fault("server_error", times=2)
        chat.add_fault("server_error", match=failing, times=None)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("HF_", "HUGGING", "PREFECT_", "OPENAI", "TRANSFORMERS_OFFLINE"))}
        env.update(OPENAI_API_KEY=OPENAI_KEY, HF_TOKEN=HUB_TOKEN, HF_ENDPOINT=hub.url, HF_HUB_DISABLE_XET="1",
                   HF_HUB_DISABLE_TELEMETRY="1", HF_HOME=str(homes["hf-home"]), HOME=str(homes["home"]),
                   TMPDIR=str(homes["tmpdir"]), PREFECT_HOME=str(homes["prefect"]), VCLA_PROGRESS="0",
                   PREFECT_SERVER_ANALYTICS_ENABLED="false", TOKENIZERS_PARALLELISM="false",
                   NO_ALBUMENTATIONS_UPDATE="1", PYTHONUNBUFFERED="1")
        sets = ["demo.num_images=40", "stages.stage1.max_steps=2", "stages.stage2.max_steps=2",
                "stages.stage1.batch_size=4", "stages.stage2.batch_size=4", "eval.max_new_tokens=2",
                "translator.backend=openai", f"translator.base_url={chat.base_url}", "translator.memory_import=[]",
                "translator.backoff_base_s=0.01", "translator.max_retries=2", "publish.repo_id=me/secrets-demo"]
        vcla = Path(sys.executable).parent / "vcla"
        command = [str(vcla), "build-and-train", "--recipe", str(REPO / "recipes" / "demo.yaml"),
                   "--run-dir", str(tmp / "run")] + [a for s in sets for a in ("--set", s)]
        result = subprocess.run(command, env=env, cwd=tmp, capture_output=True, text=True, timeout=420)
        served = {"chat_errors": sum(n for s, n in chat.stats.statuses.items() if s >= 400),
                  "chat_ok": chat.stats.ok, "hub_requests": len(hub.requests),
                  "hub_files": hub.files("me/secrets-demo") if "me/secrets-demo" in hub.repos else {}}
    return {"tmp": tmp, "result": result, "served": served, "failing": failing,
            "roots": [tmp / "run", *homes.values()]}


@pytest.mark.slow
@pytest.mark.xdist_group("rel_secrets_demo")
def test_demo_with_sentinel_secrets_runs_and_writes_them_nowhere(demo_run):
    result, served = demo_run["result"], demo_run["served"]
    errors = [line for line in result.stderr.splitlines() if "Error" in line or "error:" in line]
    assert result.returncode == 0, "\n".join(errors[-15:]) + "\n...\n" + result.stderr[-1500:]
    run = demo_run["tmp"] / "run"
    summary = json.loads((run / "summary.json").read_text())
    # The secrets were really used: the translator got answers from the server it authenticated
    # to, errors echoing the key came back, and the shards reached the Hub with the token.
    assert served["chat_ok"] > 3 and served["chat_errors"] >= 3
    assert summary["stages"]["translate"]["extra"]["retries"] >= 3
    assert "http_500" in summary["stages"]["translate"]["rejected"]
    assert "README.md" in served["hub_files"] and any(p.endswith(".parquet") for p in served["hub_files"])
    assert any((run / "train" / "stage2").glob("*.safetensors"))
    texts = {"stdout": result.stdout, "stderr": result.stderr, "summary": json.dumps(summary),
             "hub": json.dumps({k: v.decode("utf-8", "replace") for k, v in served["hub_files"].items()})}
    searched = files_under(demo_run["roots"])
    print("secrets demo:", json.dumps({"files_searched": searched, "bytes_searched": sum(
        p.stat().st_size for r in demo_run["roots"] for p in r.rglob("*") if p.is_file()), **{
        k: v for k, v in served.items() if k != "hub_files"}, "hub_files": len(served["hub_files"])}))
    assert searched > 100
    assert leaks([OPENAI_KEY, HUB_TOKEN], demo_run["roots"], texts) == []


# -- 3. recipe fields that would carry a secret -------------------------------------------------
def test_a_token_pasted_into_publish_token_env_is_refused_and_not_shown(tmp_path, capsys):
    with pytest.raises(RecipeError, match="publish.token_env.*NAME of an environment variable") as err:
        load_recipe("demo", overrides=[f"publish.token_env={HUB_TOKEN}", "publish.repo_id=me/x"])
    assert HUB_TOKEN not in str(err.value) and HUB_TOKEN[-16:] not in str(err.value)
    # publish keeps its own guard for recipes built in code (assignment skips validation)
    recipe = load_recipe("demo", overrides=["publish.repo_id=me/x"])
    recipe.publish.token_env = HUB_TOKEN
    for dry_run in (True, False):
        with pytest.raises(PublishError, match="NAME of an environment variable") as err:
            run_publish(recipe, tmp_path, dry_run=dry_run)
        assert HUB_TOKEN not in str(err.value) and HUB_TOKEN[-16:] not in str(err.value)
    out = capsys.readouterr()
    assert HUB_TOKEN not in out.out + out.err


@pytest.mark.parametrize("url", [f"https://user:{OPENAI_KEY}@api.example.com/v1",
                                 f"https://api.example.com/v1?api-key={OPENAI_KEY}",
                                 f"https://api.example.com/v1?access_token={OPENAI_KEY}"])
def test_credentials_in_the_translator_url_are_refused(url):
    with pytest.raises(ValueError, match="must not carry credentials.*api_key_env"):
        TranslatorConfig(base_url=url)
    with pytest.raises(RecipeError, match="translator.base_url"):
        load_recipe("demo", overrides=[f"translator.base_url={url}"])
    assert TranslatorConfig(base_url="https://h.example/v1?api-version=2024-06-01").base_url


def test_the_api_key_variable_name_cannot_be_the_key():
    with pytest.raises(ValueError, match="NAME of an environment variable"):
        TranslatorConfig(api_key_env=OPENAI_KEY)
