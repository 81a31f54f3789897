"""Pilot's own tools."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mash_core.tools import Tool, ToolResult

DOC_NAMES = ("README.md", "AGENTS.md")


class UpdateDocsTool(Tool):
    """Rewrite a README.md or AGENTS.md inside the workspace; needs a person's approval."""

    name = "update_docs"
    description = (
        "Replace the content of a README.md or AGENTS.md file inside the repository. "
        "Other files and paths outside the repository are refused. A person approves each call."
    )
    parameters = {
        "type": "object",
        "properties": {
            "path": {"type": "string", "description": "Path relative to the repository root, e.g. mash_core/README.md"},
            "content": {"type": "string", "description": "The full new content of the file."},
        },
        "required": ["path", "content"],
        "additionalProperties": False,
    }
    requires_approval = True

    def __init__(self, workspace: Path):
        self.workspace = Path(workspace).resolve()

    def resolve(self, raw: str) -> Path:
        """The target file, or ValueError saying why it is refused."""
        candidate = (self.workspace / raw).resolve() if not Path(raw).is_absolute() else Path(raw).resolve()
        if candidate.name not in DOC_NAMES:
            raise ValueError(f"only {' and '.join(DOC_NAMES)} files may be updated, not {candidate.name!r}")
        if candidate != self.workspace and self.workspace not in candidate.parents:
            raise ValueError(f"{raw!r} is outside the workspace {self.workspace}")
        return candidate

    async def execute(self, args: dict[str, Any]) -> ToolResult:
        try:
            target = self.resolve(str(args.get("path", "")))
        except ValueError as exc:
            return ToolResult.error(f"update_docs refused: {exc}")
        if not target.parent.is_dir():
            return ToolResult.error(f"update_docs refused: directory {target.parent} does not exist")
        content = str(args.get("content", ""))
        target.write_text(content, encoding="utf-8")
        return ToolResult.success(f"wrote {len(content)} characters to {target.relative_to(self.workspace)}",
                                  path=str(target.relative_to(self.workspace)))
