import base64

import pytest

from edge_server.engine.moonshine_tokenizer import MoonshineTokenizer
from tests.conftest import SHIPPED_MODELS

TOKENIZER = SHIPPED_MODELS / "moonshine-tiny-en" / "tokenizer.bin"


def test_parses_the_shipped_vocabulary():
    tok = MoonshineTokenizer.from_file(TOKENIZER)
    assert len(tok) == 32768
    assert tok.pieces[:3] == [b"<unk>", b"<s>", b"</s>"]


def test_decode_joins_pieces_and_drops_specials():
    tok = MoonshineTokenizer([b"<unk>", b"<s>", b"</s>", "\u2581he".encode(), b"llo",
                              "\u2581world".encode()])
    assert tok.decode([1, 3, 4, 5, 2]) == "hello world"


def test_two_byte_length_prefix(tmp_path):
    long_piece = b"x" * 200  # >= 128 needs the two-byte form
    raw = bytes([3]) + b"abc" + bytes([128 + (200 % 128), 200 >> 7]) + long_piece
    path = tmp_path / "t.bin"
    path.write_bytes(raw)
    assert MoonshineTokenizer.from_file(path).pieces == [b"abc", long_piece]


def test_truncated_file_is_an_error(tmp_path):
    path = tmp_path / "t.bin"
    path.write_bytes(bytes([10]) + b"abc")
    with pytest.raises(ValueError, match="runs past the end"):
        MoonshineTokenizer.from_file(path)


def test_sherpa_tokens_txt_format():
    tok = MoonshineTokenizer([b"<unk>", "\u2581a".encode()])
    lines = tok.sherpa_tokens_txt().splitlines()
    assert lines[1] == f"{base64.b64encode(chr(0x2581).encode() + b'a').decode()} 1"
