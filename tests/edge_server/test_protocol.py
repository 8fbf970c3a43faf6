import pytest

from edge_server.protocol import (
    ErrorCode,
    ProtocolError,
    decode_frame,
    encode_frame,
    error_message,
    parse_hello,
    parse_json,
    ping_token,
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
        ({"audio": {"encoding": None}}, ErrorCode.BAD_MESSAGE),
        ({"audio": {"encoding": ["pcm_s16le"]}}, ErrorCode.BAD_MESSAGE),
        ({"token": 5}, ErrorCode.BAD_MESSAGE),
        ({"last_final": True}, ErrorCode.BAD_MESSAGE),
        ({"protocol": 10**50}, ErrorCode.UNSUPPORTED_VERSION),
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


@pytest.mark.parametrize(
    ("t", "echoed"),
    [
        (12.5, 12.5), (0, 0), (-(2**53), -(2**53)), (2**53 + 1, None), (10**100, None),
        (float("nan"), None), (float("inf"), None), ("x" * 64, "x" * 64), ("x" * 65, None),
        ("", ""), (True, None), (None, None), ([1], None), ({"t": 1}, None),
    ],
)
def test_pong_echoes_only_a_small_token(t, echoed):
    assert ping_token(t) == echoed and type(ping_token(t)) is type(echoed)


def test_error_text_is_bounded_and_too_slow_closes_with_4419():
    msg = error_message(ErrorCode.UNSUPPORTED_AUDIO, "y" * 10_000)
    assert len(msg["message"]) == 200 and msg["fatal"] is True
    assert ProtocolError(ErrorCode.CLIENT_TOO_SLOW, "x").close_code == 4419
    with pytest.raises(ProtocolError) as err:
        parse_hello({**HELLO, "audio": {"encoding": "x" * 100_000}})
    assert err.value.code == ErrorCode.UNSUPPORTED_AUDIO
    assert len(error_message(err.value.code, err.value.message)["message"]) <= 200
