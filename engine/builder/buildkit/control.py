"""The BuildKit services wharfd serves on ``/grpc``: ``moby.buildkit.v1.Control`` and the
gateway bridge ``moby.buildkit.v1.frontend.LLBBridge`` (buildkit-notes §5).

Compose v2 and buildx build in the *gateway* form: ``Control.Solve`` arrives without a
frontend; the Dockerfile request comes as ``LLBBridge.Solve {Frontend: dockerfile.v0}``
on the same connection, tagged with the job's ref in the ``buildkit-controlapi-buildid``
metadata; the client then hands the result back with ``LLBBridge.Return`` and only then
does ``Control.Solve`` export (tag) and answer. ``Control.Status`` streams the job's
progress and ends when the job ends. Status and the bridge calls may arrive before the
Solve that creates the job: they wait for it (6 s and 3 s, as BuildKit does).

The Dockerfile runs eagerly inside ``LLBBridge.Solve``, on the classic executor
(engine/builder/manager.py), with the context fetched through the session.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from engine.builder.buildkit import frontend
from engine.builder.buildkit.grpcwire import (
    ByteStream,
    Code,
    GrpcClientConnection,
    GrpcError,
    GrpcServerConnection,
    Handler,
    ServerCall,
)
from engine.builder.buildkit.progress import VertexStream
from engine.builder.buildkit.proto import wire_pb2 as pb
from engine.builder.buildkit.sessions import SessionRegistry
from engine.builder.manager import BuildManager
from engine.builder.steps import step_error_text
from engine.errors import EngineError
from engine.ids import new_id
from engine.images.reference import parse_normalized_named

log = logging.getLogger(__name__)

CONTROL = "/moby.buildkit.v1.Control/"
BRIDGE = "/moby.buildkit.v1.frontend.LLBBridge/"
BUILD_ID_KEY = "buildkit-controlapi-buildid"
STATUS_WAIT = 6.0
BRIDGE_WAIT = 3.0
WORKER_ID = "wharfd"
# What we report as our BuildKit version (buildx ls shows it); the API level we speak.
BUILDKIT_VERSION = pb.BuildkitVersion(package="wharfd", version="v0.25.1-wharfd")

# Gateway API capabilities (the client's Build() reads them from LLBBridge.Ping):
# "return" makes it hand results back with Return, "proto.refarray" makes results use
# Result.ref. Never "exporter.image.attestations" (buildx would ask for provenance).
FRONTEND_CAPS = ("solve.base", "return", "returnmap", "proto.refarray", "frontend.inputs")
LLB_CAPS = ("source.local", "source.image", "file.base", "exec.meta.base")
EXPORTERS = ("moby", "image")


@dataclass(eq=False)
class Job:
    ref: str
    request: pb.ControlSolveRequest
    progress: VertexStream
    returned: asyncio.Future[pb.ReturnRequest] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())
    results: dict[str, str] = field(default_factory=dict)  # result ref id → image id
    bridge_tasks: set[asyncio.Task[object]] = field(default_factory=set)


class BuildKitFront:
    def __init__(self, builder: BuildManager, go_arch: str) -> None:
        self._builder = builder
        self._go_arch = go_arch
        self.sessions = SessionRegistry()
        self._jobs: dict[str, Job] = {}
        self._jobs_changed = asyncio.Condition()

    # ------------------------------------------------------------------ connections
    async def serve_grpc(self, io: ByteStream) -> None:
        """One ``/grpc`` connection, until the client goes (its calls are cancelled)."""
        await GrpcServerConnection(io, self.handlers()).serve()

    def check_session(self, session_id: str) -> None:
        self.sessions.check_new(session_id)

    async def serve_session(self, io: ByteStream, session_id: str, shared_key: str,
                            methods: Sequence[str]) -> None:
        """One ``/session`` connection: registered while it lives."""
        conn = GrpcClientConnection(io, authority="buildkit-session")
        await conn.start()
        try:
            async with self.sessions.registered(session_id, shared_key, methods, conn):
                await conn.run_until_closed()
        finally:
            await conn.aclose()

    def handlers(self) -> dict[str, Handler]:
        return {
            CONTROL + "ListWorkers": self._list_workers,
            CONTROL + "Info": self._info,
            CONTROL + "Solve": self._control_solve,
            CONTROL + "Status": self._status,
            CONTROL + "DiskUsage": self._disk_usage,
            CONTROL + "Prune": self._prune,
            BRIDGE + "Ping": self._ping,
            BRIDGE + "Solve": self._bridge_solve,
            BRIDGE + "Return": self._return,
        }

    # ------------------------------------------------------------------ workers, info
    def _worker(self) -> pb.WorkerRecord:
        # No org.mobyproject.buildkit.worker.snapshotter label: buildx would then enable
        # exporters and attestations this daemon does not have (notes §2.1.5).
        return pb.WorkerRecord(
            ID=WORKER_ID, platforms=[pb.Platform(OS="linux", Architecture=self._go_arch)],
            BuildkitVersion=BUILDKIT_VERSION)

    async def _list_workers(self, call: ServerCall) -> None:
        pb.ListWorkersRequest.FromString(await call.receive_one())
        await call.send(pb.ListWorkersResponse(record=[self._worker()]).SerializeToString())

    async def _info(self, call: ServerCall) -> None:
        await call.receive_one()
        await call.send(pb.InfoResponse(buildkitVersion=BUILDKIT_VERSION).SerializeToString())

    async def _ping(self, call: ServerCall) -> None:
        await call.receive_one()
        await self._job_of(call)  # answers NOT_FOUND for a job that never comes
        pong = pb.PongResponse(
            FrontendAPICaps=[pb.APICap(ID=c, Enabled=True) for c in FRONTEND_CAPS],
            LLBCaps=[pb.APICap(ID=c, Enabled=True) for c in LLB_CAPS],
            Workers=[self._worker()])
        await call.send(pong.SerializeToString())

    # ------------------------------------------------------------------ the build cache
    async def _usage_records(self) -> list[pb.UsageRecord]:
        records = []
        for entry in await self._builder.cache_usage():
            record = pb.UsageRecord(
                ID=entry.image_id.removeprefix("sha256:"), InUse=entry.in_use,
                Size=entry.size, Description=entry.description, RecordType="regular",
                Parents=[entry.parent.removeprefix("sha256:")] if entry.parent else [])
            record.CreatedAt.FromNanoseconds(int(entry.created * 1e9))
            records.append(record)
        return records

    async def _disk_usage(self, call: ServerCall) -> None:
        request = pb.DiskUsageRequest.FromString(await call.receive_one())
        if any(f.strip() for f in request.filter):
            raise GrpcError(Code.UNIMPLEMENTED,
                            "build cache filters are not supported by this daemon")
        response = pb.DiskUsageResponse(record=await self._usage_records())
        await call.send(response.SerializeToString())

    async def _prune(self, call: ServerCall) -> None:
        """Prune the whole build cache (the classic cache has no finer policy: filters,
        keep-storage and keep-duration are refused rather than ignored). Every entry
        leaves the cache and is streamed back; its size counts only if its image went
        too (an image that is still the parent of a tagged one stays)."""
        request = pb.PruneRequest.FromString(await call.receive_one())
        if any(f.strip() for f in request.filter) or request.keepBytes or request.keepDuration:
            raise GrpcError(Code.UNIMPLEMENTED,
                            "pruning with filters, keep-storage or keep-duration is not "
                            "supported by this daemon: prune without them")
        before = await self._usage_records()
        report = await self._builder.prune()
        deleted = {d.removeprefix("sha256:") for d in report.deleted}
        await call.send_initial_metadata()
        for record in before:
            if record.ID not in deleted:
                record.Size = 0
            await call.send(record.SerializeToString())

    # ------------------------------------------------------------------ jobs
    async def _wait_job(self, ref: str, wait: float) -> Job:
        async def registered() -> Job:
            async with self._jobs_changed:
                await self._jobs_changed.wait_for(lambda: ref in self._jobs)
                return self._jobs[ref]
        try:
            return await asyncio.wait_for(registered(), wait)
        except TimeoutError:
            raise GrpcError(Code.NOT_FOUND, f"no such job {ref}") from None

    async def _job_of(self, call: ServerCall) -> Job:
        ref = call.metadata.get(BUILD_ID_KEY, "")
        if not ref:
            raise GrpcError(Code.INVALID_ARGUMENT, f"no {BUILD_ID_KEY} in the call's metadata")
        return await self._wait_job(ref, BRIDGE_WAIT)

    async def _status(self, call: ServerCall) -> None:
        request = pb.StatusRequest.FromString(await call.receive_one())
        job = await self._wait_job(request.Ref, STATUS_WAIT)
        await call.send_initial_metadata()
        while (update := await job.progress.updates.get()) is not None:
            await call.send(update.SerializeToString())

    # ------------------------------------------------------------------ Control.Solve
    async def _control_solve(self, call: ServerCall) -> None:
        request = pb.ControlSolveRequest.FromString(await call.receive_one())
        if not request.Ref:
            raise GrpcError(Code.INVALID_ARGUMENT, "solve request without a ref")
        if request.Ref in self._jobs:
            raise GrpcError(Code.ALREADY_EXISTS, f"job {request.Ref} already exists")
        if request.HasField("Definition") and getattr(request.Definition, "def"):
            raise GrpcError(Code.UNIMPLEMENTED,
                            "solving LLB definitions is not supported by this daemon: "
                            "only Dockerfile builds (frontend dockerfile.v0)")
        if request.Frontend not in ("", frontend.DOCKERFILE):
            raise GrpcError(Code.UNIMPLEMENTED,
                            f"frontend {request.Frontend} is not supported by this daemon")
        exporters = _exporters(request)
        job = Job(request.Ref, request, VertexStream(request.Ref))
        async with self._jobs_changed:
            self._jobs[job.ref] = job
            self._jobs_changed.notify_all()
        try:
            image_id: str | None
            if request.Frontend == frontend.DOCKERFILE:
                image_id = await self._build(job, dict(request.FrontendAttrs))
            else:
                image_id = await self._await_return(job)
            response = await self._export(job, image_id, exporters)
            job.progress.complete()
            await call.send(response.SerializeToString())
        except GrpcError as exc:
            job.progress.fail(exc.message)
            raise
        finally:
            for task in job.bridge_tasks:
                task.cancel()
            job.progress.end()
            del self._jobs[job.ref]

    async def _await_return(self, job: Job) -> str | None:
        """Wait for the client's LLBBridge.Return; the image its result names, or None
        (an empty result: the client's capability probe)."""
        returned = await job.returned
        if returned.HasField("error") and returned.error.code != 0:
            raise GrpcError(Code.UNKNOWN, returned.error.message)
        result = returned.result
        kind = result.WhichOneof("result")
        if kind is None or (kind == "ref" and not result.ref.id):
            return None
        if kind != "ref":
            raise GrpcError(Code.UNIMPLEMENTED,
                            "results with several references (multi-platform builds) "
                            "are not supported by this daemon")
        image_id = job.results.get(result.ref.id)
        if image_id is None:
            raise GrpcError(Code.NOT_FOUND, f"no such result {result.ref.id}")
        return image_id

    async def _export(self, job: Job, image_id: str | None,
                      exporters: list[pb.Exporter]) -> pb.ControlSolveResponse:
        response = pb.ControlSolveResponse()
        if image_id is None or not exporters:
            return response
        attrs = exporters[0].Attrs
        names = [n.strip() for n in attrs.get("name", "").split(",") if n.strip()]
        job.progress.start("exporting to image")
        job.progress.status("exporting layers")
        job.progress.status(f"writing image {image_id}")
        full_names = []
        try:
            for name in names:
                full = str(parse_normalized_named(name).tag_name_only())
                await self._builder.tag_image(image_id, [name])
                job.progress.status(f"naming to {full}")
                full_names.append(full)
        except EngineError as exc:
            raise GrpcError(Code.INVALID_ARGUMENT, str(exc)) from None
        response.ExporterResponse["containerimage.digest"] = image_id
        response.ExporterResponse["containerimage.config.digest"] = image_id
        if full_names:
            response.ExporterResponse["image.name"] = ",".join(full_names)
        return response

    # ------------------------------------------------------------------ LLBBridge
    async def _bridge_solve(self, call: ServerCall) -> None:
        request = pb.BridgeSolveRequest.FromString(await call.receive_one())
        job = await self._job_of(call)
        if request.Frontend != frontend.DOCKERFILE:
            what = request.Frontend or "an LLB definition"
            raise GrpcError(Code.UNIMPLEMENTED,
                            f"solving {what} is not supported by this daemon: only "
                            f"frontend {frontend.DOCKERFILE}")
        if request.FrontendInputs:
            raise GrpcError(Code.UNIMPLEMENTED,
                            "frontend inputs (LLB-backed build contexts) are not supported "
                            "by this daemon")
        task = asyncio.current_task()
        assert task is not None
        job.bridge_tasks.add(task)
        try:
            image_id = await self._build(job, dict(request.FrontendOpt))
        finally:
            job.bridge_tasks.discard(task)
        result_id = new_id()[:25]
        job.results[result_id] = image_id
        config = json.dumps(self._builder.image_config(image_id)).encode()
        result = pb.Result(ref=pb.Ref(id=result_id),
                           metadata={"containerimage.config": config})
        await call.send(pb.BridgeSolveResponse(result=result).SerializeToString())

    async def _return(self, call: ServerCall) -> None:
        request = pb.ReturnRequest.FromString(await call.receive_one())
        job = await self._job_of(call)
        if job.returned.done():
            raise GrpcError(Code.FAILED_PRECONDITION, "result already returned")
        job.returned.set_result(request)
        await call.send(pb.ReturnResponse().SerializeToString())

    # ------------------------------------------------------------------ the build
    async def _build(self, job: Job, attrs: Mapping[str, str]) -> str:
        session = await self.sessions.get(job.request.Session)
        workdir = self._builder.scratch_dir()
        await asyncio.to_thread(workdir.mkdir, parents=True)
        try:
            return await frontend.build_dockerfile(
                self._builder, session, attrs, workdir, job.progress)
        except GrpcError:
            raise
        except EngineError as exc:
            raise GrpcError(Code.UNKNOWN, step_error_text(exc, buildkit=True)) from None
        finally:
            await asyncio.to_thread(shutil.rmtree, workdir, True)


def _exporters(request: pb.ControlSolveRequest) -> list[pb.Exporter]:
    exporters = list(request.Exporters)
    if not exporters and request.ExporterDeprecated:
        exporters = [pb.Exporter(Type=request.ExporterDeprecated,
                                 Attrs=dict(request.ExporterAttrsDeprecated))]
    for exporter in exporters:
        if exporter.Type not in EXPORTERS:
            raise GrpcError(Code.UNIMPLEMENTED,
                            f"exporter {exporter.Type!r} is not supported by this daemon "
                            "(only the image store: --load, or no --output)")
        if exporter.Attrs.get("push", "false").lower() == "true" and exporter.Type == "image":
            raise GrpcError(Code.UNIMPLEMENTED,
                            "pushing from the image exporter is not supported by this daemon: "
                            "build, then docker push")
    if len(exporters) > 1:
        raise GrpcError(Code.UNIMPLEMENTED, "several exporters in one build are not supported")
    return exporters
