"""Every django-q2 task path, in one place: what the broker stores and a worker imports.

A path names the function django-q2 calls in a worker (`module.function`); renaming or
moving one of those functions without changing its path here strands the tasks already
queued under the old name (tests/runtime/test_tasks.py checks that each path imports).
"""

RUN_REQUEST = "mash_runtime.run.runner.run_request_task"
ADVANCE_RUN = "mash_runtime.workflows.engine.advance_run_task"
COMPACT_SESSION = "mash_runtime.memory.compaction.compact_session_task"
SWEEP = "mash_runtime.sweeper.sweep"

ALL = (RUN_REQUEST, ADVANCE_RUN, COMPACT_SESSION, SWEEP)
