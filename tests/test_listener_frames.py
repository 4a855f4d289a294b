"""The listener's own frame reader and writer (StationConnection), in process: the common frame
(unfragmented, masked, text) read without the websockets library, every other frame handed to
the library whole, so that the result is the library's whatever way the bytes are split; and a
loop turn's writes made one, before anything the library sends."""

from __future__ import annotations

import asyncio

import pytest
from websockets.frames import Close, CloseCode, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from edrvctl.server.listener import ListenerSettings, StationConnection, Turns

MAX_FRAME = 1000


def frame(payload: bytes, opcode: int = 0x1, fin: bool = True, masked: bool = True) -> bytes:
    """A frame as a client writes it (masked unless told otherwise)."""
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    m = 0x80 if masked else 0
    if n < 126:
        head += bytes([m | n])
    elif n < 65536:
        head += bytes([m | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([m | 127]) + n.to_bytes(8, "big")
    if not masked:
        return head + payload
    mask = b"\x37\xfa\x21\x3d"  # fixed: test ids hold these bytes, and xdist workers compare ids
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class Rpc:
    def __init__(self) -> None:
        self.got: list[str | bytes] = []

    def received(self, raw: str | bytes) -> None:
        self.got.append(raw)


class Session:
    def __init__(self) -> None:
        self.rpc = Rpc()


class Listener:
    s = ListenerSettings(max_frame=MAX_FRAME)


class Conn(StationConnection):
    listener = Listener()  # type: ignore[assignment]


def connection() -> Conn:
    conn = Conn()
    conn.ws = ServerProtocol(state=State.OPEN, max_size=MAX_FRAME)
    conn.session = Session()  # type: ignore[assignment]
    return conn


def sent_close(conn: Conn) -> Close:
    """The close frame the protocol has to send."""
    out = b"".join(conn.ws.data_to_send())  # type: ignore[union-attr]
    # a server's frames are not masked: 2 bytes of header (short close payloads)
    assert out[0] == 0x88, out
    return Close.parse(out[2 : 2 + out[1]])


MESSAGES = ['[2,"a","Heartbeat",{}]', '[2,"b","DataTransfer",{"data":"' + "x" * 300 + '"}]']
STREAM = (
    frame(MESSAGES[0].encode())
    + frame(b"ping", Opcode.PING)  # a control frame: the library answers it
    + frame(MESSAGES[1].encode()[:10], fin=False)  # a message in two frames
    + frame(MESSAGES[1].encode()[10:], Opcode.CONT)
    + frame(b"\x00\x01", Opcode.BINARY)
    + frame('[2,"é","Heartbeat",{}]'.encode())
)
EXPECTED = [MESSAGES[0], MESSAGES[1], b"\x00\x01", '[2,"é","Heartbeat",{}]']


def test_frames_read_the_same_however_the_bytes_are_split():
    """Every split into two reads, and one byte a read: the same messages in the same order,
    and the ping answered once."""
    splits = [[STREAM[:i], STREAM[i:]] for i in range(len(STREAM) + 1)]
    splits.append([STREAM[i : i + 1] for i in range(len(STREAM))])
    for reads in splits:
        conn = connection()
        for data in reads:
            conn._read(data)
        assert conn.session.rpc.got == EXPECTED  # type: ignore[union-attr]
        assert conn.unparsed == b""
        pong = b"".join(conn.ws.data_to_send())  # type: ignore[union-attr]
        assert pong == b"\x8a\x04ping"


def test_an_unfinished_frame_waits_and_an_oversized_one_is_refused_from_its_header():
    conn = connection()
    whole = frame(MESSAGES[1].encode())
    conn._read(whole[:-1])
    assert conn.session.rpc.got == [] and conn.unparsed == whole[:-1]  # type: ignore[union-attr]
    conn._read(whole[-1:])
    assert conn.session.rpc.got == [MESSAGES[1]]  # type: ignore[union-attr]
    # the header of a frame past max_frame is enough: its payload is never kept
    too_long = frame(b"x" * (MAX_FRAME + 1))
    conn._read(too_long[:8])
    assert conn.unparsed == b""
    assert conn.ws.state is State.CLOSING  # type: ignore[union-attr]
    assert sent_close(conn).code == CloseCode.MESSAGE_TOO_BIG
    conn._read(frame(MESSAGES[0].encode()))  # after the close: discarded, not read
    assert conn.session.rpc.got == [MESSAGES[1]]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "bad, code",
    [
        (frame(MESSAGES[0].encode(), masked=False), CloseCode.PROTOCOL_ERROR),
        (frame(b'[2,"x","Heartbeat",{"a":"\xff"}]'), CloseCode.INVALID_DATA),
        (frame(b"x", Opcode.CONT), CloseCode.PROTOCOL_ERROR),  # no message to continue
        (frame(b"x", 0x3), CloseCode.PROTOCOL_ERROR),  # a reserved opcode
        (bytes([0xC1]) + frame(b"[]")[1:], CloseCode.PROTOCOL_ERROR),  # RSV1, not negotiated
    ],
)
def test_frames_the_library_refuses_close_the_connection(bad, code):
    conn = connection()
    conn._read(frame(MESSAGES[0].encode()) + bad + frame(MESSAGES[0].encode()))
    assert conn.session.rpc.got == [MESSAGES[0]]  # type: ignore[union-attr]
    assert conn.ws.state is State.CLOSING  # type: ignore[union-attr]
    assert sent_close(conn).code == code


def test_a_text_frame_between_the_parts_of_a_message_is_refused():
    conn = connection()
    conn._read(frame(b"[2,", fin=False) + frame(MESSAGES[0].encode()))
    assert conn.session.rpc.got == []  # type: ignore[union-attr]
    assert sent_close(conn).code == CloseCode.PROTOCOL_ERROR


def test_a_close_frame_is_echoed_and_what_follows_it_is_not_read():
    conn = connection()
    conn._read(
        frame(MESSAGES[0].encode())
        + frame(Close(1000, "bye").serialize(), Opcode.CLOSE)
        + frame(MESSAGES[0].encode())
    )
    assert conn.session.rpc.got == [MESSAGES[0]]  # type: ignore[union-attr]
    assert sent_close(conn) == Close(1000, "bye")


def test_the_library_reads_what_it_is_given_frame_by_frame():
    """The frames handed over are whole: its parser is between two frames after each."""
    conn = connection()
    part = frame(b"[1", fin=False)
    conn._read(frame(b"pi", Opcode.PING) + part[:3])
    assert conn.unparsed == part[:3]
    assert conn.ws.reader.buffer == b""  # type: ignore[union-attr]
    conn._read(part[3:] + frame(b"]", Opcode.CONT))
    assert conn.session.rpc.got == ["[1]"]  # type: ignore[union-attr]


class Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        self.writes.append(b"<closed>")


def test_a_turns_answers_go_out_in_one_write_at_its_end_before_the_protocols_frames():
    """What a connection writes in one loop turn (answers, our CALLs) is one write at the
    turn's end; a close frame the protocol sends meanwhile goes after it, never before."""

    async def scenario():
        conn = connection()
        conn.transport = Transport()  # type: ignore[assignment]
        conn.listener = type("L", (), {"s": Listener.s, "turns": Turns()})()  # type: ignore[assignment]
        conn.write(b'[3,"a",{}]')
        conn.write(b'[3,"b",{}]')
        assert conn.transport.writes == []  # type: ignore[attr-defined]
        await asyncio.sleep(0)  # the end of the turn
        assert conn.transport.writes == [b'\x81\x0a[3,"a",{}]\x81\x0a[3,"b",{}]']  # type: ignore[attr-defined]
        conn.write(b'[2,"c","Reset",{}]')
        conn.ws.send_close(1000, "bye")  # type: ignore[union-attr]
        conn._send_pending()
        writes = conn.transport.writes[1:]  # type: ignore[attr-defined]
        assert writes[0] == b"\x81\x12" + b'[2,"c","Reset",{}]'
        assert writes[1][:1] == b"\x88"  # the close frame, after the CALL
        await asyncio.sleep(0)  # nothing left for the turn's flush
        assert conn.transport.writes[1:] == writes  # type: ignore[attr-defined]

    asyncio.run(scenario())
