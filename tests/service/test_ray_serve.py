"""Ray Serve: the deployment's sizing from settings, and two CPU replicas of the real app
answering through Ray Serve's HTTP proxy on loopback, streams across both through a real
Redis."""

from __future__ import annotations

import importlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import httpx
import numpy as np
import pytest
import yaml
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

ray = pytest.importorskip("ray", reason="ray is not installed (the `ray` extra: ray[serve])")
serve = pytest.importorskip("ray.serve", reason="ray is installed without ray[serve]")

from service.api.examples import moving_square_frames  # noqa: E402
from service.config import Settings  # noqa: E402
from service.ray_serve import (  # noqa: E402
    REPLICA_HEADER,
    RayServeSettings,
    ReplicaHeader,
    build_app,
    convlstm_application,
    gpus_per_replica,
    parser,
    sized_deployment,
)
from tests.service.conftest import COMMITTED_MODEL, REPO, free_port  # noqa: E402
from tests.service.stream_tools import RedisServer, frames_of, prediction, redis_server, step  # noqa: E402  # noqa: E402

SERVE_CONFIG = REPO / "deploy" / "ray" / "serve.yaml"

# -- sizing, without a Ray cluster ------------------------------------------------------------


def test_ray_settings_come_from_convlstm_ray_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVLSTM_RAY_REPLICAS", "3")
    monkeypatch.setenv("CONVLSTM_RAY_NUM_GPUS", "0.5")
    ray_settings = RayServeSettings()
    assert (ray_settings.replicas, ray_settings.num_gpus) == (3, 0.5)
    # ... and they are no concern of the service's own settings, which forbid extras.
    assert Settings().port == Settings.model_fields["port"].default


def test_ray_settings_refuse_replicas_outside_the_autoscaling_bounds() -> None:
    with pytest.raises(ValidationError, match="between autoscale_min=1 and autoscale_max=2"):
        RayServeSettings(replicas=3, autoscale_max=2)
    with pytest.raises(ValidationError, match="replicas"):
        RayServeSettings(replicas=0)


def test_fixed_replicas_with_the_service_limits() -> None:
    settings = Settings(max_queue=10, max_batch_size=4, inference_workers=2, shutdown_grace_s=12)
    deployment = sized_deployment(settings, RayServeSettings(replicas=2, num_gpus=0, num_cpus=0.5))
    assert deployment.name == "convlstm"
    assert deployment.num_replicas == 2
    assert deployment.ray_actor_options == {"num_cpus": 0.5, "num_gpus": 0.0}
    # What one replica accepts: its queue plus one batch per worker; beyond that the
    # service answers 503 itself instead of Ray queueing without bound.
    assert deployment.max_ongoing_requests == 10 + 4 * 2
    config = deployment._deployment_config  # no public accessor in ray 2.60
    assert config.graceful_shutdown_timeout_s == 12
    assert config.autoscaling_config is None


def test_autoscaling_from_settings() -> None:
    ray_settings = RayServeSettings(
        replicas=2, autoscale_min=1, autoscale_max=6, target_ongoing_requests=3, num_gpus=1
    )
    deployment = sized_deployment(Settings(), ray_settings)
    scaling = deployment._deployment_config.autoscaling_config
    assert (scaling.min_replicas, scaling.initial_replicas, scaling.max_replicas) == (1, 2, 6)
    assert scaling.target_ongoing_requests == 3
    assert deployment.ray_actor_options["num_gpus"] == 1


def test_one_gpu_per_replica_where_the_cluster_has_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 2.0})
    assert gpus_per_replica(RayServeSettings()) == 1.0
    assert gpus_per_replica(RayServeSettings(num_gpus=0.25)) == 0.25  # asked for: as asked
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0})
    assert gpus_per_replica(RayServeSettings()) == 0.0


def test_without_ray_connected_this_machine_is_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr("service.ray_serve.shutil.which", lambda name: None)
    assert gpus_per_replica(RayServeSettings()) == 0.0


def test_builder_takes_serve_run_arguments_and_resolves_the_model_path() -> None:
    app = build_app({"replicas": "2", "num_gpus": "0"})
    assert isinstance(app, serve.Application)
    with pytest.raises(ValidationError, match="replica"):
        build_app({"replica": "2"})  # a misspelt argument is refused, not ignored
    bound = convlstm_application(Settings(), RayServeSettings(num_gpus=0))
    (settings,) = bound._bound_deployment.init_args  # what each replica is built from
    assert settings.model_path.is_absolute() and settings.model_path == COMMITTED_MODEL


def test_cluster_config_deploys_this_builder() -> None:
    from ray.serve.schema import HTTPOptionsSchema, ServeApplicationSchema, ServeDeploySchema

    document = yaml.safe_load(SERVE_CONFIG.read_text())
    config = ServeDeploySchema.model_validate(document)
    # Ray's schema lets unknown keys through silently; a misspelt one would be ignored.
    (app,) = document["applications"]
    for keys, schema in (
        (document, ServeDeploySchema),
        (document["http_options"], HTTPOptionsSchema),
        (app, ServeApplicationSchema),
    ):
        assert set(keys) <= set(schema.model_fields), set(keys) - set(schema.model_fields)
    module, _, name = config.applications[0].import_path.partition(":")
    assert getattr(importlib.import_module(module), name) is build_app
    RayServeSettings(**app["args"])  # what the builder will be given
    assert config.http_options.port == Settings().port
    assert config.http_options.host == "0.0.0.0"  # reachable from outside the node


def test_launcher_flags() -> None:
    args = parser().parse_args(["--address", "ray://head:10001", "--host", "0.0.0.0"])
    assert (args.address, args.host, args.port) == ("ray://head:10001", "0.0.0.0", None)


def test_replica_header_names_the_replica_on_every_answer() -> None:
    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("hi", headers={"x-other": "kept"})

    app = ReplicaHeader(Starlette(routes=[Route("/hi", hello)]), replica="r1")

    async def ask() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for path, status in (("/hi", 200), ("/missing", 404)):
                response = await client.get(path)
                assert response.status_code == status
                assert response.headers[REPLICA_HEADER] == "r1"
            assert (await client.get("/hi")).headers["x-other"] == "kept"

    anyio.run(ask)


# -- two replicas on a local Ray --------------------------------------------------------------


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def ray_serve_url(redis: RedisServer) -> Iterator[str]:
    """Ray on this machine (2 CPUs, no dashboard), Serve's proxy on a free loopback port,
    two replicas of the committed model at half a CPU each, sharing stream state in a
    real redis-server on loopback."""
    # The node address on loopback keeps the proxy and the agents' HTTP there; Ray 2.60
    # still binds its gRPC servers on every interface (behind its token auth).
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        namespace="serve",
        log_to_driver=False,
    )
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        settings = Settings(
            model_path=COMMITTED_MODEL,
            serve_model_dir=False,
            provider="cpu",
            intra_op_threads=1,
            max_batch_size=4,
            stream_store=redis.url,
        )
        sizing = RayServeSettings(replicas=2, num_cpus=0.5, num_gpus=0)
        serve.run(convlstm_application(settings, sizing), name="convlstm", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.mark.slow
def test_both_replicas_answer_through_the_proxy(ray_serve_url: str) -> None:
    body = {"frames": moving_square_frames(), "horizon": 1}
    with httpx.Client(base_url=ray_serve_url, timeout=60.0) as client:
        # The app's lifespan ran in the replicas: the model is loaded and warmed up.
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["model"] == "convlstm"

        replicas: set[str] = set()
        deadline = time.monotonic() + 90.0
        with ThreadPoolExecutor(max_workers=4) as pool:
            for _ in range(10):  # at most 40 requests, four at a time
                answers = list(pool.map(lambda _: client.post("/predict", json=body), range(4)))
                for answer in answers:
                    assert answer.status_code == 200, answer.text
                    assert answer.json()["frame_shape"] == [40, 40, 3]
                    assert len(answer.json()["frames"]) == 1
                    replicas.add(answer.headers[REPLICA_HEADER])
                if len(replicas) == 2 or time.monotonic() > deadline:
                    break
        assert len(replicas) == 2, f"only {replicas} answered"

        # The service's own errors come through Ray unchanged.
        short = client.post("/predict", json={"frames": moving_square_frames()[:14]})
        assert short.status_code == 422
        message = short.json()["error"]["message"]
        assert message.startswith("frames: expected 15 frames, got 14; the model takes 15 ")
        assert short.headers[REPLICA_HEADER] in replicas


@pytest.mark.slow
def test_a_stream_goes_on_across_both_replicas_through_redis(ray_serve_url: str) -> None:
    from convlstm_card import read_card
    from service.streams.session import StepSession

    spec = read_card(COMMITTED_MODEL.with_suffix(".json")).stream
    assert spec is not None
    session = StepSession(COMMITTED_MODEL, spec, Settings())
    state = {k: v[None] for k, v in session.zero_state().items()}
    frames = frames_of(0)
    replicas: set[str] = set()
    with httpx.Client(base_url=ray_serve_url, timeout=60.0) as client:
        stream_id = client.post("/v1/streams").json()["stream_id"]
        for t in range(len(frames)):  # the proxy picks a replica for each request
            answer = step(client, stream_id, frames[t])
            want, state = session.run(frames[t][None], state)
            np.testing.assert_allclose(prediction(answer), want[0], atol=1e-5)
            replicas.add(answer.headers[REPLICA_HEADER])
        info = client.get(f"/v1/streams/{stream_id}").json()
    assert info["frames_seen"] == len(frames)
    assert len(replicas) == 2, f"only {replicas} answered: the stream never changed replica"
