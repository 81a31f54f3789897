"""BashTool: a persistent shell with timeouts, cancellation, truncation and a deny-list.

Plain pytest (no Django, no pytest-asyncio): each test drives its own event loop.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from mash_core.errors import ConfigError
from mash_core.tools.bash import DEFAULT_DENY_PATTERNS, BashTool


def run(coro):
    return asyncio.run(coro)


async def call(tool: BashTool, command: str, **args):
    return await tool.execute({"command": command, **args})


def is_gone(pid: int) -> bool:
    """True once the pid no longer runs; a zombie counts as gone (PID 1 may never reap it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    state = next((line.split()[1] for line in status.splitlines() if line.startswith("State:")), "")
    return state in ("Z", "X")


def wait_gone(pid: int, within: float = 2.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if is_gone(pid):
            return True
        time.sleep(0.02)
    return is_gone(pid)


async def read_pid(path: Path, within: float = 3.0) -> int:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        text = path.read_text().strip() if path.exists() else ""
        if text:
            return int(text)
        await asyncio.sleep(0.02)
    raise AssertionError(f"{path} was never written")


def test_it_keeps_cwd_and_exported_variables_between_calls(tmp_path):
    (tmp_path / "sub").mkdir()

    async def scenario():
        tool = BashTool(working_dir=tmp_path)
        try:
            assert (await call(tool, "pwd")).content == str(tmp_path)
            await call(tool, "cd sub && export MASH_TEST_VAR=hello")
            result = await call(tool, "pwd; echo $MASH_TEST_VAR")
        finally:
            await tool.aclose()
        return result

    result = run(scenario())
    assert result.content == f"{tmp_path / 'sub'}\nhello"
    assert result.metadata["exit_code"] == 0
    assert not result.is_error


def test_it_kills_the_whole_process_group_on_timeout_and_restarts_the_shell(tmp_path):
    (tmp_path / "sub").mkdir()
    command = (
        "echo started; sleep 60 & echo $! > bg.pid; "
        "bash -c 'trap \"\" TERM; echo $$ > child.pid; exec sleep 60'"
    )

    async def scenario():
        tool = BashTool(working_dir=tmp_path, timeout=30)
        try:
            await call(tool, "cd sub")
            task = asyncio.create_task(call(tool, "cd .. && " + command, timeout=1))
            child, grandchild = await read_pid(tmp_path / "child.pid"), await read_pid(tmp_path / "bg.pid")
            assert not is_gone(child) and not is_gone(grandchild)
            started = time.monotonic()
            result = await task
            elapsed = time.monotonic() - started
            await call(tool, "cd sub")
            after = await call(tool, "pwd")
        finally:
            await tool.aclose()
        return result, elapsed, child, grandchild, after

    result, elapsed, child, grandchild, after = run(scenario())
    assert result.is_error
    assert result.metadata["timed_out"] is True
    assert result.metadata["exit_code"] is None
    assert "timed out after 1s" in result.content
    assert "started" in result.content  # partial output is kept
    assert elapsed < 3
    assert wait_gone(child), "the TERM-ignoring child survived the timeout"
    assert wait_gone(grandchild), "the background grandchild survived the timeout"
    assert not after.is_error and after.content == str(tmp_path / "sub")


def test_it_starts_a_fresh_shell_in_working_dir_after_a_timeout(tmp_path):
    (tmp_path / "sub").mkdir()

    async def scenario():
        tool = BashTool(working_dir=tmp_path)
        try:
            await call(tool, "cd sub; export KEEP=1")
            timed_out = await call(tool, "sleep 5", timeout=0.3)
            after = await call(tool, 'pwd; echo "[$KEEP]"')
        finally:
            await tool.aclose()
        return timed_out, after

    timed_out, after = run(scenario())
    assert timed_out.metadata["timed_out"] is True
    assert "fresh shell" in timed_out.content
    assert after.content == f"{tmp_path}\n[]"


def test_it_kills_the_process_group_when_cancelled(tmp_path):
    async def scenario():
        tool = BashTool(working_dir=tmp_path)
        try:
            task = asyncio.create_task(call(tool, "sleep 30 & echo $! > sleep.pid; wait"))
            pid = await read_pid(tmp_path / "sleep.pid")
            await asyncio.sleep(0.3)
            assert not is_gone(pid)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            after = await call(tool, "echo alive")
        finally:
            await tool.aclose()
        return pid, after

    started = time.monotonic()
    pid, after = run(scenario())
    assert time.monotonic() - started < 5
    assert wait_gone(pid), "the command survived cancellation"
    assert after.content == "alive"


def test_it_truncates_output_by_lines():
    async def scenario():
        tool = BashTool(max_output_lines=20)
        try:
            return await call(tool, "seq 1 1000")
        finally:
            await tool.aclose()

    result = run(scenario())
    lines = result.content.split("\n")
    assert lines[:3] == ["1", "2", "3"]
    assert "1000" in lines and "500" not in lines
    assert "[output truncated: showed 20 of 1000 lines" in result.content
    assert len([line for line in lines if line.isdigit()]) == 20
    assert result.metadata["truncated"] is True
    assert not result.is_error and result.metadata["exit_code"] == 0


def test_it_truncates_output_by_chars():
    async def scenario():
        tool = BashTool(max_output_chars=1000)
        try:
            return await call(tool, "head -c 50000 /dev/zero | tr '\\0' a; echo; echo THE_END")
        finally:
            await tool.aclose()

    result = run(scenario())
    assert result.metadata["truncated"] is True
    body, note = result.content.split("\n[output truncated: ")
    assert note.endswith("1000 of 50009 chars]")  # 50000 a's, "\n", "THE_END\n"
    assert body.startswith("aaaa")
    assert body.endswith("\nTHE_END")  # the tail is kept too
    assert len(body.replace("\n[...]\n", "")) == 1000
    assert len(result.content) < 1200


def test_it_does_not_truncate_output_within_limits():
    async def scenario():
        tool = BashTool(max_output_lines=5, max_output_chars=100)
        try:
            return await call(tool, "seq 1 5")
        finally:
            await tool.aclose()

    result = run(scenario())
    assert result.content == "1\n2\n3\n4\n5"
    assert result.metadata["truncated"] is False


def test_it_reports_a_nonzero_exit_as_data_and_captures_stderr():
    async def scenario():
        tool = BashTool()
        try:
            return await call(tool, "echo out; echo oops >&2; sh -c 'exit 3'"), await call(tool, "false")
        finally:
            await tool.aclose()

    failed, false = run(scenario())
    assert not failed.is_error
    assert failed.metadata["exit_code"] == 3
    assert failed.content == "out\noops"
    assert not false.is_error and false.metadata["exit_code"] == 1
    assert false.content == "(no output)"


def test_it_reports_the_exit_code_when_the_command_exits_the_shell(tmp_path):
    async def scenario():
        tool = BashTool(working_dir=tmp_path)
        try:
            exited = await call(tool, "cd /; echo bye; exit 7")
            after = await call(tool, "pwd")
        finally:
            await tool.aclose()
        return exited, after

    exited, after = run(scenario())
    assert not exited.is_error
    assert exited.metadata["exit_code"] == 7
    assert exited.metadata["shell_exited"] is True
    assert exited.content.startswith("bye")
    assert after.content == str(tmp_path)


@pytest.mark.parametrize(
    "command",
    [
        "rm -rf /",
        "rm -rf / --no-preserve-root",
        "sudo rm -fr /*",
        "rm -r -f ~",
        "rm -rf $HOME/",
        ":(){ :|:& };:",
        "mkfs.ext4 /dev/sda1",
        "dd if=/dev/zero of=/dev/sda bs=1M",
        "echo x > /dev/sda",
        "sudo shutdown -h now",
        "ls; reboot",
        "chmod -R 777 /",
    ],
)
def test_it_refuses_destructive_commands_without_running_them(tmp_path, command):
    async def scenario():
        tool = BashTool(working_dir=tmp_path)
        try:
            return await call(tool, f"touch ran; {command}")
        finally:
            await tool.aclose()

    result = run(scenario())
    assert result.is_error
    assert result.metadata == {"denied": True}
    assert result.content.startswith("Command refused by deny-list: ")
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize(
    "command",
    ["rm -rf ./build", "rm -rf /tmp/mash-no-such-dir", "rm -rf ~/mash-no-such-dir", "echo reboot", "chmod -R 755 ./build"],
)
def test_it_allows_ordinary_commands(tmp_path, command):
    (tmp_path / "build").mkdir()

    async def scenario():
        tool = BashTool(working_dir=tmp_path)
        try:
            return await call(tool, command)
        finally:
            await tool.aclose()

    result = run(scenario())
    assert not result.is_error
    assert "denied" not in result.metadata
    assert result.metadata["exit_code"] == 0
    if command == "rm -rf ./build":
        assert not (tmp_path / "build").exists()


def test_it_replaces_the_default_deny_patterns_when_given_its_own(tmp_path):
    assert DEFAULT_DENY_PATTERNS

    async def scenario():
        tool = BashTool(working_dir=tmp_path, deny_patterns=[r"\bcurl\b", (r"\bwget\b", "no downloads")])
        try:
            return [await call(tool, c) for c in ("curl example.com", "wget x", "rm -rf /nonexistent-mash/*")]
        finally:
            await tool.aclose()

    curl, wget, rm = run(scenario())
    assert curl.metadata.get("denied") and r"\bcurl\b" in curl.content
    assert wget.metadata.get("denied") and "no downloads" in wget.content
    assert "denied" not in rm.metadata


def test_it_rejects_a_missing_working_dir(tmp_path):
    with pytest.raises(ConfigError, match="working_dir"):
        BashTool(working_dir=tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        BashTool(working_dir=tmp_path / "file")


def test_it_rejects_an_invalid_deny_pattern():
    with pytest.raises(ConfigError, match="regex"):
        BashTool(deny_patterns=["(unclosed"])


def test_it_runs_multiline_commands_and_gives_stdin_eof(tmp_path):
    script = "for i in 1 2; do\n  echo \"line $i\"\ndone\ncat <<'EOF'\nit's here\nEOF"

    async def scenario():
        tool = BashTool(working_dir=tmp_path)
        try:
            multi = await call(tool, script)
            started = time.monotonic()
            cat = await call(tool, "cat; read -r x; echo read=$?", timeout=5)
            elapsed = time.monotonic() - started
            after = await call(tool, "echo still-in-sync")
        finally:
            await tool.aclose()
        return multi, cat, elapsed, after

    multi, cat, elapsed, after = run(scenario())
    assert multi.content == "line 1\nline 2\nit's here"
    assert not cat.is_error and cat.content == "read=1"
    assert elapsed < 2
    assert after.content == "still-in-sync"


def test_it_survives_a_syntax_error_without_hanging():
    async def scenario():
        tool = BashTool()
        try:
            return await call(tool, 'echo "unclosed', timeout=5), await call(tool, "echo ok")
        finally:
            await tool.aclose()

    broken, ok = run(scenario())
    assert broken.metadata.get("timed_out") is None
    assert broken.metadata["exit_code"] == 2
    assert ok.content == "ok"


def test_it_runs_concurrent_calls_one_after_the_other(tmp_path):
    async def scenario():
        tool = BashTool(working_dir=tmp_path)
        try:
            one = "echo start1 >> log; sleep 0.3; echo end1 >> log"
            two = "echo start2 >> log; sleep 0.3; echo end2 >> log"
            await asyncio.gather(call(tool, one), call(tool, two))
        finally:
            await tool.aclose()

    run(scenario())
    assert (tmp_path / "log").read_text().split() == ["start1", "end1", "start2", "end2"]


def test_it_validates_arguments():
    async def scenario():
        tool = BashTool()
        try:
            return [
                await tool.execute({"command": "  "}),
                await call(tool, "echo x", timeout=-1),
                await call(tool, "echo x", timeout="soon"),
            ]
        finally:
            await tool.aclose()

    assert all(r.is_error for r in run(scenario()))


def test_it_lets_the_timeout_argument_override_the_default():
    async def scenario():
        tool = BashTool(timeout=0.2)
        try:
            return await call(tool, "sleep 0.5; echo done", timeout=5)
        finally:
            await tool.aclose()

    result = run(scenario())
    assert not result.is_error and result.content == "done"


def test_it_kills_the_shell_on_aclose():
    async def scenario():
        tool = BashTool()
        shell = int((await call(tool, "echo $$")).content)
        assert not is_gone(shell)
        await tool.aclose()
        await tool.aclose()  # idempotent
        return shell

    assert wait_gone(run(scenario()))


def test_it_describes_itself_as_a_tool():
    tool = BashTool(requires_approval=True, name="shell")
    definition = tool.definition()
    assert definition.name == "shell"
    assert tool.requires_approval is True and BashTool().requires_approval is False
    assert definition.parameters["required"] == ["command"]
    assert definition.parameters["properties"]["timeout"]["type"] == "number"
    assert definition.parameters["additionalProperties"] is False
    assert "persistent" in definition.description


OWNER = """
import asyncio, sys
from mash_core.tools.bash import BashTool

async def main():
    tool = BashTool()
    background = (await tool.execute({"command": "sleep 300 >/dev/null 2>&1 & echo $!"})).content
    running = asyncio.ensure_future(tool.execute({"command": "sleep 301", "timeout": 600}))
    await asyncio.sleep(0.5)
    shell = (await asyncio.create_subprocess_exec("pgrep", "-f", "^sleep 301$", stdout=asyncio.subprocess.PIPE)).stdout
    print(background, (await shell.read()).decode().split()[0], flush=True)
    await running

asyncio.run(main())
"""


def test_a_killed_owner_takes_its_shells_jobs_with_it(tmp_path):
    """SIGKILL leaves the tool no chance to clean up: the shell's watcher kills the group."""
    import signal
    import subprocess
    import sys

    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True, cwd=tmp_path,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    try:
        background, foreground = map(int, owner.stdout.readline().split())
        assert not is_gone(background) and not is_gone(foreground)
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
        assert wait_gone(background) and wait_gone(foreground)
    finally:
        if owner.poll() is None:
            owner.kill()
