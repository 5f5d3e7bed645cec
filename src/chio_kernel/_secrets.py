"""THE masking of credentials in text shown to people: every message, health answer, repr and CLI
line that may hold a store URL or a connection string goes through :func:`mask_secrets`.

Masked, in any text: the password of a URL's userinfo, any scheme (``mysql://root:***@h/db``);
the value of a secret-named parameter in a URL query (``?password=***``, ``&sslpassword=***``) or a
libpq key/value string (``host=h password=***``, quoted values too).
"""

from __future__ import annotations

import re

__all__ = ["MASK", "mask_secrets"]

MASK = "***"

#: parameter names whose values are credentials (URL queries, libpq key/values, header-like pairs)
_SECRET_NAMES = r"password|passwd|pwd|pass|sslpassword|secret|client_secret|token|access_token|api_key|apikey|auth_token"

_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s/:@?#]*):(?P<pw>[^\s@]*)@")
_KEY_VALUE = re.compile(
    rf"(?P<head>(?:^|(?<=[\s?&;,(\"']))(?:{_SECRET_NAMES})\s*=\s*)(?P<value>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s&#;,)\"']*)",
    re.IGNORECASE,
)


def mask_secrets(text: str) -> str:
    """``text`` with every credential in it replaced by ``***``.

    Args:
        text: a URL, a libpq connection string, or a message that quotes one.

    Returns:
        The same text, credentials masked (``postgresql://u:***@h/db?password=***``).
    """
    text = _USERINFO.sub(lambda m: f"{m.group('head')}:{MASK}@", text)
    return _KEY_VALUE.sub(lambda m: f"{m.group('head')}{MASK}", text)
