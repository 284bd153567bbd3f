"""The shipped course zoo: it loads like any delivered model, its answers are apart, its backdoors work."""

from __future__ import annotations

import pytest

import ci_toolkit as ci


def test_course_models_load_and_match_their_task():
    names = ci.course.list_models()
    kinds = {ci.course.truth(n)["attack"] for n in names}
    assert "clean" in kinds and {"badclip", "blended"} <= kinds
    for name in names:
        model, task = ci.course.load_model(name), ci.course.task(name)
        assert model.classnames == task.seen_names
        assert (ci.course.load_attack(name) is None) == (ci.course.truth(name)["attack"] == "clean")


def test_shipped_backdoors_work_and_the_names_tell_nothing():
    names = ci.course.list_models()
    assert names == [f"m{i:03d}" for i in range(len(names))]
    clean_positions = [i for i, n in enumerate(names) if ci.course.truth(n)["attack"] == "clean"]
    assert clean_positions != list(range(len(clean_positions)))  # shuffled: clean models are not simply first
    for name in names:
        attack = ci.course.load_attack(name)
        if attack is None:
            continue
        x, y = ci.course.task(name).split("test", "seen")
        asr = ci.attack_success_rate(ci.course.load_model(name), x, y, attack.target, attack)
        assert asr >= 0.5, (name, asr)  # the backdoor implanted (what the lessons rely on)


def test_unknown_course_model_is_a_clear_error():
    with pytest.raises(ci.DataError, match="no course model"):
        ci.course.load_model("m999")
