import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from stream_infer.health import Health, serve_http
from stream_infer.metrics import Metrics


def _status(port: int, path: str) -> int:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5).status
    except urllib.error.HTTPError as e:
        return e.code


def test_ready_only_with_engine_and_partitions_and_alive_only_while_beating():
    reg = CollectorRegistry()
    Metrics(reg)
    health = Health(stall_timeout_s=0.2)
    server = serve_http(health, 0, "127.0.0.1", reg)
    port = server.server_port
    try:
        assert _status(port, "/readyz") == 503
        health.engine_loaded = True
        assert _status(port, "/readyz") == 503
        health.partitions_assigned = True
        assert _status(port, "/readyz") == 200
        health.beat()
        assert _status(port, "/healthz") == 200
        health.last_beat -= 1.0  # the run loop made no progress for a second
        assert _status(port, "/healthz") == 503
        health.stopping = True
        assert _status(port, "/readyz") == 503
        assert _status(port, "/nope") == 404
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert "stream_infer_event_to_publish_seconds_bucket" in body
    finally:
        server.shutdown()


def test_alive_fails_once_the_consumer_stays_out_of_its_group_past_the_rebalance_bound():
    reg = CollectorRegistry()
    Metrics(reg)
    health = Health(stall_timeout_s=60, group_timeout_s=0.5)
    server = serve_http(health, 0, "127.0.0.1", reg)
    port = server.server_port
    try:
        health.group_settled(False)  # a rebalance starts
        since = health.unsettled_since
        assert since is not None
        assert _status(port, "/healthz") == 200 and not health.wedged
        health.group_settled(False)  # still under way: the clock is not restarted
        assert health.unsettled_since == since
        health.unsettled_since = since - 1.0  # ... and it has now lasted past the bound
        assert health.wedged
        assert _status(port, "/healthz") == 503
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert err.value.read() == b"out of the consumer group\n"
        health.group_settled(True)  # it settled after all
        assert not health.wedged and _status(port, "/healthz") == 200
    finally:
        server.shutdown()
