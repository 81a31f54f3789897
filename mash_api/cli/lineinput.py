"""Where the REPL reads lines: prompt-toolkit on a terminal, plain lines from a pipe.

Both raise `EOFError` at end of input (Ctrl-D) and `KeyboardInterrupt` on Ctrl-C.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Iterable, Protocol

from rich.console import Console


class LineInput(Protocol):
    def read(self, prompt: str) -> str:
        """The next command line (history and completion on a terminal)."""

    def ask(self, prompt: str) -> str:
        """An answer to an inline question (no history)."""


class PipeInput:
    """Lines from a non-terminal stdin, so `printf 'hi\\n/exit\\n' | mash repl` works.

    The prompt and the line read are echoed, so a transcript reads like a session.
    """

    def __init__(self, console: Console, stream=None):
        self.console = console
        self.stream = stream if stream is not None else sys.stdin

    def _line(self, prompt: str) -> str:
        line = self.stream.readline()
        if not line:
            raise EOFError
        line = line.rstrip("\r\n")
        self.console.print(f"{prompt}{line}", markup=False, highlight=False)
        return line

    read = _line
    ask = _line


class TerminalInput:
    """prompt-toolkit: history file, slash-command completion, Ctrl-C/Ctrl-D as exceptions."""

    def __init__(self, history_path: Path | None, completer=None):
        from prompt_toolkit import PromptSession
        from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
        from prompt_toolkit.history import FileHistory, InMemoryHistory

        history = InMemoryHistory()
        if history_path is not None:
            try:
                history_path.parent.mkdir(parents=True, exist_ok=True)
                history = FileHistory(str(history_path))
            except OSError:
                pass
        self.session = PromptSession(history=history, completer=completer, auto_suggest=AutoSuggestFromHistory(),
                                     complete_while_typing=True)
        self.answers = PromptSession()

    def read(self, prompt: str) -> str:
        return self.session.prompt(prompt)

    def ask(self, prompt: str) -> str:
        return self.answers.prompt(prompt)


def slash_completer(words: Callable[[str], Iterable[str]]):
    """Completes `/commands` (and what `words(line)` offers after a command and a space)."""
    from prompt_toolkit.completion import Completer, Completion

    class SlashCompleter(Completer):
        def get_completions(self, document, complete_event):
            text = document.text_before_cursor
            if not text.startswith("/"):
                return
            word = text.split(" ")[-1]
            for candidate in sorted(set(words(text))):
                if candidate.startswith(word) and candidate != word:
                    yield Completion(candidate, start_position=-len(word))

    return SlashCompleter()


def stdin_is_terminal(stream=None) -> bool:
    stream = stream if stream is not None else sys.stdin
    try:
        return stream.isatty() and sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False
