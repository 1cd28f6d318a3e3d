"""The bottom layer's primitives that every package now shares: one rule for environment-variable
names, one wording of storage errors, one folder-level atomic write and one stale-temp cleanup."""

from __future__ import annotations

import errno
import os
import sqlite3

import pytest

from common.env import check_env_name
from common.files import TMP_PREFIX, atomic_folder, clean_stale_temp_files, file_mode, staging_path
from common.storage import StorageError, storage_error, storage_message
from translators.memory import MemoryWriteError, storage_errors


@pytest.mark.parametrize("name", ["HF_TOKEN", "OPENAI_API_KEY", "_PRIVATE", "KEY2"])
def test_an_env_name_passes(name):
    assert check_env_name(name, "publish.token_env") == name


@pytest.mark.parametrize("secret", ["hf_SENTINELsecretTOKEN123", "sk-abc123", "lower_case", "2KEY", "A-B", "", "ÄKEY"])
def test_a_value_that_is_no_env_name_is_refused_and_never_shown(secret):
    with pytest.raises(ValueError, match=r"translator.api_key_env must be the NAME of an environment variable") as err:
        check_env_name(secret, "translator.api_key_env", "OPENAI_API_KEY")
    assert f"{len(secret)}-character value given is not shown" in str(err.value)
    assert not secret or secret not in str(err.value)


def test_storage_messages_share_one_wording(tmp_path):
    message = storage_message("cannot write x", "no space left on the device", "make {folder} writable", tmp_path,
                              detail="[Errno 28]", instead="choose another --run-dir", then="run it again")
    assert message.startswith("cannot write x: no space left on the device ([Errno 28]; ")
    assert message.endswith(f"MiB free on that file system). To fix: make {tmp_path} writable or choose another "
                            "--run-dir, then run it again")
    err = storage_error(OSError(errno.ENOSPC, "No space left on device"), tmp_path / "a" / "b.json")
    assert isinstance(err, StorageError) and str(err).startswith(f"cannot write {tmp_path / 'a' / 'b.json'}: no space")


def test_a_full_translation_memory_is_a_storage_error_in_the_same_words(tmp_path):
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorname = "SQLITE_FULL"
    with pytest.raises(MemoryWriteError) as err, storage_errors(tmp_path / "tm.sqlite"):
        raise full
    assert isinstance(err.value, StorageError)
    assert str(err.value).startswith(f"translation memory {tmp_path / 'tm.sqlite'}: the disk is full "
                                     "(SQLITE_FULL: database or disk is full; ")
    assert "To fix: free some space on that file system or set translator.memory_path to another place, then run " \
           "the same command again: every translation already stored is kept" in str(err.value)


def test_a_folder_is_written_under_a_temp_name_and_appears_whole(tmp_path):
    target = tmp_path / "corpus"
    with atomic_folder(target) as staging:
        assert staging == staging_path(target) and staging.name.startswith(TMP_PREFIX)
        (staging / "sub").mkdir()
        (staging / "sub" / "a.bin").write_bytes(b"a")
        os.chmod(staging / "sub" / "a.bin", 0o600)  # as safetensors writes it
        assert not target.exists()
    assert (target / "sub" / "a.bin").read_bytes() == b"a" and not staging_path(target).exists()
    assert (target / "sub" / "a.bin").stat().st_mode & 0o777 == file_mode()

    with pytest.raises(RuntimeError), atomic_folder(target) as staging:
        (staging / "half").write_bytes(b"x")
        raise RuntimeError("killed")
    assert (target / "sub" / "a.bin").is_file() and not (target / "half").exists()
    assert not staging_path(target).exists()


def test_stale_temp_files_and_folders_are_cleared(tmp_path):
    (tmp_path / f"{TMP_PREFIX}base" / "text_encoder").mkdir(parents=True)
    (tmp_path / f"{TMP_PREFIX}base" / "text_encoder" / f"{TMP_PREFIX}w").write_bytes(b"x")
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / f"{TMP_PREFIX}a.jsonl.123").write_text("{")
    (tmp_path / "records" / "a.jsonl").write_text("{}\n")
    assert clean_stale_temp_files(tmp_path / "records", recursive=False) == 1
    assert clean_stale_temp_files(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.jsonl", "records"]
