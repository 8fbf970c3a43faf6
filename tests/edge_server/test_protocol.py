import pytest

from edge_server.protocol import (
    ErrorCode,
    ProtocolError,
    decode_frame,
    encode_frame,
    parse_hello,
    parse_json,
)

HELLO = {"type": "hello", "protocol": 1, "session": "abc",
         "audio": {"encoding": "pcm_s16le", "sample_rate": 16000, "channels": 1}}


def test_hello_defaults():
    h = parse_hello(HELLO)
    assert (h.session, h.sample_rate, h.resume, h.last_final, h.partials) == (
        "abc", 16000, False, -1, True)


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"protocol": 2}, ErrorCode.UNSUPPORTED_VERSION),
        ({"protocol": "1"}, ErrorCode.BAD_MESSAGE),
        ({"session": ""}, ErrorCode.BAD_MESSAGE),
        ({"session": "x" * 200}, ErrorCode.BAD_MESSAGE),
        ({"audio": {"sample_rate": 7000}}, ErrorCode.UNSUPPORTED_AUDIO),
        ({"audio": {"channels": 2}}, ErrorCode.UNSUPPORTED_AUDIO),
        ({"audio": {"encoding": "opus"}}, ErrorCode.UNSUPPORTED_AUDIO),
        ({"type": "end"}, ErrorCode.BAD_MESSAGE),
        ({"resume": "yes"}, ErrorCode.BAD_MESSAGE),
    ],
)
def test_bad_hello(change, code):
    with pytest.raises(ProtocolError) as err:
        parse_hello({**HELLO, **change})
    assert err.value.code == code


def test_frames_round_trip_and_limits():
    assert decode_frame(encode_frame(7, b"\x01\x00" * 4), 100) == (7, b"\x01\x00" * 4)
    with pytest.raises(ProtocolError, match="shorter than its 8-byte header"):
        decode_frame(b"\x00" * 3, 100)
    with pytest.raises(ProtocolError) as err:
        decode_frame(encode_frame(0, b"\x00" * 200), 100)
    assert err.value.code == ErrorCode.FRAME_TOO_LARGE and err.value.close_code == 4413
    with pytest.raises(ProtocolError, match="odd number"):
        decode_frame(encode_frame(0, b"\x00" * 3), 100)


@pytest.mark.parametrize("text", ["not json", "[1, 2]", '{"no": "type"}', "9" * 5000])
def test_parse_json_rejects(text):
    with pytest.raises(ProtocolError):
        parse_json(text)
