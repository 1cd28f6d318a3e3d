"""The demo's multiple-choice training items (pipelines/demo/suites.py): asked as the choice suite asks them
(`answer_with: option`) and answered with the right option's text, which the suite's scorer maps back to
its letter."""

import json
import random

from evaluators.choice import ANSWER_WITH, extract_choice
from pipelines.demo.scenes import sample_scene
from pipelines.demo.suites import CHOICE_ANSWER_WITH, write_choice_training


def test_choice_training_items_answer_with_the_right_options_text(tmp_path):
    rng = random.Random(3)
    scenes = [sample_scene(i, rng) for i in range(40)]
    assert write_choice_training(tmp_path / "choice.json", scenes, seed=0) == 40
    items = json.loads((tmp_path / "choice.json").read_text(encoding="utf-8"))
    letters_right = []
    for item, scene in zip(items, scenes):
        prompt, answer = (t["value"] for t in item["conversations"])
        lines = prompt.split("\n")
        assert lines[0] == "<image>" and lines[-1] == ANSWER_WITH[CHOICE_ANSWER_WITH]
        options = [(line[0], line[3:]) for line in lines[2:-1]]
        assert [letter for letter, _ in options] == list("ABCD") and answer in dict(options).values()
        truth = {s.color_zh for s in scene.shapes} | {s.kind_zh for s in scene.shapes}
        assert answer in truth  # a colour or a shape the scene really has
        letters_right.append(extract_choice(answer, options))
    assert None not in letters_right and len(set(letters_right)) == 4  # the right letter moves around
