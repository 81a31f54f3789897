"""Memory: what an agent remembers of its sessions.

- `history.py`: one `MemoryTurn` per completed request (`build_turn`), and the history
  sent as context (`load_history`: the last turns after the newest summary).
- `search.py`: full-text search over turn text (`MemorySearchService`, `search_memory`).
- `compaction.py`: a session's turns folded into one summary turn, by hand or past a
  token threshold.
- `turn_signals.py`: the facts collected on each turn (`unused_tools`, ...), and the
  registry host apps add collectors to.
"""
