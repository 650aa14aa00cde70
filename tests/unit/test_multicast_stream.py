"""The multicast stream's frames and the udpcast options and messages, without a network
(tests/system/test_multicast.py runs the real thing in network namespaces)."""

from __future__ import annotations

import io

import pytest

from rescue.errors import IntegrityError, UsageError
from rescue.multicast import stream
from rescue.multicast.udpcast import Options, SenderReport, parse_location


def test_frames_read_back_as_written_and_a_damaged_header_is_caught():
    meta = stream.Meta("lab", {"rescue-repo.json": b"{}", "images/lab/p1.idx": bytes(range(256))}, {"keys": []})
    data = stream.MAGIC + stream.frame(stream.META, "", meta.encode()) + stream.frame(stream.CHUNK, "chunks/ab/x", b"z")
    data += stream.end_frame(1, len(data))
    inp = io.BytesIO(data)
    stream.read_magic(inp)
    kind, _, payload = stream.read_frame(inp, 0)
    assert kind == stream.META and stream.Meta.decode(payload) == meta
    assert stream.read_frame(inp, 10)[:2] == (stream.CHUNK, "chunks/ab/x")
    assert stream.read_frame(inp, 10)[0] == stream.END

    bad = bytearray(stream.frame(stream.META, "", meta.encode()))
    bad[40] ^= 1
    with pytest.raises(IntegrityError, match="does not match its checksum"):
        stream.read_frame(io.BytesIO(bytes(bad)), 0)


def test_a_cut_stream_and_foreign_bytes_are_told_apart():
    whole = stream.frame(stream.CHUNK, "chunks/ab/x", b"0123456789")
    with pytest.raises(stream.StreamEnded):
        stream.read_frame(io.BytesIO(whole[:-3]), 100)
    with pytest.raises(IntegrityError, match="damaged frame"):
        stream.read_frame(io.BytesIO(whole), 5)  # longer than any chunk can be
    with pytest.raises(IntegrityError, match="not a rescue multicast stream"):
        stream.read_magic(io.BytesIO(b"GET / HTTP/1.1\r\n\r\n"))
    with pytest.raises(IntegrityError, match="no rescue multicast stream arrived"):
        stream.read_magic(io.BytesIO(b""))


def test_udpcast_options_are_passed_through_and_checked():
    o = Options("eth1", 9002, receivers=30, wait=300, max_rate="800m", fec="8x8/128").check()
    args = o.sender_args()
    for opt, value in (
        ("--interface", "eth1"),
        ("--portbase", "9002"),
        ("--min-receivers", "30"),
        ("--max-wait", "300"),
        ("--max-bitrate", "800m"),
        ("--fec", "8x8/128"),
        ("--retries-until-drop", "30"),
    ):
        assert args[args.index(opt) + 1] == value
    assert "--nokbd" in args and "--async" not in args
    assert Options("eth0").sender_args()[-4:] == ["--max-wait", "60", "--retries-until-drop", "30"]
    assert parse_location("multicast://enp3s0:9010").receiver_args()[1:5] == [
        "--interface",
        "enp3s0",
        "--portbase",
        "9010",
    ]
    for bad in (Options("eth0", 9001), Options("eth0", async_mode=True), Options("eth0", max_rate="fast")):
        with pytest.raises(UsageError):
            bad.check()
    with pytest.raises(UsageError, match="multicast://INTERFACE"):
        parse_location("multicast://")


def test_the_senders_messages_become_joins_drops_and_ends():
    r = SenderReport()
    said = [r.feed(line) for line in (
        "New connection from 10.0.0.2  (#0) 00000009",
        "New connection from 10.0.0.3  (#1) 00000009",
        "Starting transfer: 00000009",
        "bytes= 20 000 000  re-xmits=0004575 ( 33.3%) slice=0112 -   0",
        "Dropping client #1 because of timeout",
        "Disconnecting #0 (10.0.0.2)",
        "Disconnecting #1 (10.0.0.3)",
    )]  # fmt: skip
    assert said[:3] == ["joined: 10.0.0.2 (receiver 1)", "joined: 10.0.0.3 (receiver 2)", "sending to 2 receivers"]
    assert said[4] is not None and said[4].startswith("dropped: 10.0.0.3")
    assert [p.status for p in r.peers.values()] == ["ok", "dropped"]
    assert r.retransmits == "4575 (33.3%)"
