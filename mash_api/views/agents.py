"""Agents, requests and interactions."""

from django.urls import reverse
from drf_spectacular.utils import extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from mash_api.serializers import InteractionAnswerSerializer, SubmitRequestSerializer
from mash_api.views.base import ApiView, ok
from mash_runtime import queries, services


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
        return ok(queries.health())


class AgentListView(ApiView):
    @extend_schema(summary="Agents a client may address (workflow-only agents are hidden)")
    def get(self, request):
        return ok(queries.list_agents())


class AgentDetailView(ApiView):
    @extend_schema(summary="One agent and its default session")
    def get(self, request, agent_id):
        return ok(queries.agent_detail(agent_id))


class SubmitRequestView(ApiView):
    @extend_schema(summary="Submit a message; follow the request's events stream", request=SubmitRequestSerializer)
    def post(self, request, agent_id):
        queries.hosted_agent(agent_id)  # workflow-only agents run only as workflow tasks (404, as in /h2a)
        body = self.body(SubmitRequestSerializer)
        data = services.submit_request(
            agent_id.strip(), body["message"], session_id=body.get("session_id"),
            structured_output=body.get("structured_output"), metadata=body.get("metadata"),
        )
        return ok(data, status=202)


class RequestStatusView(ApiView):
    @extend_schema(summary="Status of a request")
    def get(self, request, agent_id, request_id):
        return ok(services.get_request_status(request_id, agent_id.strip()))


class ResumeRequestView(ApiView):
    @extend_schema(summary="Run a failed or cancelled request again from its checkpoints", request=None)
    def post(self, request, agent_id, request_id):
        return ok(services.resume_request(request_id, agent_id.strip()))


class CancelRequestView(ApiView):
    @extend_schema(summary="Cancel a request, interrupting its LLM or tool call", request=None)
    def post(self, request, agent_id, request_id):
        return ok(services.cancel_request(request_id, agent_id.strip()))


class InteractionView(ApiView):
    @extend_schema(summary="Answer an approval, question or choice", request=InteractionAnswerSerializer)
    def post(self, request, agent_id, request_id):
        body = self.body(InteractionAnswerSerializer)
        return ok(services.answer_interaction(request_id, body["interaction_id"], body["response"], agent_id.strip()))
