"""Pure entry policy: ``decide()`` (policy.decide), the credential a reader yields
(policy.credential), rotating-QR verification (policy.qr) and the reason codes (policy.reasons; the
words a person reads for them live in the contract, beside the gate events that carry the codes).
No I/O lives here. The package imports nothing itself, so a reader that imports
``gated.policy.credential`` does not load the decision code."""
