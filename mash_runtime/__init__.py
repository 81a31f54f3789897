"""Mash runtime: host composition, the durable request engine, and their records.

Public names: `AgentSpec`, `HostBuilder`, `SubAgentMetadata` (and `AgentHost`,
what `HostBuilder.build()` returns). Importing this package does not touch models,
so host apps can import it before Django is set up.
"""

from mash_runtime.host import AgentHost, HostBuilder
from mash_runtime.spec import AgentSpec, SubAgentMetadata

__all__ = ["AgentSpec", "HostBuilder", "SubAgentMetadata", "AgentHost"]
