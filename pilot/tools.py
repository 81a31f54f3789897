"""Pilot's own tools."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

from mash_core.tools import Tool, ToolResult, object_schema

DOC_NAMES = ("README.md", "AGENTS.md")

# Each directory on the way is opened relative to the one before and without following a
# symlink, so nothing swapped in after the path was read can redirect the write.
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
# No O_TRUNC: the file is emptied only once it is known to be a plain file with one link.
# O_NONBLOCK: a FIFO planted under the name fails at once instead of hanging the run.
_FILE_FLAGS = (os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
               | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
_SAFE_OPEN = hasattr(os, "O_NOFOLLOW") and hasattr(os, "O_DIRECTORY") and os.open in os.supports_dir_fd


class Refused(Exception):
    """Why a path may not be written: the model gets this as its error result."""


class UpdateDocsTool(Tool):
    """Rewrite a README.md or AGENTS.md inside the workspace; needs a person's approval.

    Only real directories and files are written through: a symlink anywhere on the path, or
    a file with a second hard link (whose other name may be outside the workspace), is refused
    at the moment of opening, not by a check made earlier."""

    name = "update_docs"
    description = (
        "Replace the content of a README.md or AGENTS.md file inside the repository. "
        "Other files and paths outside the repository are refused. A person approves each call."
    )
    parameters = object_schema({
        "path": {"type": "string", "description": "Path relative to the repository root, e.g. mash_core/README.md"},
        "content": {"type": "string", "description": "The full new content of the file."},
    }, required=["path", "content"])
    requires_approval = True

    def __init__(self, workspace: Path):
        self.workspace = Path(workspace).resolve()

    def parts(self, raw: str) -> tuple[str, ...]:
        """The path's components under the workspace, or Refused saying why.

        Only the text is looked at (`..` is folded here, never by the filesystem); what the
        names are on disk is checked while opening them (`write`)."""
        path = Path(os.path.normpath(raw or "."))
        if path.is_absolute():
            if path != self.workspace and self.workspace not in path.parents:
                raise Refused(f"{raw!r} is outside the workspace {self.workspace}")
            path = path.relative_to(self.workspace)
        if path.parts and path.parts[0] == "..":
            raise Refused(f"{raw!r} is outside the workspace {self.workspace}")
        if path.name not in DOC_NAMES:
            raise Refused(f"only {' and '.join(DOC_NAMES)} files may be updated, not {path.name or raw!r}")
        return path.parts

    def write(self, parts: tuple[str, ...], content: str) -> None:
        """Write `content` to workspace/parts, walking the path with O_NOFOLLOW from the workspace down."""
        if not _SAFE_OPEN:
            raise Refused("this system cannot open files without following symlinks (O_NOFOLLOW with dir_fd)")
        directory = os.open(self.workspace, _DIR_FLAGS)
        try:
            for depth, part in enumerate(parts[:-1], 1):
                try:
                    inner = os.open(part, _DIR_FLAGS, dir_fd=directory)
                except FileNotFoundError:
                    raise Refused(f"directory {'/'.join(parts[:depth])} does not exist") from None
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                        raise
                    raise Refused(f"{'/'.join(parts[:depth])!r} is {_what(part, directory, 'directory')}") from None
                os.close(directory)
                directory = inner
            self._write_file(parts, directory, content)
        finally:
            os.close(directory)

    def _write_file(self, parts: tuple[str, ...], directory: int, content: str) -> None:
        shown = "/".join(parts)
        try:
            fd = os.open(parts[-1], _FILE_FLAGS, 0o644, dir_fd=directory)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EMLINK, errno.EISDIR, errno.ENXIO):
                raise Refused(f"{shown!r} is {_what(parts[-1], directory, 'regular file')}") from None
            raise
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise Refused(f"{shown!r} is not a regular file")
            if info.st_nlink > 1:
                raise Refused(f"{shown!r} has {info.st_nlink} hard links: writing it would change a file that "
                              "may be outside the workspace; remove the other links first")
            os.ftruncate(fd, 0)
            data = memoryview(content.encode("utf-8"))
            while data:
                data = data[os.write(fd, data):]
        finally:
            os.close(fd)

    async def execute(self, args: dict[str, Any]) -> ToolResult:
        try:
            parts = self.parts(str(args.get("path", "")))
            content = str(args.get("content", ""))
            self.write(parts, content)
        except (Refused, ValueError) as exc:  # ValueError: a NUL byte in the path
            return ToolResult.error(f"update_docs refused: {exc}")
        except OSError as exc:
            return ToolResult.error(f"update_docs could not write {args.get('path')!r}: {exc.strerror or exc}")
        shown = "/".join(parts)
        return ToolResult.success(f"wrote {len(content)} characters to {shown}", path=shown)


def _what(name: str, directory: int, wanted: str) -> str:
    """What stands under `name` instead of a `wanted`, for the refusal message."""
    try:
        if stat.S_ISLNK(os.lstat(name, dir_fd=directory).st_mode):
            return "a symbolic link, which could lead outside the workspace; update_docs follows none"
    except OSError:
        pass
    return f"not a {wanted}"
