"""The settings object: environment prefix, defaults, refusal of bad values."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.config import Settings


def test_defaults() -> None:
    s = Settings()
    assert (s.host, s.port, s.model_path) == ("127.0.0.1", 8000, Path("models/convlstm.onnx"))
    assert s.card_path == Path("models/convlstm.json")
    assert s.provider == "auto"


def test_environment_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVLSTM_PORT", "9001")
    monkeypatch.setenv("CONVLSTM_PROVIDER", "cpu")
    monkeypatch.setenv("CONVLSTM_MODEL_PATH", "/srv/m.onnx")
    s = Settings()
    assert (s.port, s.provider, s.card_path) == (9001, "cpu", Path("/srv/m.json"))


def test_arguments_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVLSTM_PORT", "9001")
    assert Settings(port=9002).port == 9002


@pytest.mark.parametrize(
    ("field", "value"),
    [("port", 0), ("port", 70000), ("provider", "gpu"), ("max_horizon", 0), ("max_body_bytes", 10)],
)
def test_bad_values_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings.model_validate({field: value})


def test_gpu_requirement_contradicting_cpu_provider() -> None:
    with pytest.raises(ValidationError, match="require_gpu=true contradicts provider=cpu"):
        Settings(require_gpu=True, provider="cpu")


def test_every_field_is_documented() -> None:
    assert all(f.description for f in Settings.model_fields.values())


def test_the_configuration_page_documents_every_setting() -> None:
    # docs/configuration.md holds a marker; the site build puts this table in its place.
    from docs_build.hooks import expand

    page = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    table = expand(page)
    for name, field in Settings.model_fields.items():
        if field.default is None:
            shown = "unset"
        elif isinstance(field.default, bool):
            shown = f"`{str(field.default).lower()}`"
        else:
            shown = f"`{field.default}`"
        assert f"| `CONVLSTM_{name.upper()}` | {shown} |" in table, name
