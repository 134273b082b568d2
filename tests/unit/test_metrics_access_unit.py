"""The metrics token's sources and checks, and the metrics port's address (issue 22, 5)."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.http.metrics_auth import token_matches
from server.process.metrics_server import api_host
from server.process.settings import ConfigError, load_settings


def test_the_token_is_a_secret_read_from_the_variable_or_its_file(tmp_path: Path) -> None:
    assert load_settings({}).metrics_token is None
    assert load_settings({"KASSA_METRICS_TOKEN": "t1"}).metrics_token == "t1"
    secret = tmp_path / "token"
    secret.write_text("t2\n")
    env = {"KASSA_METRICS_TOKEN_FILE": str(secret)}
    assert load_settings(env).metrics_token == "t2"
    with pytest.raises(ConfigError, match="not both"):
        load_settings({"KASSA_METRICS_TOKEN": "t1", **env})
    with pytest.raises(ConfigError) as refused:
        load_settings({"KASSA_METRICS_TOKEN_FILE": str(tmp_path / "none")})
    assert "KASSA_METRICS_TOKEN_FILE" in str(refused.value)


def test_only_bearer_and_the_exact_token_match() -> None:
    assert token_matches("Bearer s3cret", "s3cret")
    assert token_matches("bearer  s3cret ", "s3cret")
    for header in ("", "s3cret", "Basic s3cret", "Bearer s3cre", "Bearer s3cret2", "Bearer"):
        assert not token_matches(header, "s3cret"), header


def test_the_metrics_port_is_checked() -> None:
    assert load_settings({"KASSA_METRICS_PORT": "9100"}).metrics_port == 9100
    assert load_settings({}).metrics_port is None
    with pytest.raises(ConfigError, match="is the API port"):
        load_settings({"KASSA_METRICS_PORT": "8000"})
    with pytest.raises(ConfigError, match="between 1 and 65535"):
        load_settings({"KASSA_METRICS_PORT": "70000"})


def test_the_metrics_port_listens_on_the_apis_host() -> None:
    assert api_host(["0.0.0.0:8000"], "127.0.0.1") == "0.0.0.0"
    assert api_host(["[::1]:8000"], "127.0.0.1") == "::1"
    assert api_host(["unix:/run/kassa.sock"], "127.0.0.1") == "127.0.0.1"
    assert api_host([], "127.0.0.1") == "127.0.0.1"
