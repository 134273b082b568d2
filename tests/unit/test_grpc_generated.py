"""The checked-in gRPC code must be what server/adapters/grpc/generate.py makes from the protos,
and pyproject.toml must allow only runtimes that the generated code accepts."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

from server.adapters.grpc import generate

# The generator writes its own version into the code it makes: grpcio-tools as
# GRPC_GENERATED_VERSION (checked against grpcio at import), protoc as a comment and a
# ValidateProtobufRuntimeVersion call. The lock pins the generator; the freshness check
# still ignores these stamps, so a patch release of the tools alone never reads as stale.
_GRPC_STAMP = re.compile(r"^GRPC_GENERATED_VERSION = '([^']+)'$", re.MULTILINE)
_PROTOBUF_STAMP = re.compile(r"^# Protobuf Python Version: (\S+)$", re.MULTILINE)
_PROTOBUF_CHECK = re.compile(
    r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*"
    r"(\d+),\s*(\d+),\s*(\d+),\s*'([^']*)',")
_STAMPS = (_GRPC_STAMP, _PROTOBUF_STAMP, _PROTOBUF_CHECK)


def _files(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): p.read_text()
        for p in root.rglob("*") if p.suffix in (".py", ".pyi")
    }


def without_stamps(text: str) -> str:
    for stamp in _STAMPS:
        text = stamp.sub("<generator version>", text)
    return text


def test_checked_in_code_is_fresh(tmp_path: Path) -> None:
    generate.generate(tmp_path)
    fresh, checked_in = _files(tmp_path), _files(generate.GEN_DIR)
    assert fresh.keys() == checked_in.keys(), "run: make proto"
    stale = [name for name in fresh
             if without_stamps(fresh[name]) != without_stamps(checked_in[name])]
    assert not stale, f"stale generated files {stale}; run: make proto"


def test_the_freshness_check_still_sees_a_changed_message() -> None:
    text = (generate.GEN_DIR / "kassa" / "v1" / "receipts_pb2.py").read_text()
    restamped = _GRPC_STAMP.sub("GRPC_GENERATED_VERSION = '9.9.9'", text)
    assert without_stamps(restamped) == without_stamps(text)
    assert without_stamps(text.replace("ReceiptService", "ReceiptServicf")) != without_stamps(text)


def _lower_bound(name: str) -> Version:
    pyproject = tomllib.loads((generate.ROOT / "pyproject.toml").read_text())
    for line in pyproject["project"]["dependencies"]:
        requirement = Requirement(line)
        if requirement.name == name:
            return min(Version(s.version) for s in requirement.specifier if s.operator == ">=")
    raise AssertionError(f"{name} is not a dependency")


def test_pyproject_allows_only_runtimes_the_generated_code_accepts() -> None:
    """grpcio refuses to import stubs made by a newer grpcio-tools than itself, and protobuf
    refuses gencode newer than its runtime: the ranges must start at the stamps."""
    texts = "\n".join(_files(generate.GEN_DIR).values())
    grpc_stamps = {Version(v) for v in _GRPC_STAMP.findall(texts)}
    protobuf_stamps = {Version(".".join(m[:3])) for m in _PROTOBUF_CHECK.findall(texts)}
    assert grpc_stamps and protobuf_stamps
    assert _lower_bound("grpcio") >= max(grpc_stamps)
    assert _lower_bound("protobuf") >= max(protobuf_stamps)


def test_generated_code_imports_as_a_package() -> None:
    from server.adapters.grpc.gen.kassa.v1 import (
        notifications_pb2_grpc,
        receipts_pb2,
        receipts_pb2_grpc,
    )

    assert receipts_pb2.DESCRIPTOR.package == "kassa.v1"
    assert receipts_pb2_grpc.ReceiptServiceStub
    assert notifications_pb2_grpc.NotificationServiceStub
    text = "\n".join(_files(generate.GEN_DIR).values())
    assert "from kassa.v1" not in text and "import kassa.v1" not in text
