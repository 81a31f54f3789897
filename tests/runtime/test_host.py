import sys
import types

import pytest

from mash_core.config import AgentConfig
from mash_core.errors import ConfigError
from mash_core.llm import ScriptedProvider
from mash_runtime import AgentSpec, HostBuilder, SubAgentMetadata
from mash_runtime.host import load_host
from mash_runtime.workflows import TaskSpec, WorkflowSpec


class Spec(AgentSpec):
    def __init__(self, agent_id: str, app_id: str | None = None):
        self.agent_id = agent_id
        self.app_id = app_id or agent_id

    def get_agent_id(self) -> str:
        return self.agent_id

    def build_llm(self):
        return ScriptedProvider(["hi"], model="scripted-model")

    def build_agent_config(self) -> AgentConfig:
        return AgentConfig(app_id=self.app_id, system_prompt="be brief")


META = SubAgentMetadata(display_name="Docs", description="Knows the docs", capabilities=["read"])


def test_it_builds_a_host_with_roles_in_order():
    wf = WorkflowSpec("digest", tasks=[TaskSpec("t1", agent_spec=Spec("worker"))])
    host = HostBuilder().primary(Spec("main")).subagent(Spec("docs"), metadata=META).workflow(wf).build()
    assert host.primary_agent_id == "main"
    assert [a.agent_id for a in host.listed_agents()] == ["main", "docs"]
    assert host.subagent_ids == ["docs"]
    assert host.get("worker").role == "workflow"
    assert host.get("docs").describe() == {
        "agent_id": "docs",
        "role": "subagent",
        "metadata": {"display_name": "Docs", "description": "Knows the docs", "capabilities": ["read"],
                     "usage_guidance": ""},
    }
    assert host.get("main").model == "scripted-model"


def test_it_refuses_a_second_primary():
    with pytest.raises(ConfigError, match="already has primary agent 'a'"):
        HostBuilder().primary(Spec("a")).primary(Spec("b"))


def test_it_refuses_duplicate_agent_ids():
    with pytest.raises(ConfigError, match="duplicate agent id 'a'"):
        HostBuilder().primary(Spec("a")).subagent(Spec("a")).build()


def test_it_refuses_an_app_id_that_differs_from_the_agent_id():
    with pytest.raises(ConfigError, match="app_id is 'other'; it must equal"):
        HostBuilder().primary(Spec("a", app_id="other")).build()


def test_it_needs_a_primary():
    with pytest.raises(ConfigError, match="needs a primary agent"):
        HostBuilder().subagent(Spec("a")).build()


def test_it_refuses_bad_agent_ids():
    with pytest.raises(ConfigError, match="invalid"):
        HostBuilder().primary(Spec("bad id with spaces"))


def test_it_refuses_a_workflow_task_naming_an_unknown_agent():
    wf = WorkflowSpec("w", tasks=[TaskSpec("t", agent_id="ghost")])
    with pytest.raises(ConfigError, match="unknown agent 'ghost'"):
        HostBuilder().primary(Spec("a")).workflow(wf).build()


def test_it_validates_workflow_specs():
    with pytest.raises(ConfigError, match="at least one task"):
        WorkflowSpec("w", tasks=[])
    with pytest.raises(ConfigError, match="exactly one of agent_spec or agent_id"):
        TaskSpec("t")
    with pytest.raises(ConfigError, match="two tasks named"):
        WorkflowSpec("w", tasks=[TaskSpec("t", agent_id="a"), TaskSpec("t", agent_id="a")])
    with pytest.raises(ConfigError, match="must describe an object"):
        TaskSpec("t", agent_id="a", structured_output={"type": "string"})


def test_it_loads_a_host_app_by_path(monkeypatch):
    module = types.ModuleType("fake_host_app")
    module.build_host = lambda: HostBuilder().primary(Spec("p"))
    monkeypatch.setitem(sys.modules, "fake_host_app", module)
    host = load_host("fake_host_app:build_host")
    assert host.primary_agent_id == "p"


@pytest.mark.parametrize(
    "path, message",
    [
        ("no_colon", "must look like"),
        ("missing_module_xyz:build", "cannot import host app module"),
        ("json:nope", "has no attribute 'nope'"),
        ("os:getcwd", "must return an AgentHost"),
    ],
)
def test_it_explains_bad_host_app_paths(path, message):
    with pytest.raises(ConfigError, match=message):
        load_host(path)


def test_it_syncs_agent_rows(db):
    from mash_runtime.host_sync import sync_host
    from mash_runtime.models import Agent

    Agent.objects.create(agent_id="retired", role="primary")
    host = HostBuilder().primary(Spec("main")).subagent(Spec("docs"), metadata=META).build()
    sync_host(host)
    sync_host(host)  # idempotent
    rows = {a.agent_id: a for a in Agent.objects.all()}
    assert set(rows) == {"main", "docs", "retired"}
    assert rows["main"].role == "primary" and rows["main"].active
    assert rows["docs"].metadata["display_name"] == "Docs"
    assert rows["main"].config["max_steps"] == 30
    assert not rows["retired"].active


@pytest.mark.django_db(transaction=True)
def test_a_submit_reads_its_agents_row_once_and_again_when_the_row_it_read_is_gone(engine, django_assert_max_num_queries):
    from mash_runtime.host_sync import get_agent_row
    from mash_runtime.models import Agent, Request

    first = engine.submit("one", session_id="s")
    with django_assert_max_num_queries(0):
        get_agent_row("primary")  # this process's copy: no read
    # A row gone under the copy (nothing of ours deletes one; a restore or a hand edit might):
    # the submit finds out from its insert, reads the row again and goes ahead.
    Agent.objects.filter(agent_id="primary").delete()
    second = engine.submit("two", session_id="s")
    assert not Request.objects.filter(pk=first).exists()
    assert Request.objects.get(pk=second).agent == Agent.objects.get(agent_id="primary")
