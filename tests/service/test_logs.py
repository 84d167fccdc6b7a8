"""Log output: ``logging.format: json`` writes one JSON object per line with the fields of the
message a line is about; kafka-python's unactionable warnings are dropped unless DEBUG."""

from __future__ import annotations

import logging

import orjson
import pytest

from stream_infer.config import Settings
from stream_infer.logs import configure_logging, kafka_connected


@pytest.fixture(autouse=True)
def _restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [ln for ln in capsys.readouterr().err.splitlines() if ln]


def test_json_lines_carry_level_logger_message_and_the_message_fields(capsys) -> None:
    configure_logging("INFO", "json")
    log = logging.getLogger("stream_infer.service")
    log.warning("invalid message %s", "t[1]@7", extra={"entity": "m-1", "partition": 1, "offset": 7})
    log.info("plain line")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    docs = [orjson.loads(ln) for ln in _lines(capsys)]
    assert docs[0]["level"] == "WARNING" and docs[0]["logger"] == "stream_infer.service"
    assert docs[0]["message"] == "invalid message t[1]@7"
    assert (docs[0]["entity"], docs[0]["partition"], docs[0]["offset"]) == ("m-1", 1, 7)
    assert "entity" not in docs[1] and docs[1]["message"] == "plain line"
    assert "ValueError: boom" in docs[2]["exc"]
    assert all(d["ts"].endswith("+00:00") for d in docs)


def test_text_is_the_default_format() -> None:
    assert Settings().logging.format == "text"
    assert Settings(logging={"format": "json"}).logging.format == "json"


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_kafka_python_noise_is_dropped_unless_debug(capsys, level: str) -> None:
    configure_logging(level)
    kafka_connected()
    net = logging.getLogger("kafka.net.selector")
    net.warning("Task %s ran for 0.2s (>0.100s threshold). It is blocking the event loop", "t")
    logging.getLogger("kafka.cluster").warning("No partition metadata for topic %s", "x")
    net.warning("Connection to node 1 lost")
    logging.getLogger("stream_infer.x").warning("No partition metadata is our own words here")
    out = "\n".join(_lines(capsys))
    assert "Connection to node 1 lost" in out and "our own words" in out
    assert ("blocking the event loop" in out) == (level == "DEBUG")
    assert ("No partition metadata for topic" in out) == (level == "DEBUG")
