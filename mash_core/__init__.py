"""Mash SDK core: agent loop, LLM contract and providers, tools, skills.

Importable without Django: nothing in this package may import it.
"""

__version__ = "0.1.0"
