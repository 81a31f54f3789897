"""`BashTool`: run shell commands in one persistent bash session per tool instance.

The deny-list is a guard rail against obvious accidents, not a sandbox: quoting, variables
or another program get round it (`'rm' -rf /`, `x=/; rm -rf $x`, `find / -delete`). When
the model is not trusted, jail the shell (`sandbox="bwrap"`, `"unshare"` or `"auto"`: the
filesystem read-only outside the working directory, no network; mash_core.tools.sandbox),
run it as an unprivileged user (`user=`), or both, or run the whole server in a container.

The shell never sees the server's secrets: it gets the scrubbed environment of
mash_core.tools.environment, plus what `pass_env` and `env` name.
"""

from __future__ import annotations

import asyncio
import codecs
import os
import re
import signal
import subprocess
import time
import uuid
from typing import Any, Iterable

from mash_core.errors import ConfigError
from mash_core.tools.base import Tool, ToolResult, object_schema
from mash_core.tools.environment import check_tool_env, tool_environment
from mash_core.tools.sandbox import resolve_sandbox, run_as, wrap

MAX_TIMEOUT_SECONDS = 600.0

_SEP = r"(?=$|[\s;&|)'\"])"  # end of a shell word
_FLAGS = r"(?:-{1,2}[\w-]+\s+)*"

# (regex, reason) pairs, searched case-sensitively across the whole command text.
DEFAULT_DENY_PATTERNS: tuple[tuple[str, str], ...] = (
    (
        r"\brm\s+" + _FLAGS + r"(?:-[a-zA-Z]*[rR][a-zA-Z]*|--recursive)\s+" + _FLAGS
        + r"[\"']?(?:/\*?|~/?\*?|\$HOME/?\*?|\$\{HOME\}/?\*?)[\"']?" + _SEP,
        "recursive rm of / or the home directory",
    ),
    (r"\bmkfs(?:\.\w+)?\b", "mkfs formats a filesystem"),
    (r"\bdd\b[^;&|\n]*\bof=/dev/(?:sd|hd|vd|xvd|nvme|mmcblk|disk)", "dd onto a disk device"),
    (r">\s*/dev/(?:sd[a-z]|hd[a-z]|vd[a-z]|xvd[a-z]|nvme\d|mmcblk\d|disk\d)", "writing onto a disk device"),
    (r"(\w+|:)\s*\(\s*\)\s*\{[^}]*\1\s*\|\s*\1\s*&", "fork bomb"),
    (
        r"(?:^|[;&|(`]|\bsudo|\bexec)\s*(?:/usr)?(?:/s?bin/)?(?:shutdown|reboot|halt|poweroff)\b"
        r"|\bsystemctl\s+(?:reboot|poweroff|halt|kexec)\b|(?:^|[;&|(]|\bsudo)\s*init\s+[06]\b",
        "shutting down or rebooting the machine",
    ),
    (
        r"\bch(?:mod|own|grp)\b(?=[^;&|\n]*\s(?:-[a-zA-Z]*R|--recursive))[^;&|\n]*\s[\"']?/[\"']?" + _SEP,
        "recursive chmod/chown of /",
    ),
)


class BashTool(Tool):
    """Each instance owns one long-lived `bash`, so `cd` and `export` carry over between calls.

    stdout and stderr are merged; stdin is /dev/null so nothing waits for input. A
    timeout or a cancelled call kills the shell's whole process group; the next call
    starts a fresh shell in `working_dir`.

    Environment: the shell gets only the server's basics (PATH, HOME, LANG, LC_*, TERM,
    TMPDIR, TZ, USER, LOGNAME, SHELL), never a variable that looks like a secret (MASH_*,
    DATABASE_URL, *_API_KEY, *_TOKEN, ...). `pass_env` names further server variables to
    pass through (naming a secret-looking one is a ConfigError); `env` gives literal values,
    which win over everything and are kept whatever their names. That stops `env` from
    printing the server's keys, not a determined model: an unjailed shell of the server's
    user can still read the server's /proc/<pid>/environ and its files. `sandbox` (own
    /proc) or `user` closes that.

    `deny_patterns` refuses commands matching a regex: a guard rail against accidents,
    which a determined model gets round. `sandbox` is the real boundary: "bwrap"
    (bubblewrap), "unshare" (util-linux) or "auto" (the first that works) run the shell in
    a jail where only `working_dir` and a private /tmp are writable, /dev is minimal, the
    network is gone and no capability is left. A sandbox that cannot start here is a
    ConfigError at construction; the tool never runs unjailed instead. `user` (a name or
    uid; the server must run as root) runs the shell as that user, so it cannot read
    root-only files either; HOME, USER and LOGNAME then follow that user.
    """

    parameters = object_schema({
        "command": {"type": "string", "description": "The bash command(s) to run; may span several lines."},
        "timeout": {
            "type": "number",
            "description": f"Seconds before the command is killed (optional, at most {MAX_TIMEOUT_SECONDS:g}).",
        },
    }, required=["command"])

    def __init__(
        self,
        working_dir: str | os.PathLike[str] | None = None,
        timeout: float = 30.0,
        max_output_lines: int = 200,
        max_output_chars: int = 20000,
        deny_patterns: Iterable[str | tuple[str, str]] | None = None,
        env: dict[str, str] | None = None,
        requires_approval: bool = False,
        name: str = "bash",
        pass_env: Iterable[str] = (),
        sandbox: str | None = None,
        user: str | int | None = None,
    ):
        self.working_dir = os.path.abspath(os.fspath(working_dir) if working_dir is not None else os.getcwd())
        if not os.path.isdir(self.working_dir):
            raise ConfigError(f"BashTool working_dir {self.working_dir!r} does not exist or is not a directory")
        if not timeout > 0 or max_output_lines < 1 or max_output_chars < 1:
            raise ConfigError("BashTool timeout, max_output_lines and max_output_chars must be positive")
        pass_env = pass_env if isinstance(pass_env, str) else tuple(pass_env)
        check_tool_env(env, pass_env, owner="BashTool")
        self.deny_patterns = [_compile_deny(p) for p in (DEFAULT_DENY_PATTERNS if deny_patterns is None else deny_patterns)]
        self._popen_user, user_env = run_as(user, owner="BashTool") if user is not None else ({}, {})
        if sandbox is not None:
            # The jail binds the directory itself: a symlinked path would name another place inside.
            self.working_dir = os.path.realpath(self.working_dir)
        self.sandbox = resolve_sandbox(sandbox, self.working_dir, user=user, owner="BashTool")
        self.user = user
        self.name = name
        self.requires_approval = requires_approval
        self.timeout = min(float(timeout), MAX_TIMEOUT_SECONDS)
        self.max_output_lines = max_output_lines
        self.max_output_chars = max_output_chars
        # The jail's /tmp is its own (the server's TMPDIR is read-only in there).
        defaults = {**user_env, **({"TMPDIR": "/tmp"} if self.sandbox else {})}
        self.env = tool_environment({**defaults, **(env or {})}, pass_env)
        jail = (
            f" The shell runs in a sandbox: only {self.working_dir} and /tmp are writable and there "
            "is no network." if self.sandbox else ""
        )
        self.description = (
            f"Run a command in a persistent bash shell (starts in {self.working_dir}). The working "
            "directory and exported variables persist between calls. stdout and stderr are merged "
            "and stdin is empty, so don't run interactive programs. Output beyond "
            f"{max_output_lines} lines or {max_output_chars} characters is truncated. Commands are "
            f"killed after {self.timeout:g}s unless `timeout` says otherwise. A non-zero exit code is "
            f"reported, not treated as a failure.{jail}"
        )
        self._proc: asyncio.subprocess.Process | None = None
        self._watcher: _Lifeline | None = None
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def execute(self, args: dict[str, Any]) -> ToolResult:
        command = args.get("command")
        if not isinstance(command, str) or not command.strip():
            return ToolResult.error("`command` must be a non-empty string")
        if "\x00" in command:
            return ToolResult.error("`command` must not contain NUL bytes")
        timeout = args.get("timeout")
        if timeout is None:
            timeout = self.timeout
        elif isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            return ToolResult.error("`timeout` must be a positive number of seconds")
        timeout = min(float(timeout), MAX_TIMEOUT_SECONDS)
        for pattern, reason in self.deny_patterns:
            if pattern.search(command):
                return ToolResult.error(f"Command refused by deny-list: {reason}", denied=True)
        async with self._get_lock():
            return await self._run(command, timeout)

    async def _run(self, command: str, timeout: float) -> ToolResult:
        started = time.monotonic()
        proc = await self._ensure_shell()
        marker = f"__MASH_DONE_{uuid.uuid4().hex}__"
        # eval keeps a syntax error in the command (an unclosed quote) from swallowing the
        # sentinel line; </dev/null keeps a command that reads stdin from eating it.
        quoted = "'" + command.replace("'", "'\\''") + "'"
        script = f"builtin eval {quoted} </dev/null\nbuiltin printf '\\n{marker}%s\\n' \"$?\"\n"
        out = _Output(self.max_output_chars)
        try:
            async with asyncio.timeout(timeout):
                proc.stdin.write(script.encode())
                await proc.stdin.drain()
                exit_code = await out.read_until(proc.stdout, marker)
        except TimeoutError:
            await self._kill()
            text, truncated = self._clip(out)
            return ToolResult.error(
                f"Command timed out after {timeout:g}s and was killed, with everything it started. "
                f"The next command runs in a fresh shell in {self.working_dir} (cd and exported "
                f"variables are lost).\n{text}".rstrip(),
                exit_code=None, timed_out=True, truncated=truncated, duration_ms=_ms(started),
            )
        except asyncio.CancelledError:
            # Kill before the first await, so a second cancel cannot leave the shell running.
            await asyncio.shield(self._reap(self._kill_now()))
            raise
        except ConnectionError:  # the shell vanished before reading the command
            exit_code = None
        meta: dict[str, Any] = {}
        notes = ""
        if exit_code is None:  # EOF before the sentinel: the command exited the shell
            await self._kill()
            exit_code = proc.returncode
            meta["shell_exited"] = True
            notes = (f"\n[the shell exited with code {exit_code}; the next command starts a fresh shell "
                     f"in {self.working_dir}]")
        text, truncated = self._clip(out)
        return ToolResult.success(
            (text or "(no output)") + notes,
            exit_code=exit_code, truncated=truncated, duration_ms=_ms(started), **meta,
        )

    def _clip(self, out: "_Output") -> tuple[str, bool]:
        """Keep mostly the head (what the command did) and a short tail (where it failed)."""
        max_lines, max_chars = self.max_output_lines, self.max_output_chars
        last = (out.tail or out.head)[-1:]
        total_lines = out.lines + (1 if last not in ("", "\n") else 0)
        if out.dropped:
            top, bottom = out.head, out.tail.rstrip("\n")
        else:
            top, bottom = (out.head + out.tail).rstrip("\n"), ""
            if total_lines <= max_lines and out.chars <= max_chars:
                return top, False
        tail_lines, tail_chars = max_lines // 4, max_chars // 4
        if total_lines > max_lines:
            lines = top.split("\n")
            rest = bottom.split("\n") if bottom else lines[max_lines - tail_lines:]
            top = "\n".join(lines[: max_lines - tail_lines])
            bottom = "\n".join(rest[len(rest) - tail_lines:]) if tail_lines else ""
        if len(top) + len(bottom) > max_chars:
            if not bottom:
                bottom = top[len(top) - tail_chars:] if tail_chars else ""
                top = top[: len(top) - len(bottom)]
            bottom = bottom[len(bottom) - min(len(bottom), tail_chars):]
            top = top[: max_chars - len(bottom)]
        shown_lines = min(total_lines, len(top.split("\n")) + (len(bottom.split("\n")) if bottom else 0))
        note = (f"[output truncated: showed {shown_lines} of {total_lines} lines / "
                f"{len(top) + len(bottom)} of {out.chars} chars]")
        return top + ("\n[...]\n" + bottom if bottom else "") + "\n" + note, True

    def _get_lock(self) -> asyncio.Lock:
        # A lock or a subprocess belongs to one event loop; start over if the loop changed.
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._kill_now()
            self._proc, self._lock, self._loop = None, asyncio.Lock(), loop
        return self._lock

    async def _ensure_shell(self) -> asyncio.subprocess.Process:
        if self._proc is not None and self._proc.returncode is None:
            return self._proc
        await self._kill()
        # A session of its own makes the shell a process-group leader, so killpg reaches
        # every child and background job it started.
        argv = ["bash", "--noprofile", "--norc"]
        if self.sandbox:
            argv = wrap(self.sandbox, self.working_dir, argv, user=self.user)
        self._proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            cwd=self.working_dir, env=self.env, start_new_session=True, **self._popen_user,
        )
        self._watcher = _Lifeline.watch(self._proc.pid)
        return self._proc

    def _kill_now(self) -> asyncio.subprocess.Process | None:
        proc, self._proc = self._proc, None
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.release()  # first, so it never signals a group whose id was reused
        if proc is None:
            return None
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return proc

    async def _kill(self) -> None:
        await self._reap(self._kill_now())

    @staticmethod
    async def _reap(proc: asyncio.subprocess.Process | None) -> None:
        if proc is None:
            return
        try:
            async with asyncio.timeout(5):
                # wait() also waits for the pipes to close, so drain the rest of the output.
                while await proc.stdout.read(65536):
                    pass
                await proc.wait()
        except TimeoutError:  # an escaped (setsid) descendant still holds the pipe
            pass
        transport = getattr(proc, "_transport", None)
        if transport is not None:
            transport.close()

    async def aclose(self) -> None:
        if self._proc is None:
            return
        if self._loop is asyncio.get_running_loop():
            await self._kill()
        else:
            self._kill_now()


class _Lifeline:
    """Kills a shell's process group when the process that owns the shell dies.

    Killing the group is the tool's job while its process lives (timeouts, cancels,
    `aclose`). A process killed outright (SIGKILL, the OOM killer) does none of that: its
    shell reads end-of-input and exits after the command under way, but that command and
    every background job run on, and a recovered run starts them again elsewhere. So each
    shell gets a watcher, a `bash` in a session of its own that waits on a pipe only the
    owner holds open (the pipe is not inherited by its other children); when the owner is
    gone, the pipe closes and the watcher kills the group. (bash, not sh: dash's `kill`
    takes no process group.)
    """

    SCRIPT = 'while read -r _; do :; done; kill -KILL -- "-$1" 2>/dev/null'

    def __init__(self, proc: subprocess.Popen, lifeline: int):
        self.proc = proc
        self.lifeline = lifeline

    @classmethod
    def watch(cls, pgid: int) -> "_Lifeline | None":
        if os.name != "posix":
            return None
        read_end, write_end = os.pipe()  # not inheritable: no other child keeps it open
        try:
            proc = subprocess.Popen(
                ["bash", "--noprofile", "--norc", "-c", cls.SCRIPT, "mash-bash-lifeline", str(pgid)],
                stdin=read_end, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                # Its /proc/<pid>/environ is readable by a shell of the same user: no secrets in it.
                env={"PATH": os.environ.get("PATH", os.defpath)})
        except OSError:
            os.close(write_end)
            return None
        finally:
            os.close(read_end)
        return cls(proc, write_end)

    def release(self) -> None:
        """Stop watching: the owner deals with the group itself."""
        try:
            self.proc.kill()
        except OSError:
            pass
        os.close(self.lifeline)
        self.proc.wait()


class _Output:
    """Collects a command's output; past a bound it keeps only both ends, so a runaway
    command cannot fill the server's memory before its timeout."""

    def __init__(self, max_chars: int):
        self.keep = max(4 * max_chars, 65536)
        self.head, self.tail = "", ""
        self.chars = self.lines = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    async def read_until(self, stream: asyncio.StreamReader, marker: str) -> int | None:
        """Read until the sentinel line; its exit code, or None at EOF."""
        pattern = re.compile("\n" + re.escape(marker) + r"(\d+)\n")
        buf = ""
        while True:
            chunk = await stream.read(65536)
            buf += self._decoder.decode(chunk, final=not chunk)
            match = pattern.search(buf)
            done = match is not None or not chunk
            end = match.start() if match else (len(buf) if done else max(0, len(buf) - len(marker) - 16))
            self._add(buf[:end])
            buf = buf[end:]
            if done:
                return int(match.group(1)) if match else None

    @property
    def dropped(self) -> bool:
        return self.chars > len(self.head) + len(self.tail)

    def _add(self, text: str) -> None:
        self.chars += len(text)
        self.lines += text.count("\n")
        room = self.keep - len(self.head)
        if room > 0:
            self.head, text = self.head + text[:room], text[room:]
        if text:
            self.tail = (self.tail + text)[-self.keep:]


def _compile_deny(entry: str | tuple[str, str]) -> tuple[re.Pattern[str], str]:
    pattern, reason = (entry, entry) if isinstance(entry, str) else entry
    try:
        return re.compile(pattern, re.MULTILINE), reason
    except re.error as exc:
        raise ConfigError(f"BashTool deny pattern {pattern!r} is not a valid regex: {exc}") from exc


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
