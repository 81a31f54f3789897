"""Masher: the built-in workflow-only agent that digests traces and curates eval records.

Public names: `MasherSpec`, `masher_workflows` (`mash_runtime.masher.agent`);
`MASHER_AGENT_ID`, `TRACE_DIGEST_WORKFLOW`, `EVAL_CURATION_WORKFLOW` (`mash_runtime.masher.names`); models
`TraceDigest`, `EvalRecord`, `MasherCheckpoint` (`mash_runtime.masher.models`).
Enable it with `HostBuilder().primary(...).enable_masher()`.
Importing this package does not touch models or Django settings.
"""
