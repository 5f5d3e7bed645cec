"""Ed25519 keys and signatures, hex-encoded (keys 64 hex chars, signatures 128).

The kernel's signing key lives in ``<data_dir>/kernel.key`` as the 64-hex-char raw private key.
It is created once, readable by its owner only: written to a temporary file opened with
``O_CREAT | O_EXCL`` and mode 0600, then hard-linked into place, so two processes starting on the
same fresh directory agree on one key and no reader ever sees a half-written file.
"""

from __future__ import annotations

import functools
import os
import secrets
import stat
import time
import warnings
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "KEY_FILE",
    "Signer",
    "default_data_dir",
    "load_or_create_key",
    "public_key_from_hex",
    "verify_hex",
]

KEY_FILE = "kernel.key"


def default_data_dir() -> Path:
    """Return the kernel's default data directory.

    Returns:
        ``$CHIO_HOME`` if set, else ``~/.chio-durable`` (not created here).
    """
    env = os.environ.get("CHIO_HOME")
    return Path(env).expanduser() if env else Path.home() / ".chio-durable"


def ensure_data_dir(data_dir: Path) -> Path:
    """Create ``data_dir`` (mode 0700) if missing; return it resolved.

    An existing directory that other users can read, write or enter is tightened to 0700 when it is
    evidently the kernel's own (ours, and empty or already holding ``kernel.key`` / ``kernel.db``);
    any other such directory (shared on purpose, or something like ``/tmp``) is left as it is with a
    ``UserWarning`` saying how to tighten it. The store holds every receipt, tool arguments included.
    (The key and database files themselves are always made owner-only.)
    """
    data_dir = Path(data_dir).expanduser()
    try:
        data_dir.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        st = data_dir.stat()
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(
                f"the kernel data directory {data_dir} is a file, not a directory: pass --data-dir (or "
                "CHIO_HOME) a directory, new or the kernel's own"
            ) from None
        if st.st_mode & 0o077:
            ours = st.st_uid == os.getuid() and (
                (data_dir / KEY_FILE).exists() or (data_dir / "kernel.db").exists() or not any(data_dir.iterdir())
            )
            try:
                if not ours:
                    raise PermissionError("not evidently the kernel's own directory")
                data_dir.chmod(0o700)
            except OSError:
                warnings.warn(
                    f"kernel data directory {data_dir} is accessible by other users (mode "
                    f"{stat.S_IMODE(st.st_mode):04o}); its store holds every receipt, tool arguments "
                    f"included. Run `chmod 700 {data_dir}` unless it is shared on purpose.",
                    UserWarning,
                    stacklevel=2,
                )
    return data_dir.resolve()


def _read_key(path: Path) -> Ed25519PrivateKey:
    text = path.read_text().strip()
    try:
        raw = bytes.fromhex(text)
        if len(raw) != 32:
            raise ValueError(f"expected 32 bytes, found {len(raw)}")
    except ValueError as err:
        raise ValueError(
            f"kernel key file {path} is corrupt ({err}); it must hold one 64-hex-char Ed25519 "
            "private key. Restore it from a backup, or move it away to start a new kernel identity "
            "(tokens issued by the old key will no longer validate)."
        ) from err
    return Ed25519PrivateKey.from_private_bytes(raw)


def load_or_create_key(data_dir: Path) -> Ed25519PrivateKey:
    """Load the kernel's signing key from ``<data_dir>/kernel.key``, creating it (0600) on first use.

    Processes racing on a new directory agree on one key (the first written wins).

    Args:
        data_dir: the kernel's data directory (created with mode 0700 if missing).

    Returns:
        The Ed25519 private key.
    """
    data_dir = ensure_data_dir(data_dir)
    path = data_dir / KEY_FILE
    if path.exists():
        try:
            if path.stat().st_mode & 0o077:  # readable by others: tighten to owner-only
                path.chmod(0o600)
        except OSError:  # pragma: no cover - not our file; reading it still works or fails clearly
            pass
        return _read_key(path)
    key = Ed25519PrivateKey.generate()
    raw_hex = key.private_bytes_raw().hex()
    tmp = data_dir / f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(raw_hex + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # atomic; fails if another process won the race
        except FileExistsError:
            pass
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:  # pragma: no cover
            pass
    # Read back what is in place (ours, or the race winner's).
    for _ in range(50):
        try:
            return _read_key(path)
        except FileNotFoundError:  # pragma: no cover - link visible momentarily later on odd filesystems
            time.sleep(0.01)
    return _read_key(path)


@functools.lru_cache(maxsize=1024)
def public_key_from_hex(public_hex: str) -> Ed25519PublicKey:
    """An Ed25519 public key from 64 hex chars (``ValueError`` if malformed)."""
    raw = bytes.fromhex(public_hex)
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes (64 hex chars), got {len(raw)} bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def verify_hex(public_hex: str, signature_hex: str, message: bytes) -> bool:
    """Check an Ed25519 signature given in hex; never raises.

    Args:
        public_hex: the signer's public key, 64 hex chars.
        signature_hex: the signature, 128 hex chars.
        message: the signed bytes.

    Returns:
        True if ``signature_hex`` is ``public_hex``'s signature of ``message``; False for any
        malformed input.
    """
    if not isinstance(public_hex, str) or not isinstance(signature_hex, str):
        return False
    if len(public_hex) != 64 or len(signature_hex) != 128:
        return False
    try:
        key = public_key_from_hex(public_hex.lower())
        key.verify(bytes.fromhex(signature_hex), message)
    except (InvalidSignature, ValueError):
        return False
    return True


class Signer:
    """The kernel's signing identity.

    Args:
        key: the kernel's Ed25519 private key (:func:`load_or_create_key`).

    Attributes:
        public_key_hex: the public key, 64 hex chars (the kernel's id, ``kernel_key``).
    """

    __slots__ = ("_key", "public_key_hex")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public_key_hex: str = key.public_key().public_bytes_raw().hex()

    def sign_hex(self, message: bytes) -> str:
        """Sign bytes with the kernel's key.

        Args:
            message: the bytes to sign (canonical JSON for receipts and tokens).

        Returns:
            The Ed25519 signature, 128 hex chars.
        """
        return self._key.sign(message).hex()

    def verify_hex(self, signature_hex: str, message: bytes) -> bool:
        """Check a signature against this kernel's key.

        Args:
            signature_hex: the signature, 128 hex chars.
            message: the signed bytes.

        Returns:
            True if it is this key's signature of ``message``.
        """
        return verify_hex(self.public_key_hex, signature_hex, message)
