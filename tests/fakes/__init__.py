"""In-memory fakes of the ports of core/pipeline/ports.py, for logic tests without servers."""

from tests.fakes.clocks import FakeClock, FakePing
from tests.fakes.journals import FakeJournalStore, FakeLedgerUnit, JournalRow
from tests.fakes.services import (
    FakeAccountCache,
    FakeIdempotencyCache,
    FakeNotifier,
    FakeReceiptSource,
    FakeStatusStore,
    RecordingObserver,
)

__all__ = ["FakeAccountCache", "FakeClock", "FakeIdempotencyCache", "FakeJournalStore",
           "FakeLedgerUnit", "FakeNotifier", "FakePing", "FakeReceiptSource", "FakeStatusStore", "JournalRow",
           "RecordingObserver"]
