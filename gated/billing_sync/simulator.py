"""The deterministic ``SimulatedGateway``, a first-class sibling of ``StripeGateway`` for demos,
tests and benchmarks: its intent stores (in memory or in an SQLite file), and the fees, payouts,
refunds and disputes it books the way Stripe does.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from gated.billing_sync.gateway import (
    BalanceEntry,
    CardSetup,
    ChargeResult,
    GatewayRejected,
    IntentState,
    Page,
    Payout,
    RefundResult,
    month_after,
)

SEPA_SETTLE_S = 3 * 86_400
# The simulator's pricing and payout schedule, shaped like Stripe's: a card charge costs a fixed
# 0.25 plus 1.4 %, a dispute 15.00, and money is paid out the midnight after it became available,
# two days after the charge.
SIM_FEE_FIXED = 25
SIM_FEE_PER_MILLE = 14
SIM_DISPUTE_FEE = 1500
SIM_AVAILABLE_AFTER_S = 2 * 86_400
_EXPIRY = re.compile(r"_exp([0-9]{4})(0[1-9]|1[0-2])$")


class SimulatedGateway:
    """A deterministic payment provider for demos, tests and benchmarks.

    Payment methods script their own outcome by name:

    * ``pm_sim_ok`` (and anything else not below): every charge succeeds;
    * ``pm_sim_decline_<code>``: every charge is declined with ``<code>`` (e.g.
      ``pm_sim_decline_insufficient_funds``, ``pm_sim_decline_lost_card``,
      ``pm_sim_decline_authentication_required``);
    * ``pm_sim_advice_<code>``: declined with ``<code>`` and ``do_not_try_again`` advice;
    * ``pm_sim_sepa`` / ``pm_sim_sepa_fail``: ``processing`` until three (clock) days after
      confirmation, then succeeded / failed with ``insufficient_funds``.
    * a name ending ``_expYYYYMM`` (``pm_sim_ok_exp202701``) is a card that expires at the end of
      that month; other cards never expire.

    On-session (``confirm_intent(..., return_url=...)``) the member is there to authenticate, so
    an ``authentication_required`` card succeeds at once; every other outcome is as off-session.

    ``script`` overrides by payment method with a queue of outcomes (``"ok"`` or a decline code),
    one per confirmation. With a ``path`` the intents live in an SQLite file, so a restarted
    process (or another sharing the file) finds them by id; without one, in this process's memory.
    Idempotency keys are honoured as Stripe honours them.
    """

    name = "simulated"
    # In-process and answered at once: threads would only take turns holding the GIL.
    concurrency = 1

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        clock: Callable[[], int],
        script: Mapping[str, list[str]] | None = None,
    ) -> None:
        self._clock = clock
        self._script = {pm: list(outcomes) for pm, outcomes in (script or {}).items()}
        self._lock = threading.Lock()
        self._intents: _Intents = _FileIntents(path) if path else _MemoryIntents()
        # Dispute evidence submitted, by dispute id (this process's only).
        self.evidence: dict[str, dict[str, str]] = {}

    def create_customer(self, member_id: str, email: str | None, name: str) -> str:
        """Customers are implicit: the id is derived from the member id."""
        return f"cus_sim_{member_id}"

    def attach_payment_method(self, customer_ref: str, payment_method: str) -> str:
        """Every simulated payment method attaches; its name scripts its outcome."""
        if not payment_method.startswith("pm_"):
            raise GatewayRejected(f"not a payment method id: {payment_method!r}")
        return payment_method

    def card_expiry(self, payment_method: str) -> int | None:
        """From the name: ``..._expYYYYMM`` expires after that month."""
        m = _EXPIRY.search(payment_method)
        return None if m is None else month_after(int(m[1]), int(m[2]))

    def delete_customer(self, customer_ref: str) -> None:
        """Customers are implicit: nothing to delete."""

    def create_intent(
        self,
        *,
        customer_ref: str | None,
        payment_method: str,
        amount: int,
        currency: str,
        idempotency_key: str,
        metadata: Mapping[str, str],
    ) -> str:
        """Create (or, for a repeated idempotency key, find) an unconfirmed intent."""
        if amount <= 0:
            raise GatewayRejected("amount must be positive")
        with self._lock:
            n = self._intents.add(idempotency_key, payment_method, amount, currency)
            return f"pi_sim_{n:010d}"

    def confirm_intent(
        self, intent_id: str, idempotency_key: str, *, return_url: str | None = None
    ) -> ChargeResult:
        """Charge once: confirming an intent that was already confirmed returns its result."""
        with self._lock:
            n = _number(intent_id)
            pm = self._intents.unconfirmed_method(n)
            if pm is None:
                return self._settle(intent_id)
            state, decline, advice = self._outcome(pm)
            if return_url is not None and decline == "authentication_required":
                state, decline, advice = "succeeded", None, None
            if not self._intents.confirm(n, state, decline, advice, self._clock()):
                return self._settle(intent_id)  # another process sharing the file was first
            return ChargeResult(intent_id, state, decline, advice, method=_method(pm))

    def retrieve_intent(self, intent_id: str) -> ChargeResult:
        """The intent's state; a SEPA debit settles three clock days after confirmation."""
        with self._lock:
            return self._settle(intent_id)

    def create_setup(self, customer_ref: str, kind: str = "card") -> CardSetup:
        """The simulator takes test payment-method names, never a card from Stripe.js."""
        raise GatewayRejected("the simulated gateway saves test payment methods by name")

    def setup_payment_method(self, setup_id: str, customer_ref: str) -> str | None:
        """No SetupIntent of the simulator ever succeeds (see ``create_setup``)."""
        return None

    def refund(self, intent_id: str, amount: int, idempotency_key: str) -> RefundResult:
        """Give back part or all of a succeeded intent (once per idempotency key, as Stripe)."""
        with self._lock:
            n = _number(intent_id)
            row = self._intents.get(n)
            if row is None or row[0] != "succeeded":
                raise GatewayRejected(f"cannot refund {intent_id}: it took no money")
            for r in self._intents.refunds(n):
                if r.key == idempotency_key:
                    return r
            left = self._intents.amount(n) - sum(r.amount for r in self._intents.refunds(n))
            if not 0 < amount <= left:
                raise GatewayRejected(
                    f"cannot refund {amount} of {intent_id}: {left} is left to refund"
                )
            return self._intents.add_refund(n, idempotency_key, amount, self._clock())

    def refunds_of(self, intent_id: str) -> list[RefundResult]:
        """Every refund of the intent."""
        with self._lock:
            return self._intents.refunds(_number(intent_id))

    def submit_dispute_evidence(self, dispute_id: str, fields: Mapping[str, str]) -> None:
        """Keep the evidence submitted for a dispute (``evidence``), as a provider would."""
        with self._lock:
            self.evidence[dispute_id] = dict(fields)

    def charged_total(self) -> int:
        """Sum of every succeeded intent: what the members' banks have paid."""
        with self._lock:
            return self._intents.charged_total()

    def open_dispute(self, intent_id: str) -> None:
        """A member's bank disputes a payment: the provider takes the amount back from the
        balance at once, with its dispute fee (``SIM_DISPUTE_FEE``)."""
        with self._lock:
            self._intents.add_dispute(_number(intent_id), self._clock())

    def list_balance(
        self,
        *,
        after: str | None,
        limit: int,
        created_from: int | None = None,
        created_to: int | None = None,
        payout: str | None = None,
    ) -> Page[BalanceEntry]:
        """The simulator's balance: a charge per succeeded intent (a SEPA debit once settled),
        a refund per ``refund``, a dispute per ``open_dispute``, and a payout per day and currency (``list_payouts``)."""
        with self._lock:
            entries, payouts = self._ledger()
        if payout is not None:
            entries = [e for e in entries if payouts.get(e.id) == payout]
        return _page(entries, after, limit, created_from, created_to)

    def list_payouts(
        self,
        *,
        after: str | None,
        limit: int,
        created_from: int | None = None,
        created_to: int | None = None,
    ) -> Page[Payout]:
        """One payout at each UTC midnight per currency, of the net of every movement that
        became available (two days after it was made) during the day before."""
        with self._lock:
            entries, _ = self._ledger()
        made = [
            Payout(e.source or "", -e.amount, e.currency, e.created, e.created, "paid")
            for e in entries
            if e.kind == "payout"
        ]
        return _page(made, after, limit, created_from, created_to)

    def _ledger(self) -> tuple[list[BalanceEntry], dict[str, str]]:
        """Every balance movement up to now (newest first) and the payout carrying each one
        paid out so far (by movement id)."""
        now = self._clock()
        moves: list[BalanceEntry] = []
        amounts: dict[int, tuple[int, str]] = {}
        for n, amount, currency, pm, state, confirmed in self._intents.charges():
            amounts[n] = (amount, currency.upper())
            at = confirmed
            if pm.startswith("pm_sim_sepa"):
                if pm.endswith("_fail"):
                    continue
                at = confirmed + SEPA_SETTLE_S
            elif state != "succeeded":
                continue
            if at <= now:
                moves.append(
                    BalanceEntry(
                        f"txn_sim_ch_{n:010d}",
                        "charge",
                        amount,
                        SIM_FEE_FIXED + (amount * SIM_FEE_PER_MILLE + 500) // 1000,
                        currency.upper(),
                        at,
                        f"pi_sim_{n:010d}",
                    )
                )
        for r, n, amount, at in self._intents.refund_moves():
            if at <= now:
                moves.append(
                    BalanceEntry(
                        f"txn_sim_re_{r:010d}",
                        "refund",
                        -amount,
                        0,
                        amounts[n][1],
                        at,
                        f"pi_sim_{n:010d}",
                    )
                )
        for n, at in self._intents.disputes():
            amount, currency = amounts[n]
            if at <= now:
                moves.append(
                    BalanceEntry(
                        f"txn_sim_du_{n:010d}",
                        "dispute",
                        -amount,
                        SIM_DISPUTE_FEE,
                        currency,
                        at,
                        f"pi_sim_{n:010d}",
                    )
                )
        carried: dict[str, str] = {}
        days: dict[tuple[int, str], list[BalanceEntry]] = {}
        for e in moves:
            day = (e.created + SIM_AVAILABLE_AFTER_S) // 86_400 * 86_400 + 86_400
            if day <= now:
                days.setdefault((day, e.currency), []).append(e)
        for (day, currency), carried_moves in days.items():
            stamp = datetime.fromtimestamp(day, UTC).strftime("%Y%m%d")
            payout_id = f"po_sim_{stamp}_{currency.lower()}"
            net = sum(e.amount - e.fee for e in carried_moves)
            paid = BalanceEntry(f"txn_sim_po_{stamp}_{currency.lower()}", "payout", -net, 0,
                                currency, day, payout_id)  # fmt: skip
            for e in [*carried_moves, paid]:
                carried[e.id] = payout_id
            moves.append(paid)
        moves.sort(key=lambda e: (e.created, e.id), reverse=True)
        return moves, carried

    def refunded_total(self) -> int:
        """Sum of every refund: what went back to the members' banks."""
        with self._lock:
            return self._intents.refunded_total()

    def _settle(self, intent_id: str) -> ChargeResult:
        n = _number(intent_id)
        row = self._intents.get(n)
        if row is None:
            raise GatewayRejected(f"no such payment intent: {intent_id}")
        state, decline, advice, pm, confirmed_at = row
        settled = confirmed_at is not None and self._clock() >= confirmed_at + SEPA_SETTLE_S
        if state == "processing" and settled:
            failed = pm.endswith("_fail")
            state = "failed" if failed else "succeeded"
            decline = "insufficient_funds" if failed else None
            self._intents.settle(n, state, decline)
        return ChargeResult(intent_id, state, decline, advice, method=_method(pm))

    def _outcome(self, pm: str) -> tuple[IntentState, str | None, str | None]:
        queue = self._script.get(pm)
        if queue:
            outcome = queue.pop(0) if len(queue) > 1 else queue[0]
            return ("succeeded", None, None) if outcome == "ok" else ("failed", outcome, None)
        if pm.startswith("pm_sim_sepa"):
            return "processing", None, None
        if pm.startswith("pm_sim_decline_"):
            return "failed", pm.removeprefix("pm_sim_decline_"), None
        if pm.startswith("pm_sim_advice_"):
            return "failed", pm.removeprefix("pm_sim_advice_"), "do_not_try_again"
        return "succeeded", None, None


# An intent as the simulator keeps it: state, decline code, advice code, payment method and when
# it was confirmed (clock seconds).
_Intent = tuple[IntentState, str | None, str | None, str, int | None]


class _Intents(Protocol):
    """Where the simulator keeps its intents, numbered from 1. Calls are made under its lock."""

    def add(self, key: str, payment_method: str, amount: int, currency: str) -> int:
        """A new unconfirmed intent, or the number of the one created under ``key``."""
        ...

    def get(self, n: int) -> _Intent | None: ...

    def unconfirmed_method(self, n: int) -> str | None:
        """The payment method of an intent still awaiting confirmation, else None."""
        ...

    def confirm(
        self, n: int, state: IntentState, decline: str | None, advice: str | None, at: int
    ) -> bool:
        """Record the outcome if the intent still awaits confirmation; False if it did not."""
        ...

    def settle(self, n: int, state: IntentState, decline: str | None) -> None: ...

    def charged_total(self) -> int: ...

    def charges(self) -> list[tuple[int, int, str, str, str, int]]:
        """Every confirmed intent: number, amount, currency, payment method, state and when it
        was confirmed."""
        ...

    def add_dispute(self, n: int, at: int) -> None: ...

    def disputes(self) -> list[tuple[int, int]]:
        """Each disputed intent's number and when the dispute was opened."""
        ...

    def amount(self, n: int) -> int:
        """What intent ``n`` was for."""
        ...

    def refunds(self, n: int) -> list[RefundResult]:
        """Intent ``n``'s refunds, oldest first."""
        ...

    def add_refund(self, n: int, key: str | None, amount: int, at: int) -> RefundResult:
        """A refund of intent ``n`` at ``at`` (key None: one made on the provider's side)."""
        ...

    def refunded_total(self) -> int: ...

    def refund_moves(self) -> list[tuple[int, int, int, int]]:
        """Every refund: its number, the intent's, the amount and when it was made."""
        ...


class _MemoryIntents:
    """Intents of one process, for tests and benchmarks: what a file would hold, in a list."""

    def __init__(self) -> None:
        # [state, decline, advice, pm, confirmed_at, amount, currency]
        self._rows: list[list[Any]] = []
        self._keys: dict[str, int] = {}
        self._disputes: dict[int, int] = {}
        self._refunds: list[RefundResult] = []
        self._refunded_at: list[int] = []

    def add(self, key: str, payment_method: str, amount: int, currency: str) -> int:
        n = self._keys.get(key)
        if n is None:
            self._rows.append(
                ["requires_confirmation", None, None, payment_method, None, amount, currency]
            )
            n = self._keys[key] = len(self._rows)
        return n

    def charges(self) -> list[tuple[int, int, str, str, str, int]]:
        return [
            (n, r[5], r[6], r[3], r[0], r[4])
            for n, r in enumerate(self._rows, 1)
            if r[4] is not None
        ]

    def add_dispute(self, n: int, at: int) -> None:
        self._disputes.setdefault(n, at)

    def disputes(self) -> list[tuple[int, int]]:
        return list(self._disputes.items())

    def get(self, n: int) -> _Intent | None:
        if not 0 < n <= len(self._rows):
            return None
        state, decline, advice, pm, confirmed_at = self._rows[n - 1][:5]
        return state, decline, advice, pm, confirmed_at

    def unconfirmed_method(self, n: int) -> str | None:
        row = self.get(n)
        return row[3] if row is not None and row[0] == "requires_confirmation" else None

    def confirm(
        self, n: int, state: IntentState, decline: str | None, advice: str | None, at: int
    ) -> bool:
        row = self._rows[n - 1]
        if row[0] != "requires_confirmation":
            return False
        row[0:3], row[4] = (state, decline, advice), at
        return True

    def settle(self, n: int, state: IntentState, decline: str | None) -> None:
        self._rows[n - 1][0:2] = (state, decline)

    def charged_total(self) -> int:
        return sum(r[5] for r in self._rows if r[0] == "succeeded")

    def amount(self, n: int) -> int:
        return int(self._rows[n - 1][5])

    def refunds(self, n: int) -> list[RefundResult]:
        return [r for r in self._refunds if r.intent_id == f"pi_sim_{n:010d}"]

    def add_refund(self, n: int, key: str | None, amount: int, at: int) -> RefundResult:
        r = RefundResult(
            f"re_sim_{len(self._refunds) + 1:010d}", f"pi_sim_{n:010d}", amount, "succeeded", key
        )
        self._refunds.append(r)
        self._refunded_at.append(at)
        return r

    def refunded_total(self) -> int:
        return sum(r.amount for r in self._refunds)

    def refund_moves(self) -> list[tuple[int, int, int, int]]:
        return [
            (k, _number(r.intent_id), r.amount, at)
            for k, (r, at) in enumerate(zip(self._refunds, self._refunded_at, strict=True), 1)
        ]


class _FileIntents:
    """Intents in an SQLite file, so a restarted process (or another one sharing the file) finds
    them by id; idempotency keys are honoured as Stripe honours them."""

    def __init__(self, path: str | Path) -> None:
        # The payment method of each intent this object created and has not confirmed yet, so
        # that confirming one is a single UPDATE (a SELECT first cost ~8 us per charge).
        self._unconfirmed: dict[int, str] = {}
        # Autocommit: every statement is committed on its own, like a provider's answer, and
        # survives the process being killed (what the crash tests do). No fsync per statement:
        # a simulator needs no power-loss durability, and with one a create + confirm took
        # 0.46 ms of wall time (0.13 ms without).
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS intents (n INTEGER PRIMARY KEY, idempotency_key TEXT"
            " UNIQUE, payment_method TEXT, amount INTEGER, currency TEXT, state TEXT,"
            " decline_code TEXT, advice_code TEXT, confirmed_at INTEGER)"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS disputes (n INTEGER PRIMARY KEY, at INTEGER)")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS refunds (r INTEGER PRIMARY KEY, n INTEGER,"
            " idempotency_key TEXT UNIQUE, amount INTEGER, at INTEGER)"
        )

    def charges(self) -> list[tuple[int, int, str, str, str, int]]:
        return self._db.execute(
            "SELECT n, amount, currency, payment_method, state, confirmed_at FROM intents"
            " WHERE confirmed_at IS NOT NULL"
        ).fetchall()

    def add_dispute(self, n: int, at: int) -> None:
        self._db.execute("INSERT OR IGNORE INTO disputes (n, at) VALUES (?, ?)", (n, at))

    def disputes(self) -> list[tuple[int, int]]:
        return self._db.execute("SELECT n, at FROM disputes").fetchall()

    def add(self, key: str, payment_method: str, amount: int, currency: str) -> int:
        cur = self._db.execute(
            "INSERT OR IGNORE INTO intents (idempotency_key, payment_method, amount, currency,"
            " state) VALUES (?, ?, ?, ?, 'requires_confirmation')",
            (key, payment_method, amount, currency),
        )
        if cur.rowcount == 1 and cur.lastrowid is not None:
            self._unconfirmed[cur.lastrowid] = payment_method
            return cur.lastrowid
        (n,) = self._db.execute(
            "SELECT n FROM intents WHERE idempotency_key = ?", (key,)
        ).fetchone()
        return int(n)

    def get(self, n: int) -> _Intent | None:
        return self._db.execute(  # type: ignore[no-any-return]
            "SELECT state, decline_code, advice_code, payment_method, confirmed_at FROM intents"
            " WHERE n = ?",
            (n,),
        ).fetchone()

    def unconfirmed_method(self, n: int) -> str | None:
        pm = self._unconfirmed.pop(n, None)
        if pm is not None:
            return pm
        row = self.get(n)
        return row[3] if row is not None and row[0] == "requires_confirmation" else None

    def confirm(
        self, n: int, state: IntentState, decline: str | None, advice: str | None, at: int
    ) -> bool:
        cur = self._db.execute(
            "UPDATE intents SET state = ?, decline_code = ?, advice_code = ?, confirmed_at = ?"
            " WHERE n = ? AND state = 'requires_confirmation'",
            (state, decline, advice, at, n),
        )
        return cur.rowcount == 1

    def settle(self, n: int, state: IntentState, decline: str | None) -> None:
        self._db.execute(
            "UPDATE intents SET state = ?, decline_code = ? WHERE n = ?", (state, decline, n)
        )

    def charged_total(self) -> int:
        (total,) = self._db.execute(
            "SELECT coalesce(sum(amount), 0) FROM intents WHERE state = 'succeeded'"
        ).fetchone()
        return int(total)

    def amount(self, n: int) -> int:
        (amount,) = self._db.execute("SELECT amount FROM intents WHERE n = ?", (n,)).fetchone()
        return int(amount)

    def refunds(self, n: int) -> list[RefundResult]:
        return [
            RefundResult(f"re_sim_{r:010d}", f"pi_sim_{n:010d}", int(amount), "succeeded", key)
            for r, key, amount in self._db.execute(
                "SELECT r, idempotency_key, amount FROM refunds WHERE n = ? ORDER BY r", (n,)
            )
        ]

    def add_refund(self, n: int, key: str | None, amount: int, at: int) -> RefundResult:
        cur = self._db.execute(
            "INSERT INTO refunds (n, idempotency_key, amount, at) VALUES (?, ?, ?, ?)",
            (n, key, amount, at),
        )
        r = int(cur.lastrowid or 0)
        return RefundResult(f"re_sim_{r:010d}", f"pi_sim_{n:010d}", amount, "succeeded", key)

    def refunded_total(self) -> int:
        (total,) = self._db.execute("SELECT coalesce(sum(amount), 0) FROM refunds").fetchone()
        return int(total)

    def refund_moves(self) -> list[tuple[int, int, int, int]]:
        return self._db.execute("SELECT r, n, amount, coalesce(at, 0) FROM refunds").fetchall()


def _page(
    items: list[Any], after: str | None, limit: int, lo: int | None, hi: int | None
) -> Page[Any]:
    """A page of ``items`` (newest first, each with ``id`` and ``created``) the way a provider
    pages a list: within ``[lo, hi)``, starting after the item with id ``after``."""
    chosen = [
        i for i in items if (lo is None or i.created >= lo) and (hi is None or i.created < hi)
    ]
    start = 0
    if after is not None:
        start = next((k + 1 for k, i in enumerate(chosen) if i.id == after), len(chosen))
    return Page(chosen[start : start + limit], len(chosen) > start + limit)


def _method(payment_method: str) -> str:
    """The payment method type a simulated method stands for."""
    return "sepa_debit" if payment_method.startswith("pm_sim_sepa") else "card"


def _number(intent_id: str) -> int:
    try:
        return int(intent_id.removeprefix("pi_sim_"))
    except ValueError as exc:
        raise GatewayRejected(f"no such payment intent: {intent_id}") from exc
