"""Tool contract, registry and built-in tools."""

from mash_core.tools.ask_user import AskUserTool
from mash_core.tools.base import FunctionTool, Tool, ToolRegistry, ToolResult, object_schema
from mash_core.tools.bash import BashTool
from mash_core.tools.environment import tool_environment

__all__ = ["Tool", "ToolResult", "ToolRegistry", "FunctionTool", "BashTool", "AskUserTool", "tool_environment",
           "object_schema"]
