"""gated-billing: the companion billing process (store, engine, payment gateways, webhooks,
publisher, snapshot server, notices and CLI). It reaches the gates only through ``gated.contract``."""
