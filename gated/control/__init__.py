"""The daemon's Unix control socket: the JSON-lines channel (server and ``gatectl``'s client) in
:mod:`gated.control.channel`, and the commands it serves in :mod:`gated.control.commands`."""

from gated.control.channel import (
    Caller,
    ControlAccessDenied,
    ControlError,
    ControlServer,
    DaemonNotRunning,
    Result,
    request,
    stream,
)

__all__ = [
    "Caller",
    "ControlAccessDenied",
    "ControlError",
    "ControlServer",
    "DaemonNotRunning",
    "Result",
    "request",
    "stream",
]
