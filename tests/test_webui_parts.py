"""The web UI's parts without a server: where it may listen, what a page of shards reads, how a row is
shown, and `vcla webui` refusing an unsafe address before anything loads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.core.errors import UsageError
from pipelines.webui.cards import card, table_row
from pipelines.webui.data import Filters, ShardSet
from pipelines.webui.labels import EN, ZH, labels
from pipelines.webui.safety import bind_settings, is_loopback
from training.synthetic import write_synthetic_shards

REPO = Path(__file__).resolve().parent.parent
SECRET = "s3cret-Passw0rd"


# -- where it listens ------------------------------------------------------------------------------

def test_loopback_needs_no_login_and_makes_no_share_link():
    bind = bind_settings()
    assert (bind.host, bind.auth, bind.share) == ("127.0.0.1", None, False)
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.3.2.1", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "192.168.1.5", "::", "example.org", "10.0.0.1"))


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5", "::", "my-box.local"])
def test_any_other_address_without_a_login_is_refused_saying_why(host):
    with pytest.raises(UsageError, match=rf"--host {host}: refusing to listen beyond this machine without a "
                                         r"login.*--auth-env VAR.*--host 127\.0\.0\.1"):
        bind_settings(host, environ={})


def test_the_login_comes_from_the_environment_and_is_never_repeated():
    bind = bind_settings("0.0.0.0", 8000, "VCLA_WEBUI_AUTH", environ={"VCLA_WEBUI_AUTH": f"ann:{SECRET}"})
    assert bind.auth == ("ann", SECRET) and bind.port == 8000
    assert SECRET not in repr(bind) and SECRET not in str(bind)
    bad = {"VCLA_WEBUI_AUTH": SECRET, "EMPTY": ""}
    for env, expected in (("VCLA_WEBUI_AUTH", "must be user:password"), ("EMPTY", "not set"),
                          ("UNSET", "not set"), (f"ann:{SECRET}", "NAME of an environment variable")):
        with pytest.raises(UsageError, match=expected) as refused:
            bind_settings("0.0.0.0", auth_env=env, environ=bad)
        assert SECRET not in str(refused.value)


def test_a_share_link_needs_a_login_too():
    with pytest.raises(UsageError, match="--share: a public link needs a login"):
        bind_settings(share=True, environ={})
    assert bind_settings(share=True, auth_env="A", environ={"A": "u:p"}).share


def vcla(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", **(env or {})})


def test_vcla_webui_refuses_a_public_address_before_loading_anything(tmp_path):
    """Exit 2 with one line saying why; no Gradio import, no model load, no server."""
    result = vcla("webui", "--host", "0.0.0.0", "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        "vcla webui: --host 0.0.0.0: refusing to listen beyond this machine without a login")
    assert "Running on" not in result.stdout
    pasted = vcla("webui", "--host", "0.0.0.0", "--auth-env", f"ann:{SECRET}", "--run-dir", str(tmp_path / "run"))
    assert pasted.returncode == 2 and SECRET not in pasted.stderr + pasted.stdout
    assert "--auth-env must be the NAME of an environment variable" in pasted.stderr


def test_starting_vcla_imports_neither_gradio_nor_the_web_ui():
    code = "import sys, pipelines.cli.main; print(sorted(m for m in ('gradio', 'pipelines.webui.app') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


# -- the data tab's reading --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """24 caption rows and 32 instruction rows, in row groups of 5 (two files per subset)."""
    return write_synthetic_shards(tmp_path_factory.mktemp("shards"), num_images=24, row_group_rows=5)


@pytest.fixture
def reads(monkeypatch) -> list[tuple[str, int, tuple | None]]:
    """Every `ParquetFile.read_row_group` call made (file name, row group, columns), passed through."""
    calls, init, read = [], pq.ParquetFile.__init__, pq.ParquetFile.read_row_group

    def named(self, source, *args, **kwargs):
        init(self, source, *args, **kwargs)
        self.spied_name = Path(source).name

    def recorded(self, i, columns=None, **kwargs):
        calls.append((self.spied_name, i, tuple(columns) if columns else None))
        return read(self, i, columns=columns, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "__init__", named)
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", recorded)
    return calls


def all_ids(shards: Path) -> list[str]:
    files = sorted((shards / "data").glob("*/*/*.parquet"))
    return [i for f in files for i in pq.read_table(f, columns=["id"]).column("id").to_pylist()]


def test_a_page_reads_only_the_row_groups_it_shows(shards, reads):
    shown = ShardSet(shards)
    assert reads == []  # opening reads metadata only
    page = shown.page(Filters(), number=2, size=4)  # rows 8-11: row group 1 (rows 5-9) and 2 (10-11) of file 0
    assert [r["id"] for r in page.rows] == all_ids(shards)[8:12]
    assert (page.total, page.has_next) == (56, True)
    assert reads == [("pretrain-train-00000-of-00002.parquet", 1, None),
                     ("pretrain-train-00000-of-00002.parquet", 2, None)]


def test_a_filtered_page_reads_light_columns_until_it_is_full(shards, reads):
    page = ShardSet(shards).page(Filters(subset="sft/train", task="vqa"), number=0, size=3)
    assert len(page.rows) == 3 and {(r["_subset"], r["task"]) for r in page.rows} == {("sft/train", "vqa")}
    assert page.total is None and page.has_next  # it stopped once the page was full: no full count
    light = [c for c in reads if c[2] is not None]
    assert light and all(c[2] == ("source", "task") for c in light)  # never the images to filter
    full = [c for c in reads if c[2] is None]
    assert all(f.startswith("sft-train") for f, _, _ in reads) and len(full) <= 2


def test_search_looks_in_turns_and_the_english_original(shards):
    texts = ShardSet(shards).page(Filters(text="等于"), 0, 50)
    assert texts.total == 8 and {r["task"] for r in texts.rows} == {"text"}
    none = ShardSet(shards).page(Filters(text="no such text anywhere"), 0, 50)
    assert (none.rows, none.total, none.has_next) == ([], 0, False)


def test_filter_choices_come_from_the_shards_without_a_manifest(shards):
    shown = ShardSet(shards)
    assert shown.subsets() == ["pretrain/train", "sft/train"]
    assert shown.choices("task") == ["caption", "conversation", "text", "vqa"]
    assert shown.choices("source") == ["synthetic"]


# -- how a row is shown ------------------------------------------------------------------------------

def test_a_card_shows_row_text_as_text_never_as_markup():
    row = {"id": "x1", "_subset": "sft/train", "source": "web", "task": "vqa", "lang": "zh",
           "turns": [{"prompt": "<img><image></img>\n<script>alert(1)</script>", "response": "${alert(2)} {{x}}"}],
           "messages": [{"role": "user", "content": "<b onmouseover=alert(3)>问</b>"},
                        {"role": "assistant", "content": "答"}],
           "messages_en": [{"role": "user", "content": "question"}, {"role": "assistant", "content": "answer"}],
           "image": None, "lineage": {"original_id": "7", "qa": '{"verdict": "ok"}'}}
    html = card(row, ZH)
    assert "<script" not in html and "<b " not in html and "${" not in html and "{{" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&#36;&#123;alert(2)&#125;" in html
    assert "英文原文" in html and "question" in html and "（纯文本）" in html and "&quot;verdict&quot;" in html
    # the table is plain text (Gradio's Dataframe shows strings as text), image block and all stripped
    assert table_row(row) == ["x1", "sft/train", "web", "vqa", "<b onmouseover=alert(3)>问</b>", "答"]


def test_both_languages_have_every_label():
    assert ZH.keys() == EN.keys() and labels("en")["send"] == "Send"
    with pytest.raises(ValueError, match="choose one of zh, en"):
        labels("fr")
