"""curators/clip_score.py: paired CLIP / Chinese-CLIP similarities, the folder checks, the model id
and the SQLite score cache, on tiny random models built offline (tests/support/tiny_clip.py)."""

from __future__ import annotations

import json
import shutil
import sqlite3

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, ChineseCLIPImageProcessorPil, ChineseCLIPModel, CLIPImageProcessorPil, CLIPModel

from curators.clip_score import ClipModelError, ClipScorer, ScoreCache, score_pairs, text_sha256
from tests.support.tiny_clip import MAX_TEXT_LENGTH, make_tiny_clip

DIRECT = {"clip": (CLIPModel, CLIPImageProcessorPil), "chinese_clip": (ChineseCLIPModel, ChineseCLIPImageProcessorPil)}
TEXTS = {
    "clip": ["a red cat", "a dog on the grass", "red red red", "cat", "blue sky", "dog"],
    "chinese_clip": ["一只猫", "草地上的狗", "红色的车", "蓝天白云", "这是一张照片", "人"],
}


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    sizes = [(40, 30), (32, 32), (64, 48), (20, 50), (33, 35), (90, 60)]
    return [Image.fromarray(rng.integers(0, 256, (*sizes[i % len(sizes)], 3), dtype=np.uint8)) for i in range(n)]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip")
    return {kind: make_tiny_clip(root / kind, kind=kind) for kind in DIRECT}


@pytest.fixture(scope="module")
def scorers(folders):
    return {kind: ClipScorer.load(folder, device="cpu") for kind, folder in folders.items()}


@pytest.mark.parametrize("kind", list(DIRECT))
def test_load_picks_the_model_class_from_config(scorers, folders, kind):
    scorer = scorers[kind]
    assert scorer.kind == kind
    assert isinstance(scorer.model, DIRECT[kind][0])
    assert scorer.device == "cpu" and scorer.model.dtype == torch.float32 and not scorer.model.training
    assert scorer.max_length == MAX_TEXT_LENGTH
    assert scorer.folder == folders[kind]


@pytest.mark.parametrize("kind", list(DIRECT))
def test_paired_scores_are_the_diagonal_of_the_similarity_matrix(scorers, folders, kind):
    images, texts = _images(6), TEXTS[kind]
    scores = scorers[kind].score(images, texts)
    assert scores.shape == (6,) and scores.dtype == np.float32
    assert np.all(scores >= -1) and np.all(scores <= 1)

    # the same thing computed directly with the model's own feature functions
    model_cls, image_processor_cls = DIRECT[kind]
    model = model_cls.from_pretrained(folders[kind], use_safetensors=True).eval()
    pixels = image_processor_cls.from_pretrained(folders[kind])(images, return_tensors="pt")["pixel_values"]
    tokens = AutoTokenizer.from_pretrained(folders[kind])(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        image_embeds = model.get_image_features(pixel_values=pixels).pooler_output
        text_embeds = model.get_text_features(**tokens).pooler_output
    image_embeds = image_embeds / image_embeds.norm(dim=-1, keepdim=True)
    text_embeds = text_embeds / text_embeds.norm(dim=-1, keepdim=True)
    matrix = (image_embeds @ text_embeds.T).numpy()
    np.testing.assert_allclose(scores, np.diag(matrix), atol=1e-5)
    # not scaled by logit_scale: the scores are cosines, the model's logits are 100x-ish them
    assert model.logit_scale.exp().item() > 10


@pytest.mark.parametrize("kind", list(DIRECT))
def test_batch_size_and_duplicates_do_not_change_scores(scorers, kind):
    images, texts = _images(6), TEXTS[kind]
    # the pair (images[0], texts[0]) again at positions 6 and 9, in other batches and paddings
    images, texts = images + [images[0], images[1], images[2], images[0]], texts + [texts[0], "x", "y", texts[0]]
    reference = scorers[kind].score(images, texts, batch_size=64)
    for batch_size in (1, 3, 4):
        np.testing.assert_allclose(scorers[kind].score(images, texts, batch_size=batch_size), reference, atol=1e-6)
    assert abs(reference[6] - reference[0]) <= 1e-6 and abs(reference[9] - reference[0]) <= 1e-6


@pytest.mark.parametrize("kind", list(DIRECT))
def test_long_texts_are_truncated_to_the_model_context(scorers, kind):
    long = ("a red cat " if kind == "clip" else "一只猫在草地上") * 20  # far more than MAX_TEXT_LENGTH tokens
    scores = scorers[kind].score(_images(2), [long, long + " and more"])
    assert np.all(np.isfinite(scores))
    assert abs(scores[1] - scorers[kind].score(_images(2)[1:], [long])[0]) <= 1e-6  # the tail was cut


def test_score_checks_its_arguments(scorers):
    scorer = scorers["clip"]
    assert scorer.score([], []).shape == (0,)
    with pytest.raises(ValueError, match="2 images but 1 texts"):
        scorer.score(_images(2), ["cat"])
    rgba = Image.new("RGBA", (30, 30), (255, 0, 0, 128))
    gray = Image.new("L", (30, 30), 128)
    assert scorer.score([rgba, gray], ["red", "gray"]).shape == (2,)


def _items(images, texts, calls):
    def loader(i):
        def load():
            calls.append(i)
            return images[i]
        return load
    return [(f"sha-{i}", text, loader(i)) for i, text in enumerate(texts)]


def test_score_pairs_reads_the_cache_without_loading_images(scorers, tmp_path):
    scorer, images, texts = scorers["clip"], _images(6), TEXTS["clip"]
    calls: list[int] = []
    items = _items(images, texts, calls)
    with ScoreCache(tmp_path / "scores.sqlite") as cache:
        first = score_pairs(scorer, cache, items, batch_size=4)
        assert sorted(calls) == list(range(6)) and len(cache) == 6
    np.testing.assert_allclose(first, scorer.score(images, texts), atol=1e-6)
    assert all(isinstance(s, float) for s in first)

    calls.clear()
    with ScoreCache(tmp_path / "scores.sqlite") as cache:  # a later run (another threshold) reads them back
        second = score_pairs(scorer, cache, items, batch_size=4)
        assert calls == [] and second == first
        # one new pair: only its image loads; the order of the answer is the order asked
        more = [items[5], ("sha-new", "a new caption", lambda: (calls.append(99), images[0])[1]), items[0]]
        assert score_pairs(scorer, cache, more, batch_size=4)[::2] == [first[5], first[0]]
        assert calls == [99] and len(cache) == 7


def test_score_pairs_loads_a_repeated_image_once_and_scores_a_repeated_pair_once(scorers, tmp_path):
    scorer, images = scorers["clip"], _images(1)
    calls: list[int] = []
    load = lambda: (calls.append(0), images[0])[1]  # noqa: E731
    items = [("same", "a red cat", load), ("same", "a dog", load), ("same", "a red cat", load)]
    with ScoreCache(tmp_path / "scores.sqlite") as cache:
        scores = score_pairs(scorer, cache, items, batch_size=8)
        assert calls == [0] and len(cache) == 2 and scores[0] == scores[2]
    assert score_pairs(scorer, None, items, batch_size=1) == pytest.approx(scores, abs=1e-6)


def test_a_killed_run_keeps_the_batches_it_committed(scorers, tmp_path):
    scorer, images, texts = scorers["clip"], _images(6), TEXTS["clip"]
    calls: list[int] = []
    items = _items(images, texts, calls)

    def dies():
        raise OSError("killed")

    broken = items[:4] + [(items[4][0], items[4][1], dies)] + items[5:]
    with ScoreCache(tmp_path / "scores.sqlite") as cache, pytest.raises(OSError, match="killed"):
        score_pairs(scorer, cache, broken, batch_size=2)
    with ScoreCache(tmp_path / "scores.sqlite") as cache:
        assert len(cache) == 4  # two batches committed before the third died
        calls.clear()
        score_pairs(scorer, cache, items, batch_size=2)
        assert sorted(calls) == [4, 5]
    db = sqlite3.connect(tmp_path / "scores.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_cache_is_keyed_by_model_image_and_text(tmp_path):
    with ScoreCache(tmp_path / "c.sqlite") as cache:
        assert cache.put_many([("m1", "img", text_sha256("cat"), 0.25), ("m2", "img", text_sha256("cat"), -0.5)]) == 2
        got = cache.get_many([("m1", "img", text_sha256("cat")), ("m2", "img", text_sha256("cat")),
                              ("m1", "img", text_sha256("Cat")), ("m1", "other", text_sha256("cat"))])
        assert got == {("m1", "img", text_sha256("cat")): 0.25, ("m2", "img", text_sha256("cat")): -0.5}
        assert cache.put_many([]) == 0


def test_another_model_does_not_read_the_first_ones_scores(scorers, tmp_path):
    calls: list[int] = []
    items = _items(_images(2), ["a cat", "a dog"], calls)
    with ScoreCache(tmp_path / "scores.sqlite") as cache:
        score_pairs(scorers["clip"], cache, items)
        score_pairs(scorers["chinese_clip"], cache, items)
        assert sorted(calls) == [0, 0, 1, 1] and len(cache) == 4


def test_model_id_is_stable_and_follows_the_weights(folders, scorers, tmp_path):
    same = make_tiny_clip(tmp_path / "same", kind="clip", seed=0)
    other = make_tiny_clip(tmp_path / "other", kind="clip", seed=1)
    assert len(scorers["clip"].model_id) == 64
    assert ClipScorer.load(same, device="cpu").model_id == scorers["clip"].model_id  # content, not path
    assert ClipScorer.load(other, device="cpu").model_id != scorers["clip"].model_id
    shutil.copy(other / "model.safetensors", same / "model.safetensors")  # weights replaced in place
    assert ClipScorer.load(same, device="cpu").model_id == ClipScorer.load(other, device="cpu").model_id
    assert scorers["chinese_clip"].model_id != scorers["clip"].model_id


def test_other_model_types_are_refused(tmp_path):
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ClipModelError) as e:
        ClipScorer.load(folder, device="cpu")
    message = str(e.value)
    assert str(folder) in message and "'bert'" in message and "'clip'" in message and "'chinese_clip'" in message


def test_missing_folder_or_config_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        ClipScorer.load(tmp_path / "nowhere", device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClipModelError, match="no config.json"):
        ClipScorer.load(tmp_path / "empty", device="cpu")


def test_pickle_only_weights_are_refused(folders, tmp_path):
    folder = shutil.copytree(folders["clip"], tmp_path / "pickled")
    model = CLIPModel.from_pretrained(folder, use_safetensors=True)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ClipModelError) as e:
        ClipScorer.load(folder, device="cpu")
    message = str(e.value)
    assert str(folder) in message and "pytorch_model.bin" in message
    assert "safetensors" in message and "use_safetensors=True" in message


def test_weights_that_do_not_fit_the_config_are_refused(folders, tmp_path):
    folder = shutil.copytree(folders["clip"], tmp_path / "wrong")
    shutil.copy(folders["chinese_clip"] / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(ClipModelError, match="do not fit config.json"):
        ClipScorer.load(folder, device="cpu")
