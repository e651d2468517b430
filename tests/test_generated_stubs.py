"""The committed stubs are exactly what grpcio-tools generates from protos/."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STUBS = (
    "lock_service_pb2.py",
    "lock_service_pb2_grpc.py",
    "lock_service_pb2.pyi",
    "lock_service.proto",
)


def _generator() -> object:
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_regenerating_the_stubs_changes_nothing(tmp_path: Path) -> None:
    _generator().generate(tmp_path)  # type: ignore[attr-defined]
    for name in STUBS:
        fresh = (tmp_path / "ticketlock" / "v1" / name).read_text()
        committed = (ROOT / "client" / "ticketlock" / "v1" / name).read_text()
        assert fresh == committed, f"{name} is stale: run python scripts/gen_protos.py"


def test_every_rpc_of_the_contract_is_in_the_stubs() -> None:
    from ticketlock.v1 import lock_service_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["LockService"]
    assert [m.name for m in service.methods] == [
        "GetLock", "SaveLock", "DeleteLock", "IssueTicket", "WaitForTicket", "FinishServing",
        "Cleanup", "IsSomeoneWaiting", "RefreshTicket", "Lock",
    ]  # fmt: skip
    wait = service.methods_by_name["WaitForTicket"]
    assert wait.server_streaming and not wait.client_streaming
    lock = service.methods_by_name["Lock"]
    assert lock.server_streaming and lock.client_streaming
    fields = {
        "Ticket": {"number": 1, "expires": 2},
        "TicketLock": {"conversation_id": 1, "tickets": 2},
        "IssueTicketRequest": {"conversation_id": 1, "lifetime_seconds": 2},
        "IssueTicketResponse": {"ticket": 1, "now_serving": 2},
        "WaitForTicketRequest": {"conversation_id": 1, "ticket_number": 2},
        "WaitForTicketResponse": {"now_serving": 1, "tickets_ahead": 2, "acquired": 3, "lock": 4},
        "RefreshTicketRequest": {"conversation_id": 1, "ticket_number": 2, "lifetime_seconds": 3},
        "CleanupResponse": {"lock_deleted": 1},
        "DeleteLockResponse": {"deleted": 1},
        "IsSomeoneWaitingResponse": {"waiting": 1},
        "LockRequest": {"acquire": 1, "release": 2, "refresh": 3},
        "LockResponse": {"queued": 1, "acquired": 2, "released": 3, "refreshed": 4},
        "Acquire": {"conversation_id": 1, "lifetime_seconds": 2},
        "Refresh": {"lifetime_seconds": 1},
        "Queued": {"ticket": 1, "now_serving": 2, "tickets_ahead": 3},
        "Acquired": {"ticket": 1},
    }
    for message, numbers in fields.items():
        descriptor = pb.DESCRIPTOR.message_types_by_name[message]
        assert {f.name: f.number for f in descriptor.fields} == numbers, message
