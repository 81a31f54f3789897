"""Published skills read files only from inside MASH_SKILLS_DIR: a skill's text goes to the
model, so a location elsewhere would let an API client hand the model any file."""

from __future__ import annotations

import json
import logging

import pytest

from mash_runtime.models import PublishedSkill
from mash_runtime.host_sync import get_agent_row
from tests.api.conftest import assert_error, data, post_json, script

SECRET = "TOP-SECRET-do-not-serve"
SKILL_TEXT = "Greet the user twice."


@pytest.fixture
def skills_dir(tmp_path, settings):
    root = tmp_path / "skills"
    (root / "greet").mkdir(parents=True)
    (root / "greet" / "SKILL.md").write_text(f"---\nname: greet\n---\n{SKILL_TEXT}\n", encoding="utf-8")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "SKILL.md").write_text(f"---\nname: stolen\n---\n{SECRET}\n", encoding="utf-8")
    settings.MASH_SKILLS_DIR = root
    return root


def publish(api, **body):
    return post_json(api, "/api/v1/agent/primary/skill", {"type": "filesystem", "name": "greet", **body})


def load_skill_in_a_run(engine, name="greet"):
    """Run a request whose model calls the Skill tool; its tool result and every event's payload."""
    rid = engine.submit(script({"tool_calls": [{"name": "Skill", "arguments": {"name": name}}]}, "done"))
    engine.drain()
    assert engine.request(rid).status == "completed"
    events = engine.events(rid)
    results = [e.payload["result"] for e in events if e.event_type == "runtime.tool.call.completed"]
    return results[0], json.dumps([e.payload for e in events])


@pytest.mark.parametrize("location", ["/etc", "../../../../etc/passwd", "/etc/passwd", "greet/../../outside",
                                      "link-out"])
def test_a_location_outside_the_skills_dir_is_refused_and_nothing_is_stored(api, engine, skills_dir, location):
    (skills_dir / "link-out").symlink_to(skills_dir.parent / "outside")
    error = assert_error(publish(api, location=location), 400, "INVALID_SKILL_LOCATION")
    assert "MASH_SKILLS_DIR" in error["message"] and "\n" not in error["message"]
    assert error["details"] == {"location": location}
    assert not PublishedSkill.objects.exists()


def test_an_outside_location_is_refused_even_beside_inline_content(api, engine, skills_dir):
    assert_error(publish(api, location="/etc", content="inline text"), 400, "INVALID_SKILL_LOCATION")
    assert not PublishedSkill.objects.exists()


def test_a_location_that_is_not_a_string_is_refused(api, engine, skills_dir):
    assert_error(publish(api, location={"path": "/etc"}), 400, "INVALID_SKILL_LOCATION")
    assert not PublishedSkill.objects.exists()


@pytest.mark.parametrize("location", ["greet", "greet/SKILL.md", "./greet/"])
def test_a_location_inside_the_skills_dir_is_published_and_served(api, engine, skills_dir, location):
    assert data(publish(api, location=location)) == {"agent_id": "primary", "skill_name": "greet"}
    result, _ = load_skill_in_a_run(engine)
    assert result["is_error"] is False and result["content"] == SKILL_TEXT


def test_an_absolute_location_inside_the_skills_dir_is_stored_relative_to_it(api, engine, skills_dir):
    data(publish(api, location=str(skills_dir / "greet")))
    assert PublishedSkill.objects.get(name="greet").location == "greet"


def test_a_stored_row_pointing_outside_is_skipped_with_a_warning(api, engine, skills_dir, caplog):
    # A row written before locations were checked.
    PublishedSkill.objects.create(agent=get_agent_row("primary"), name="stolen", type="filesystem",
                                  location=str(skills_dir.parent / "outside"))
    with caplog.at_level(logging.WARNING, logger="mash_runtime.workflows.publishing"):
        result, everything = load_skill_in_a_run(engine, name="stolen")
    assert result["is_error"] is True
    assert SECRET not in everything
    assert any("'stolen'" in r.getMessage() and "not offered to the model" in r.getMessage() for r in caplog.records)


def test_a_skill_md_swapped_for_a_symlink_out_after_publishing_is_not_served(api, engine, skills_dir):
    data(publish(api, location="greet"))
    (skills_dir / "greet" / "SKILL.md").unlink()
    (skills_dir / "greet" / "SKILL.md").symlink_to(skills_dir.parent / "outside" / "SKILL.md")
    result, everything = load_skill_in_a_run(engine)
    assert result["is_error"] is True and "outside" in result["content"]
    assert SECRET not in everything
