"""Workflows: an ordered list of tasks, each one durable request to an agent.

- `spec.py`: `WorkflowSpec`, `TaskSpec`, what a host app declares (public here, as
  `mash_runtime.workflows.WorkflowSpec` / `TaskSpec`).
- `validation.py`: a stored task list checked against the host (publish API, admin form).
- `engine.py`: runs (`start_run`, `advance_run`, cancel, resume, reads).
- `publishing.py`: skills and workflows published to an agent at run time.

Importing this package does not touch models, so host apps can import it before Django
is set up.
"""

from mash_runtime.workflows.spec import TaskSpec, WorkflowSpec

__all__ = ["TaskSpec", "WorkflowSpec"]
