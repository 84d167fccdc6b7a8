from __future__ import annotations

import torch

from stream_infer.model.card import ModelCard
from stream_infer.model.net import FrameCNNLSTM, SensorCNNLSTM, build_model


def test_forward_sequence_equals_stepwise_forward_with_carried_state() -> None:
    torch.manual_seed(0)
    model = SensorCNNLSTM(6, 4, hidden=16, layers=2).eval()
    xs = torch.randn(3, 5, 20, 6)
    h, c = model.zero_state(3)
    with torch.inference_mode():
        ys, hn, cn = model.forward_sequence(xs)
        for t in range(5):
            y, h, c = model(xs[:, t], h, c)
            torch.testing.assert_close(y, ys[:, t], atol=1e-6, rtol=0)
    torch.testing.assert_close(h, hn, atol=1e-6, rtol=0)
    torch.testing.assert_close(c, cn, atol=1e-6, rtol=0)


def test_shapes_follow_the_serving_contract() -> None:
    sensor = SensorCNNLSTM(6, 4, hidden=32, layers=2)
    y, hn, cn = sensor(torch.randn(7, 20, 6), *sensor.zero_state(7))
    assert y.shape == (7, 4) and hn.shape == cn.shape == (2, 7, 32)
    frame = FrameCNNLSTM(1, 2, hidden=8)
    y, hn, _ = frame(torch.rand(5, 1, 25, 25) * 255, *frame.zero_state(5))
    assert y.shape == (5, 2) and hn.shape == (1, 5, 8)


def test_normalisation_is_inside_the_model() -> None:
    torch.manual_seed(0)
    plain = SensorCNNLSTM(2, 3, hidden=8)
    shifted = SensorCNNLSTM(2, 3, hidden=8, mean=[100.0, -5.0], std=[10.0, 2.0])
    shifted.load_state_dict(
        plain.state_dict() | {"norm_mean": shifted.norm_mean, "norm_std": shifted.norm_std}
    )
    x = torch.randn(4, 20, 2)
    raw = x * torch.tensor([10.0, 2.0]) + torch.tensor([100.0, -5.0])
    torch.testing.assert_close(
        plain(x, *plain.zero_state(4))[0], shifted(raw, *shifted.zero_state(4))[0], atol=1e-5, rtol=0
    )


def test_build_model_from_card() -> None:
    card = ModelCard(
        name="m",
        version="1",
        kind="sensor",
        window=20,
        hop=10,
        sample_shape=[3],
        labels=["a", "b"],
        lstm_layers=2,
        hidden_size=16,
        conv_channels=8,
    )
    model = build_model(card)
    assert isinstance(model, SensorCNNLSTM)
    assert model.lstm.num_layers == 2 and model.lstm.hidden_size == 16 and model.head.out_features == 2


def test_feature_dropout_acts_while_training_only_and_carries_no_weights() -> None:
    """The served graph (eval mode) is the model without dropout, weight for weight."""
    torch.manual_seed(0)
    with_dropout = SensorCNNLSTM(3, 4, hidden=8, conv_channels=4, dropout=0.5)
    plain = SensorCNNLSTM(3, 4, hidden=8, conv_channels=4)
    assert with_dropout.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(with_dropout.state_dict())
    x = torch.randn(5, 20, 3)
    with_dropout.eval()
    assert torch.equal(with_dropout.encode(x), plain.eval().encode(x))
    with_dropout.train()
    dropped = with_dropout.encode(x)
    assert (dropped == 0).float().mean() > 0.3 and not torch.equal(dropped, plain.encode(x))
