"""The Kubernetes manifests under deploy/k8s/: valid against the Kubernetes API schemas
(kubernetes-validate, strict, for the oldest and newest versions we claim), and held to
the app they deploy: probe paths, port, settings, drain time, user and images.

The base is read from its files; each overlay is rendered with ``kubectl kustomize``
(kubectl ships with kustomize), and those tests skip where no kubectl is installed.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is not installed (the dev extra has it)"
)

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
# Oldest and newest Kubernetes minor versions the manifests are checked against.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
VARIANTS = ("base", *OVERLAYS)
# The image each variant runs, as docker-compose.yml builds it.
COMPOSE_SERVICE = {"base": "convlstm", "cpu": "convlstm-cpu"}
GPU = "nvidia.com/gpu"

Resource = dict[str, Any]


def load_base() -> list[Resource]:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    return [
        doc
        for name in kustomization["resources"]
        for doc in yaml.safe_load_all((BASE / name).read_text())
        if doc
    ]


def render(variant: str) -> list[Resource]:
    if variant == "base":
        return load_base()
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl to render the kustomize overlays")
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / variant)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module", params=VARIANTS)
def variant(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(scope="module")
def resources(variant: str) -> list[Resource]:
    return render(variant)


def one(resources: list[Resource], kind: str) -> Resource:
    (found,) = [r for r in resources if r["kind"] == kind]
    return found


def server_container(resources: list[Resource]) -> Resource:
    (container,) = one(resources, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container: Resource) -> dict[str, Resource]:
    return {e["name"]: e for e in container["env"]}


@pytest.fixture(scope="module")
def settings() -> Any:
    from service.config import Settings

    return Settings()


@pytest.fixture(scope="module")
def get_routes(settings: Any) -> set[str]:
    """Paths the real app answers to GET, matched through each route (``app.routes`` does
    not list an included router's paths by themselves), without loading a model."""
    from starlette.routing import Match

    from service.app import create_app

    app = create_app(settings)
    candidates = {"/healthz", "/readyz", "/metrics", "/v1/model", "/nowhere"}
    return {
        path
        for path in candidates
        for route in app.routes
        if route.matches({"type": "http", "path": path, "method": "GET"})[0] == Match.FULL
    }


# -- the Kubernetes API schemas -------------------------------------------------------------


def test_base_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"])
    on_disk = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_follow_the_kubernetes_api(resources: list[Resource], version: str) -> None:
    assert {r["kind"] for r in resources} == {"Deployment", "Service", "HorizontalPodAutoscaler"}
    problems = []
    for resource in resources:
        # Raises on any mismatch, and on a kind or apiVersion it has no schema for.
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as e:  # its str() holds the whole schema
            where = ".".join(str(p) for p in e.path)
            problems.append(f"{resource['kind']} {where}: {e.message}")
    assert not problems


def test_strict_validation_rejects_what_the_api_server_would() -> None:
    deployment = one(load_base(), "Deployment")
    misspelt = copy.deepcopy(deployment)
    misspelt["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8000"
    for broken in (misspelt, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


# -- held to the app ------------------------------------------------------------------------


def test_probes_poll_real_routes_on_the_server_port(
    resources: list[Resource], get_routes: set[str], settings: Any
) -> None:
    assert "/nowhere" not in get_routes  # the route lookup can say no
    container = server_container(resources)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    expected = {
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
        "startupProbe": "/healthz",
    }
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path and path in get_routes, probe
        assert ports[get["port"]] == settings.port, probe


def test_container_port_and_listen_address_are_the_servers(
    resources: list[Resource], settings: Any
) -> None:
    container = server_container(resources)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": settings.port, "grpc": settings.grpc_port}
    env = env_of(container)
    assert int(env["CONVLSTM_PORT"]["value"]) == settings.port
    assert int(env["CONVLSTM_GRPC_PORT"]["value"]) == settings.grpc_port
    assert env["CONVLSTM_HOST"]["value"] == "0.0.0.0"  # reachable from outside the pod


def test_environment_is_real_settings(resources: list[Resource], settings: Any) -> None:
    for name, entry in env_of(server_container(resources)).items():
        field = name.removeprefix("CONVLSTM_").lower()
        assert name.startswith("CONVLSTM_") and field in type(settings).model_fields, name
        if "value" in entry:
            type(settings)(**{field: entry["value"]})  # the server would accept it
        else:  # from a Secret that may be absent: the server then runs without it
            assert entry["valueFrom"]["secretKeyRef"]["optional"] is True, name


def test_pods_outlive_the_drain(resources: list[Resource], settings: Any) -> None:
    pod = one(resources, "Deployment")["spec"]["template"]["spec"]
    container = server_container(resources)
    drain = type(settings)(
        shutdown_grace_s=env_of(container)["CONVLSTM_SHUTDOWN_GRACE_S"]["value"]
    ).shutdown_grace_s
    assert drain == settings.shutdown_grace_s
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and 0 < int(command[1]) <= 10, command
    assert pod["terminationGracePeriodSeconds"] > int(command[1]) + drain


def test_runs_as_the_images_user_on_a_read_only_root(resources: list[Resource]) -> None:
    users = set(re.findall(r"^USER (\d+):(\d+)$", (REPO / "Dockerfile").read_text(), re.M))
    assert users == {("10001", "10001")}
    pod = one(resources, "Deployment")["spec"]["template"]["spec"]
    container = server_container(resources)
    for context in (pod["securityContext"], container["securityContext"]):
        assert context["runAsNonRoot"] is True and context["runAsUser"] == 10001
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    (mount,) = container["volumeMounts"]
    assert mount["mountPath"] == "/tmp"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mount["name"]]


def test_gpu_only_where_the_image_is_the_gpu_one(resources: list[Resource], variant: str) -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    container = server_container(resources)
    assert container["image"] == compose["services"][COMPOSE_SERVICE[variant]]["image"]
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    env = env_of(container)
    pod = one(resources, "Deployment")["spec"]["template"]["spec"]
    if container["image"].endswith(":gpu"):
        # Extended resources: the request, when given, must equal the limit.
        assert limits[GPU] == requests[GPU] == 1
        assert env["CONVLSTM_REQUIRE_GPU"]["value"] == "true"
        # On GPU nodes (GPU Feature Discovery's label), and tolerating their usual taint.
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    else:
        assert GPU not in limits and GPU not in requests
        assert env["CONVLSTM_PROVIDER"]["value"] == "cpu"
        assert env["CONVLSTM_REQUIRE_GPU"]["value"] == "false"
        assert "tolerations" not in pod and "nodeSelector" not in pod


def test_resources_fit_the_thread_count(resources: list[Resource]) -> None:
    container = server_container(resources)
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    assert {"cpu", "memory"} <= set(requests) and {"cpu", "memory"} <= set(limits)
    threads = int(env_of(container)["CONVLSTM_INTRA_OP_THREADS"]["value"])
    assert threads == int(limits["cpu"]) >= int(requests["cpu"])


def test_service_reaches_the_deployments_pods(resources: list[Resource], settings: Any) -> None:
    service, deployment = one(resources, "Service"), one(resources, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    container_ports = {p["name"]: p["containerPort"] for p in server_container(resources)["ports"]}
    served = {port["targetPort"]: port["port"] for port in service["spec"]["ports"]}
    assert served == {"http": settings.port, "grpc": settings.grpc_port}
    for name, port in served.items():
        assert container_ports[name] == port


def test_autoscaler_owns_the_deployments_replicas(resources: list[Resource]) -> None:
    hpa, deployment = one(resources, "HorizontalPodAutoscaler"), one(resources, "Deployment")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"],
        deployment["kind"],
        deployment["metadata"]["name"],
    )
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert "replicas" not in deployment["spec"]  # an apply would reset the HPA's count
    # A utilisation target is a share of the CPU request, which must therefore be set.
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert "cpu" in server_container(resources)["resources"]["requests"]


def test_prometheus_annotations_point_at_the_metrics_route(
    resources: list[Resource], get_routes: set[str], settings: Any
) -> None:
    annotations = one(resources, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] in get_routes
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == settings.port
