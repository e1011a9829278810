"""Delivers each of livekit rtc's audio frame events to its own stream, not to every stream.

livekit rtc (1.x) hands every FFI event to one process-wide queue that offers it to every
subscriber: each `rtc.AudioStream` in the process is woken for every other stream's frames and
drops them itself. With N calls that is N x N loop callbacks per frame period, which is what
capped one process at ~10-25 calls (bench/room_audio.py). `route_audio_streams()` swaps in a
queue that sends a bound stream's events straight to it; everything else is delivered as before.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from livekit import rtc
from livekit.rtc._ffi_client import FfiClient, FfiQueue

__all__ = ["bind_stream", "route_audio_streams"]


class _RoutingQueue(FfiQueue[Any]):
    def __init__(self, previous: FfiQueue[Any]) -> None:
        super().__init__()
        with previous._lock:
            self._subscribers = list(previous._subscribers)
        self._streams: dict[int, tuple[Any, asyncio.AbstractEventLoop]] = {}

    def put(self, item: Any) -> None:
        if item.WhichOneof("message") == "audio_stream_event":
            target = self._streams.get(item.audio_stream_event.stream_handle)
            if target is not None:
                queue, loop = target
                try:
                    loop.call_soon_threadsafe(queue.put_nowait, item)
                except RuntimeError:  # the stream's loop is closed: nobody is listening
                    pass
                return
        super().put(item)

    def bind(self, stream: rtc.AudioStream) -> None:
        queue = stream._ffi_queue
        with self._lock:
            self._streams[stream._ffi_handle.handle] = (queue, stream._loop)
            self._subscribers = [s for s in self._subscribers if s[0] is not queue]

    def unsubscribe(self, queue: Any) -> None:
        with self._lock:
            super().unsubscribe(queue)
            for handle, (q, _) in list(self._streams.items()):
                if q is queue:
                    del self._streams[handle]


_install_lock = threading.Lock()


def route_audio_streams() -> None:
    """Install the routing queue (idempotent, process-wide)."""
    with _install_lock:
        client = FfiClient.instance
        if not isinstance(client.queue, _RoutingQueue):
            client._queue = _RoutingQueue(client.queue)


def bind_stream(stream: rtc.AudioStream) -> rtc.AudioStream:
    """Route `stream`'s frames to it alone (installs the routing queue if needed)."""
    route_audio_streams()
    queue = FfiClient.instance.queue
    assert isinstance(queue, _RoutingQueue)
    queue.bind(stream)
    return stream
