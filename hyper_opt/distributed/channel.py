"""The wire between a trial's ranks and its worker: one JSON object per line over TCP.

A rank sends a request (``{"op": ...}``) and waits for its answer; the worker answers requests
in the order they come, except ``should_prune`` from a rank other than 0, answered once rank 0
has asked at that step. The first line of a connection carries the trial's token, a random
secret handed to the ranks in their private spec file, so that nothing else on the cluster can
speak for a rank.
"""

from __future__ import annotations

import json
import socket
from typing import Any

MAX_LINE = 64 * 1024 * 1024  # a train() result with long histories still fits


class ChannelClosed(ConnectionError):
    """The other end went away: the worker (seen by a rank) or a rank (seen by the worker)."""


def encode(message: dict[str, Any]) -> bytes:
    return (json.dumps(message, separators=(",", ":"), allow_nan=True) + "\n").encode()


class Lines:
    """Whole lines out of a stream of bytes received in pieces."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buffer += data
        if len(self._buffer) > MAX_LINE and b"\n" not in self._buffer:
            raise ValueError("a message over 64 MiB without its end")
        *lines, self._buffer = self._buffer.split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]


class Client:
    """A rank's end: blocking request/answer."""

    def __init__(self, address: tuple[str, int], token: str, rank: int, timeout: float = 300.0) -> None:
        self._sock = socket.create_connection(address, timeout=timeout)
        self._sock.settimeout(None)  # an answer may wait for rank 0 (should_prune) for as long as a step takes
        self._lines = Lines()
        self._pending: list[dict[str, Any]] = []
        self.send({"op": "hello", "token": token, "rank": rank})

    def send(self, message: dict[str, Any]) -> None:
        try:
            self._sock.sendall(encode(message))
        except OSError as err:
            raise ChannelClosed(f"the trial's worker is gone ({err})") from err

    def ask(self, message: dict[str, Any]) -> dict[str, Any]:
        self.send(message)
        while not self._pending:
            try:
                data = self._sock.recv(1 << 16)
            except OSError as err:
                raise ChannelClosed(f"the trial's worker is gone ({err})") from err
            if not data:
                raise ChannelClosed("the trial's worker closed the channel (it stopped the trial)")
            self._pending.extend(self._lines.feed(data))
        answer = self._pending.pop(0)
        if "error" in answer:
            raise ValueError(answer["error"])
        return answer

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass
