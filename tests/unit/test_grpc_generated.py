"""The checked-in gRPC code must be what server/adapters/grpc/generate.py makes from the protos."""

from __future__ import annotations

from pathlib import Path

from server.adapters.grpc import generate


def _files(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): p.read_text()
        for p in root.rglob("*") if p.suffix in (".py", ".pyi")
    }


def test_checked_in_code_is_fresh(tmp_path: Path) -> None:
    generate.generate(tmp_path)
    fresh, checked_in = _files(tmp_path), _files(generate.GEN_DIR)
    assert fresh.keys() == checked_in.keys(), "run: python -m server.adapters.grpc.generate"
    stale = [name for name in fresh if fresh[name] != checked_in[name]]
    assert not stale, f"stale generated files {stale}; run: python -m server.adapters.grpc.generate"


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
