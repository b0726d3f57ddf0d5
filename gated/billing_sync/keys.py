"""The billing host's key material: the head-office signing key, the credential HMAC key and the
key that encrypts raw card UIDs at rest."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gated.billing_sync.config import BillingKeysConfig
from gated.contract import (
    Signer,
    load_credential_key,
    load_private_key,
    private_key_pem,
    public_key_pem,
)
from gated.errors import GatedError


class KeyFileError(GatedError):
    """A key file is missing or unusable; the message says which and what to do."""


@dataclass
class Keys:
    """Loaded keys; ``cipher`` encrypts UIDs, ``uid_lookup`` finds a card without decrypting."""

    signer: Signer
    credential_key: bytes
    card_key: bytes
    signer_file: Path | None = None
    signer_mtime: float = 0.0

    def current_signer(self) -> Signer:
        """The head-office signer, reloaded when its key file changed (``keys rotate`` run from
        another process while ``serve`` keeps running)."""
        if self.signer_file is not None:
            try:
                mtime = self.signer_file.stat().st_mtime
            except OSError:
                return self.signer
            if mtime != self.signer_mtime:
                self.signer = Signer.from_pem_file(self.signer_file)
                self.signer_mtime = mtime
        return self.signer

    @property
    def cipher(self) -> Fernet:
        return Fernet(self.card_key)

    def uid_lookup(self, uid: str) -> str:
        """A stable, keyed fingerprint of a normalized UID (not the credential the gates see)."""
        return hmac.new(self.card_key, b"lookup:" + uid.encode(), hashlib.sha256).hexdigest()

    def pay_token(self, invoice_id: int) -> str:
        """The unguessable part of an invoice's pay link: a keyed MAC of its id under the card
        key, so it needs no storage and survives restarts (that key is never replaced in place).
        """
        mac = hmac.new(self.card_key, b"pay-link:%d" % invoice_id, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac[:16]).rstrip(b"=").decode()

    def encrypt_uid(self, uid: str) -> bytes:
        return self.cipher.encrypt(uid.encode())

    def decrypt_uid(self, token: bytes) -> str:
        try:
            return self.cipher.decrypt(token).decode()
        except InvalidToken as exc:
            raise KeyFileError("a card UID does not decrypt with the card encryption key") from exc

    @classmethod
    def load(cls, cfg: BillingKeysConfig) -> Keys:
        """Load all three keys; KeyFileError naming the file when one is missing."""
        for path in (
            cfg.head_office_private_key_file,
            cfg.credential_key_file,
            cfg.card_encryption_key_file,
        ):
            if not path.exists():
                raise KeyFileError(
                    f"{path}: no such key file (create keys with `gated-billing keys init`)"
                )
        return cls(
            Signer.from_pem_file(cfg.head_office_private_key_file),
            load_credential_key(cfg.credential_key_file),
            cfg.card_encryption_key_file.read_bytes().strip(),
            cfg.head_office_private_key_file,
            cfg.head_office_private_key_file.stat().st_mtime,
        )


def _write_secret(path: Path, data: bytes, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    os.fchmod(fd, mode)  # whatever the umask
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    if path.exists():
        os.replace(path, path.with_suffix(path.suffix + ".old"))
    os.replace(tmp, path)


def public_key_file(private_key_file: Path) -> Path:
    """Where the public half of a signing key is written: beside it, ``.pub``."""
    return private_key_file.with_suffix(".pub")


def head_office_public_pem(private_key_file: Path) -> bytes:
    """The head-office public key as the gates trust it (SubjectPublicKeyInfo PEM)."""
    if not private_key_file.exists():
        raise KeyFileError(
            f"{private_key_file}: no such key file (create keys with `gated-billing keys init`)"
        )
    return public_key_pem(load_private_key(private_key_file).public_key())


def new_signing_key(path: Path) -> Signer:
    """Write a fresh Ed25519 signing key and its public half beside it for the gates
    (``public_key_file``; the previous ones are kept as ``.old``)."""
    key = Ed25519PrivateKey.generate()
    _write_secret(path, private_key_pem(key))
    # Not a secret: every gate's head_office_public_key_files gets a copy.
    _write_secret(public_key_file(path), public_key_pem(key.public_key()), mode=0o644)
    return Signer(key)


def new_credential_key(path: Path) -> bytes:
    """Write a fresh credential HMAC key as 64 hex digits (previous kept as ``.old``)."""
    key = secrets.token_bytes(32)
    _write_secret(path, key.hex().encode() + b"\n")
    return key


def new_card_key(path: Path) -> bytes:
    """Write a fresh card-encryption key (only when none exists: rotating it needs re-encryption)."""
    if path.exists():
        raise KeyFileError(f"{path}: already exists; the card key is never replaced in place")
    key = Fernet.generate_key()
    _write_secret(path, key + b"\n")
    return key


def init_keys(cfg: BillingKeysConfig) -> list[Path]:
    """Create whichever of the keys is missing (the desk key only when configured), each
    signing key with its public half beside it as ``.pub``; returns the files written."""
    written: list[Path] = []
    if not cfg.head_office_private_key_file.exists():
        new_signing_key(cfg.head_office_private_key_file)
        written.append(cfg.head_office_private_key_file)
        written.append(public_key_file(cfg.head_office_private_key_file))
    elif not public_key_file(cfg.head_office_private_key_file).exists():
        # A key made before the public half was written beside it.
        _write_secret(
            public_key_file(cfg.head_office_private_key_file),
            head_office_public_pem(cfg.head_office_private_key_file),
            mode=0o644,
        )
        written.append(public_key_file(cfg.head_office_private_key_file))
    if not cfg.credential_key_file.exists():
        new_credential_key(cfg.credential_key_file)
        written.append(cfg.credential_key_file)
    if not cfg.card_encryption_key_file.exists():
        new_card_key(cfg.card_encryption_key_file)
        written.append(cfg.card_encryption_key_file)
    desk = cfg.desk_command_private_key_file
    if desk is not None and not desk.exists():
        # The public half beside it, for the gates' desk_command_public_key_files.
        new_signing_key(desk)
        written += [desk, public_key_file(desk)]
    return written
