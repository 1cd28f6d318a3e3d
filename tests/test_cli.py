import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.cli.main import build_parser, main

COMMANDS = ["demo-data", "download", "curate", "generate", "translate", "render", "publish", "train", "build-and-train",
            "chat", "eval", "export", "serve"]


def test_top_level_help_lists_every_command():
    vcla = Path(sys.executable).parent / "vcla"  # the installed console script
    result = subprocess.run([str(vcla), "--help"], capture_output=True, text=True, check=True)
    for command in COMMANDS:
        assert f"    {command}" in result.stdout
    assert "examples:" in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_subcommand_help_describes_it_and_its_common_flags(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: vcla {command}" in out
    for flag in ("--recipe PATH", "--run-dir DIR", "--set KEY=VALUE"):
        assert flag in out
    summary = build_parser()._subparsers._group_actions[0].choices[command].description.splitlines()[0]
    assert len(summary) > 20 and summary in out


def test_serve_without_schedules_is_a_recipe_error(capsys):
    assert main(["serve"]) == 2
    assert "schedules: empty" in capsys.readouterr().err


def test_recipe_errors_exit_2_and_name_the_key(capsys):
    assert main(["train", "--set", "stages.stage1.lr.defualt=1"]) == 2
    err = capsys.readouterr().err
    assert "demo.yaml: stages.stage1.lr.defualt: unknown key" in err


def test_demo_data_command_writes_requested_corpus(tmp_path, capsys):
    assert main(["demo-data", str(tmp_path / "c"), "--num-images", "20", "--seed", "3"]) == 0
    assert "images=20" in capsys.readouterr().out
    copies = json.loads((tmp_path / "c" / "demo_manifest.json").read_text())["counts"]["noise"]
    extra = copies["exact_copies"] + copies["near_copies"]  # the corpus's duplicate images (its noise)
    assert len(list((tmp_path / "c" / "images").glob("*.jpg"))) == 20 + extra and extra > 0


def test_module_entry_point_matches_console_script():
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", "export", "--run-dir", "/nonexistent/x"],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "no trained stage here" in result.stderr


def test_demo_data_flags_are_validated(tmp_path, capsys):
    assert main(["demo-data", str(tmp_path / "c"), "--num-images", "3"]) == 2
    assert "num_images" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
