import pytest

from stream_infer.config import load_settings
from stream_infer.errors import ConfigError


def test_unknown_and_invalid_keys_are_named(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("batcher:\n  max_bach: 3\n  max_wait_ms: -1\nnope: 1\n")
    with pytest.raises(ConfigError) as e:
        load_settings(f)
    msg = str(e.value)
    assert "batcher.max_bach: unknown setting" in msg and "batcher.max_wait_ms" in msg and "nope" in msg
    assert str(f) in msg


def test_env_overrides_file(tmp_path, monkeypatch):
    f = tmp_path / "c.yaml"
    f.write_text("batcher: {max_batch: 64, max_wait_ms: 7}\n")
    monkeypatch.setenv("STREAM_INFER_BATCHER__MAX_BATCH", "32")
    s = load_settings(f)
    assert s.batcher.max_batch == 32 and s.batcher.max_wait_ms == 7


def test_unreadable_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad)


def test_secrets_are_never_printed_and_files_are_read(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("s3cret-from-file\n")
    s = load_settings(
        kafka={
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": "u",
            "sasl_password_file": str(pw),
        }
    )
    assert s.kafka.client_kwargs("consumer")["sasl_plain_password"] == "s3cret-from-file"
    s2 = load_settings(
        kafka={
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "PLAIN",
            "sasl_username": "u",
            "sasl_password": "hunter2",
        }
    )
    assert "hunter2" not in repr(s2) and "hunter2" not in str(s2.model_dump())
    with pytest.raises(ConfigError, match="SASL needs"):
        load_settings(kafka={"security_protocol": "SASL_SSL"})


def test_pod_name_gives_static_membership(monkeypatch):
    monkeypatch.setenv("POD_NAME", "stream-infer-2")
    assert load_settings().kafka.group_instance_id == "stream-infer-2"


def test_exactly_once_needs_a_transaction_timeout_above_the_commit_interval():
    s = load_settings()
    assert s.delivery.transaction_timeout_ms == 10_000 > s.delivery.commit_interval_ms
    eos = {"guarantee": "exactly-once", "commit_interval_ms": 10_000}
    with pytest.raises(ConfigError) as e:
        load_settings(delivery={**eos, "transaction_timeout_ms": 10_000})
    msg = str(e.value)
    assert "delivery.transaction_timeout_ms (10000) must be greater than" in msg
    assert "delivery.commit_interval_ms (10000)" in msg
    ok = load_settings(delivery={**eos, "transaction_timeout_ms": 15_000})
    assert ok.delivery.transaction_timeout_ms == 15_000
    # At-least-once opens no transaction: a long commit interval is fine there.
    assert load_settings(delivery={"commit_interval_ms": 60_000}).delivery.commit_interval_ms == 60_000
