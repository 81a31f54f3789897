"""`HostBuilder` composes agent specs into an `AgentHost`; `load_host` finds the app's host.

A host has one primary agent, any number of subagents (the primary may delegate to
them) and workflow-only agents (run only as workflow tasks, never listed).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from mash_core.config import AgentConfig, validate_agent_id
from mash_core.errors import ConfigError
from mash_runtime.once import Once
from mash_runtime.spec import AgentSpec, SubAgentMetadata
from mash_runtime.workflows import WorkflowSpec


@dataclass
class HostedAgent:
    spec: AgentSpec
    role: str  # "primary" | "subagent" | "workflow"
    config: AgentConfig
    model: str
    metadata: SubAgentMetadata | None = None

    @property
    def agent_id(self) -> str:
        return self.config.app_id

    def describe(self) -> dict[str, Any]:
        return {
            "agent_id": self.agent_id,
            "role": self.role,
            "metadata": self.metadata.to_dict() if self.metadata else None,
        }


class AgentHost:
    def __init__(self, agents: dict[str, HostedAgent], primary_agent_id: str, workflows: dict[str, WorkflowSpec]):
        self.agents = agents
        self.primary_agent_id = primary_agent_id
        self.workflows = workflows

    @property
    def subagent_ids(self) -> list[str]:
        return [a.agent_id for a in self.agents.values() if a.role == "subagent"]

    def listed_agents(self) -> list[HostedAgent]:
        """Agents a client may address directly: the primary first, then subagents."""
        return [a for a in self.agents.values() if a.role != "workflow"]

    def get(self, agent_id: str) -> HostedAgent | None:
        return self.agents.get(agent_id)


class HostBuilder:
    def __init__(self) -> None:
        self._primary: AgentSpec | None = None
        self._subagents: list[tuple[AgentSpec, SubAgentMetadata | None]] = []
        self._workflows: list[WorkflowSpec] = []

    def primary(self, spec: AgentSpec) -> "HostBuilder":
        _check_spec(spec)
        if self._primary is not None:
            raise ConfigError(
                f"host already has primary agent {self._primary.get_agent_id()!r}; "
                f"add {spec.get_agent_id()!r} with .subagent(...) instead"
            )
        self._primary = spec
        return self

    def subagent(self, spec: AgentSpec, metadata: SubAgentMetadata | None = None) -> "HostBuilder":
        _check_spec(spec)
        if metadata is not None and not isinstance(metadata, SubAgentMetadata):
            raise ConfigError("subagent metadata must be a SubAgentMetadata")
        self._subagents.append((spec, metadata))
        return self

    def workflow(self, workflow: WorkflowSpec) -> "HostBuilder":
        if not isinstance(workflow, WorkflowSpec):
            raise ConfigError("workflow(...) takes a WorkflowSpec")
        self._workflows.append(workflow)
        return self

    def enable_masher(self, llm_factory=None, *, model: str | None = None) -> "HostBuilder":
        """Add the built-in workflow-only Masher agent and its two workflows
        (`masher-trace-digest`, `masher-online-eval-curation`). `llm_factory()` replaces its
        default `AnthropicProvider(app_id="masher")`."""
        from mash_runtime.masher.agent import MasherSpec, masher_workflows  # only hosts that enable Masher load it

        for wf in masher_workflows(MasherSpec(llm_factory, model=model)):
            self.workflow(wf)
        return self

    def build(self) -> AgentHost:
        if self._primary is None:
            raise ConfigError("a host needs a primary agent: HostBuilder().primary(spec)")
        agents: dict[str, HostedAgent] = {}

        def add(spec: AgentSpec, role: str, metadata: SubAgentMetadata | None) -> None:
            agent_id = spec.get_agent_id()
            if agent_id in agents:
                raise ConfigError(f"duplicate agent id {agent_id!r}: every agent of a host needs its own id")
            config = spec.build_agent_config()
            if not isinstance(config, AgentConfig):
                raise ConfigError(f"{type(spec).__name__}.build_agent_config() must return an AgentConfig")
            if config.app_id != agent_id:
                raise ConfigError(
                    f"agent {agent_id!r}: AgentConfig.app_id is {config.app_id!r}; it must equal the spec's agent id"
                )
            model = getattr(spec.build_llm(), "model", "") or ""
            agents[agent_id] = HostedAgent(spec=spec, role=role, config=config, model=model, metadata=metadata)

        add(self._primary, "primary", None)
        for spec, metadata in self._subagents:
            add(spec, "subagent", metadata)
        workflows: dict[str, WorkflowSpec] = {}
        for wf in self._workflows:
            if wf.workflow_id in workflows:
                raise ConfigError(f"duplicate workflow id {wf.workflow_id!r}")
            workflows[wf.workflow_id] = wf
            for task in wf.tasks:
                if task.agent_spec is not None and task.agent_id not in agents:
                    add(task.agent_spec, "workflow", None)
        for wf in workflows.values():
            for task in wf.tasks:
                if task.agent_id not in agents:
                    raise ConfigError(
                        f"workflow {wf.workflow_id!r} task {task.task_id!r} names unknown agent {task.agent_id!r}"
                    )
        return AgentHost(agents, self._primary.get_agent_id(), workflows)


def _check_spec(spec: Any) -> None:
    if not isinstance(spec, AgentSpec):
        raise ConfigError(f"expected an AgentSpec, got {type(spec).__name__}")
    validate_agent_id(spec.get_agent_id())


def load_host(path: str) -> AgentHost:
    """Import `module:attr` and return its host (`attr` may be a host, a builder or a factory)."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"host app {path!r} must look like 'package.module:build_host'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import host app module {module_name!r}: {exc}") from exc
    try:
        target = getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"host app module {module_name!r} has no attribute {attr!r}") from None
    if callable(target) and not isinstance(target, (AgentHost, HostBuilder)):
        target = target()
    if isinstance(target, HostBuilder):
        target = target.build()
    if not isinstance(target, AgentHost):
        raise ConfigError(f"{path} must return an AgentHost (HostBuilder().primary(...).build())")
    return target


def _configured_host() -> AgentHost:
    from mash_runtime.conf import conf

    return load_host(conf.HOST_APP)


_host: Once[AgentHost] = Once(_configured_host)


def get_host() -> AgentHost:
    """The host named by settings.MASH_HOST_APP, loaded once per process."""
    return _host.get()


def set_host(host: AgentHost | None) -> None:
    """Install a host directly (tests, embedding); None forgets it so the next call reloads."""
    _host.set(host)
