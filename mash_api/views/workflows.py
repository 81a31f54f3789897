"""Workflows: list, run, inspect, cancel, resume, stream; and publishing to an agent."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers

from mash_api.serializers import EpochField, FlagField, LimitField, OffsetField
from mash_api.views.base import ApiView, ok
from mash_api.views.sse import event_stream, parse_cursor
from mash_runtime.models import WorkflowRun
from mash_runtime.workflows import engine, publishing


class RunWorkflowSerializer(serializers.Serializer):
    dedup_key = serializers.CharField(required=False, allow_null=True)
    input = serializers.JSONField(required=False, allow_null=True)


class StatusListField(serializers.CharField):
    """`?status=completed,failed`: run statuses, comma-separated (blank: every status)."""

    def __init__(self, **kwargs):
        super().__init__(required=False, allow_blank=True, **kwargs)

    def to_internal_value(self, data):
        statuses = [s.strip() for s in super().to_internal_value(data).split(",") if s.strip()]
        unknown = [s for s in statuses if s not in WorkflowRun.Status.values]
        if unknown:
            raise serializers.ValidationError(f"unknown status {', '.join(unknown)}", code="enum")
        return statuses


class RunListQuerySerializer(serializers.Serializer):
    status = StatusListField()
    start_time = EpochField(help_text="epoch seconds")
    end_time = EpochField(help_text="epoch seconds")
    limit = LimitField(default=engine.RUNS_LIMIT[0], maximum=engine.RUNS_LIMIT[1])
    offset = OffsetField()
    sort_desc = FlagField(default=True)


class WorkflowListView(ApiView):
    @extend_schema(summary="Workflows of this host: defined in code or published")
    def get(self, request):
        return ok(engine.list_workflows())


class RunWorkflowView(ApiView):
    write_permissions = {"POST": "mash_runtime.add_workflowrun"}

    @extend_schema(summary="Start a run; a dedup_key refuses a second active run", request=RunWorkflowSerializer)
    def post(self, request, workflow_id):
        body = self.body(RunWorkflowSerializer)
        return ok(engine.start_run(workflow_id, input=body.get("input"), dedup_key=body.get("dedup_key")),
                  status=202)


class RunListView(ApiView):
    @extend_schema(summary="Runs of a workflow (every status), filtered and paginated",
                   parameters=[RunListQuerySerializer])
    def get(self, request, workflow_id):
        p = self.query(RunListQuerySerializer)
        return ok(engine.list_runs(workflow_id, statuses=p.get("status"), start=p["start_time"], end=p["end_time"],
                                   limit=p["limit"], offset=p["offset"], descending=p["sort_desc"]))


class RunDetailView(ApiView):
    @extend_schema(summary="One run with its output")
    def get(self, request, workflow_id, run_id):
        return ok(engine.describe_run(engine.get_run(workflow_id, run_id)))


class RunCancelView(ApiView):
    write_permissions = {"POST": "mash_runtime.change_workflowrun"}

    @extend_schema(summary="Cancel a run and its current task", request=None)
    def post(self, request, workflow_id, run_id):
        return ok(engine.cancel_run(workflow_id, run_id))


class RunResumeView(ApiView):
    write_permissions = {"POST": "mash_runtime.change_workflowrun"}

    @extend_schema(summary="Resume a failed or cancelled run from its failed task", request=None)
    def post(self, request, workflow_id, run_id):
        return ok(engine.resume_run(workflow_id, run_id))


@event_stream
def run_events(request, workflow_id: str, run_id: str):
    from mash_api.stream_readers import run_frames

    run = engine.get_run(workflow_id, run_id)
    return run_frames(run.pk, parse_cursor(request))


class PublishSkillView(ApiView):
    write_permissions = {"POST": "mash_runtime.add_publishedskill"}

    @extend_schema(summary="Publish a skill to an agent (idempotent by name)")
    def post(self, request, agent_id):
        return ok(publishing.publish_skill(agent_id, request.data))


class PublishedSkillView(ApiView):
    write_permissions = {"DELETE": "mash_runtime.delete_publishedskill"}

    @extend_schema(summary="Remove a published skill")
    def delete(self, request, agent_id, name):
        return ok(publishing.remove_skill(agent_id, name))


class PublishWorkflowView(ApiView):
    write_permissions = {"POST": "mash_runtime.add_workflowdefinition"}

    @extend_schema(summary="Publish (upsert) a workflow through an agent")
    def post(self, request, agent_id):
        return ok(publishing.publish_workflow(agent_id, request.data))


class PublishedWorkflowView(ApiView):
    write_permissions = {"DELETE": "mash_runtime.delete_workflowdefinition"}

    @extend_schema(summary="Remove a published workflow (its runs stay)")
    def delete(self, request, agent_id, workflow_id):
        return ok(publishing.remove_workflow(agent_id, workflow_id))
