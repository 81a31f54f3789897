"""Skills: SKILL.md loading, inline skills, the registry and the `Skill` meta-tool (no Django)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mash_core.agent import Agent, AgentHooks
from mash_core.config import AgentConfig
from mash_core.errors import ConfigError
from mash_core.llm.scripted import ScriptedProvider
from mash_core.messages import ToolResultBlock
from mash_core.skills import SKILL_TOOL_NAME, Skill, SkillRegistry, SkillTool, parse_front_matter
from mash_core.tools.base import FunctionTool, ToolRegistry


def run(coro):
    return asyncio.run(coro)


def write_skill(root: Path, dirname: str, text: str) -> Path:
    directory = root / dirname
    directory.mkdir(parents=True)
    (directory / "SKILL.md").write_text(text, encoding="utf-8")
    return directory


PDF_SKILL = """---
name: pdf-tools
description: |
  Work with PDF files.
---

# PDF tools

Use `pdftotext` to extract text.
"""


def test_it_loads_a_skill_from_a_directory_with_front_matter(tmp_path):
    directory = write_skill(tmp_path, "pdf", PDF_SKILL)
    skill = Skill.from_directory(directory)
    assert skill.name == "pdf-tools"
    assert skill.description == "Work with PDF files."
    assert skill.content == "# PDF tools\n\nUse `pdftotext` to extract text."
    assert skill.location == str(directory)
    assert skill.load_text() == skill.content


def test_it_loads_a_skill_from_the_skill_md_path_itself(tmp_path):
    directory = write_skill(tmp_path, "pdf", PDF_SKILL)
    assert Skill.from_directory(directory / "SKILL.md").name == "pdf-tools"


def test_it_names_a_skill_after_its_directory_without_front_matter(tmp_path):
    directory = write_skill(tmp_path, "plain-skill", "Just instructions.\n")
    skill = Skill.from_directory(directory)
    assert (skill.name, skill.description, skill.content) == ("plain-skill", "", "Just instructions.")


def test_it_reports_a_missing_skill_md(tmp_path):
    with pytest.raises(ConfigError, match="no SKILL.md"):
        Skill.from_directory(tmp_path)


def test_it_reports_invalid_front_matter(tmp_path):
    bad_yaml = write_skill(tmp_path, "a", "---\nname: [unclosed\n---\nbody\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Skill.from_directory(bad_yaml)
    not_mapping = write_skill(tmp_path, "b", "---\n- a list\n---\nbody\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        Skill.from_directory(not_mapping)


def test_it_parses_front_matter_only_at_the_start():
    assert parse_front_matter("no front matter\n---\nname: x\n---\n") == ({}, "no front matter\n---\nname: x\n---\n")
    meta, body = parse_front_matter("---\nname: x\n---")
    assert (meta, body) == ({"name": "x"}, "")


def test_it_makes_an_inline_skill_from_markdown():
    skill = Skill.from_markdown("---\nname: greet\ndescription: Say hi\n---\nSay hello warmly.")
    assert (skill.name, skill.description, skill.content, skill.location) == (
        "greet", "Say hi", "Say hello warmly.", None
    )
    named = Skill.from_markdown("Be terse.", name="terse", description="Short answers")
    assert (named.name, named.description, named.content) == ("terse", "Short answers", "Be terse.")
    with pytest.raises(ConfigError, match="needs a name"):
        Skill.from_markdown("no name anywhere")


def test_it_requires_content_or_a_location():
    with pytest.raises(ConfigError, match="needs either content or a location"):
        Skill(name="empty")
    assert Skill(name="ok", content="").content == ""


@pytest.mark.parametrize("name", ["", "has space", "-leading-dash", "a" * 65, None])
def test_it_rejects_invalid_skill_names(name):
    with pytest.raises(ConfigError, match="invalid"):
        Skill(name=name, content="x")


def test_it_rejects_duplicate_skill_names_unless_replacing():
    registry = SkillRegistry([Skill("a", content="one")])
    with pytest.raises(ConfigError, match="'a' is already registered"):
        registry.register(Skill("a", content="two"))
    assert registry.get("a").content == "one"
    registry.register(Skill("a", content="two"), replace=True)
    assert registry.get("a").content == "two"
    assert len(registry) == 1


def test_it_loads_every_skill_of_a_tree_in_order(tmp_path):
    write_skill(tmp_path, "zeta", "---\nname: zeta\ndescription: last\n---\nZ")
    write_skill(tmp_path, "alpha", "---\ndescription: first\n---\nA")
    (tmp_path / "not-a-skill").mkdir()
    (tmp_path / "README.md").write_text("ignored")
    write_skill(tmp_path / "nested", "deep", "too deep")  # only direct children count

    registry = SkillRegistry()
    loaded = registry.load_tree(tmp_path)

    assert [s.name for s in loaded] == ["alpha", "zeta"]
    assert registry.names == ["alpha", "zeta"]
    assert "alpha" in registry and "deep" not in registry
    assert registry.get("alpha").load_text() == "A"


def test_it_reads_a_location_only_skill_from_disk_when_loaded(tmp_path):
    directory = write_skill(tmp_path, "lazy", "---\nname: lazy\n---\nversion 1")
    skill = Skill(name="lazy", location=str(directory))
    (directory / "SKILL.md").write_text("---\nname: lazy\n---\nversion 2")
    assert skill.load_text() == "version 2"


# -- the Skill meta-tool -------------------------------------------------------------------


def test_it_describes_the_skills_in_the_meta_tool():
    tool = SkillTool(SkillRegistry([Skill("a", "does A", content="x"), Skill("b", "does B", content="y")]))
    assert tool.name == SKILL_TOOL_NAME == "Skill"
    assert "- a: does A" in tool.description and "- b: does B" in tool.description
    assert tool.parameters["properties"]["name"]["enum"] == ["a", "b"]
    assert tool.parameters["required"] == ["name"]


def test_it_returns_an_error_for_an_unknown_skill():
    tool = SkillTool(SkillRegistry([Skill("a", content="x")]))
    result = run(tool.execute({"name": "zzz"}))
    assert result.is_error is True
    assert "unknown skill 'zzz'" in result.content and "a" in result.content


def test_it_returns_an_error_when_a_skill_directory_vanished(tmp_path):
    tool = SkillTool(SkillRegistry([Skill("gone", location=str(tmp_path / "missing"))]))
    result = run(tool.execute({"name": "gone"}))
    assert result.is_error is True
    assert "could not be loaded" in result.content


def test_it_auto_registers_the_skill_tool_and_returns_the_skill_text(tmp_path):
    write_skill(tmp_path, "pdf", PDF_SKILL)
    skills = SkillRegistry()
    skills.load_tree(tmp_path)
    skills.register(Skill.from_markdown("Always answer in French.", name="french", description="French answers"))

    provider = ScriptedProvider(
        [
            {"tool": "Skill", "arguments": {"name": "pdf-tools"}},
            {"tool": "Skill", "arguments": {"name": "no-such-skill"}},
            "Done.",
        ]
    )
    agent = Agent(AgentConfig(app_id="skilled"), provider, ToolRegistry(), skills)

    assert agent.tools.names == ["Skill"]
    result = run(agent.run("read the pdf", hooks=AgentHooks()))

    [definition] = provider.calls[0].tools
    assert definition.name == "Skill"
    assert "pdf-tools: Work with PDF files." in definition.description
    assert "french: French answers" in definition.description

    [loaded] = provider.calls[1].messages[-1].content
    assert isinstance(loaded, ToolResultBlock)
    assert loaded.is_error is False
    assert loaded.content == "# PDF tools\n\nUse `pdftotext` to extract text."

    [unknown] = provider.calls[2].messages[-1].content
    assert unknown.is_error is True and "unknown skill" in unknown.content
    # The enum lists the skills, but a wrong name still reaches the tool and becomes an error result.
    assert result.text == "Done."
    assert result.tools_used == ["Skill", "Skill"]


def test_it_adds_no_skill_tool_without_skills_or_when_disabled():
    def noop() -> str:
        return ""

    plain = Agent(AgentConfig(app_id="plain"), ScriptedProvider(["x"]), ToolRegistry([FunctionTool(noop)]))
    assert plain.tools.names == ["noop"]

    disabled = Agent(
        AgentConfig(app_id="off", skills_enabled=False),
        ScriptedProvider(["x"]),
        ToolRegistry(),
        SkillRegistry([Skill("a", content="x")]),
    )
    assert "Skill" not in disabled.tools
