"""Agents, requests and interactions."""

from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from mash_api.serializers import InteractionAnswerSerializer, SubmitRequestSerializer
from mash_api.views.base import ApiView, ok
from mash_runtime import read_services, services
from mash_runtime.dbfaults import once_more_if_dropped

IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key", str, OpenApiParameter.HEADER, required=False,
    description="Up to 255 printable ASCII characters (a UUID, say), kept 24 h per agent: sending the same submit "
                "again with the same key answers with the first request (same request_id, header "
                "`Idempotent-Replayed: true`, `replayed: true`) instead of making a second one; the same key with "
                "another body is 422 IDEMPOTENCY_KEY_REUSED. Retry a 503 DATABASE_UNAVAILABLE (or a lost answer) "
                "with it.")
STREAM_TOKENS = OpenApiParameter(
    "stream", str, OpenApiParameter.QUERY, required=False, enum=["events", "tokens"],
    description="`tokens`: this client will follow the request's token deltas (`agent.delta` on its events stream "
                "with `?stream=tokens`) from the first model call on.")


class RootView(APIView):
    permission_classes = [AllowAny]

    @extend_schema(summary="Service discovery (no key needed)")
    def get(self, request):
        return Response({
            "service": "mash-api",
            "api": {"version": "v1", "base": "/api/v1", "openapi": reverse("api-schema"), "docs": reverse("api-docs")},
        })


class HealthView(ApiView):
    @extend_schema(summary="Health and deployment: the CLI calls this first")
    def get(self, request):
        return ok(read_services.health())


class AgentListView(ApiView):
    @extend_schema(summary="Agents a client may address (workflow-only agents are hidden)")
    def get(self, request):
        return ok(read_services.list_agents())


class AgentDetailView(ApiView):
    @extend_schema(summary="One agent and its default session")
    def get(self, request, agent_id):
        return ok(read_services.agent_detail(agent_id))


class SubmitRequestView(ApiView):
    write_permissions = {"POST": "mash_runtime.add_request"}

    def initial(self, request, *args, **kwargs):
        # The key check may read the database (ApiKey rows): once more on a dropped connection,
        # as the submit itself is (services.submit_request), rather than a 503 the client must retry.
        once_more_if_dropped(lambda: super(SubmitRequestView, self).initial(request, *args, **kwargs), "submit checks")

    @extend_schema(summary="Submit a message; follow the request's events stream", request=SubmitRequestSerializer,
                   parameters=[IDEMPOTENCY_KEY, STREAM_TOKENS])
    def post(self, request, agent_id):
        read_services.hosted_agent(agent_id)  # workflow-only agents run only as workflow tasks (404, as in /h2a)
        body = self.body(SubmitRequestSerializer)
        data = services.submit_request(
            agent_id.strip(), body["message"], session_id=body.get("session_id"),
            structured_output=body.get("structured_output"), metadata=body.get("metadata"),
            idempotency_key=request.headers.get("Idempotency-Key"),
            stream_tokens=request.query_params.get("stream") == "tokens",
        )
        # A replay answers as the first submit did (202: a client that lost that answer gets it
        # now), and says so.
        if (warning := read_services.no_worker_warning()) is not None:
            data = {**data, "warning": warning}  # nothing will run it until a worker starts: say so now
        response = ok(data, status=202)
        if data.get("replayed"):
            response["Idempotent-Replayed"] = "true"
        return response


class RequestStatusView(ApiView):
    @extend_schema(summary="Status of a request")
    def get(self, request, agent_id, request_id):
        return ok(services.get_request_status(request_id, agent_id.strip()))


class ResumeRequestView(ApiView):
    write_permissions = {"POST": "mash_runtime.change_request"}

    @extend_schema(summary="Run a failed or cancelled request again from its checkpoints", request=None)
    def post(self, request, agent_id, request_id):
        return ok(services.resume_request(request_id, agent_id.strip()))


class CancelRequestView(ApiView):
    write_permissions = {"POST": "mash_runtime.change_request"}

    @extend_schema(summary="Cancel a request, interrupting its LLM or tool call", request=None)
    def post(self, request, agent_id, request_id):
        return ok(services.cancel_request(request_id, agent_id.strip()))


class InteractionView(ApiView):
    write_permissions = {"POST": "mash_runtime.change_interaction"}

    @extend_schema(summary="Answer an approval, question or choice", request=InteractionAnswerSerializer)
    def post(self, request, agent_id, request_id):
        body = self.body(InteractionAnswerSerializer)
        return ok(services.answer_interaction(request_id, body["interaction_id"], body["response"], agent_id.strip()))
