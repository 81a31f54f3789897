"""BashTool(sandbox=...): a working-directory jail with bubblewrap or util-linux unshare.

Real jails, real files: each case runs where its sandbox starts on this machine and is
skipped (with the reason) where it does not. CI installs bubblewrap (.ci/run).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from mash_core.errors import ConfigError
from mash_core.tools.bash import BashTool
from mash_core.tools.sandbox import resolve_sandbox

KINDS = ["bwrap", "unshare"]


def available(kind: str, working_dir: Path, user=None) -> None:
    try:
        resolve_sandbox(kind, os.path.realpath(working_dir), user=user)
    except ConfigError as exc:
        pytest.skip(f"sandbox {kind!r} does not start here: {exc}")


@pytest.fixture(params=KINDS)
def kind(request, tmp_path):
    available(request.param, tmp_path)
    return request.param


@pytest.fixture
def outside():
    """A directory outside the jail but visible in it (read-only): /tmp is private in there."""
    path = Path(tempfile.mkdtemp(prefix="mash-outside-", dir="/var/tmp"))
    (path / "precious.txt").write_text("keep me\n")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def session(tool: BashTool, *commands: str, **args):
    async def go():
        try:
            return [await tool.execute({"command": c, **args}) for c in commands]
        finally:
            await tool.aclose()

    return asyncio.run(go())


def test_a_sandboxed_shell_writes_inside_the_working_dir_but_not_outside(kind, tmp_path, outside):
    scratch = f"/tmp/mash-jail-scratch-{uuid.uuid4().hex}"
    tool = BashTool(working_dir=tmp_path, sandbox=kind)
    inside, elsewhere, system, tmp = session(
        tool,
        "echo made-inside > inside.txt && mkdir -p sub/deeper && cat inside.txt",
        f"echo overwritten > {outside}/precious.txt; echo new > {outside}/new.txt",
        "touch /etc/mash-sandbox-test; touch /usr/mash-sandbox-test",
        f"echo scratch > {scratch} && cat {scratch}",
    )

    assert inside.content == "made-inside" and (tmp_path / "inside.txt").read_text() == "made-inside\n"
    assert (tmp_path / "sub" / "deeper").is_dir()
    assert "Read-only file system" in elsewhere.content
    assert (outside / "precious.txt").read_text() == "keep me\n" and not (outside / "new.txt").exists()
    assert system.content.count("Read-only file system") == 2
    assert not Path("/etc/mash-sandbox-test").exists() and not Path("/usr/mash-sandbox-test").exists()
    assert tmp.content == "scratch" and not Path(scratch).exists()  # the jail's /tmp is its own


@pytest.mark.parametrize("command", [
    "'rm' -rf {target}",
    "x={target}; rm -rf $x",
    "find {target} -delete",
    "r=r; m=m; $r$m -r -f {target}/*",
    "python3 -c 'import shutil, sys; shutil.rmtree(sys.argv[1])' {target}",
    "mv {target}/precious.txt ./stolen.txt",
    "chmod -R 000 {target}",
])
def test_deny_list_bypasses_cannot_touch_a_file_outside_the_jail(kind, tmp_path, outside, command):
    mode = (outside / "precious.txt").stat().st_mode
    tool = BashTool(working_dir=tmp_path, sandbox=kind)
    (result,) = session(tool, command.format(target=outside))

    assert not result.metadata.get("denied")  # the deny-list lets these through: the jail stops them
    assert (outside / "precious.txt").read_text() == "keep me\n"
    assert (outside / "precious.txt").stat().st_mode == mode  # (mv may copy it: reading is allowed)


def test_a_sandboxed_shell_still_gets_the_scrubbed_environment(kind, tmp_path, monkeypatch):
    for name in ("MASH_API_KEY", "ANTHROPIC_API_KEY", "DATABASE_URL", "FOO_TOKEN", "X_SECRET_Y"):
        monkeypatch.setenv(name, f"value-of-{name.lower()}")
    monkeypatch.setenv("EXTRA_SETTING", "passed-through")
    tool = BashTool(working_dir=tmp_path, sandbox=kind, pass_env=["EXTRA_SETTING"], env={"GREETING": "hi"})
    (result,) = session(tool, "env")

    shown = dict(line.split("=", 1) for line in result.content.splitlines() if "=" in line)
    assert not {"MASH_API_KEY", "ANTHROPIC_API_KEY", "DATABASE_URL", "FOO_TOKEN", "X_SECRET_Y"} & set(shown)
    assert "value-of-" not in result.content
    assert shown["PATH"] and shown["EXTRA_SETTING"] == "passed-through" and shown["GREETING"] == "hi"
    assert shown["TMPDIR"] == "/tmp"


def test_a_sandboxed_shell_cannot_read_the_servers_environment_from_proc(kind, tmp_path):
    # A scrubbed env is not enough on its own: a shell of the server's user can read any
    # of the server's processes' /proc/<pid>/environ. The jail's /proc shows only its own.
    server = subprocess.Popen(["sleep", "60"], env={"PATH": os.defpath, "MASH_API_KEY": "proc-visible-secret"})
    scan = "grep -l proc-visible-secret /proc/[0-9]*/environ 2>/dev/null; echo scanned"
    try:
        (unjailed,) = session(BashTool(working_dir=tmp_path), scan)
        (jailed,) = session(BashTool(working_dir=tmp_path, sandbox=kind), scan)
    finally:
        server.kill()
        server.wait()
    assert f"/proc/{server.pid}/environ" in unjailed.content  # the scan does find it from outside
    assert jailed.content == "scanned"


def test_a_sandboxed_shell_has_no_network(kind, tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        tool = BashTool(working_dir=tmp_path, sandbox=kind, timeout=10)
        (result,) = session(tool, f"exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected || echo refused")
    finally:
        listener.close()
    assert result.content.endswith("refused"), result.content


def test_a_sandboxed_shell_keeps_its_state_and_reports_exit_codes(kind, tmp_path):
    (tmp_path / "sub").mkdir()
    tool = BashTool(working_dir=tmp_path, sandbox=kind)
    moved, remembered, exited = session(tool, "cd sub && export KEPT=yes && pwd", "echo $KEPT; pwd", "exit 7")

    assert moved.content == str(tmp_path.resolve() / "sub")
    assert remembered.content == f"yes\n{tmp_path.resolve() / 'sub'}"
    assert exited.metadata["exit_code"] == 7 and exited.metadata["shell_exited"] is True


def test_a_timeout_kills_everything_the_sandboxed_shell_started(kind, tmp_path):
    tool = BashTool(working_dir=tmp_path, sandbox=kind)
    # A job detached with setsid would escape a plain process-group kill; the jail's pid
    # namespace goes down with it.
    timed_out, after = session(tool, "(setsid sh -c 'sleep 1.5; touch late.txt' &) ; sleep 30", "echo fresh",
                               timeout=0.5)

    assert timed_out.metadata["timed_out"] is True
    assert after.content == "fresh"
    time.sleep(2.5)
    assert not (tmp_path / "late.txt").exists()


def test_auto_picks_a_sandbox_that_works(tmp_path):
    try:
        chosen = resolve_sandbox("auto", str(tmp_path.resolve()))
    except ConfigError as exc:
        pytest.skip(f"no sandbox starts here: {exc}")
    tool = BashTool(working_dir=tmp_path, sandbox="auto")
    (result,) = session(tool, "touch /etc/mash-sandbox-auto")

    assert tool.sandbox == chosen in KINDS
    assert "Read-only file system" in result.content
    assert "sandbox" in tool.description


def test_a_sandbox_that_cannot_start_is_a_config_error_not_an_unjailed_shell(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "bash").symlink_to(shutil.which("bash"))  # bash, but no bwrap, unshare or setpriv
    monkeypatch.setenv("PATH", str(bin_dir))
    for sandbox in ("bwrap", "unshare", "auto"):
        with pytest.raises(ConfigError, match="not available on this machine") as info:
            BashTool(working_dir=tmp_path, sandbox=sandbox)
        assert "not found on PATH" in str(info.value)
    with pytest.raises(ConfigError, match="apt-get install bubblewrap"):
        BashTool(working_dir=tmp_path, sandbox="bwrap")


@pytest.mark.parametrize("sandbox", ["firejail", "", "BWRAP"])
def test_an_unknown_sandbox_is_a_config_error(tmp_path, sandbox):
    with pytest.raises(ConfigError, match="sandbox must be one of"):
        BashTool(working_dir=tmp_path, sandbox=sandbox)


def test_the_root_directory_cannot_be_the_jails_working_dir():
    with pytest.raises(ConfigError, match="other than /"):
        BashTool(working_dir="/", sandbox="bwrap")


# -- running as another user -------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="running a tool as another user needs a root server")


@pytest.fixture
def shared_dir():
    """A working dir nobody can use (pytest's tmp_path sits under a root-only directory)."""
    path = Path(tempfile.mkdtemp(prefix="mash-user-", dir="/var/tmp"))
    path.chmod(0o777)
    secret = path.parent / f"{path.name}-root-only.txt"
    secret.write_text("root eyes only\n")
    secret.chmod(0o600)
    yield path, secret
    shutil.rmtree(path, ignore_errors=True)
    secret.unlink(missing_ok=True)


@needs_root
@pytest.mark.parametrize("sandbox", [None, *KINDS])
def test_user_runs_the_shell_as_that_user_who_cannot_read_root_only_files(shared_dir, sandbox):
    work, secret = shared_dir
    if sandbox:
        available(sandbox, work, user="nobody")
    tool = BashTool(working_dir=work, sandbox=sandbox, user="nobody")
    who, read, wrote = session(tool, "id -un; echo $HOME $USER", f"cat {secret}", "echo mine > mine.txt && echo ok")

    if sandbox != "unshare":  # unshare maps the user to root inside its user namespace
        assert who.content.splitlines()[0] == "nobody"
    assert who.content.splitlines()[1] == "/nonexistent nobody"
    assert "Permission denied" in read.content and "root eyes only" not in read.content
    assert wrote.content == "ok" and (work / "mine.txt").stat().st_uid == 65534


def test_an_unknown_user_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        BashTool(working_dir=tmp_path, user="no-such-user-mash")
