"""BuildKit progress: vertices, their sub-statuses and logs, for ``Control.Status``.

The classic executor reports through a ``ProgressSink`` (``Step n/m``, `` ---> Using
cache``, the RUN's output...) and tells ``on_step`` where each instruction starts. This
turns both into the StatusResponse messages the BuildKit clients render: a vertex per
instruction named ``[stage n/m] INSTR``, sent again with ``started``, then ``completed``
with ``cached`` or ``error``; the RUN's output as its logs (stderr as stream 2).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import re
import time

from google.protobuf.timestamp_pb2 import Timestamp

from engine.builder.buildkit.proto import wire_pb2 as pb
from engine.builder.steps import StepPosition
from engine.images.progress import Progress

_STDERR_WRAPPED = re.compile(r"^\x1b\[91m(.*)\x1b\[0m$", re.S)
# The classic builder's own lines, which BuildKit's progress shows differently or not.
_CLASSIC_LINES = re.compile(
    r"^(Step \d+/\d+ : |\n$| ---> |Removing intermediate container |Successfully built |"
    r"Successfully tagged |# Executing \d+ build trigger)")


def now() -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(time.time_ns())
    return stamp


class VertexStream:
    """The Status messages of one job. ``updates`` is read by ``Control.Status``; None
    ends it. Vertices are reported through lanes, each with its current vertex: the
    main lane (the internal steps, the export, a sequential build) and one per stage
    built concurrently. Everything runs on the event loop."""

    def __init__(self, job_ref: str) -> None:
        self.updates: asyncio.Queue[pb.StatusResponse | None] = asyncio.Queue()
        self._ref = job_ref
        self._counter = itertools.count()
        self._ended = False
        self.failed = False
        self.main = VertexLane(self)
        # the main lane's methods, for callers that need no other lane
        self.start = self.main.start
        self.complete = self.main.complete
        self.status = self.main.status
        self.log = self.main.log
        self.sink = self.main.sink
        self.on_step = self.main.on_step

    def lane(self) -> VertexLane:
        """A new lane (for a stage built concurrently)."""
        return VertexLane(self)

    def fail(self, message: str) -> None:
        """The job failed: mark the main lane's current vertex, unless a lane already
        marked the failing step."""
        if not self.failed or self.main.current is not None:
            self.main.fail(message)

    def end(self) -> None:
        if not self._ended:
            self._ended = True
            self.updates.put_nowait(None)

    def new_digest(self, name: str) -> str:
        seed = f"{self._ref}\x00{next(self._counter)}\x00{name}".encode()
        return "sha256:" + hashlib.sha256(seed).hexdigest()

    def send(self, **fields: list[pb.Vertex] | list[pb.VertexStatus] | list[pb.VertexLog]
             ) -> None:
        if not self._ended:
            self.updates.put_nowait(pb.StatusResponse(**fields))  # type: ignore[arg-type]


class VertexLane:
    """One sequence of vertices, one at a time."""

    def __init__(self, stream: VertexStream) -> None:
        self._stream = stream
        self.current: pb.Vertex | None = None

    def start(self, name: str, inputs: tuple[str, ...] = ()) -> pb.Vertex:
        """A new vertex, started now (the previous one is completed first)."""
        self.complete()
        digest = self._stream.new_digest(name)
        self._stream.send(vertexes=[pb.Vertex(digest=digest, name=name, inputs=list(inputs))])
        vertex = pb.Vertex(digest=digest, name=name, inputs=list(inputs))
        vertex.started.CopyFrom(now())
        self._stream.send(vertexes=[vertex])
        self.current = vertex
        return vertex

    def complete(self, cached: bool = False) -> None:
        vertex = self.current
        if vertex is None:
            return
        self.current = None
        if cached:
            vertex.cached = True
        vertex.completed.CopyFrom(now())
        self._stream.send(vertexes=[vertex])

    def fail(self, message: str) -> None:
        vertex = self.current
        if vertex is None:
            vertex = self.start("[internal] build")
        self.current = None
        self._stream.failed = True
        vertex.error = message
        vertex.completed.CopyFrom(now())
        self._stream.send(vertexes=[vertex])

    def status(self, text: str, current: int = 0, total: int = 0,
               done: bool = True) -> None:
        """A sub-progress line under the current vertex (``naming to ...``)."""
        vertex = self.current
        if vertex is None:
            return
        stamp = now()
        item = pb.VertexStatus(ID=text, vertex=vertex.digest, name=text, current=current,
                               total=total)
        item.timestamp.CopyFrom(stamp)
        item.started.CopyFrom(stamp)
        if done:
            item.completed.CopyFrom(stamp)
        self._stream.send(statuses=[item])

    def log(self, data: bytes, stream: int = 1) -> None:
        vertex = self.current
        if vertex is None or not data:
            return
        item = pb.VertexLog(vertex=vertex.digest, stream=stream, msg=data)
        item.timestamp.CopyFrom(now())
        self._stream.send(logs=[item])

    # ------------------------------------------------------------------ the executor's side
    def on_step(self, where: StepPosition) -> None:
        if where.number:
            self.start(where.vertex_name)
        else:
            self.complete()

    def sink(self, message: Progress) -> None:
        """The classic executor's progress, translated."""
        text = message.stream
        if text is None:
            if message.status and message.id:  # a FROM pull's layer lines
                self.status(f"{message.status} {message.id}", message.current or 0,
                            message.total or 0, done=message.current is None)
            return
        if text.startswith(" ---> Using cache"):
            self.complete(cached=True)
            return
        if _CLASSIC_LINES.match(text):
            return
        wrapped = _STDERR_WRAPPED.match(text)
        if wrapped:
            self.log(wrapped.group(1).encode(), stream=2)
        else:
            self.log(text.encode())
