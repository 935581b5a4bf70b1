"""The pseudonymisation key and the keyed pseudonyms made with it.

`<PERSON_1a2b3c4d>`: the first 8 hex digits of HMAC-SHA256(key, type + normalised value). A value
maps to the same token in every record of a cycle without a lookup table, and nobody without the
key can test a guess. The key comes from the environment (`pii.key_env`), or, for the demo only, from
a key file in the workspace made on first use.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import unicodedata
from pathlib import Path

from tasks.config import PiiSettings

log = logging.getLogger(__package__)  # the package's logger: log lines keep the name "tasks.pii"

KEY_FILE = "pii.key"  # under the workspace; only written when the caller asks (the demo)
PSEUDONYM_RE = re.compile(r"<([A-Z][A-Z0-9_]*)_([0-9a-f]{8})>")

# Values whose formatting varies (spaces, dashes, case) but not their identity.
_COMPACT_TYPES = {
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "US_SSN",
    "US_DRIVER_LICENSE",
    "ACCOUNT_NUMBER",
    "ORDER_ID",
    "US_BANK_NUMBER",
    "US_PASSPORT",
    "US_ITIN",
}


class PiiKeyError(RuntimeError):
    """No pseudonymisation key where the configuration requires one."""


def load_pii_key(settings: PiiSettings, *, workspace: Path | None = None, create: bool = False) -> bytes:
    """The HMAC key for pseudonyms.

    `$<settings.key_env>` if set; else, with `create` (the demo), a key file in the workspace (mode
    0600) made on first use and reused after; else PiiKeyError when `settings.require_key`; else (a
    config that allows it) an ephemeral key: pseudonyms then only agree within this run.
    """
    value = os.environ.get(settings.key_env, "")
    if value:
        if len(value) < 16:
            raise PiiKeyError(
                f"{settings.key_env} is too short ({len(value)} characters): use at least 16 random "
                f"characters, e.g. export {settings.key_env}=$(python -c 'import secrets; print(secrets.token_hex(32))')"
            )
        return value.encode("utf-8")
    if create:
        if workspace is None:
            raise ValueError("load_pii_key(create=True) needs the workspace to keep the key file in")
        path = Path(workspace) / KEY_FILE
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # another process made it first: use theirs
                pass
            else:
                with os.fdopen(fd, "w", encoding="ascii") as handle:
                    handle.write(secrets.token_hex(32))
                log.info("created a PII pseudonymisation key file in the workspace (mode 0600)")
        if path.stat().st_mode & 0o077:
            raise PiiKeyError(f"{path} is readable by other users: chmod 600 it (it holds the PII key)")
        key = path.read_bytes().strip()
        if len(key) < 16:
            raise PiiKeyError(f"{path} holds no usable key (under 16 characters): delete it to get a new one")
        return key
    if settings.require_key:
        raise PiiKeyError(
            f"no PII pseudonymisation key: set {settings.key_env} to a long random secret, e.g. "
            f"export {settings.key_env}=$(python -c 'import secrets; print(secrets.token_hex(32))'), "
            f"and keep it for the whole cycle (a value maps to the same pseudonym only under the same "
            f"key). Only the demo (pii.require_key: false) makes a key file in the workspace."
        )
    log.warning("no PII key configured (pii.require_key is false): using an ephemeral key for this run")
    return secrets.token_hex(32).encode("ascii")


def pseudonym(key: bytes, entity_type: str, value: str) -> str:
    """`<TYPE_xxxxxxxx>`: HMAC-SHA256(key, type + normalised value), first 8 hex digits."""
    message = f"{entity_type}\x1f{normalise_value(entity_type, value)}".encode("utf-8")
    return f"<{entity_type}_{hmac.new(key, message, hashlib.sha256).hexdigest()[:8]}>"


def normalise_value(entity_type: str, value: str) -> str:
    value = unicodedata.normalize("NFKC", value).casefold()
    if entity_type in _COMPACT_TYPES:
        return re.sub(r"[\W_]+", "", value)
    return " ".join(re.sub(r"^[\W_]+|[\W_]+$", "", value).split())
