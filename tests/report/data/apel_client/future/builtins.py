"""`future.builtins` on Python 3: the built-ins the APEL record modules import from it."""

from builtins import object, str, super, zip  # noqa: UP029  (re-exported, as `future` does)

__all__ = ["object", "str", "super", "zip"]
