"""Signed calls to the AWS query APIs an S3-compatible store may offer (STS, IAM), via minio's signer."""

from __future__ import annotations

import datetime
import hashlib
import urllib.error
import urllib.request
from urllib.parse import urlencode, urlsplit
from xml.etree import ElementTree

from minio.credentials.credentials import Credentials
from minio.signer import _sign_v4

TIMEOUT_S = 30


class QueryError(Exception):
    """The store refused or failed a query call; `code` is its error code ("AccessDenied", …)."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code


def call(
    url: str, region: str, access_key: str, secret_key: str, service: str, params: dict[str, str]
) -> ElementTree.Element:
    """POSTs one form-encoded query action, signed with SigV4 for `service`; the parsed answer."""
    body = urlencode(params)
    split = urlsplit(url)
    now = datetime.datetime.now(datetime.UTC)
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Host": split.netloc,
        "X-Amz-Date": now.strftime("%Y%m%dT%H%M%SZ"),
    }
    content_sha256 = hashlib.sha256(body.encode()).hexdigest()
    headers["x-amz-content-sha256"] = content_sha256
    signed = _sign_v4(
        service_name=service,
        method="POST",
        url=split,
        region=region,
        headers=headers,  # type: ignore[arg-type]
        credentials=Credentials(access_key, secret_key),
        content_sha256=content_sha256,
        date=now,
    )
    # The endpoint was checked to be http(s) when the connection was registered.
    request = urllib.request.Request(  # noqa: S310
        url, data=body.encode(), headers={k: str(v) for k, v in signed.items()}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310
            # The store's own answer, parsed as minio parses it.
            return ElementTree.fromstring(response.read())  # noqa: S314
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        code, message = "", raw[:300].decode(errors="replace")
        try:
            root = ElementTree.fromstring(raw)  # noqa: S314
            code = find_text(root, "Code")
            message = find_text(root, "Message") or code
        except ElementTree.ParseError:
            pass
        raise QueryError(exc.code, code or "Error", message) from None


def find_text(root: ElementTree.Element, tag: str) -> str:
    """The text of the first element named `tag` anywhere below `root`, whatever its namespace."""
    for element in root.iter():
        if element.tag == tag or element.tag.endswith("}" + tag):
            return element.text or ""
    return ""
