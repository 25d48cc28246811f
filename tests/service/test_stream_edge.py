"""The nginx edge in front of stream replicas: the project's deploy/nginx/nginx.conf is
accepted by Debian's nginx as written, and the compose override that runs it follows the
Compose Specification and names the replicas it hashes over. (Affinity through a real
nginx in front of two real replicas: tests/service/test_streams_replicas.py.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import yaml

from tests.service.stream_tools import REPO, check_edge_config

STREAMS_COMPOSE = REPO / "deploy" / "compose" / "streams.yml"
COMPOSE_SCHEMA = REPO / "tests" / "data" / "compose-spec.json"


def test_nginx_accepts_the_edge_config(tmp_path: Path) -> None:
    result = check_edge_config(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
    conf = (REPO / "deploy" / "nginx" / "nginx.conf").read_text()
    assert "hash $convlstm_affinity consistent;" in conf
    assert "non_idempotent" not in conf.split("proxy_next_upstream", 1)[1].split(";", 1)[0]


def test_the_compose_override_runs_replicas_on_redis_behind_the_edge() -> None:
    override = yaml.safe_load(STREAMS_COMPOSE.read_text())
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    errors = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(override)]
    assert errors == []
    services = override["services"]
    upstreams = (REPO / "deploy" / "nginx" / "upstreams.conf").read_text()
    hosts = re.findall(r"^server ([\w-]+):8000", upstreams, re.MULTILINE)
    assert hosts == ["convlstm-1", "convlstm-2"]
    for host in hosts:
        env = services[host]["environment"]
        assert env["CONVLSTM_STREAM_STORE"] == "redis://redis:6379/0"
    assert {"redis", "edge"} <= set(services)
    assert services["edge"]["ports"] == ["${CONVLSTM_EDGE_PORT:-8080}:8080"]
