"""Run a tool's process in a working-directory jail: bubblewrap (`bwrap`) or util-linux `unshare`.

Inside the jail the whole filesystem is read-only except the working directory and a
private, empty /tmp; /dev holds only null, zero, full, random, urandom and tty (the host's
/dev has disks a root process could write to); /proc shows only the jail's processes;
there is no network (a private network namespace with only loopback); every capability
is dropped and no_new_privs is set, so setuid programs cannot regain any. The process
still reads what its user may read: run the tool as an unprivileged user (`user=`) to
keep root-only files (the data dir's secret key, a SQLite database) out of reach.

`wrap` builds the command line; `resolve_sandbox` checks at construction that the jail
really starts on this machine (and as that user), so a tool never falls back to running
unjailed.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import threading
from collections.abc import Sequence
from typing import Any

from mash_core.errors import ConfigError

SANDBOXES: tuple[str, ...] = ("bwrap", "unshare")
AUTO_ORDER: tuple[str, ...] = ("bwrap", "unshare")

# Runs as root inside the new mount namespace, before the command: $1 is the working dir,
# the rest is the command. Any failure aborts (set -e), so the command never runs half-jailed.
UNSHARE_SETUP = r"""
set -euo pipefail
wd=$1; shift
mapfile -t mounts </proc/self/mountinfo
# Its own mount, so the working dir stays writable when the mount it sits on turns read-only.
mount --bind "$wd" "$wd"
for line in "${mounts[@]}"; do
  read -r _ _ _ _ target opts _ <<<"$line"
  target=${target//\\040/ }; target=${target//\\011/$'\t'}; target=${target//\\012/$'\n'}
  target=${target//\\134/\\}
  case $target in "$wd"|"$wd"/*) continue ;; esac
  case ",$opts," in *,ro,*) continue ;; esac
  # In a user namespace the kernel refuses a remount that would drop a flag the mount
  # was created with: keep them.
  flags=ro
  for flag in nosuid nodev noexec noatime nodiratime relatime; do
    case ",$opts," in *",$flag,"*) flags+=",$flag" ;; esac
  done
  mount -o "remount,bind,$flags" "$target"
done
# Mounting over /tmp hides a working dir under it; the cwd still holds the directory, so
# it is bound back from "." (--no-canonicalize keeps mount from resolving "." by name).
cd -- "$wd"
mount -t tmpfs -o mode=1777,nosuid,nodev mash-tmp /tmp
case $wd in /tmp|/tmp/*) mkdir -p -- "$wd"; mount --no-canonicalize --bind . "$wd" ;; esac
cd /dev
mount -t tmpfs -o mode=755,nosuid mash-dev /dev
for node in null zero full random urandom tty; do
  : >"/dev/$node"
  mount --no-canonicalize --bind "./$node" "/dev/$node"
done
ln -s /proc/self/fd /dev/fd; ln -s fd/0 /dev/stdin; ln -s fd/1 /dev/stdout; ln -s fd/2 /dev/stderr
mkdir /dev/shm
mount -t tmpfs -o mode=1777,nosuid,nodev mash-shm /dev/shm
mount -o remount,bind,ro,nosuid /dev
cd -- "$wd"
exec setpriv --bounding-set=-all --inh-caps=-all --no-new-privs -- "$@"
"""

_PROBE_TIMEOUT = 20.0
_probed: dict[tuple, str | None] = {}
_probe_lock = threading.Lock()


def wrap(kind: str, working_dir: str, argv: Sequence[str], *, user: str | int | None = None) -> list[str]:
    """`argv` run inside a `kind` jail whose only writable place is `working_dir` (a real path),
    for a child started as `user` (see `run_as`; None: the server's own user)."""
    if kind == "bwrap":
        return [
            "bwrap",
            "--ro-bind", "/", "/",
            "--dev", "/dev",
            "--proc", "/proc",
            "--tmpfs", "/tmp",
            "--bind", working_dir, working_dir,
            "--unshare-all",
            # Killing bwrap (a timeout's killpg) takes everything in the jail with it.
            "--die-with-parent",
            # Run as root, bwrap would keep every capability: enough to remount / writable.
            "--cap-drop", "ALL",
            "--chdir", working_dir,
            "--", *argv,
        ]
    if kind == "unshare":
        uid = os.geteuid() if user is None else run_as(user)[0]["user"]
        # Only root may mount in the namespaces it is in; anyone else needs a user namespace.
        userns = ["--user", "--map-root-user"] if uid != 0 else []
        return [
            "unshare", *userns, "--mount", "--net", "--pid", "--ipc", "--uts",
            "--fork", "--kill-child", "--mount-proc",
            "--", "bash", "--noprofile", "--norc", "-c", UNSHARE_SETUP, "mash-sandbox", working_dir, *argv,
        ]
    raise ConfigError(f"unknown sandbox {kind!r}: use one of {', '.join(SANDBOXES)}, 'auto' or None")


def run_as(user: str | int, *, owner: str = "tool") -> tuple[dict[str, Any], dict[str, str]]:
    """Popen keyword arguments that run a child as `user` (name or uid) with only its own
    group, and the HOME/USER/LOGNAME it should see. Needs a server running as root."""
    try:
        entry = pwd.getpwuid(user) if isinstance(user, int) else pwd.getpwnam(user)
    except (KeyError, TypeError):
        raise ConfigError(f"{owner} user {user!r} does not exist on this machine") from None
    if os.geteuid() != 0 and entry.pw_uid != os.geteuid():
        raise ConfigError(f"{owner} user={user!r} needs the server to run as root (it runs as uid {os.geteuid()})")
    # extra_groups=[]: without it the child keeps root's supplementary groups.
    popen = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    env = {"HOME": entry.pw_dir, "USER": entry.pw_name, "LOGNAME": entry.pw_name}
    return popen, env


def resolve_sandbox(
    sandbox: str | None, working_dir: str, *, user: str | int | None = None, owner: str = "tool"
) -> str | None:
    """The jail to use ("bwrap", "unshare") or None, after checking it starts here.

    "auto" picks the first of AUTO_ORDER that works. A sandbox that was asked for but
    cannot start (not installed, user namespaces disabled, a mount refused) is a
    ConfigError that says why: nothing falls back to running unjailed.
    """
    if sandbox is None:
        return None
    if sandbox != "auto" and sandbox not in SANDBOXES:
        raise ConfigError(f"{owner} sandbox must be one of {', '.join(SANDBOXES)}, 'auto' or None, got {sandbox!r}")
    if os.name != "posix" or not os.path.exists("/proc/self/mountinfo"):
        raise ConfigError(f"{owner} sandbox={sandbox!r} needs Linux (namespaces); this is {os.name}")
    if working_dir == "/":
        raise ConfigError(f"{owner} sandbox needs a working_dir other than /: the jail makes it writable")
    kinds = AUTO_ORDER if sandbox == "auto" else (sandbox,)
    reasons = []
    for kind in kinds:
        reason = _probe(kind, working_dir, user)
        if reason is None:
            return kind
        reasons.append(f"{kind}: {reason}")
    hint = " (Debian/Ubuntu: apt-get install bubblewrap)" if "bwrap" in kinds else ""
    raise ConfigError(f"{owner} sandbox={sandbox!r} is not available on this machine{hint}; " + "; ".join(reasons))


def _probe(kind: str, working_dir: str, user: str | int | None) -> str | None:
    """None when a `kind` jail starts and runs a command here, else why not (cached)."""
    tools = ("bwrap",) if kind == "bwrap" else ("unshare", "setpriv", "mount")
    found = tuple(shutil.which(t) for t in tools)
    key = (kind, working_dir, user, found)
    with _probe_lock:
        if key in _probed:
            return _probed[key]
        missing = [t for t, path in zip(tools, found) if path is None]
        if missing:
            reason = f"{', '.join(missing)} not found on PATH"
        else:
            reason = _run_probe(kind, working_dir, user)
        _probed[key] = reason
        return reason


def _run_probe(kind: str, working_dir: str, user: str | int | None) -> str | None:
    # A read-only / proves the jail took hold, not just that the launcher ran.
    check = ('while read -r _ _ _ _ mount opts _; do [ "$mount" = / ] && last=$opts; done </proc/self/mountinfo; '
             'case ",$last," in *,ro,*) exit 0 ;; esac; echo "/ is still writable in the jail" >&2; exit 1')
    argv = wrap(kind, working_dir, ["bash", "--noprofile", "--norc", "-c", check], user=user)
    try:
        proc = subprocess.run(
            argv, check=False, cwd=working_dir, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=_PROBE_TIMEOUT,
            **(run_as(user)[0] if user is not None else {}),
        )
    except subprocess.TimeoutExpired:
        return f"did not start within {_PROBE_TIMEOUT:g}s"
    except OSError as exc:
        return str(exc)
    if proc.returncode == 0:
        return None
    detail = " ".join((proc.stderr or proc.stdout).split())[-400:]
    return f"exited with code {proc.returncode}" + (f": {detail}" if detail else "")
