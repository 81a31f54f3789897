"""Masher's agent id and workflow ids: a leaf, so the records code and the spec share them."""

MASHER_AGENT_ID = "masher"
TRACE_DIGEST_WORKFLOW = "masher-trace-digest"
EVAL_CURATION_WORKFLOW = "masher-online-eval-curation"
