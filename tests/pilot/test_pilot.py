import asyncio

import pytest

from mash_core.llm import AnthropicProvider, ScriptedProvider
from pilot.spec import PACKAGES, build_host
from pilot.tools import UpdateDocsTool


def test_it_composes_pilot_with_one_copilot_per_package(monkeypatch, tmp_path):
    monkeypatch.setenv("PILOT_WORKSPACE", str(tmp_path))
    (tmp_path / "mash_core").mkdir()
    (tmp_path / "mash_core" / "README.md").write_text("# mash_core\nThe SDK marker-xyz.")
    host = build_host()
    assert host.primary_agent_id == "pilot"
    assert host.subagent_ids == [f"{p}-copilot" for p in PACKAGES]
    copilot = host.get("mash_core-copilot")
    assert "marker-xyz" in copilot.config.system_prompt
    assert copilot.metadata.display_name == "mash_core copilot"
    pilot = host.get("pilot")
    tools = pilot.spec.build_tools()
    assert set(tools.names) == {"bash", "update_docs", "AskUser"}
    assert tools.get("update_docs").requires_approval
    assert pilot.spec.build_skills().names == ["changelog"]


def test_it_uses_the_scripted_model_when_asked(monkeypatch):
    monkeypatch.setenv("MASH_LLM", "scripted")
    assert isinstance(build_host().get("pilot").spec.build_llm(), ScriptedProvider)
    monkeypatch.delenv("MASH_LLM")
    assert isinstance(build_host().get("pilot").spec.build_llm(), AnthropicProvider)


@pytest.mark.parametrize("path", ["README.md", "mash_core/README.md", "docs/AGENTS.md"])
def test_update_docs_writes_readme_and_agents_files_inside_the_workspace(tmp_path, path):
    (tmp_path / "mash_core").mkdir()
    (tmp_path / "docs").mkdir()
    result = asyncio.run(UpdateDocsTool(tmp_path).execute({"path": path, "content": "# new"}))
    assert not result.is_error, result.content
    assert (tmp_path / path).read_text() == "# new"


@pytest.mark.parametrize(
    "path, reason",
    [
        ("setup.py", "only README.md and AGENTS.md"),
        ("../README.md", "outside the workspace"),
        ("/etc/README.md", "outside the workspace"),
        ("mash_core/../../README.md", "outside the workspace"),
        ("missing_dir/README.md", "does not exist"),
    ],
)
def test_update_docs_refuses_everything_else(tmp_path, path, reason):
    workspace = tmp_path / "ws"
    (workspace / "mash_core").mkdir(parents=True)
    result = asyncio.run(UpdateDocsTool(workspace).execute({"path": path, "content": "x"}))
    assert result.is_error and reason in result.content
    assert not (tmp_path / "README.md").exists() and not (workspace / "setup.py").exists()


def test_update_docs_refuses_a_symlink_escaping_the_workspace(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "link").symlink_to(outside)
    result = asyncio.run(UpdateDocsTool(workspace).execute({"path": "link/README.md", "content": "x"}))
    assert result.is_error and "outside the workspace" in result.content
    assert not (outside / "README.md").exists()


def test_pilot_has_an_mcp_server_only_when_one_is_configured(monkeypatch):
    for name in ("MASH_PILOT_MCP_URL", "MASH_PILOT_MCP_TOKEN", "MASH_PILOT_MCP_TOKEN_FILE", "MASH_PILOT_MCP_TOOLS",
                 "MASH_PILOT_MCP_APPROVAL"):
        monkeypatch.delenv(name, raising=False)
    spec = build_host().get("pilot").spec
    assert spec.build_mcp_servers() == []
    monkeypatch.setenv("MASH_PILOT_MCP_URL", "https://mcp.example.com/mcp")
    [server] = spec.build_mcp_servers()
    assert server.name == "external" and server.url == "https://mcp.example.com/mcp"
    assert server.headers is None and server.requires_approval and server.include_tools is None
    monkeypatch.setenv("MASH_PILOT_MCP_TOKEN", "pilot-secret-token")
    monkeypatch.setenv("MASH_PILOT_MCP_TOOLS", "search, fetch")
    monkeypatch.setenv("MASH_PILOT_MCP_APPROVAL", "0")
    [server] = spec.build_mcp_servers()
    assert server.headers == {"Authorization": "Bearer ${MASH_PILOT_MCP_TOKEN}"}  # resolved when connecting
    assert server.resolved_headers() == {"Authorization": "Bearer pilot-secret-token"}
    assert "pilot-secret-token" not in repr(server)
    assert server.include_tools == ("search", "fetch") and not server.requires_approval
