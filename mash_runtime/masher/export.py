"""Optional JSONL export of Masher's records under `MASH_DATA_DIR/masher/`.

On when the Django setting `MASH_MASHER_EXPORT` is true (or, without that setting, the
environment variable of the same name). Each save appends one JSON object per record
and line to `trace_digests.jsonl` or `eval_records.jsonl`; the file is an append log,
so a record saved again (a re-digested trace) appears again and the last line wins.
"""

from __future__ import annotations

import fcntl
import json
from pathlib import Path
from typing import Any, Iterable

DIGESTS_FILE = "trace_digests.jsonl"
EVALS_FILE = "eval_records.jsonl"
_TRUE = {"1", "true", "yes", "on"}


def export_enabled() -> bool:
    from mash_runtime.conf import conf

    value = conf.MASHER_EXPORT
    if isinstance(value, str):
        return value.strip().lower() in _TRUE
    return bool(value)


def export_dir() -> Path:
    from mash_runtime.conf import conf

    return Path(conf.DATA_DIR) / "masher"


def append_jsonl(filename: str, records: Iterable[dict[str, Any]]) -> Path | None:
    """Append records as JSON lines when export is on; returns the file written, or None."""
    if not export_enabled():
        return None
    lines = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True, default=str) + "\n" for r in records)
    path = export_dir() / filename
    if not lines:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        # One locked write per batch, so two workers never interleave half lines.
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            handle.write(lines)
            handle.flush()
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    return path
