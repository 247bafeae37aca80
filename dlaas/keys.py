"""Object keys and key prefixes as users write them: one spelling each, nothing outside the bucket.

The CLI, the gateway (manifests) and storage (every location of its API) normalize a key or prefix
the same way before they check or use it:

- Unicode NFC, so that a name typed on one system and one read from another (macOS writes NFD)
  are the same key;
- a leading '/' dropped: keys are relative to their bucket;
- empty segments ('a//b') and '.' segments dropped; a trailing '/' kept ("data/" and "data" name
  the same level).

What normalizing cannot make safe is refused: a '..' segment, a backslash, control characters,
more than 1,024 bytes (S3's limit). The names of files uploaded from a directory are kept as the
file system gives them.
"""

from __future__ import annotations

import re
import unicodedata

MAX_KEY_BYTES = 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def normalize(text: str) -> str:
    """The one spelling of a key or prefix (see the module); `problem` says whether it is acceptable."""
    text = unicodedata.normalize("NFC", text)
    joined = "/".join(segment for segment in text.split("/") if segment not in ("", "."))
    return joined + "/" if joined and text.endswith("/") else joined


def problem(text: str, *, is_key: bool = False) -> str | None:
    """Why a normalized key (`is_key`) or prefix is refused, or None."""
    if is_key and not text:
        return "is required: the object's key"
    if len(text.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        return f"must be at most {MAX_KEY_BYTES} bytes long"
    if _CONTROL.search(text):
        return "must not contain NUL or other control characters"
    if "\\" in text:
        return "must not contain a backslash; separate levels with '/'"
    if is_key and text.endswith("/"):
        return "must name an object, not end with '/'"
    if ".." in text.split("/"):
        return "must not contain a '..' path segment: keys stay inside their bucket"
    return None
