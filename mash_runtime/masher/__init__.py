"""Masher: the built-in workflow-only agent that digests traces and curates eval records.

Public names: `MasherSpec`, `MASHER_AGENT_ID`, `TRACE_DIGEST_WORKFLOW`,
`EVAL_CURATION_WORKFLOW`, `masher_workflows` (`mash_runtime.masher.agent`); models
`TraceDigest`, `EvalRecord`, `MasherCheckpoint` (`mash_runtime.masher.models`).
Enable it with `HostBuilder().primary(...).enable_masher()`.
Importing this package does not touch models or Django settings.
"""
