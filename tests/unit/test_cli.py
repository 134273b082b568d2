"""The `kassa` command line as a user meets it: help on every command and option, with
defaults (taken from the KASSA_* settings), and --version."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import subprocess
import sys

import pytest

from server.process.cli import build_parser
from server.process.settings import Settings

COMMANDS = ("serve", "migrate", "receipt-service", "notification-service", "relay", "verify")


def kassa(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KASSA_")}
    clean["COLUMNS"] = "200"  # argparse wraps help to the terminal: keep each line whole
    return subprocess.run([sys.executable, "-m", "server.process.cli", *args], capture_output=True,
                          text=True, env={**clean, **(env or {})}, timeout=60)


def test_help_lists_every_command() -> None:
    result = kassa("--help")
    assert result.returncode == 0, result.stderr
    assert all(command in result.stdout for command in COMMANDS)
    assert "--version" in result.stdout


def test_serve_help_shows_the_defaults_from_settings() -> None:
    result = kassa("serve", "--help")
    assert result.returncode == 0, result.stderr
    for option in ("--host", "--port", "--workers", "--data-dir"):
        assert option in result.stdout
    assert "(default: 8000)" in result.stdout and "(default: .kassa)" in result.stdout
    configured = kassa("serve", "--help", env={"KASSA_PORT": "9123", "KASSA_DATA_DIR": "/srv/k"})
    assert "(default: 9123)" in configured.stdout and "(default: /srv/k)" in configured.stdout


def test_verify_help() -> None:
    result = kassa("verify", "--help")
    assert result.returncode == 0, result.stderr
    assert "--grace-s" in result.stdout and "(default: 60.0)" in result.stdout
    assert "--no-receipts" in result.stdout and "invariants" in result.stdout


def test_version_comes_from_the_package_metadata() -> None:
    result = kassa("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"kassa {importlib.metadata.version('kassa')}\n"


def test_an_invalid_setting_stops_a_command_with_one_line() -> None:
    result = kassa("migrate", env={"KASSA_LOG_FORMAT": "xml"})
    assert result.returncode == 2
    assert result.stderr.startswith("kassa: configuration error: KASSA_LOG_FORMAT='xml'")
    assert kassa("--help", env={"KASSA_LOG_FORMAT": "xml"}).returncode == 0


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found += [p for sub in action.choices.values() for p in _parsers(sub)]
    return found


@pytest.mark.parametrize("parser", _parsers(build_parser(Settings())), ids=lambda p: p.prog)
def test_every_option_and_command_has_help(parser: argparse.ArgumentParser) -> None:
    assert parser.description, parser.prog
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            assert all(choice.help for choice in action._choices_actions)
        else:
            assert action.help, (parser.prog, action.dest)
