"""Pure entry policy: ``decide()`` (policy.decide), the credential a reader yields
(policy.credential), rotating-QR verification (policy.qr) and the reason codes (policy.reasons).
No I/O lives here. The package imports nothing itself, so a reader that imports
``gated.policy.credential`` does not load the decision code."""
