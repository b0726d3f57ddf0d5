"""The billing service's own errors: what a caller (the CLI, the HTTP server, the web) turns
into one line for a human. All derive from ``gated.errors.GatedError``; this module imports
nothing else of ours, so every billing module can raise them."""

from __future__ import annotations

from gated.errors import GatedError


class BillingError(GatedError):
    """An operation the rules or the data do not allow; the message is for a human."""


class NotFound(BillingError):
    """No such member, plan, card or gate."""


class InvoiceClosed(BillingError):
    """The invoice is paid or void: there is nothing to pay."""


class PeriodClosed(BillingError):
    """The accounting period is closed (or cannot be closed): its invoices are final."""
