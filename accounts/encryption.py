"""Encryption at rest for third-party secrets (BYOK keys), with a key derived from settings."""

import base64
import functools
import hashlib

from cryptography.fernet import Fernet
from django.conf import settings


@functools.cache
def _fernet() -> Fernet:
    digest = hashlib.sha256(settings.FIELD_ENCRYPTION_KEY.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def encrypt_secret(plaintext: str) -> str:
    return _fernet().encrypt(plaintext.encode()).decode()


def decrypt_secret(ciphertext: str) -> str:
    return _fernet().decrypt(ciphertext.encode()).decode()
