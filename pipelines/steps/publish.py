"""Publish a finished shard folder to a Hugging Face Hub dataset repo.

    result = run_publish(recipe, Path("runs/demo/render"))              # upload
    result = run_publish(recipe, Path("runs/demo/render"), dry_run=True)  # list, upload nothing

What goes up is an allow-list, not "the folder minus some junk": the shards that
`manifest.json` lists (each checked for size, and for sha256 before upload) plus the card
files `README.md`, `manifest.json`, `dataset_info.json`. `rejected/` (source text we may not
be allowed to share), `_SUCCESS`, stats and temp files therefore never leave the machine.

The upload is resumable: the target revision is listed first and a file whose size and
content hash already match is not sent again, so a rerun after a crash sends only what is
missing and a rerun of a finished publish makes no commit at all. Files go up in commits of
at most `publish.files_per_commit`, shards first and the card last, so the card that
announces a set of shards lands together with the last of them. With `publish.delete_stale`
the last commit also deletes `data/*.parquet` files that the manifest no longer lists (a
re-render with a different shard count), since the card's `data/<config>/<split>/*.parquet`
globs would otherwise pick them up.

The token comes only from the environment variable named by `publish.token_env` (never from
a saved login), is handed to `HfApi` and nowhere else, and is scrubbed from every error
message this module raises. The Hub endpoint is `HF_ENDPOINT`, read at call time.
Uploads use hf_xet when it is installed, as the Hub prefers; set `HF_HUB_DISABLE_XET=1`
before starting Python to use plain LFS instead (e.g. for a Hub mirror without xet).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.env import check_env_name
from common.files import read_json, sha256_file
from common.layout import DONE_FILE, MANIFEST_FILE, MANIFEST_FORMAT
from pipelines.core.completion import is_done
from pipelines.core.errors import StepFailed
from pipelines.core.stats import StepStats
from pipelines.core.step import Step
from pipelines.recipe import PublishConfig, Recipe

logger = logging.getLogger(__name__)

REPO_TYPE = "dataset"
CARD_FILES = (MANIFEST_FILE, "dataset_info.json", "README.md")  # uploaded last, README last of all
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


class PublishError(RuntimeError):
    """Publishing could not start or finish; the message says what, where and what to do."""


@dataclass(frozen=True)
class LocalFile:
    path_in_repo: str
    local: Path
    size: int
    sha256: str | None = None
    """From the manifest for shards (checked before upload); None for the card files."""


def run_publish(recipe: Recipe, shard_dir: Path, dry_run: bool = False, repo_id: str | None = None) -> dict[str, Any]:
    """Push `shard_dir` (a completed render folder) to `repo_id` or `recipe.publish.repo_id`.

    Returns what happened: `files` (path, size, action), `uploaded`, `unchanged`, `deleted`,
    `commits` (oid, message, files) and `stats` (a `StepStats` dict). A dry run needs no
    token and no network; every selected file is listed with action "upload"."""
    cfg = recipe.publish
    _check_env_name(cfg.token_env)
    repo_id = _check_repo_id(repo_id or cfg.repo_id)
    files = select_files(Path(shard_dir))
    if dry_run:
        return _dry_run(cfg, repo_id, files)
    token = _read_token(cfg.token_env)
    with _scrubbed_errors(token, cfg, repo_id):
        result = _publish(cfg, repo_id, files, token)
    stats = _stats(result)
    result["stats"] = stats.to_dict()
    print(stats.table())
    return result


def check_settings(cfg: PublishConfig, dry_run: bool = False) -> None:
    """What `run_publish` refuses before it reads a file, checked alone (`vcla`'s pre-flight): the
    token variable's name, `publish.repo_id` and, unless a dry run, that the token is set. PublishError."""
    _check_env_name(cfg.token_env)
    _check_repo_id(cfg.repo_id)
    if not dry_run:
        _read_token(cfg.token_env)


def select_files(shard_dir: Path) -> list[LocalFile]:
    """The allow-list: manifest shards (sorted), then the card files. Checks the folder is a
    complete render whose shards exist with the sizes the manifest gives."""
    if not is_done(shard_dir):
        raise PublishError(f"{shard_dir}: not a completed shard folder (no {DONE_FILE}); run `vcla render` first")
    manifest_path = shard_dir / MANIFEST_FILE
    try:
        manifest = read_json(manifest_path)
    except (OSError, ValueError) as e:
        raise PublishError(f"{manifest_path}: cannot read the manifest ({e}); rerun `vcla render`") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise PublishError(f"{manifest_path}: not a {MANIFEST_FORMAT} manifest; is this a render folder?")
    shards = [_shard_entry(shard_dir, entry, manifest_path) for entry in manifest.get("shards", [])]
    card = []
    for name in CARD_FILES:
        path = shard_dir / name
        if not path.is_file():
            raise PublishError(f"{path}: missing; a shard folder needs {', '.join(CARD_FILES)} (rerun `vcla render`)")
        card.append(LocalFile(name, path, path.stat().st_size))
    return sorted(shards, key=lambda f: f.path_in_repo) + card


def _shard_entry(shard_dir: Path, entry: dict[str, Any], manifest_path: Path) -> LocalFile:
    rel = str(entry.get("path", ""))
    if not (rel.startswith("data/") and rel.endswith(".parquet")) or ".." in rel.split("/"):
        raise PublishError(f"{manifest_path}: shard path {rel!r} is not data/**/*.parquet")
    path = shard_dir / rel
    if not path.is_file():
        raise PublishError(f"{path}: listed in {manifest_path} but missing; rerun `vcla render`")
    size = path.stat().st_size
    if size != entry.get("bytes"):
        raise PublishError(f"{path}: {size} bytes, but the manifest says {entry.get('bytes')}; rerun `vcla render`")
    return LocalFile(rel, path, size, entry.get("sha256"))


def _check_repo_id(repo_id: str | None) -> str:
    if not repo_id:
        raise PublishError("no Hub repo given: set publish.repo_id in the recipe (or --set publish.repo_id=OWNER/NAME)")
    if not _REPO_ID.match(repo_id):
        raise PublishError(f"publish.repo_id {repo_id!r}: expected OWNER/NAME, e.g. my-org/visualcla-zh")
    return repo_id


def _check_env_name(env_name: str) -> None:
    """publish.token_env names a variable; a token pasted there would be in the manifest's recipe,
    which is uploaded. Refuse it (without printing it) before anything is read or sent."""
    try:
        check_env_name(env_name, "publish.token_env", "HF_TOKEN")
    except ValueError as err:
        raise PublishError(
            f"{err}. Set it back, and since the render folder's {MANIFEST_FILE} records the recipe, rerun "
            "`vcla render` before publishing") from None


def _read_token(env_name: str) -> str:
    token = os.environ.get(env_name, "").strip()
    if not token:
        raise PublishError(
            f"no Hub token: the environment variable {env_name} (publish.token_env) is not set or empty; "
            f"export a write token as {env_name}, or use --dry-run to see what would be uploaded"
        )
    return token


def _dry_run(cfg: PublishConfig, repo_id: str, files: list[LocalFile]) -> dict[str, Any]:
    total = sum(f.size for f in files)
    n_commits = -(-len(files) // cfg.files_per_commit)
    print(f"[publish] dry run: would upload {len(files)} files ({total:,} bytes) to dataset {repo_id}"
          f" @ {cfg.revision} ({'private' if cfg.private else 'public'}) in at most {n_commits} commit(s);"
          " files already on the Hub with the same content are skipped at upload time")
    width = max(len(f.path_in_repo) for f in files)
    for f in files:
        print(f"  {f.path_in_repo:<{width}}  {f.size:>14,} B")
    return {
        "repo_id": repo_id, "revision": cfg.revision, "private": cfg.private, "dry_run": True,
        "files": [{"path": f.path_in_repo, "size": f.size, "action": "upload"} for f in files],
        "uploaded": [], "unchanged": [], "deleted": [], "commits": [], "bytes_uploaded": 0,
    }


# ---- the upload ----------------------------------------------------------------------------


def _publish(cfg: PublishConfig, repo_id: str, files: list[LocalFile], token: str) -> dict[str, Any]:
    from huggingface_hub import HfApi, constants

    if constants.is_offline_mode():
        raise PublishError("HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it (or use --dry-run)")
    endpoint = os.environ.get("HF_ENDPOINT", "").strip().rstrip("/") or constants.ENDPOINT
    api = HfApi(endpoint=endpoint, token=token, library_name="visualcla-forge")
    _ensure_repo(api, repo_id, cfg)
    remote = _remote_files(api, repo_id, cfg.revision)
    hashes = {f.path_in_repo: _verified_sha256(f) for f in files}
    changed = [f for f in files if not _same_as_remote(f, hashes[f.path_in_repo], remote.get(f.path_in_repo))]
    local_paths = {f.path_in_repo for f in files}
    stale = sorted(p for p in remote if p.startswith("data/") and p.endswith(".parquet") and p not in local_paths)
    stale = stale if cfg.delete_stale else []
    commits = _commit_in_batches(api, repo_id, cfg, changed, hashes, stale)
    uploaded = {f.path_in_repo for f in changed}
    return {
        "repo_id": repo_id, "revision": cfg.revision, "private": cfg.private, "dry_run": False,
        "url": f"{endpoint}/datasets/{repo_id}",
        "files": [{"path": f.path_in_repo, "size": f.size,
                   "action": "upload" if f.path_in_repo in uploaded else "unchanged"} for f in files],
        "uploaded": [f.path_in_repo for f in changed],
        "unchanged": [f.path_in_repo for f in files if f.path_in_repo not in uploaded],
        "deleted": stale, "commits": commits, "bytes_uploaded": sum(f.size for f in changed),
    }


def _ensure_repo(api: Any, repo_id: str, cfg: PublishConfig) -> None:
    """Create the repo (private as configured) and the branch if missing.

    An existing public repo is refused when the recipe asks for a private one: `exist_ok`
    keeps the Hub's visibility, and silently publishing meant-to-be-private data is the one
    mistake that cannot be taken back."""
    api.create_repo(repo_id, repo_type=REPO_TYPE, private=cfg.private, exist_ok=True)
    info = api.dataset_info(repo_id)
    if cfg.private and not info.private:
        raise PublishError(
            f"dataset {repo_id} already exists and is public, but publish.private is true; make it private on "
            "the Hub, choose another publish.repo_id, or set publish.private=false to publish it publicly"
        )
    if not cfg.private and info.private:
        logger.warning("dataset %s already exists and is private; publish.private=false does not change that", repo_id)
    if cfg.revision != "main":
        api.create_branch(repo_id, branch=cfg.revision, repo_type=REPO_TYPE, exist_ok=True)


def _remote_files(api: Any, repo_id: str, revision: str) -> dict[str, Any]:
    from huggingface_hub import RepoFile

    entries = api.list_repo_tree(repo_id, recursive=True, repo_type=REPO_TYPE, revision=revision)
    return {e.path: e for e in entries if isinstance(e, RepoFile)}


def _verified_sha256(f: LocalFile) -> str:
    digest = sha256_file(f.local)
    if f.sha256 is not None and digest != f.sha256:
        raise PublishError(
            f"{f.local}: sha256 {digest[:12]}... differs from the manifest's {f.sha256[:12]}...; "
            "the file changed after rendering: rerun `vcla render`"
        )
    return digest


def _same_as_remote(f: LocalFile, sha256: str, remote: Any) -> bool:
    """LFS files are compared by sha256, regular ones by their git blob id; both by size."""
    from huggingface_hub.utils.sha import git_hash

    if remote is None or remote.size != f.size:
        return False
    if remote.lfs is not None:
        return remote.lfs.sha256 == sha256
    return remote.blob_id == git_hash(f.local.read_bytes())


def _commit_in_batches(
    api: Any, repo_id: str, cfg: PublishConfig, changed: list[LocalFile], hashes: dict[str, str], stale: list[str],
) -> list[dict[str, Any]]:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    batches = [changed[i:i + cfg.files_per_commit] for i in range(0, len(changed), cfg.files_per_commit)]
    if stale and not batches:
        batches = [[]]
    commits = []
    for i, batch in enumerate(batches, 1):
        ops: list[Any] = []
        for f in batch:
            op = CommitOperationAdd(path_in_repo=f.path_in_repo, path_or_fileobj=str(f.local))
            op.upload_info.sha256 = bytes.fromhex(hashes[f.path_in_repo])  # already hashed; spare a re-read
            ops.append(op)
        if i == len(batches):
            ops += [CommitOperationDelete(path_in_repo=p) for p in stale]
        message = cfg.commit_message if len(batches) == 1 else f"{cfg.commit_message} ({i}/{len(batches)})"
        info = api.create_commit(repo_id, ops, commit_message=message, repo_type=REPO_TYPE, revision=cfg.revision)
        commits.append({"oid": info.oid, "message": message, "files": [f.path_in_repo for f in batch],
                        "deleted": stale if i == len(batches) else []})
        logger.info("publish: commit %d/%d to %s@%s: %d files, %d deletions -> %s", i, len(batches), repo_id,
                    cfg.revision, len(batch), len(ops) - len(batch), info.oid[:12])
    return commits


def _stats(result: dict[str, Any]) -> StepStats:
    stats = StepStats(step="publish")
    for f in result["files"]:
        group = "shards" if f["path"].startswith("data/") else "card"
        stats.count_read(group)
        stats.count_kept(group)
    stats.extra.update({"files_uploaded": len(result["uploaded"]), "files_unchanged": len(result["unchanged"]),
                        "files_deleted": len(result["deleted"]), "commits": len(result["commits"]),
                        "bytes_uploaded": result["bytes_uploaded"]})
    return stats


# ---- errors --------------------------------------------------------------------------------


@contextmanager
def _scrubbed_errors(token: str, cfg: PublishConfig, repo_id: str) -> Iterator[None]:
    """Turn any failure into a PublishError whose message cannot contain the token.

    Raised `from None` so the original exception (whose text we do not control: a proxy may
    echo headers) is not printed as the cause."""
    try:
        yield
    except PublishError as e:
        raise PublishError(_scrub(str(e), token)) from None
    except Exception as e:  # noqa: BLE001 - every failure is reported, scrubbed, as one error type
        raise PublishError(_scrub(_explain(e, cfg, repo_id), token)) from None


def _explain(e: Exception, cfg: PublishConfig, repo_id: str) -> str:
    status = getattr(getattr(e, "response", None), "status_code", None)
    where = f"dataset {repo_id} @ {cfg.revision}"
    detail = " ".join(str(e).split()) or type(e).__name__  # the Hub's own words, on one line
    if status == 401:
        return (f"{where}: the Hub rejected the token in {cfg.token_env} (401 Unauthorized); "
                f"check that {cfg.token_env} holds a valid token. Hub said: {detail}")
    if status == 403:
        return (f"{where}: the token in {cfg.token_env} may not write here (403 Forbidden); "
                f"use a token with write access to the namespace. Hub said: {detail}")
    return (f"{where}: publishing failed: {type(e).__name__}: {detail}. Files already committed stay on the Hub; "
            "rerun the same command to upload the rest")


def _scrub(text: str, token: str) -> str:
    return text.replace(token, "<token>") if token else text


@dataclass(frozen=True)
class PublishOptions:
    dry_run: bool = False
    """List what would be uploaded, upload nothing (`vcla publish --dry-run`)."""
    if_configured: bool = False
    """Skip quietly when `publish.repo_id` is unset (build-and-train) instead of failing."""
    partial: bool = False


def run(recipe: Recipe, options: PublishOptions) -> dict[str, Any]:
    if recipe.publish.repo_id is None and options.if_configured:
        print("[publish] publish.repo_id is not set; nothing to publish")
        return {"skipped": "publish.repo_id is not set"}
    try:
        result = run_publish(recipe, recipe.run_dir / "render", dry_run=options.dry_run)
    except PublishError as e:
        raise StepFailed(f"publish: {e}") from None
    return {k: result.get(k) for k in ("commits", "bytes_uploaded") if k in result}


STEP = Step("publish", run, output=lambda r: None, section=lambda r: r.publish, upstream="render",
            module=__name__, options=PublishOptions)
