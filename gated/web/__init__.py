"""The web surface of head office, served by ``gated-billing serve``: the member app under
``/app/`` and its JSON twin under ``/api/v1/``. It reaches the store only through the billing
service (``gated.billing_sync``); billing never imports it."""
