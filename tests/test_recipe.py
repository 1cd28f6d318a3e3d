from pathlib import Path

import pytest

from pipelines.recipe import BUNDLED_RECIPES, RecipeError, load_recipe

REPO = Path(__file__).resolve().parent.parent

MINIMAL = """\
name: mini
model:
  vision: {init: {hidden_size: 32}}
  llm: {init: {hidden_size: 32}}
stages:
  s1: {data: pretrain, template: none}
  s2: {data: sft, init_from: s1}
"""


def write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["demo", "visualcla-7b", "chinese-llava-7b", "ziya-visual-14b"])
def test_bundled_recipes_validate(name):
    recipe = load_recipe(name)
    assert recipe.file == BUNDLED_RECIPES / f"{name}.yaml"
    assert recipe.name == name
    assert recipe.run_dir == Path("runs") / name
    assert list(recipe.stages) == ["stage1", "stage2"]
    assert recipe.stages["stage2"].init_from == "stage1"


def test_presets_match_reference_architectures():
    vcla = load_recipe("visualcla-7b").model
    assert (vcla.connector.kind, vcla.connector.num_queries, vcla.vision.keep_cls, vcla.vision.feature_layer) == (
        "resampler", 64, True, -1)
    llava = load_recipe("chinese-llava-7b").model
    assert (llava.connector.kind, llava.vision.feature_layer, llava.vision.keep_cls) == ("linear", -2, False)
    ziya = load_recipe("ziya-visual-14b")
    assert (ziya.model.vision.kind, ziya.model.connector.kind, ziya.model.connector.num_queries) == ("blip2", "qformer", 32)
    stage1 = ziya.stages["stage1"].trainable
    assert (stage1.vision, stage1.connector, stage1.projection, stage1.llm) == ("frozen", "frozen", "full", "frozen")


def test_unknown_key_names_file_and_key(tmp_path):
    path = write(tmp_path, MINIMAL + "render:\n  shard_size_mbb: 3\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert str(path) in str(e.value)
    assert "render.shard_size_mbb: unknown key" in str(e.value)


def test_wrong_type_names_key_and_value(tmp_path):
    path = write(tmp_path, MINIMAL + "download:\n  processes: many\n")
    with pytest.raises(RecipeError, match=r"download\.processes: .*integer.*'many'"):
        load_recipe(path)


def test_out_of_range_and_nested_list_errors(tmp_path):
    path = write(tmp_path, MINIMAL + "sources:\n  - {name: a, kind: llava, path: x.json}\n  - {name: b, kind: tarball, path: y}\n")
    with pytest.raises(RecipeError, match=r"sources\[1\]\.kind"):
        load_recipe(path)


def test_missing_required_key(tmp_path):
    path = write(tmp_path, "name: mini\nstages: {}\n")
    with pytest.raises(RecipeError, match=r"model: required key is missing"):
        load_recipe(path)


def test_missing_name_and_bad_yaml(tmp_path):
    with pytest.raises(RecipeError, match="name: required"):
        load_recipe(write(tmp_path, "stages: {}\n"))
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(write(tmp_path, "name: [unclosed\n", "bad.yaml"))
    with pytest.raises(RecipeError, match="recipe file not found .*bundled recipes: .*demo"):
        load_recipe(tmp_path / "nope.yaml")


def test_missing_file_names_key_and_file(tmp_path):
    text = MINIMAL + f"sources:\n  - {{name: a, kind: llava, path: {tmp_path}/absent.json}}\n"
    recipe = load_recipe(write(tmp_path, text))  # loading does not require data to exist yet
    with pytest.raises(RecipeError) as e:
        recipe.require_files("sources")
    msg = str(e.value)
    assert "sources[0].path" in msg and f"{tmp_path}/absent.json" in msg and "--set sources.0.path=" in msg
    (tmp_path / "absent.json").write_text("[]")
    recipe.require_files("sources")


def test_overrides_are_typed_and_validated(tmp_path):
    path = write(tmp_path, MINIMAL + "sources:\n  - {name: a, kind: llava, path: x.json}\n")
    recipe = load_recipe(path, ["stages.s1.epochs=2.5", "download.incremental=false",
                                "sources.0.path=/data/y.json", "translator.glossary={Starbucks: 星巴克}"])
    assert recipe.stages["s1"].epochs == 2.5
    assert recipe.download.incremental is False
    assert recipe.sources[0].path == "/data/y.json"
    assert recipe.translator.glossary == {"Starbucks": "星巴克"}
    with pytest.raises(RecipeError, match=r"stages\.s1\.epochz: unknown key"):
        load_recipe(path, ["stages.s1.epochz=2"])
    with pytest.raises(RecipeError, match="has no item 3"):
        load_recipe(path, ["sources.3.path=z"])
    with pytest.raises(RecipeError, match="expected dotted.key=value"):
        load_recipe(path, ["stages.s1.epochs"])


def test_interpolation_and_run_dir(tmp_path):
    text = MINIMAL + "translator:\n  memory_path: ${run_dir}/tm.sqlite\n  memory_import: ['${recipe_dir}/tm.jsonl']\n"
    path = write(tmp_path, text)
    assert load_recipe(path).translator.memory_path == "runs/mini/tm.sqlite"
    recipe = load_recipe(path, run_dir=tmp_path / "elsewhere")
    assert recipe.translator.memory_path == f"{tmp_path}/elsewhere/tm.sqlite"
    assert recipe.translator.memory_import == [f"{tmp_path}/tm.jsonl"]
    with pytest.raises(RecipeError, match=r"translator\.memory_path: unknown variable \$\{home\}"):
        load_recipe(write(tmp_path, MINIMAL + "translator: {memory_path: '${home}/x'}\n", "v.yaml"))


def test_semantic_checks(tmp_path):
    bad_order = MINIMAL.replace("s2: {data: sft, init_from: s1}", "s2: {data: sft, init_from: s3}")
    with pytest.raises(RecipeError, match="init_from: 's3' is not an earlier stage"):
        load_recipe(write(tmp_path, bad_order))
    both = MINIMAL.replace("vision: {init: {hidden_size: 32}}", "vision: {init: {hidden_size: 32}, path: /m}")
    with pytest.raises(RecipeError, match="model.vision: .*exactly one of `path`"):
        load_recipe(write(tmp_path, both, "b.yaml"))
    with pytest.raises(RecipeError, match="translator.api_key_env: .*NAME of an environment variable"):
        load_recipe(write(tmp_path, MINIMAL + "translator: {api_key_env: sk-abc123}\n", "k.yaml"))
    with pytest.raises(RecipeError, match="source names must be unique"):
        load_recipe(write(tmp_path, MINIMAL + "sources:\n  - {name: a, kind: llava, path: x}\n  - {name: a, kind: gqa, path: y}\n", "d.yaml"))
    with pytest.raises(RecipeError, match=r"schedules\[0\]: .*exactly one of `cron` or `interval_s`"):
        load_recipe(write(tmp_path, MINIMAL + "schedules:\n  - {flow: download}\n", "s.yaml"))


def test_defaults_are_interpolated_too(tmp_path):
    recipe = load_recipe(write(tmp_path, MINIMAL), run_dir=tmp_path / "run")
    assert recipe.translator.memory_path == f"{tmp_path}/run/translation-memory.sqlite"


def test_stage_names_must_be_safe_folder_names(tmp_path):
    recipe = (REPO / "recipes" / "demo.yaml").read_text().replace("  stage2:\n", "  ../escape:\n", 1)
    (tmp_path / "r.yaml").write_text(recipe)
    with pytest.raises(RecipeError, match=r"stage names become folder names.*\.\./escape"):
        load_recipe(tmp_path / "r.yaml", run_dir=tmp_path)


def test_secret_pasted_into_env_name_is_refused_and_not_echoed():
    secret = "hf_SENTINELsecretTOKEN123"
    with pytest.raises(RecipeError) as err:
        load_recipe(REPO / "recipes" / "demo.yaml", [f"publish.token_env={secret}"])
    assert "publish.token_env" in str(err.value) and "NAME of an environment variable" in str(err.value)
    assert secret not in str(err.value)
