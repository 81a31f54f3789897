"""Workflow listing (runs land with the workflow engine)."""

from drf_spectacular.utils import extend_schema

from mash_api.views.base import ApiView, ok
from mash_runtime.host import get_host


class WorkflowListView(ApiView):
    @extend_schema(summary="Workflows of this host")
    def get(self, request):
        workflows = [
            {"workflow_id": wf.workflow_id, "tasks": [{"task_id": t.task_id, "agent_id": t.agent_id} for t in wf.tasks],
             "metadata": wf.metadata}
            for wf in get_host().workflows.values()
        ]
        return ok({"workflows": workflows})
