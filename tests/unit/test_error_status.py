"""What a caller receives for a refusal, whatever the input it describes."""

from __future__ import annotations

import math
import urllib.parse

import pytest
from google.rpc import error_details_pb2, status_pb2

from services.common.errors import FieldViolation, InvalidArgument
from services.common.server import to_status


def _decoded(error: InvalidArgument) -> tuple[status_pb2.Status, int]:
    status = to_status(error)
    trailer = dict(status.trailing_metadata)["grpc-status-details-bin"]
    return status_pb2.Status.FromString(trailer), len(trailer)


@pytest.mark.parametrize("character", ["e", "é", "中", "😀"])
def test_a_refusal_of_many_huge_violations_stays_within_grpcs_metadata_limit(character: str) -> None:
    error = InvalidArgument(
        "invalid manifest: " + character * 5000,
        [
            FieldViolation(f"search.parameters.p{i}" + character * 1000, "must be a number, got " + character * 5000)
            for i in range(200)
        ],
    )
    status, size = _decoded(error)
    bad = error_details_pb2.BadRequest()
    assert status.details[1].Unpack(bad)
    # On the wire: the details base64 (4/3), the message percent-encoded; gRPC refuses over 8 KiB.
    assert math.ceil(size / 3) * 4 + len(urllib.parse.quote(status.message)) < 7 * 1024
    assert status.message.startswith("invalid manifest: ") and status.message.endswith("…")
    assert 1 < len(bad.field_violations) < 200
    assert bad.field_violations[0].field.startswith("search.parameters.p0")
    assert "more problem(s) not shown" in bad.field_violations[-1].description


def test_a_lone_surrogate_is_shown_escaped_not_dropped() -> None:
    status, _ = _decoded(InvalidArgument.field("search.parameters.\ud800", "is not a known parameter"))
    bad = error_details_pb2.BadRequest()
    assert status.details[1].Unpack(bad)
    assert bad.field_violations[0].field == "search.parameters.\\ud800"
