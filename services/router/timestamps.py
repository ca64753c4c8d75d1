"""Unix times as protobuf Timestamps, for the router's responses."""

from google.protobuf import timestamp_pb2


def timestamp(seconds: float) -> timestamp_pb2.Timestamp | None:
    """The Timestamp of a unix time; None (the field stays unset) for 0, which means "not yet"."""
    if not seconds:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp
