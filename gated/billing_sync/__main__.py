"""``python -m gated.billing_sync``: the ``gated-billing`` command, as ``serve`` starts its cycle
process (the same interpreter, whatever the script's path)."""

from gated.billing_sync.cli import app

app(prog_name="gated-billing")
