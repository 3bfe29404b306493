"""A read timeout for every HTTP request: uvicorn's keep-alive timer runs only between
requests, so a client that connects and sends nothing, or half a request line, headers or body,
held its connection (and file descriptor) for ever (19,998 of 20,000 descriptors held in a
probe). ReadTimeoutHttpTools closes a connection whose request is not whole `read_timeout`
seconds after the connection opened or the request began; a request being answered, and an
idle keep-alive connection (uvicorn's own timer), are not affected.

    uvicorn.run(app, http=read_timeout_protocol(10.0))
"""
from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class ReadTimeoutHttpTools(HttpToolsProtocol):
    read_timeout = 10.0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._read_timer = None
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._read_timer = self.loop.call_later(self.read_timeout, self._read_timed_out)

    def _disarm(self) -> None:
        timer = getattr(self, "_read_timer", None)
        if timer is not None:
            timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()                  # each request gets the whole read_timeout to arrive

    def on_message_complete(self) -> None:
        self._disarm()               # read: from here the app answers at its own pace
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # between requests uvicorn's keep-alive timer closes an idle connection

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)


def read_timeout_protocol(seconds: float) -> type[ReadTimeoutHttpTools]:
    """The protocol class with its timeout, for uvicorn.run(http=...)."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds < float("inf"):
        raise ValueError(f"read_timeout_s={seconds!r} must be a number of seconds > 0")
    return type("ReadTimeoutHttpTools", (ReadTimeoutHttpTools,), {"read_timeout": float(seconds)})
