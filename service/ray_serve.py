"""The same FastAPI app as replicas on Ray Serve: ``serve.ingress`` over ``create_app``.

    python -m service.ray_serve [--address ADDR]   # Ray at ADDR or RAY_ADDRESS, else local
    serve run service.ray_serve:build_app replicas=2 autoscale_max=4

Each replica is a Ray actor holding the whole app, so every route, error and metric is
the one ``python -m service`` serves. The service reads its ``CONVLSTM_*`` settings once,
where the application is built, and hands them to every replica; ``CONVLSTM_RAY_*`` (or
``key=value`` arguments to ``serve run``) size the deployment. Under ``serve run`` the
HTTP proxy listens where Ray Serve's ``http_options`` say (127.0.0.1:8000 unless a config
file changes it); ``python -m service.ray_serve`` puts it on ``CONVLSTM_HOST:CONVLSTM_PORT``.

Ray Serve runs an ingress app's ASGI lifespan in each replica (uvicorn's ``LifespanOn``,
after ``__init__``, before the replica counts as started): each replica loads and warms up
its model in the app's own lifespan, a model that fails to load fails the replica's start,
and on shutdown Ray stops routing to the replica, waits up to ``CONVLSTM_SHUTDOWN_GRACE_S``
for the requests it holds, then runs the lifespan's exit, which stops the models.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
from types import FrameType
from typing import Any

import ray
from fastapi import FastAPI
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from ray import serve
from ray.serve import Application, Deployment
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.app import create_app
from service.config import Settings

log = logging.getLogger(__name__)

APP_NAME = "convlstm"
"""The Ray Serve application's name under ``python -m service.ray_serve``."""

REPLICA_HEADER = "x-serve-replica"
"""Response header naming the replica that answered."""


class RayServeSettings(BaseSettings):
    """How the deployment is sized; every field can be set as ``CONVLSTM_RAY_<FIELD>``."""

    model_config = SettingsConfigDict(
        env_prefix="CONVLSTM_RAY_", extra="forbid", use_attribute_docstrings=True
    )

    replicas: int = Field(default=1, ge=1)
    """Replicas to run; with autoscaling on, the number to start with."""

    autoscale_max: int = Field(default=0, ge=0)
    """Above 0, Ray Serve autoscales between ``autoscale_min`` and this many replicas."""

    autoscale_min: int = Field(default=1, ge=0)
    """Fewest replicas when autoscaling (0 lets the deployment scale to zero, at the cost
    of a model load on the next request)."""

    target_ongoing_requests: float = Field(default=8.0, gt=0.0)
    """Requests per replica that the autoscaler aims for: about one full batch."""

    max_ongoing_requests: int | None = Field(default=None, ge=1)
    """Requests one replica may hold at once; unset, what the service itself accepts
    (``CONVLSTM_MAX_QUEUE`` plus one batch per inference worker), so that its own queue
    limit, not Ray's router, is what answers 503 under overload."""

    num_cpus: float = Field(default=1.0, ge=0.0)
    """CPUs Ray reserves for each replica."""

    num_gpus: float | None = Field(default=None, ge=0.0)
    """GPUs per replica; unset, one where the cluster has a GPU and none otherwise."""

    @model_validator(mode="after")
    def _replicas_within_autoscaling_bounds(self) -> RayServeSettings:
        if self.autoscale_max and not (self.autoscale_min <= self.replicas <= self.autoscale_max):
            raise ValueError(
                f"replicas={self.replicas} must lie between autoscale_min="
                f"{self.autoscale_min} and autoscale_max={self.autoscale_max}"
            )
        return self


class ReplicaHeader:
    """Pure ASGI middleware: names the answering replica in every response."""

    def __init__(self, app: ASGIApp, replica: str) -> None:
        self.app = app
        self.header = (REPLICA_HEADER.encode(), replica.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_named(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, send_named)


class ConvLSTMReplica:
    """One replica: the service's app, built from the settings it is bound to."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def __serve_build_asgi_app__(self) -> FastAPI:
        # Ray owns the replica's log handlers; the service's loggers only get their level.
        logging.getLogger("service").setLevel(self._settings.log_level.upper())
        app = create_app(self._settings)
        app.add_middleware(ReplicaHeader, replica=serve.get_replica_context().replica_tag)
        return app


# `serve.ingress()` without an app: Ray calls __serve_build_asgi_app__ in the replica
# process after __init__, so the app (its metrics registry, its models) is made there
# rather than pickled from the driver, and then runs the app's lifespan. Applied as calls,
# not as class decorators, because mypy does not see a class decorator's return type.
convlstm_deployment: Deployment = serve.deployment(name="convlstm")(
    serve.ingress()(ConvLSTMReplica)
)


def gpus_per_replica(ray_settings: RayServeSettings) -> float:
    """``num_gpus`` when set; else 1 where the cluster (or, before Ray is connected, this
    machine) has a GPU, and 0 otherwise."""
    if ray_settings.num_gpus is not None:
        return ray_settings.num_gpus
    if ray.is_initialized():
        # ray.cluster_resources is unannotated in ray 2.60; it returns dict[str, float].
        resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
        has_gpu = resources.get("GPU", 0.0) >= 1.0
    else:
        # `serve run` calls the builder before it connects to Ray, so the cluster cannot
        # be asked yet: ask this machine, as the Makefile does. On a cluster whose head
        # has no GPU, set CONVLSTM_RAY_NUM_GPUS or use `python -m service.ray_serve`.
        has_gpu = _nvidia_gpu_here()
    log.info("one GPU per replica" if has_gpu else "no GPU found: replicas run on the CPU")
    return 1.0 if has_gpu else 0.0


def _nvidia_gpu_here() -> bool:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    return subprocess.run([smi, "-L"], capture_output=True, check=False).returncode == 0


def sized_deployment(settings: Settings, ray_settings: RayServeSettings) -> Deployment:
    """The deployment with its replicas, resources and limits from the settings."""
    options: dict[str, Any] = {
        "ray_actor_options": {
            "num_cpus": ray_settings.num_cpus,
            "num_gpus": gpus_per_replica(ray_settings),
        },
        "max_ongoing_requests": ray_settings.max_ongoing_requests
        or settings.max_queue + settings.max_batch_size * settings.inference_workers,
        "graceful_shutdown_timeout_s": settings.shutdown_grace_s,
    }
    if ray_settings.autoscale_max:
        options["autoscaling_config"] = {
            "min_replicas": ray_settings.autoscale_min,
            "initial_replicas": ray_settings.replicas,
            "max_replicas": ray_settings.autoscale_max,
            "target_ongoing_requests": ray_settings.target_ongoing_requests,
        }
    else:
        options["num_replicas"] = ray_settings.replicas
    return convlstm_deployment.options(**options)


def convlstm_application(settings: Settings, ray_settings: RayServeSettings) -> Application:
    """The sized deployment, each replica serving ``settings``."""
    # Replicas may run in another working directory, or on another node of the same image.
    settings = settings.model_copy(update={"model_path": settings.model_path.resolve()})
    return sized_deployment(settings, ray_settings).bind(settings)


def build_app(args: dict[str, Any]) -> Application:
    """Application builder for ``serve run service.ray_serve:build_app [key=value ...]``:
    the arguments are ``RayServeSettings`` fields and override ``CONVLSTM_RAY_*``."""
    return convlstm_application(Settings(), RayServeSettings(**args))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m service.ray_serve", description=__doc__)
    p.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS"),
        help="Ray cluster to join (default RAY_ADDRESS; unset: a running local Ray, else a new one)",
    )
    p.add_argument("--host", help="address of Ray Serve's HTTP proxy (default CONVLSTM_HOST)")
    p.add_argument("--port", type=int, help="port of the HTTP proxy (default CONVLSTM_PORT)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = Settings(**overrides)
    ray_settings = RayServeSettings()
    ray.init(address=args.address, namespace="serve")
    # After ray.init, which installs a SIGTERM handler that aborts the process: SIGTERM
    # (and SIGINT, even where a shell started us with it ignored) leaves the blocking run
    # below, and the shutdown then lets each replica drain before it stops.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _leave)
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(convlstm_application(settings, ray_settings), name=APP_NAME, blocking=True)
    except KeyboardInterrupt:
        pass
    finally:
        # Deleting the application first drains it: Ray stops routing to the replicas
        # and waits for what they hold while the proxy stays up to deliver the answers.
        # serve.shutdown alone kills the proxy at once, dropping every request in flight.
        serve.delete(APP_NAME)
        serve.shutdown()  # type: ignore[no-untyped-call]  # unannotated in ray 2.60
    return 0


def _leave(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    # Through the package's name, so that the deployment's class is service.ray_serve's
    # and not a copy pickled from __main__.
    from service.ray_serve import main as _main

    raise SystemExit(_main())
