"""The billing store's tables (SQLAlchemy 2 Core). Times are Unix seconds (UTC) in integers and
amounts are integer minor units, so SQLite and PostgreSQL store exactly the same values."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    func,
    text,
    true,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

ID = String(64)

# One row per key: the injected clock offset and similar process-wide settings.
meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

# The head-office-wide version sequence: a single row that only ever goes up.
version_head = Table(
    "version_head",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("value", BigInteger, nullable=False),
)

plans = Table(
    "plans",
    metadata,
    Column("id", ID, primary_key=True),
    Column("name", Text, nullable=False),
    Column("price", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("period_months", Integer, nullable=False),
    Column("tax_rate_bp", Integer, nullable=False),
    Column("schedule", Text, nullable=False),
    Column("zones", Text, nullable=False),
    Column("daily_limit", Integer),
    Column("min_term_months", Integer, nullable=False),
    Column("freeze_fee", BigInteger, nullable=False),
    # False for a fixed-term pass: one period, then the member is expired.
    Column("auto_renew", Boolean, nullable=False, server_default=true()),
    # True: a price change applies to members who join after it, the others keep their price.
    Column("grandfather", Boolean, nullable=False, server_default=false()),
    # True where a sign-up may pay by SEPA Direct Debit besides a card.
    Column("sepa", Boolean, nullable=False, server_default=false()),
    # True: the freeze fee is not refunded when a freeze ends early (shown before it is booked).
    Column("freeze_fee_kept", Boolean, nullable=False, server_default=false()),
)

# A plan's price change, announced ahead: from ``effective_at`` the plan costs ``price``, and
# each member pays it from their first renewal on or after that day (unless grandfathered).
price_changes = Table(
    "price_changes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("plan_id", ID, ForeignKey("plans.id"), nullable=False, index=True),
    Column("price", BigInteger, nullable=False),
    Column("effective_at", BigInteger, nullable=False),
    # When it was announced: the price-change notice goes out from this record.
    Column("announced_at", BigInteger, nullable=False),
    # Set once the plan's price is the new one (the members it spares keep theirs).
    Column("applied_at", BigInteger),
)

members = Table(
    "members",
    metadata,
    Column("id", ID, primary_key=True),
    Column("name", Text, nullable=False),
    Column("email", Text),
    Column("sites", Text, nullable=False),
    Column("role", String(16), nullable=False),
    Column("payer_id", ID, ForeignKey("members.id")),
    Column("customer_ref", Text),
    Column("payment_method", Text),
    # The member app's key for rotating QR codes: the seed encrypted (``pass`` plays the app),
    # the public half as published.
    Column("qr_private_key", LargeBinary),
    Column("qr_key", Text),
    Column("erased", Boolean, nullable=False, default=False),
    Column("created_at", BigInteger, nullable=False),
    # Given at the online sign-up and edited by the member; blanked on erasure.
    Column("phone", String(32)),
    Column("emergency_contact", String(200)),
    # When the mail server last refused ``email`` for good (a bounce); cleared when corrected.
    Column("email_bounced_at", BigInteger),
    # When the card on file stops working (the first instant after its expiry month), and the
    # expiry the member was warned about (``reminders.py``).
    Column("card_expires_at", BigInteger),
    Column("card_expiry_noticed", BigInteger),
    Index("ix_members_card_expires_at", "card_expires_at"),
    # A payer's dependants (``household.py``, publishing): only dependants have a payer.
    Index(
        "ix_members_payer",
        "payer_id",
        sqlite_where=text("payer_id IS NOT NULL"),
        postgresql_where=text("payer_id IS NOT NULL"),
    ),
)

subscriptions = Table(
    "subscriptions",
    metadata,
    Column("member_id", ID, ForeignKey("members.id"), primary_key=True),
    Column("plan_id", ID, ForeignKey("plans.id"), nullable=False),
    Column("started_at", BigInteger, nullable=False),
    Column("paid_through", BigInteger),
    Column("status", String(16), nullable=False),
    Column("first_failure_at", BigInteger),
    Column("next_retry_at", BigInteger),
    Column("retries_done", Integer, nullable=False, default=0),
    Column("needs_new_card", Boolean, nullable=False, default=False),
    Column("cancel_at", BigInteger),
    # The next instant the engine says this member's status or billing may change without any
    # outside event: the scheduler reviews only rows whose time has come.
    Column("review_at", BigInteger),
    # A plan change booked for the next renewal (a downgrade): the renewal bills this plan.
    # (No foreign key: adding one would copy the table in SQLite; the code checks the plan.)
    Column("next_plan_id", ID),
    # The member's own price per period, kept by a grandfathering price change; None: the plan's.
    Column("price", BigInteger),
    Index("ix_subscriptions_review_at", "review_at"),
    # The paid-through date whose renewal the member was told about ahead of time
    # (``reminders.py``); the index finds the renewals coming up.
    Column("reminded_through", BigInteger),
    Index("ix_subscriptions_paid_through", "paid_through"),
)

extras = Table(
    "extras",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("member_id", ID, ForeignKey("members.id"), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("description", Text, nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("tax_rate_bp", Integer, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("invoice_id", Integer, ForeignKey("invoices.id")),
)

invoices = Table(
    "invoices",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("member_id", ID, ForeignKey("members.id"), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("period_start", BigInteger),
    Column("period_end", BigInteger),
    Column("subtotal", BigInteger, nullable=False),
    Column("tax", BigInteger, nullable=False),
    Column("total", BigInteger, nullable=False),
    Column("amount_paid", BigInteger, nullable=False, default=0),
    Column("status", String(16), nullable=False),
    Column("due_at", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("paid_at", BigInteger),
    Index("ix_invoices_member_status", "member_id", "status"),
    # The site whose legal entity issues the invoice (the member's first site), its number in
    # that site's series for the year (``numbering.py``) and when it was issued. A sign-up's
    # first invoice is a draft without a number until it is paid: an unpaid sign-up is deleted,
    # and a number once given must never go missing.
    Column("site", ID),
    Column("number", String(64)),
    Column("issued_at", BigInteger),
    Index("ix_invoices_number", "number", unique=True),
    # A household's renewal: the payer's invoice, with a line for each dependant renewing with
    # the payer (``household.py``); the lines say whose they are.
    Column("household", Boolean, nullable=False, server_default=false()),
)

# Closed accounting months (``periods.py``): one row per close, by whom; every month up to the
# latest is closed.
closed_periods = Table(
    "closed_periods",
    metadata,
    Column("period", String(7), primary_key=True),
    Column("closed_at", BigInteger, nullable=False),
    Column("closed_by", String(64), nullable=False),
)

# The last number given in each legal series (per site, year and kind of document): a row
# locked by the transaction that takes numbers, so numbers are committed without gaps (a
# database sequence loses the numbers of rolled-back transactions).
document_counters = Table(
    "document_counters",
    metadata,
    Column("site", ID, primary_key=True),
    Column("year", Integer, primary_key=True),
    Column("series", String(16), primary_key=True),
    Column("last", BigInteger, nullable=False),
)

invoice_lines = Table(
    "invoice_lines",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("invoice_id", Integer, ForeignKey("invoices.id"), nullable=False, index=True),
    Column("kind", String(16), nullable=False),
    Column("description", Text, nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("unit_amount", BigInteger, nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("tax_rate_bp", Integer, nullable=False),
    # On a household invoice, the member a line is for and the period it pays for (null: the
    # invoice's own member and period). Indexed where set: the cycle looks up a dependant's
    # open household lines, and only those lines have one.
    Column("member_id", ID),
    Column("period_start", BigInteger),
    Column("period_end", BigInteger),
    Index(
        "ix_invoice_lines_member",
        "member_id",
        sqlite_where=text("member_id IS NOT NULL"),
        postgresql_where=text("member_id IS NOT NULL"),
    ),
)

# payment_attempts.state: an attempt not yet final is finished by the next cycle's resume().
OPEN_ATTEMPT_STATES = ("new", "created", "processing")
FINAL_ATTEMPT_STATES = ("succeeded", "failed", "requires_action")

payment_attempts = Table(
    "payment_attempts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("invoice_id", Integer, ForeignKey("invoices.id"), nullable=False, index=True),
    Column("member_id", ID, ForeignKey("members.id"), nullable=False),
    Column("idempotency_key", String(128), nullable=False, unique=True),
    Column("gateway_ref", String(128), unique=True),
    Column("amount", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    # new → created (ref committed) → succeeded | failed | processing | requires_action
    Column("state", String(16), nullable=False, index=True),
    Column("decline_code", String(64)),
    Column("decline_class", String(16)),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

payments = Table(
    "payments",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("invoice_id", Integer, ForeignKey("invoices.id"), nullable=False, index=True),
    Column("member_id", ID, ForeignKey("members.id"), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("method", String(16), nullable=False),
    Column("reference", String(128), unique=True),
    Column("at", BigInteger, nullable=False),
)

freezes = Table(
    "freezes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("member_id", ID, ForeignKey("members.id"), nullable=False, index=True),
    Column("starts_at", BigInteger, nullable=False),
    Column("ends_at", BigInteger, nullable=False),
    Column("fee", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    # The invoice that billed the fee: ending the freeze early gives back its unused part.
    Column("invoice_id", Integer, ForeignKey("invoices.id")),
)

disputes = Table(
    "disputes",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("member_id", ID, ForeignKey("members.id")),
    Column("payment_ref", String(128)),
    Column("status", String(16), nullable=False),
    Column("opened_at", BigInteger),
    Column("closed_at", BigInteger),
    # What the bank disputes and the provider's fee for the dispute (its balance transactions),
    # as the provider reports them: the fee is the gym's cost, never billed to the member.
    Column("amount", BigInteger),
    Column("currency", String(3)),
    Column("fee", BigInteger, nullable=False, server_default="0"),
)

# Money booked against an invoice that is not money received (payments.method): a credit note's
# share and a debt written off settle the invoice without anyone paying. ``refund`` rows are money
# given back (negative); a payment plan's transfer moves a debt onto its instalment invoices
# (``payment_plan``); every other method is money received (a chargeback's negative row too).
NOT_MONEY_METHODS = ("credit_note", "write_off", "payment_plan")

# A credit note: the document that lowers what an invoice is worth (a refund's credit, a credit
# on what is still owed, a void, the unused part of a freeze fee). Booked on its invoice as a
# ``credit_note`` payment row of ``amount`` (gross), so every "what is owed" reads it already.
# ``number`` comes from ``credit_notes.credit_note_number`` (one function, to be swapped for the
# legal counter).
credit_notes = Table(
    "credit_notes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("number", String(32), unique=True),
    Column("invoice_id", Integer, ForeignKey("invoices.id"), nullable=False, index=True),
    Column("member_id", ID, ForeignKey("members.id"), nullable=False, index=True),
    # refund | credit | void | freeze
    Column("kind", String(16), nullable=False),
    # The invoice line credited in full, or None for an amount.
    Column("line_id", Integer, ForeignKey("invoice_lines.id")),
    Column("amount", BigInteger, nullable=False),
    Column("tax", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("reason", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

# Money given back for one payment. Crash-safe like a charge: the row and its idempotency key are
# committed first (state ``new``), then the provider is asked, then the result is booked (a
# ``refund`` payment row and its credit note) with the row made final in one transaction. A
# restart looks the refund up by its key at the provider before asking again. A payment taken at
# the desk is given back there: booked at once, with no provider call.
refunds = Table(
    "refunds",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("invoice_id", Integer, ForeignKey("invoices.id"), nullable=False, index=True),
    Column("member_id", ID, ForeignKey("members.id"), nullable=False, index=True),
    Column("payment_id", Integer, ForeignKey("payments.id"), nullable=False, index=True),
    Column("amount", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    # The credit note booked with it: refund (an amount), freeze (unused freeze fee), or a line.
    Column("kind", String(16), nullable=False),
    Column("line_id", Integer, ForeignKey("invoice_lines.id")),
    Column("reason", Text, nullable=False),
    Column("idempotency_key", String(128), nullable=False, unique=True),
    # The provider's refund id (None for one given back at the desk).
    Column("gateway_ref", String(128), unique=True),
    # new -> succeeded | failed
    Column("state", String(16), nullable=False, index=True),
    Column("error", Text),
    Column("credit_note_id", Integer, ForeignKey("credit_notes.id")),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

webhook_events = Table(
    "webhook_events",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("type", String(64), nullable=False),
    Column("received_at", BigInteger, nullable=False),
)

notifications = Table(
    "notifications",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("member_id", ID, ForeignKey("members.id")),
    Column("kind", String(32), nullable=False),
    Column("to_addr", Text, nullable=False),
    Column("subject", Text, nullable=False),
    Column("body", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("sent_at", BigInteger, index=True),
    Column("attempts", Integer, nullable=False, default=0),
    # 0 goes out before 1 (sign-in mails before a cycle's receipts); the index serves the
    # delivery query's order without sorting a large queue.
    Column("priority", Integer, nullable=False, server_default="1"),
    Index("ix_notifications_queue", "sent_at", "priority", "id"),
    # The sending process that holds the notice (a random token) and until when (wall-clock
    # seconds): ``serve`` and a ``run`` from cron send each notice once. A sender that died
    # holding it leaves it to the next one once the lease is over.
    Column("claim", String(32)),
    Column("claimed_until", BigInteger),
    # Refused for good by the mail server (or addressed to an address that was): the server's
    # answer. Correcting the address (``members edit``) queues it again.
    Column("failed_at", BigInteger),
    Column("error", Text),
    # The invoices whose PDFs go with the mail (ids, comma-separated: a receipt's), rendered
    # when it is sent.
    Column("invoice_ids", Text),
)

# What each member looks like to the gates now: the latest unsigned MemberState per member.
member_states = Table(
    "member_states",
    metadata,
    Column("member_id", ID, primary_key=True),
    Column("version", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),
    Column("sites", Text, nullable=False),
    Column("payload", Text, nullable=False),
)

# Per-site manifest figures, kept up to date in O(1) per change.
site_manifests = Table(
    "site_manifests",
    metadata,
    Column("site", ID, primary_key=True),
    Column("count", Integer, nullable=False),
    Column("max_version", BigInteger, nullable=False),
    Column("digest", String(64), nullable=False),
    # The last manifest the broker acknowledged: a retained manifest that differs means the broker
    # lost retained state (e.g. killed before its autosave) and the site is republished.
    Column("published_max_version", BigInteger, nullable=False, default=0),
    Column("published_digest", String(64)),
)

status_outbox = Table(
    "status_outbox",
    metadata,
    Column("version", BigInteger, primary_key=True, autoincrement=False),
    Column("member_id", ID, nullable=False),
    Column("sites", Text, nullable=False),
    Column("payload", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("published_at", BigInteger, index=True),
)

gate_events = Table(
    "gate_events",
    metadata,
    Column("event_id", String(32), primary_key=True),
    Column("site", ID, nullable=False),
    Column("gate", ID, nullable=False),
    Column("at", BigInteger, nullable=False, index=True),
    Column("kind", String(16), nullable=False),
    Column("member_id", ID, index=True),
    Column("reason", String(32)),
    Column("payload", Text, nullable=False),
    Column("received_at", BigInteger, nullable=False),
)

cards = Table(
    "cards",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("member_id", ID, ForeignKey("members.id"), nullable=False, index=True),
    Column("uid_encrypted", LargeBinary, nullable=False),
    # HMAC of the UID under the card-encryption key: finds a card without decrypting every row
    # and does not change when the credential key rotates.
    Column("uid_lookup", String(64), nullable=False),
    # The card key the gates see (HMAC under the current credential key); rebuilt from the
    # decrypted UID when that key rotates.
    Column("credential", String(64), nullable=False),
    Column("assigned_at", BigInteger, nullable=False),
    Column("revoked_at", BigInteger),
    Index("ix_cards_uid_lookup", "uid_lookup"),
)

gates = Table(
    "gates",
    metadata,
    Column("site", ID, primary_key=True),
    Column("gate", ID, primary_key=True),
    Column("token_sha256", String(64), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("revoked_at", BigInteger),
    UniqueConstraint("token_sha256"),
)

# Members find their account by e-mail address when they sign in, whatever its case.
Index("ix_members_email_lower", func.lower(members.c.email))

# Member app sessions. Only the SHA-256 of the cookie's token is stored, so a copy of the store
# signs nobody in; a row is revoked (not deleted) so "sign out everywhere" is visible afterwards.
web_sessions = Table(
    "web_sessions",
    metadata,
    Column("token_sha256", String(64), primary_key=True),
    Column("member_id", ID, ForeignKey("members.id"), nullable=False, index=True),
    Column("created_at", BigInteger, nullable=False),
    # When the member last proved control of their mailbox (a sign-in), for actions that need a
    # recent one.
    Column("signed_in_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("revoked_at", BigInteger),
    Column("user_agent", String(200), nullable=False),
)

# Pending e-mail sign-ins: the link's token and the code are stored as SHA-256 digests (the
# code salted with the browser's flow id, which only that browser holds), used once.
signin_tokens = Table(
    "signin_tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("member_id", ID, ForeignKey("members.id"), nullable=False, index=True),
    Column("flow_sha256", String(64), nullable=False, unique=True),
    Column("link_sha256", String(64), nullable=False, unique=True),
    Column("code_sha256", String(64), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("used_at", BigInteger),
)

# Staff accounts for the console. Passwords are argon2 hashes; the TOTP seed is encrypted with the
# card key (as card UIDs are); recovery codes are SHA-256 digests (random, so no salt is needed),
# each struck out when used. ``totp_last_step`` is the last step a code was accepted for, so a
# code works once.
staff = Table(
    "staff",
    metadata,
    Column("id", ID, primary_key=True),
    Column("name", Text, nullable=False),
    Column("role", String(16), nullable=False),
    Column("sites", Text, nullable=False),
    Column("password_hash", Text, nullable=False),
    # A password someone else set (``staff add``/``reset``): changed at the first sign-in.
    Column("must_change_password", Boolean, nullable=False),
    Column("totp_secret", LargeBinary),
    Column("totp_enrolled_at", BigInteger),
    Column("totp_last_step", BigInteger),
    Column("recovery_codes", Text),
    Column("created_at", BigInteger, nullable=False),
    Column("disabled_at", BigInteger),
)

# Staff sessions, apart from members' (own table, own cookie). ``setup_only`` is a session that
# proved the password but still has to change it or enrol TOTP: it opens the setup page only.
staff_sessions = Table(
    "staff_sessions",
    metadata,
    Column("token_sha256", String(64), primary_key=True),
    Column("staff_id", ID, ForeignKey("staff.id"), nullable=False, index=True),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("revoked_at", BigInteger),
    Column("setup_only", Boolean, nullable=False),
    Column("user_agent", String(200), nullable=False),
    Column("address", String(64), nullable=False),
)

# Who changed money, status, cards or access, and how: one append-only table for the console
# (a staff account and its role) and the CLI (the Unix user). ``changes`` is JSON
# ``{field: [before, after]}`` of a member's account fields (status, plan, dates, amounts, card
# counts: never a name, an address or a card UID); ``detail`` holds ids (an invoice, a card row,
# a gate). Rows are only ever added; erasing a member blanks the values of that member's rows,
# keeping the field names.
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", BigInteger, nullable=False, index=True),
    Column("actor_kind", String(8), nullable=False),
    Column("actor", String(64), nullable=False),
    Column("role", String(16), nullable=False),
    Column("action", String(32), nullable=False),
    Column("member_id", ID, index=True),
    Column("changes", Text, nullable=False),
    Column("detail", Text, nullable=False),
    Column("address", String(64), nullable=False),
)

# Proof-of-possession challenges for registering a member app's pass key: each is issued to one
# member, lives a few minutes and is used up by the first registration that presents it.
pass_key_nonces = Table(
    "pass_key_nonces",
    metadata,
    Column("nonce", String(64), primary_key=True),
    Column("member_id", ID, ForeignKey("members.id"), nullable=False, index=True),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("used_at", BigInteger),
)

# Online sign-ups: a member who joined on the web has no subscription (so nothing is billed by
# the cycle and nothing is published to the gates) until the first invoice is paid; paying it
# starts the membership (``enrolment.start_memberships``). Unpaid ones are deleted after a day.
signups = Table(
    "signups",
    metadata,
    Column("member_id", ID, ForeignKey("members.id"), primary_key=True),
    Column("plan_id", ID, ForeignKey("plans.id"), nullable=False),
    Column("invoice_id", Integer, ForeignKey("invoices.id"), nullable=False),
    Column("created_at", BigInteger, nullable=False, index=True),
    Column("paid_at", BigInteger),
)

# The membership terms a member accepted: the exact text with its version and SHA-256, when,
# from which address and browser. Kept as long as the member (the signed terms are theirs).
contracts = Table(
    "contracts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("member_id", ID, ForeignKey("members.id"), nullable=False, index=True),
    Column("plan_id", ID, nullable=False),
    Column("terms_version", String(64), nullable=False),
    Column("terms_sha256", String(64), nullable=False),
    Column("terms_text", Text, nullable=False),
    Column("accepted_at", BigInteger, nullable=False),
    Column("client_address", String(64), nullable=False),
    Column("user_agent", String(200), nullable=False),
)

# A member's request to change their e-mail address: confirmed by a link mailed to the new
# address (only the token's SHA-256 is stored), single use, expiring.
email_changes = Table(
    "email_changes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("member_id", ID, ForeignKey("members.id"), nullable=False, index=True),
    Column("new_email", Text, nullable=False),
    Column("token_sha256", String(64), nullable=False, unique=True),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("used_at", BigInteger),
)

# Reconciliation (reconcile.py): the payment provider's own books, imported page by page.
# Each movement on the provider's balance (a charge, refund, dispute, fee or payout), with the
# payout that carried it once known.
processor_balance = Table(
    "processor_balance",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("fee", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("created", BigInteger, nullable=False, index=True),
    # The payment intent of a charge, refund or dispute (our payments' reference); the payout's
    # id for a payout.
    Column("source", String(128), index=True),
    Column("payout_id", String(64), index=True),
)

processor_payouts = Table(
    "processor_payouts",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("amount", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("created", BigInteger, nullable=False, index=True),
    Column("arrival", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),
)

# One import of a period; while it runs, its lists' cursors, so a killed import resumes at
# the page it had reached instead of starting over.
processor_fetches = Table(
    "processor_fetches",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("lo", BigInteger),
    Column("hi", BigInteger, nullable=False),
    Column("started_at", BigInteger, nullable=False),
    Column("finished_at", BigInteger),
    Column("requests", Integer, nullable=False, default=0),
)

processor_cursors = Table(
    "processor_cursors",
    metadata,
    Column("stream", String(160), primary_key=True),
    # balance (a slice of the period), payouts (the period's payouts), payout (one's contents)
    Column("what", String(16), nullable=False),
    Column("lo", BigInteger),
    Column("hi", BigInteger),
    Column("payout_id", String(64)),
    Column("after", String(64)),
    Column("done", Boolean, nullable=False, default=False),
)

# A member's photo for the front desk (``photos``): re-encoded as a JPEG without metadata, served
# only to staff sessions, never sent to gates, deleted when the member is erased.
member_photos = Table(
    "member_photos",
    metadata,
    Column("member_id", ID, ForeignKey("members.id"), primary_key=True),
    Column("jpeg", LargeBinary, nullable=False),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("taken_at", BigInteger, nullable=False),
    Column("taken_by", ID, nullable=False),
)

# API tokens an owner issues to integrators (``api_tokens``): read-only on the JSON API, scoped to
# a role and sites; only the token's SHA-256 is kept, the token itself is shown once.
api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(100), nullable=False),
    Column("token_sha256", String(64), nullable=False, unique=True),
    Column("role", String(16), nullable=False),
    Column("sites", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("created_by", ID, nullable=False),
    Column("last_used_at", BigInteger),
    Column("revoked_at", BigInteger),
)

# The front desk's catalogue (``products.py``): drinks, towels, personal-training sessions and
# day, week or guest passes, each with its net price and tax rate. ``stock`` is what is left
# (null: not counted) and a sale takes from it only while enough is left, so two desks selling
# the last towel at once sell one. A pass names the non-renewing plan (``plan_id``, made with
# it) whose one period of ``period_days`` its holder gets; ``site`` is where it lets in (null:
# every site). A retired product stays for the invoices that name it.
products = Table(
    "products",
    metadata,
    Column("id", ID, primary_key=True),
    Column("name", Text, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("price", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("tax_rate_bp", Integer, nullable=False),
    Column("period_days", Integer),
    Column("stock", Integer),
    Column("site", ID),
    Column("plan_id", ID, ForeignKey("plans.id")),
    Column("created_at", BigInteger, nullable=False),
    Column("retired_at", BigInteger),
)

# One row per sale: what was sold, to whom, on which invoice, paid how and by whom at the desk.
sales = Table(
    "sales",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("product_id", ID, ForeignKey("products.id"), nullable=False, index=True),
    Column("member_id", ID, ForeignKey("members.id"), nullable=False, index=True),
    Column("invoice_id", Integer, ForeignKey("invoices.id"), nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("total", BigInteger, nullable=False),
    Column("method", String(16)),
    Column("walk_in", Boolean, nullable=False),
    Column("operator", String(64), nullable=False),
    Column("at", BigInteger, nullable=False),
)

# Report rollups (``reports.py`` reads them; migration 0018 made them and keeps them with
# triggers in the transaction of every row they count). ``day`` is the Unix time of a UTC
# midnight, ``slot`` of a 15-minute UTC slot (any time zone folds into local weekday and hour
# exactly), ``sites`` the member's sites as stored on the member (JSON).
rollup_payments = Table(
    "rollup_payments",
    metadata,
    Column("day", BigInteger, primary_key=True),
    Column("sites", Text, primary_key=True),
    Column("currency", String(3), primary_key=True),
    Column("method", String(16), primary_key=True),
    # Money received (refunds and chargebacks negative), the tax in it, how many payments.
    Column("gross", BigInteger, nullable=False),
    Column("tax", BigInteger, nullable=False),
    Column("payments", BigInteger, nullable=False),
    sqlite_with_rowid=False,
)

# Granted entries (the passage sensor's, where fitted) per site and slot.
rollup_entries = Table(
    "rollup_entries",
    metadata,
    Column("site", ID, primary_key=True),
    Column("slot", BigInteger, primary_key=True),
    Column("entries", BigInteger, nullable=False),
    sqlite_with_rowid=False,
)

# Who entered a site in which UTC months of a year: bit m - 1 of ``months`` for month m, so
# the distinct visitors of any run of whole months is one pass over a row per member and year.
rollup_visits = Table(
    "rollup_visits",
    metadata,
    Column("site", ID, primary_key=True),
    Column("member_id", ID, primary_key=True),
    Column("year", Integer, primary_key=True),
    Column("months", Integer, nullable=False),
    sqlite_with_rowid=False,
)

# Subscriptions started (by ``started_at``) and ended (by ``cancel_at``) per day and plan.
rollup_subscriptions = Table(
    "rollup_subscriptions",
    metadata,
    Column("day", BigInteger, primary_key=True),
    Column("sites", Text, primary_key=True),
    Column("plan_id", ID, primary_key=True),
    Column("started", BigInteger, nullable=False),
    Column("ended", BigInteger, nullable=False),
    sqlite_with_rowid=False,
)

# MRR as changes: a paid renewal adds its monthly net on the day its period starts and takes
# it away on the day it ends, so the MRR at the end of a day is the sum of every change up to it.
rollup_mrr = Table(
    "rollup_mrr",
    metadata,
    Column("day", BigInteger, primary_key=True),
    Column("sites", Text, primary_key=True),
    Column("currency", String(3), primary_key=True),
    Column("amount", BigInteger, nullable=False),
    Column("renewals", BigInteger, nullable=False),
    sqlite_with_rowid=False,
)

# Invoices that failed, by the day and decline class of their first failed attempt: their
# total, what was paid on them since, how many are paid.
rollup_recovery = Table(
    "rollup_recovery",
    metadata,
    Column("day", BigInteger, primary_key=True),
    Column("sites", Text, primary_key=True),
    Column("currency", String(3), primary_key=True),
    Column("decline_class", String(16), primary_key=True),
    Column("failed", BigInteger, nullable=False),
    Column("failed_amount", BigInteger, nullable=False),
    Column("recovered_amount", BigInteger, nullable=False),
    Column("recovered", BigInteger, nullable=False),
    sqlite_with_rowid=False,
)

# Members (not erased) by status now.
rollup_statuses = Table(
    "rollup_statuses",
    metadata,
    Column("status", String(16), primary_key=True),
    Column("sites", Text, primary_key=True),
    Column("members", BigInteger, nullable=False),
    sqlite_with_rowid=False,
)

Index("ix_payments_member_id", payments.c.member_id)
Index("ix_payment_attempts_member_id", payment_attempts.c.member_id)
Index("ix_subscriptions_cancel_at", subscriptions.c.cancel_at)
Index("ix_invoices_period_start", invoices.c.period_start)
Index("ix_invoices_period_end", invoices.c.period_end)

# The console's forms that act once (``submit_keys.py``): a key is claimed by the first POST of
# its form, in the transaction of what the form does where it can be, and keeps where that
# form's result is and what the desk was told, so a resend (a double click, a form sent again
# after a restart, a second serve process) is answered with it instead of acting again.
submit_keys = Table(
    "submit_keys",
    metadata,
    Column("key_sha256", String(64), primary_key=True),
    Column("used_at", BigInteger, nullable=False, index=True),
    Column("result", String(300)),
    Column("told", String(500)),
)

# Products sold at the desk "on the next invoice" (``next_invoice.py``): a line waiting for the
# member's next renewal invoice, which takes it (``invoice_id``) in the transaction that issues
# it; a cancellation bills what waits on an invoice of its own.
pending_lines = Table(
    "pending_lines",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("member_id", ID, ForeignKey("members.id"), nullable=False),
    Column("product_id", ID, ForeignKey("products.id"), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("description", Text, nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("unit_amount", BigInteger, nullable=False),
    Column("tax_rate_bp", Integer, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("operator", String(64), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("invoice_id", Integer, ForeignKey("invoices.id")),
    Index("ix_pending_lines_member_id", "member_id", "invoice_id"),
)
# The lines still waiting, by their sale's time: the cycle looks for those waiting too long.
Index(
    "ix_pending_lines_waiting",
    pending_lines.c.created_at,
    sqlite_where=pending_lines.c.invoice_id.is_(None),
    postgresql_where=pending_lines.c.invoice_id.is_(None),
)

# A card is held by one member at a time, however many desks lend or assign it at once.
Index(
    "ux_cards_held_uid_lookup",
    cards.c.uid_lookup,
    unique=True,
    sqlite_where=cards.c.revoked_at.is_(None),
    postgresql_where=cards.c.revoked_at.is_(None),
)
