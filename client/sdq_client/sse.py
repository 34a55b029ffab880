"""Server-Sent Events, as the WHATWG HTML standard parses them (section 9.2, "event stream interpretation")."""

from __future__ import annotations

from collections.abc import AsyncIterable, Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class ServerSentEvent:
    event: str
    data: str
    id: str | None
    retry_ms: int | None


class EventStreamParser:
    """Feed it lines (without their end-of-line); it returns an event at each blank line that ends one.

    ``data:`` lines join with newlines; ``event:`` defaults to ``message``; ``id:`` persists across events until
    changed (and is ignored when it holds a NUL); ``retry:`` takes digits only; ``:`` lines are comments
    (keep-alives); an event with no data is not dispatched.
    """

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self.last_event_id: str | None = None
        self.retry_ms: int | None = None
        self._first = True

    def restart(self) -> None:
        """A new connection: what was pending is discarded (the standard drops an event cut off by the end of the
        stream); the last event id and the retry delay are kept, to resume with."""
        self._event, self._data, self._first = "", [], True

    def feed(self, line: str) -> ServerSentEvent | None:
        if self._first:
            self._first = False
            line = line.removeprefix("\ufeff")
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry_ms = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return ServerSentEvent(event=event or "message", data="\n".join(data), id=self.last_event_id,
                               retry_ms=self.retry_ms)  # fmt: skip


def parse_lines(lines: Iterable[str], parser: EventStreamParser | None = None) -> Iterator[ServerSentEvent]:
    """The events of a stream of lines; an event cut off by the end of the stream is dropped, as the standard says."""
    parser = parser or EventStreamParser()
    for line in lines:
        event = parser.feed(line)
        if event is not None:
            yield event


async def aparse_lines(
    lines: AsyncIterable[str], parser: EventStreamParser | None = None
) -> AsyncIterable[ServerSentEvent]:
    parser = parser or EventStreamParser()
    async for line in lines:
        event = parser.feed(line)
        if event is not None:
            yield event
