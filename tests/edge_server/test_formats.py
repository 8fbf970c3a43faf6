import io
import json

import pytest
import srt
import webvtt

from edge_server.formats import TimedText, Transcript, render

T = Transcript("a.wav", [TimedText(0.5, 2.25, "Hello there."), TimedText(3.0, 3661.5, "Bye.")], 4)


def test_srt_parses_with_times():
    subs = list(srt.parse(render([T], "srt")))
    assert [s.content for s in subs] == ["Hello there.", "Bye."]
    assert subs[0].start.total_seconds() == 0.5 and subs[1].end.total_seconds() == 3661.5


def test_vtt_parses_with_times():
    captions = webvtt.from_buffer(io.StringIO(render([T], "vtt")))
    assert [c.text for c in captions] == ["Hello there.", "Bye."]
    assert captions[1].end == "01:01:01.500"


def test_json_and_txt():
    data = json.loads(render([T, T], "json"))
    assert data[0]["text"] == "Hello there. Bye." and data[1]["segments"][0]["start"] == 0.5
    assert render([T], "txt") == "Hello there. Bye.\n"


def test_srt_holds_one_transcript():
    with pytest.raises(ValueError, match="-o DIR"):
        render([T, T], "srt")
