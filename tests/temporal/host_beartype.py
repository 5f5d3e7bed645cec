"""The host's ``beartype`` module, captured outside any workflow sandbox (the test imports this first)."""

import beartype

MODULE = beartype
