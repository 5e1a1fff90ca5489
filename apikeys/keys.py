"""The developer key format: `wmk_` + 43 base62 characters of randomness + a 6-character checksum.

The checksum (CRC32 of the random part) lets secret scanners and our own authentication reject
look-alike strings without a lookup; the keyed hash is what identifies a key.
"""

import hashlib
import hmac
import secrets
import zlib

from django.conf import settings

KEY_PREFIX = "wmk_"
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_RANDOM_BYTES = 32
_RANDOM_CHARS = 43  # ceil(256 / log2(62))
_CHECKSUM_CHARS = 6
KEY_LENGTH = len(KEY_PREFIX) + _RANDOM_CHARS + _CHECKSUM_CHARS
VISIBLE_PREFIX_LENGTH = len(KEY_PREFIX) + 6


def _base62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), _CHECKSUM_CHARS)


def generate_key() -> str:
    body = _base62(int.from_bytes(secrets.token_bytes(_RANDOM_BYTES), "big"), _RANDOM_CHARS)
    return f"{KEY_PREFIX}{body}{_checksum(body)}"


def is_well_formed(key: str) -> bool:
    """True when `key` has our shape and a valid checksum; says nothing about whether it exists."""
    if len(key) != KEY_LENGTH or not key.startswith(KEY_PREFIX):
        return False
    body, checksum = key[len(KEY_PREFIX) : -_CHECKSUM_CHARS], key[-_CHECKSUM_CHARS:]
    if any(char not in _ALPHABET for char in body):
        return False
    return hmac.compare_digest(_checksum(body), checksum)


def hash_key(key: str) -> str:
    """HMAC-SHA256 with a server-side secret: a leaked table cannot be brute-forced offline."""
    return hmac.new(settings.API_KEY_HMAC_SECRET.encode(), key.encode(), hashlib.sha256).hexdigest()


def visible_prefix(key: str) -> str:
    return key[:VISIBLE_PREFIX_LENGTH]
