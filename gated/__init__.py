"""gated: an access-control gateway for gyms."""

__version__ = "0.1.0"
