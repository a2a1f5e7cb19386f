"""The ``foundation`` dask-config defaults and their schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask.config
import pytest
import yaml
from dask.utils import parse_bytes, parse_timedelta

from foundation_dask import config

PACKAGE = Path(config.__file__).parent


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((PACKAGE / name).read_text())


@pytest.fixture(scope="module")
def defaults() -> dict[str, Any]:
    return load("foundation.yaml")


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return load("foundation-schema.yaml")


def _mismatches(conf: dict[str, Any], schema: dict[str, Any], path: str = "") -> list[str]:
    """Keys present in only one of ``conf`` and ``schema['properties']``, recursively."""
    props = schema.get("properties", {})
    problems = [f"{path}{k}: no schema entry" for k in sorted(set(conf) - set(props))]
    problems += [f"{path}{k}: in the schema, not in foundation.yaml"
                 for k in sorted(set(props) - set(conf))]
    for key in sorted(set(conf) & set(props)):
        value, entry = conf[key], props[key]
        if "description" not in entry and path:
            problems.append(f"{path}{key}: schema entry has no description")
        if isinstance(value, dict):
            if "properties" not in entry:
                problems.append(f"{path}{key}: a section in foundation.yaml, a leaf in the schema")
            else:
                problems += _mismatches(value, entry, f"{path}{key}.")
        elif "properties" in entry:
            problems.append(f"{path}{key}: a section in the schema, a leaf in foundation.yaml")
    return problems


def test_schema_matches_defaults(defaults, schema):
    assert list(defaults) == ["foundation"]
    assert _mismatches(defaults, schema) == []


def test_mismatch_check_reports_both_directions():
    schema = {"properties": {"a": {"properties": {"b": {"description": "x"}}, "description": "s"}}}
    assert _mismatches({"a": {"b": 1}}, schema) == []
    assert _mismatches({"a": {"b": 1, "c": 2}}, schema) == ["a.c: no schema entry"]
    assert _mismatches({"a": {}}, schema) == ["a.b: in the schema, not in foundation.yaml"]


def test_defaults_validate_against_schema(defaults, schema):
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(defaults, schema)

    bad = yaml.safe_load(yaml.safe_dump(defaults))
    bad["foundation"]["processes"]["checkpoint"] = "sometimes"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    bad = yaml.safe_load(yaml.safe_dump(defaults))
    bad["foundation"]["channels"]["subscriber-buffer"] = "many"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_durations_and_sizes_parse(defaults):
    """Every duration and size default is something dask can read."""
    section = defaults["foundation"]
    for key in ("checkpoint-interval", "failover-timeout", "call-timeout"):
        assert parse_timedelta(section["processes"][key], default="s") > 0
    for key in ("degraded-event-loop-lag", "unreachable-after"):
        assert parse_timedelta(section["health"][key], default="s") > 0
    assert parse_bytes(section["channels"]["max-message-size"]) > 0


def test_defaults_are_loaded_into_dask_config(defaults):
    section = defaults["foundation"]
    assert dask.config.get("foundation.channels.subscriber-buffer") == (
        section["channels"]["subscriber-buffer"]
    )
    assert dask.config.get("foundation.processes.checkpoint") == section["processes"]["checkpoint"]
    assert config.get("cluster.n-workers") == section["cluster"]["n-workers"]
    assert config.get_seconds("processes.call-timeout") == parse_timedelta(
        section["processes"]["call-timeout"]
    )
    assert config.get_bytes("channels.max-message-size") == parse_bytes(
        section["channels"]["max-message-size"]
    )


def test_defaults_survive_a_config_refresh(tmp_path, defaults):
    """They are registered as dask defaults, not merely written into the current config."""
    fresh: dict[str, Any] = {}
    dask.config.refresh(config=fresh, paths=[str(tmp_path)], env={})
    assert fresh["foundation"] == defaults["foundation"]


def test_user_overrides_win():
    with dask.config.set({"foundation.channels.subscriber-buffer": 5}):
        assert dask.config.get("foundation.channels.subscriber-buffer") == 5
        assert config.get("channels.subscriber-buffer") == 5
    assert config.get("channels.subscriber-buffer") != 5

    with dask.config.set({"foundation.processes.call-timeout": "2 minutes"}):
        assert config.get_seconds("processes.call-timeout") == 120
    with dask.config.set({"foundation.channels.max-message-size": "4 kiB"}):
        assert config.get_bytes("channels.max-message-size") == 4096
    with dask.config.set({"foundation.channels.max-message-size": 1000}):
        assert config.get_bytes("channels.max-message-size") == 1000


def test_yaml_files_and_environment_override_defaults(tmp_path, defaults):
    (tmp_path / "foundation.yaml").write_text(
        "foundation:\n  health:\n    degraded-cpu: 50\n"
    )
    fresh: dict[str, Any] = {}
    dask.config.refresh(
        config=fresh,
        paths=[str(tmp_path)],
        env={"DASK_FOUNDATION__CHANNELS__SUBSCRIBER_BUFFER": "7"},
    )
    assert dask.config.get("foundation.health.degraded-cpu", config=fresh) == 50
    assert dask.config.get("foundation.channels.subscriber-buffer", config=fresh) == 7
    # Keys the user did not set keep their defaults.
    assert dask.config.get("foundation.health.degraded-memory", config=fresh) == (
        defaults["foundation"]["health"]["degraded-memory"]
    )
