"""Benchmark: reconciling one month of a large gym with its payment provider.

    .venv/bin/python bench/bench_reconcile.py [--charges 100000] [--page-ms 100] [--concurrency 8]

The store is seeded with a month of card payments (one member, invoice, attempt and payment
each); a fake provider holds the same charges with the provider's fees, a payout per day of
what it carried, and planted differences: charges it never made, charges we never booked and
charges for another amount (``--planted`` of each). It answers every page (at most 100 items,
as Stripe) after ``--page-ms`` of waiting, like a remote API; the timed part is
``reconcile.fetch`` (the month's movements in slices, the payouts, each payout's contents) and
then both reports, which must find exactly the planted differences and payouts that add up.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from gated.billing_sync import reconcile
from gated.billing_sync import schema as s
from gated.billing_sync.gateway import BalanceEntry, Page, Payout
from gated.billing_sync.store import open_store

T0 = 1_796_112_000  # 2026-12-01T00:00:00Z
DAY = 86_400
MONTH = 31 * DAY
AMOUNT = 5938


class _Sorted:
    """A list as a provider indexes it: newest first, by time and by id."""

    def __init__(self, items: list[Any]) -> None:
        self.items = sorted(items, key=lambda i: (i.created, i.id), reverse=True)
        self.neg = [-i.created for i in self.items]  # ascending, for bisect
        self.position = {i.id: k for k, i in enumerate(self.items)}

    def page(self, after: str | None, limit: int, lo: int | None, hi: int | None) -> Page[Any]:
        start = 0 if hi is None else bisect.bisect_right(self.neg, -hi)
        stop = len(self.items) if lo is None else bisect.bisect_right(self.neg, -lo)
        if after is not None:
            start = self.position[after] + 1
        chosen = self.items[start:stop]
        return Page(chosen[:limit], len(chosen) > limit)


class FakeProvider:
    """A provider's balance and payouts in memory, answering each page after ``page_s``, newest
    first, as Stripe's list endpoints do."""

    def __init__(self, moves: list[BalanceEntry], carried: dict[str, str], page_s: float,
                 concurrency: int) -> None:  # fmt: skip
        self.concurrency = concurrency
        self._page_s = page_s
        self._lock = threading.Lock()
        self.requests = 0
        self._moves = _Sorted(moves)
        by_payout: dict[str, list[BalanceEntry]] = {}
        for e in moves:
            if e.id in carried:
                by_payout.setdefault(carried[e.id], []).append(e)
        self._by_payout = {p: _Sorted(items) for p, items in by_payout.items()}
        self._payouts = _Sorted(
            [
                Payout(e.source or "", -e.amount, e.currency, e.created, e.created + DAY, "paid")
                for e in moves
                if e.kind == "payout"
            ]
        )

    def _wait(self) -> None:
        with self._lock:
            self.requests += 1
        time.sleep(self._page_s)

    def list_balance(self, *, after: str | None, limit: int, created_from: int | None = None,
                     created_to: int | None = None, payout: str | None = None) -> Page[BalanceEntry]:  # fmt: skip
        self._wait()
        if payout is not None:
            return self._by_payout[payout].page(after, limit, None, None)
        return self._moves.page(after, limit, created_from, created_to)

    def list_payouts(self, *, after: str | None, limit: int, created_from: int | None = None,
                     created_to: int | None = None) -> Page[Payout]:  # fmt: skip
        self._wait()
        return self._payouts.page(after, limit, created_from, created_to)


def seed(
    engine: Any, charges: int, planted: int, page_s: float, concurrency: int
) -> tuple[FakeProvider, dict[str, int]]:
    """Our books and the provider's for one month, with ``planted`` differences of each kind:
    charges ``[0, planted)`` booked for another amount, ``[planted, 2 planted)`` never made at
    the provider, and ``planted`` charges at the provider we never booked."""
    members, invoices, attempts, payments = [], [], [], []
    moves: list[BalanceEntry] = []
    for i in range(charges):
        at = T0 + i * MONTH // charges
        ref, mid = f"pi_{i:010d}", f"m{i:07d}"
        booked = AMOUNT + 100 if i < planted else AMOUNT
        members.append({"id": mid, "name": mid, "sites": '["downtown"]', "role": "member",
                        "erased": False, "created_at": T0})  # fmt: skip
        invoices.append({"id": i + 1, "member_id": mid, "kind": "renewal", "currency": "EUR",
                         "subtotal": 4990, "tax": 948, "total": AMOUNT, "amount_paid": booked,
                         "status": "paid", "due_at": at, "created_at": at, "paid_at": at})  # fmt: skip
        attempts.append({"invoice_id": i + 1, "member_id": mid, "idempotency_key": ref,
                         "gateway_ref": ref, "amount": booked, "currency": "EUR",
                         "state": "succeeded", "created_at": at, "updated_at": at})  # fmt: skip
        payments.append({"invoice_id": i + 1, "member_id": mid, "amount": booked,
                         "method": "card", "reference": ref, "at": at})  # fmt: skip
        if not planted <= i < 2 * planted:
            fee = 25 + (AMOUNT * 14 + 500) // 1000
            moves.append(BalanceEntry(f"txn_{i:010d}", "charge", AMOUNT, fee, "EUR", at, ref))
    for k in range(planted):
        moves.append(BalanceEntry(f"txn_x{k:09d}", "charge", 1000, 39, "EUR", T0 + DAY + k,
                                  f"pi_x{k:09d}"))  # fmt: skip
    # A payout each day of what was made three days before (what has been paid out by the end
    # of the month; the rest is still on the balance).
    carried: dict[str, str] = {}
    days: dict[int, list[BalanceEntry]] = {}
    for e in moves:
        days.setdefault(e.created // DAY * DAY + 3 * DAY, []).append(e)
    for day, group in sorted(days.items()):
        if day >= T0 + MONTH:
            continue
        payout_id = f"po_{day}"
        net = sum(e.amount - e.fee for e in group)
        paid = BalanceEntry(f"txn_po_{day}", "payout", -net, 0, "EUR", day, payout_id)
        for e in [*group, paid]:
            carried[e.id] = payout_id
        moves.append(paid)
    with engine.begin() as conn:
        for table, rows in ((s.members, members), (s.invoices, invoices),
                            (s.payment_attempts, attempts), (s.payments, payments)):  # fmt: skip
            for k in range(0, len(rows), 10_000):
                conn.execute(insert(table), rows[k : k + 10_000])
    expected = {"amount_differs": planted, "not_at_processor": planted, "not_booked": planted}
    return FakeProvider(moves, carried, page_s, concurrency), expected


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--charges", type=int, default=100_000)
    parser.add_argument("--page-ms", type=float, default=100.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--planted", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        engine = open_store(f"sqlite:///{Path(tmp) / 'billing.db'}")
        t = time.perf_counter()
        provider, expected = seed(
            engine, args.charges, args.planted, args.page_ms / 1000, args.concurrency
        )
        seeded = time.perf_counter() - t
        load = os.getloadavg()
        t = time.perf_counter()
        done = reconcile.fetch(engine, provider, T0 + MONTH, T0, T0 + MONTH)
        fetched = time.perf_counter() - t
        t = time.perf_counter()
        _, problems = reconcile.mismatches(engine, T0, T0 + MONTH)
        _, payouts = reconcile.payouts(engine, T0, T0 + MONTH)
        reported = time.perf_counter() - t
        found: dict[str, int] = {}
        for row in problems:
            found[row[0]] = found.get(row[0], 0) + 1
        assert found == expected, (found, expected)
        assert all(row[-1] == 0 for row in payouts), "a payout does not add up"
        print(
            json.dumps(
                {
                    "charges": args.charges,
                    "page_ms": args.page_ms,
                    "concurrency": args.concurrency,
                    "requests": done.requests,
                    "requests_answered": provider.requests,
                    "movements_stored": done.movements,
                    "payouts": len(payouts),
                    "mismatches": found,
                    "seed_s": round(seeded, 1),
                    "fetch_s": round(fetched, 1),
                    "report_s": round(reported, 1),
                    "total_s": round(fetched + reported, 1),
                    "loadavg_before": [round(x, 2) for x in load],
                }
            )
        )


if __name__ == "__main__":
    main()
