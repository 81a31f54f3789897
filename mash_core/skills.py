"""Skills: named instructions an agent loads on demand through the `Skill` meta-tool.

A skill is a directory holding `SKILL.md` (YAML front matter with `name` and
`description`, then the instructions) or inline markdown given as `content`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import yaml

from mash_core.errors import ConfigError
from mash_core.tools.base import Tool, ToolResult, object_schema

SKILL_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$")
SKILL_TOOL_NAME = "Skill"
FRONT_MATTER_RE = re.compile(r"\A---\s*\n(.*?)\n---\s*(?:\n|\Z)", re.DOTALL)


def parse_front_matter(text: str) -> tuple[dict[str, Any], str]:
    match = FRONT_MATTER_RE.match(text)
    if not match:
        return {}, text
    try:
        meta = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"SKILL.md front matter is not valid YAML: {exc}") from exc
    if not isinstance(meta, dict):
        raise ConfigError("SKILL.md front matter must be a mapping with 'name' and 'description'")
    return meta, text[match.end():]


class SkillLocationError(ConfigError):
    """A skill location that resolves outside the directory its skills may be read from."""


def resolve_skill_location(location: str | os.PathLike, root: str | os.PathLike) -> Path:
    """`location` with every symlink followed (a relative one is taken under `root`), or
    SkillLocationError unless that is `root` itself or lies inside it."""
    real_root = Path(os.path.realpath(root))
    try:
        real = Path(os.path.realpath(real_root / location))
    except (OSError, ValueError) as exc:  # a NUL byte, a name too long for the system
        raise SkillLocationError(f"skill location {str(location)!r} is not a usable path: {exc}") from None
    if real != real_root and real_root not in real.parents:
        raise SkillLocationError(f"skill location {str(location)!r} resolves to {real}, outside {real_root}")
    return real


def confined_skill_file(location: str | os.PathLike, root: str | os.PathLike) -> Path:
    """The SKILL.md a location names (the directory holding it, or the file itself), checked to
    be inside `root` after symlinks: a SKILL.md linking out of `root` is refused like a location."""
    real = resolve_skill_location(location, root)
    if real.is_dir():
        real = resolve_skill_location(real / "SKILL.md", root)
    return real


@dataclass
class Skill:
    name: str
    description: str = ""
    content: str | None = None
    location: str | None = None
    # Set for skills whose location came from outside the code (published over the API):
    # their files are read only from inside this directory.
    root: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not SKILL_NAME_RE.match(self.name):
            raise ConfigError(f"skill name {self.name!r} is invalid: use letters, digits, '.', '_' or '-'")
        if self.content is None and self.location is None:
            raise ConfigError(f"skill {self.name!r} needs either content or a location")

    @classmethod
    def from_directory(cls, path: str | Path) -> "Skill":
        """Load a skill from a directory containing SKILL.md (or from the SKILL.md path itself)."""
        path = Path(path)
        skill_md = path if path.is_file() else path / "SKILL.md"
        if not skill_md.is_file():
            raise ConfigError(f"no SKILL.md at {skill_md}")
        meta, body = parse_front_matter(skill_md.read_text(encoding="utf-8"))
        name = meta.get("name") or skill_md.parent.name
        return cls(
            name=str(name),
            description=str(meta.get("description") or "").strip(),
            content=body.strip(),
            location=str(skill_md.parent),
        )

    @classmethod
    def from_markdown(cls, text: str, *, name: str | None = None, description: str | None = None) -> "Skill":
        meta, body = parse_front_matter(text)
        skill_name = name or meta.get("name")
        if not skill_name:
            raise ConfigError("inline skill needs a name (argument or front matter)")
        return cls(
            name=str(skill_name),
            description=str(description if description is not None else meta.get("description") or "").strip(),
            content=body.strip(),
        )

    def load_text(self) -> str:
        if self.content is not None:
            return self.content
        if self.root is not None:
            # Checked again at each load: the files may have changed since the skill was published.
            return Skill.from_directory(confined_skill_file(self.location, self.root)).content or ""  # type: ignore[arg-type]
        return Skill.from_directory(self.location).content or ""  # type: ignore[arg-type]


class SkillRegistry:
    def __init__(self, skills: Iterable[Skill] = ()):
        self._skills: dict[str, Skill] = {}
        for skill in skills:
            self.register(skill)

    def register(self, skill: Skill, *, replace: bool = False) -> Skill:
        if skill.name in self._skills and not replace:
            raise ConfigError(f"a skill named {skill.name!r} is already registered")
        self._skills[skill.name] = skill
        return skill

    def load_directory(self, path: str | Path) -> Skill:
        return self.register(Skill.from_directory(path))

    def load_tree(self, root: str | Path) -> list[Skill]:
        """Register every `*/SKILL.md` directly under `root`."""
        return [self.load_directory(p.parent) for p in sorted(Path(root).glob("*/SKILL.md"))]

    def get(self, name: str) -> Skill | None:
        return self._skills.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._skills

    def __iter__(self):
        return iter(self._skills.values())

    def __len__(self) -> int:
        return len(self._skills)

    @property
    def names(self) -> list[str]:
        return list(self._skills)


class SkillTool(Tool):
    """The `Skill` meta-tool: lists the skills and returns one's instructions on demand."""

    name = SKILL_TOOL_NAME

    def __init__(self, registry: SkillRegistry):
        self.registry = registry
        listing = "\n".join(f"- {s.name}: {s.description}" for s in registry) or "(none)"
        self.description = (
            "Load the full instructions of a skill before doing a task it covers. Available skills:\n" + listing
        )
        self.parameters = object_schema({"name": {"type": "string", "enum": registry.names, "description": "Skill to load."}}, required=["name"])

    async def execute(self, args: dict[str, Any]) -> ToolResult:
        skill = self.registry.get(str(args.get("name", "")))
        if skill is None:
            return ToolResult.error(f"unknown skill {args.get('name')!r}; available: {', '.join(self.registry.names)}")
        try:
            return ToolResult.success(skill.load_text(), skill=skill.name)
        except (OSError, ConfigError) as exc:
            return ToolResult.error(f"skill {skill.name!r} could not be loaded: {exc}")
