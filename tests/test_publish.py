"""`run_publish` against a loopback fake Hub (tests/support/hub_server.py) set as HF_ENDPOINT.

The shard folder is built here (a few tiny Parquet files, a card, a manifest, plus the things
that must never be uploaded), so these tests do not depend on the render stage.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support.hub_server import GITATTRIBUTES, FakeHub

from pipelines.core.completion import mark_done
from pipelines.steps.publish import PublishError, run_publish
from pipelines.recipe import Recipe, load_recipe

TOKEN = "hf_SENTINELtoken0123456789abcdefXYZ"
TOKEN_ENV = "VCLA_TEST_HUB_TOKEN"
REPO = "forge-test/shapes-zh"
SHARDS = {
    "data/pretrain/train/pretrain-train-00000-of-00001.parquet": 5,
    "data/sft/train/sft-train-00000-of-00003.parquet": 7,
    "data/sft/train/sft-train-00001-of-00003.parquet": 6,
    "data/sft/train/sft-train-00002-of-00003.parquet": 4,
    "data/sft/validation/sft-validation-00000-of-00001.parquet": 3,
}
SHARDS_LIST = sorted(SHARDS)
CARD = ("manifest.json", "dataset_info.json", "README.md")
PUBLISHED = sorted(SHARDS) + list(CARD)


@pytest.fixture
def hub(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # tests/conftest.py turns it on
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # the fake speaks LFS basic transfer
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)  # no agent-registry call to huggingface.co
    monkeypatch.setattr(constants, "HF_DEBUG", True)  # curl-style request logs: the token must not be in them
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    with FakeHub(token=TOKEN, page_size=4) as server:  # small pages: the tree listing is paginated
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def recipe(**publish) -> Recipe:
    settings = {"repo_id": REPO, "token_env": TOKEN_ENV, "files_per_commit": 3, **publish}
    return load_recipe("demo", overrides=[f"publish.{k}={v}" for k, v in settings.items()])


def write_shard_dir(root: Path, shards: dict[str, int], salt: str = "") -> Path:
    """A completed render folder: shards, manifest, card, dataset_info, and things to leave behind."""
    entries = []
    for rel, rows in sorted(shards.items()):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        text = "图片里有什么？" * (1 + len(rel) % 3)  # a function of the path only: same path, same bytes
        table = pa.table({"id": [f"{rel}-{salt}-{r}" for r in range(rows)], "text": [text] * rows})
        pq.write_table(table, path)
        data = path.read_bytes()
        entries.append({"path": rel, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "rows": rows})
    manifest = {"format": "visualcla-forge/shards", "format_version": 1, "name": "demo", "shards": entries}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    (root / "dataset_info.json").write_text(json.dumps({"demo_sft": {"file_name": "data/sft/train"}}), encoding="utf-8")
    card = "---\nlicense: other\nconfigs:\n- config_name: sft\n  data_files: data/sft/train/*.parquet\n---\n\n"
    (root / "README.md").write_text(card + f"# shapes-zh {salt}\n\n{len(entries)} shards.\n", encoding="utf-8")
    (root / "rejected").mkdir(exist_ok=True)
    (root / "rejected" / "render.jsonl").write_text('{"reason": "too_long"}\n', encoding="utf-8")
    (root / ".tmp-README.md.x1y2").write_text("half-written", encoding="utf-8")
    (root / "data" / "sft" / "train" / "sft-train-00003.parquet.part").write_bytes(b"PAR1 unfinished")
    (root / "stats.json").write_text("{}", encoding="utf-8")
    mark_done(root)
    return root


def local_files(root: Path, paths: list[str]) -> dict[str, bytes]:
    return {p: (root / p).read_bytes() for p in paths}


def test_publish_sends_shards_and_card_byte_for_byte_in_batched_commits(hub, tmp_path, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="huggingface_hub")  # other libraries may have raised its level
    shard_dir = write_shard_dir(tmp_path / "render", SHARDS)

    result = run_publish(recipe(revision="v1", private=True), shard_dir)

    repo = hub.repos[REPO]
    assert repo.private is True and repo.repo_type == "dataset"
    stored = hub.files(REPO, "v1")
    assert stored == {".gitattributes": GITATTRIBUTES, **local_files(shard_dir, PUBLISHED)}
    assert hub.files(REPO, "main") == {".gitattributes": GITATTRIBUTES}  # the branch was created, main untouched
    blobs = hub.blobs(REPO, "v1")
    assert all(blobs[p].lfs for p in SHARDS) and not any(blobs[p].lfs for p in CARD)
    assert hub.count("PUT", r"^/_lfs/") == len(SHARDS)
    # 8 files, at most 3 per commit: 3 commits on top of the repo's initial one, card in the last
    msg = "Upload shards with visualcla-forge"
    assert hub.history(REPO, "v1") == [f"{msg} (3/3)", f"{msg} (2/3)", f"{msg} (1/3)", "initial commit"]
    assert [c["files"] for c in result["commits"]] == [PUBLISHED[0:3], PUBLISHED[3:6], PUBLISHED[6:8]]
    assert result["uploaded"] == PUBLISHED and result["unchanged"] == [] and result["deleted"] == []
    assert result["bytes_uploaded"] == sum(len(b) for b in local_files(shard_dir, PUBLISHED).values())
    assert result["stats"]["extra"]["commits"] == 3

    out = capsys.readouterr()
    assert "Authorization" in caplog.text or "authenticated: True" in caplog.text  # the debug logs were on
    for text in (out.out, out.err, caplog.text, json.dumps(result)):
        assert TOKEN not in text
    for path in tmp_path.rglob("*"):
        assert not path.is_file() or TOKEN.encode() not in path.read_bytes(), path
    assert all(TOKEN.encode() not in content for content in stored.values())


def test_rerun_of_a_finished_publish_uploads_nothing(hub, tmp_path):
    shard_dir = write_shard_dir(tmp_path / "render", SHARDS)
    run_publish(recipe(revision="v1"), shard_dir)
    history, puts, commits = hub.history(REPO, "v1"), hub.count("PUT", "."), hub.count("POST", r"/commit/")
    pages = hub.count("GET", r"/tree/")

    result = run_publish(recipe(revision="v1"), shard_dir)  # the branch exists now (409 from the Hub)

    assert result["uploaded"] == [] and result["unchanged"] == PUBLISHED and result["commits"] == []
    assert hub.history(REPO, "v1") == history
    # 9 files + 6 folders at 4 entries a page: the resume check followed every page of the listing
    assert hub.count("GET", r"/tree/") - pages == 4
    assert hub.count("PUT", ".") == puts and hub.count("POST", r"/commit/") == commits
    assert hub.count("POST", r"/preupload/") == 3  # only from the first run


def test_crash_mid_publish_then_rerun_sends_only_the_rest(hub, tmp_path):
    shard_dir = write_shard_dir(tmp_path / "render", SHARDS)
    hub.fail_commits = {2}

    with pytest.raises(PublishError) as err:
        run_publish(recipe(), shard_dir)
    assert "rerun" in str(err.value) and REPO in str(err.value)
    first = set(hub.files(REPO)) - {".gitattributes"}
    assert first == set(PUBLISHED[0:3])
    puts_before = hub.count("PUT", r"^/_lfs/")

    result = run_publish(recipe(), shard_dir)

    assert result["unchanged"] == PUBLISHED[0:3] and result["uploaded"] == PUBLISHED[3:]
    assert hub.files(REPO) == {".gitattributes": GITATTRIBUTES, **local_files(shard_dir, PUBLISHED)}
    # the failed commit's LFS objects were already stored: nothing is sent twice
    assert hub.count("PUT", r"^/_lfs/") == puts_before
    assert len(hub.lfs_store) == len(SHARDS)


def test_republish_after_rerender_uploads_changes_and_deletes_stale_shards(hub, tmp_path):
    run_publish(recipe(), write_shard_dir(tmp_path / "v1", SHARDS))
    fewer = {k: v for k, v in SHARDS.items() if "sft-train" not in k}
    fewer["data/sft/train/sft-train-00000-of-00002.parquet"] = 7
    fewer["data/sft/train/sft-train-00001-of-00002.parquet"] = 9
    shard_dir = write_shard_dir(tmp_path / "v2", fewer)  # same pretrain/validation bytes, new sft/train set

    result = run_publish(recipe(files_per_commit=50), shard_dir)

    new_paths = sorted(fewer) + list(CARD)
    assert hub.files(REPO) == {".gitattributes": GITATTRIBUTES, **local_files(shard_dir, new_paths)}
    assert result["deleted"] == sorted(p for p in SHARDS if "sft-train" in p)
    assert set(result["unchanged"]) == {p for p in fewer if "sft-train" not in p} | {"dataset_info.json"}
    assert len(result["commits"]) == 1


def test_delete_stale_false_keeps_remote_shards(hub, tmp_path):
    run_publish(recipe(), write_shard_dir(tmp_path / "v1", SHARDS))
    shard_dir = write_shard_dir(tmp_path / "v2", {k: v for k, v in SHARDS.items() if "validation" not in k})
    result = run_publish(recipe(delete_stale=False), shard_dir)
    assert result["deleted"] == [] and "data/sft/validation/sft-validation-00000-of-00001.parquet" in hub.files(REPO)


def test_dry_run_lists_files_and_touches_nothing(hub, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV)  # a dry run needs no token
    shard_dir = write_shard_dir(tmp_path / "render", SHARDS)

    result = run_publish(recipe(), shard_dir, dry_run=True)

    assert hub.requests == [] and hub.repos == {}
    sizes = {p: (shard_dir / p).stat().st_size for p in PUBLISHED}
    assert result["files"] == [{"path": p, "size": sizes[p], "action": "upload"} for p in PUBLISHED]
    out = capsys.readouterr().out
    for p in PUBLISHED:
        assert p in out and f"{sizes[p]:,} B" in out
    for never in ("rejected", "_SUCCESS", ".tmp-", ".part", "stats.json"):
        assert never not in out


def test_missing_token_names_the_variable_and_ignores_other_tokens(hub, tmp_path, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV)
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # a valid token elsewhere must not be picked up
    with pytest.raises(PublishError, match=TOKEN_ENV):
        run_publish(recipe(), write_shard_dir(tmp_path / "render", SHARDS))
    assert hub.requests == []


def test_rejected_token_is_reported_without_the_token(hub, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="huggingface_hub")  # other libraries may have raised its level
    wrong = "hf_WRONGsentinel9876543210"
    monkeypatch.setenv(TOKEN_ENV, wrong)
    hub.echo_auth_in_errors = True  # the server repeats the header in its error body

    with pytest.raises(PublishError) as err:
        run_publish(recipe(), write_shard_dir(tmp_path / "render", SHARDS))

    message = str(err.value)
    assert "401" in message and TOKEN_ENV in message
    assert wrong not in message and err.value.__cause__ is None and err.value.__suppress_context__
    assert wrong not in caplog.text and hub.repos == {}


def test_existing_public_repo_is_refused_when_private_is_asked(hub, tmp_path):
    hub.create_repo(REPO, private=False)
    with pytest.raises(PublishError, match="public"):
        run_publish(recipe(private=True), write_shard_dir(tmp_path / "render", SHARDS))
    assert hub.files(REPO) == {".gitattributes": GITATTRIBUTES}


def test_public_flag_creates_a_public_repo(hub, tmp_path):
    run_publish(recipe(private=False, repo_id="forge-test/public-one"), write_shard_dir(tmp_path / "r", SHARDS))
    assert hub.repos["forge-test/public-one"].private is False


def test_repo_id_argument_overrides_the_recipe(hub, tmp_path):
    run_publish(recipe(), write_shard_dir(tmp_path / "r", SHARDS), repo_id="other/name")
    assert set(hub.repos) == {"other/name"}


@pytest.mark.parametrize("damage, match", [
    (lambda d: (d / "_SUCCESS").unlink(), "_SUCCESS"),
    (lambda d: (d / SHARDS_LIST[1]).unlink(), "missing"),
    (lambda d: (d / SHARDS_LIST[1]).write_bytes(b"x"), "bytes"),
    (lambda d: (d / "README.md").unlink(), "README.md"),
])
def test_incomplete_shard_folder_is_refused_before_any_request(hub, tmp_path, damage, match):
    shard_dir = write_shard_dir(tmp_path / "render", SHARDS)
    damage(shard_dir)
    with pytest.raises(PublishError, match=match):
        run_publish(recipe(), shard_dir)
    assert hub.requests == []


def test_shard_changed_after_render_is_refused(hub, tmp_path):
    shard_dir = write_shard_dir(tmp_path / "render", SHARDS)
    path = shard_dir / SHARDS_LIST[0]
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF  # same size, different content
    path.write_bytes(bytes(data))
    with pytest.raises(PublishError, match="sha256"):
        run_publish(recipe(), shard_dir)
    assert hub.count("POST", r"/commit/") == 0


def test_repo_id_is_required_and_checked(tmp_path):
    shard_dir = write_shard_dir(tmp_path / "render", SHARDS)
    with pytest.raises(PublishError, match="publish.repo_id"):
        run_publish(load_recipe("demo"), shard_dir, dry_run=True)
    with pytest.raises(PublishError, match="OWNER/NAME"):
        run_publish(load_recipe("demo"), shard_dir, dry_run=True, repo_id="no-namespace")

