"""`Once`: a value a process builds on first use, once, under a lock (a leaf module)."""

from __future__ import annotations

import threading
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Once(Generic[T]):
    """`get()` builds the value the first time (threads that race wait for the one build);
    `set(value)` installs one, `set(None)` forgets it so the next `get()` builds again."""

    def __init__(self, build: Callable[[], T]):
        self._build = build
        self._value: T | None = None
        self._lock = threading.Lock()

    def get(self) -> T:
        value = self._value
        if value is None:
            with self._lock:
                if self._value is None:
                    self._value = self._build()
                value = self._value
        return value

    def set(self, value: T | None) -> None:
        with self._lock:
            self._value = value
