"""What a caller receives for a refusal, whatever the input it describes."""

from __future__ import annotations

from google.rpc import error_details_pb2, status_pb2

from services.common.errors import FieldViolation, InvalidArgument
from services.common.server import to_status


def _decoded(error: InvalidArgument) -> tuple[status_pb2.Status, int]:
    status = to_status(error)
    trailer = dict(status.trailing_metadata)["grpc-status-details-bin"]
    return status_pb2.Status.FromString(trailer), len(trailer)


def test_a_refusal_of_many_huge_violations_stays_within_grpcs_metadata_limit() -> None:
    error = InvalidArgument(
        "invalid manifest: " + "é" * 5000,
        [
            FieldViolation(f"search.parameters.p{i}" + "x" * 1000, "must be a number, got " + "9" * 5000)
            for i in range(200)
        ],
    )
    status, size = _decoded(error)
    bad = error_details_pb2.BadRequest()
    assert status.details[1].Unpack(bad)
    # base64 in the trailer (4/3) plus the percent-encoded message must fit in 8 KiB.
    assert size * 4 / 3 + len(status.message.encode()) * 3 < 8 * 1024
    assert len(status.message) <= 300 and status.message.endswith("…")
    assert 1 < len(bad.field_violations) < 200
    assert bad.field_violations[0].field.startswith("search.parameters.p0")
    assert "more problem(s) not shown" in bad.field_violations[-1].description


def test_a_lone_surrogate_is_shown_escaped_not_dropped() -> None:
    status, _ = _decoded(InvalidArgument.field("search.parameters.\ud800", "is not a known parameter"))
    bad = error_details_pb2.BadRequest()
    assert status.details[1].Unpack(bad)
    assert bad.field_violations[0].field == "search.parameters.\\ud800"
