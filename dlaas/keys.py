"""Object keys and key prefixes as users write them: one spelling each, nothing outside the bucket.

The gateway (manifests) and the storage service (every location of its API, so every CLI
command too) normalize a key or prefix the same way before they check or use it: a leading '/'
dropped (keys are relative to their bucket), empty segments ('a//b') and '.' segments dropped,
a trailing '/' kept ("data/" and "data" name the same level). `/datasets//mnist/./` is
`datasets/mnist/`.

What normalizing cannot make safe is refused: a '..' segment, a backslash, control characters,
more than 1,024 bytes (S3's limit), and a prefix that normalizes to nothing ('/', '.': the
whole bucket is named by an empty prefix, never by accident). Unicode is kept as written: S3
keys are exact strings, and one written by another tool in decomposed form (as macOS names
files) must stay reachable by its own spelling.
"""

from __future__ import annotations

import re

MAX_KEY_BYTES = 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def normalize(text: str) -> str:
    """The one spelling of a key or prefix (see the module); `problem` says whether it is acceptable.
    Text that names nothing once normalized ('/', './') is left as written, for `problem` to refuse."""
    joined = "/".join(segment for segment in text.split("/") if segment not in ("", "."))
    if not joined:
        return text
    return joined + "/" if text.endswith("/") else joined


def problem(text: str, *, is_key: bool = False) -> str | None:
    """Why a normalized key (`is_key`) or prefix is refused, or None."""
    if is_key and not text:
        return "is required: the object's key"
    if text and all(segment in ("", ".") for segment in text.split("/")):
        return "names no level inside the bucket; leave it empty to mean the whole bucket"
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
