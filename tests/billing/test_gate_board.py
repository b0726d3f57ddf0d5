"""The gates' status as head office holds it: a status is kept only for the gate its topic
names, a malformed one is refused and counted, and a retained copy read again at a reconnect
keeps the time the gate was last heard live."""

from __future__ import annotations

from gated.billing_sync.gate_board import GateBoard


def status(gate: str = "t1", state: str = "online", **more: object) -> dict[str, object]:
    return {"state": state, "site": "downtown", "gate": gate, **more}


def test_a_status_is_kept_only_under_its_own_topic() -> None:
    board = GateBoard()
    assert board.take("downtown", "t1", status(lockdown=True), 100, retained=False)
    # Another gate's topic, another site's, or no valid status at all: refused.
    assert not board.take("downtown", "t2", status("t1"), 101, retained=False)
    assert not board.take("uptown", "t1", status(), 101, retained=False)
    assert not board.take("downtown", "t1", {"state": "sleeping"}, 101, retained=False)
    assert not board.take("downtown", "t1", ["not", "an", "object"], 101, retained=False)
    assert board.refused == 4
    heard = board.heard()
    assert list(heard) == [("downtown", "t1")]
    assert heard[("downtown", "t1")].status["lockdown"] is True
    assert heard[("downtown", "t1")].received_at == 100


def test_a_retained_status_says_what_not_when() -> None:
    board = GateBoard()
    board.take("downtown", "t1", status(), 50, retained=True)
    assert board.heard()[("downtown", "t1")].received_at is None
    board.take("downtown", "t1", status(members=7, digest="ab"), 100, retained=False)
    # The last will (written at connect: no members yet), read again after a reconnect:
    # offline, last heard live at 100, with what the gate reported while online.
    board.take("downtown", "t1", status(state="offline", members=0), 200, retained=True)
    heard = board.heard()[("downtown", "t1")]
    assert (heard.status["state"], heard.received_at) == ("offline", 100)
    assert (heard.status["members"], heard.status["digest"]) == (7, "ab")
