"""The CNN-LSTM: a small convolutional encoder per hop, one LSTM step per hop, a linear head.

Serving contract (one LSTM step per hop)::

    forward(x, h0, c0) -> (y, hn, cn)
      sensor: x [B, W, F]      raw window of the last W samples (normalised inside the graph)
      frame:  x [B, C, H, Wd]  raw frame, pixel values 0..255
      h0, c0, hn, cn [L, B, Hd]  LSTM state, batch on dim 1 as ONNX's LSTM lays it out
      y [B, K]                 class scores (logits)

``forward_sequence`` runs the same computation over T consecutive hops in one call; it is what
training optimises and the offline reference the streaming path must reproduce exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from stream_infer.model.card import ModelCard


class CNNLSTM(nn.Module):
    """Shared LSTM + head; subclasses supply ``encoder`` (input -> [N, E]) and ``input_ndim``."""

    input_ndim: int  # dims of one item, without batch
    encoder: nn.Module
    norm_mean: Tensor  # [C] buffer
    norm_std: Tensor  # [C] buffer

    def __init__(
        self,
        features: int,
        hidden: int,
        layers: int,
        n_classes: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        super().__init__()
        self.hidden_size = hidden
        self.num_layers = layers
        self.register_buffer("norm_mean", torch.tensor(list(mean), dtype=torch.float32))
        self.register_buffer("norm_std", torch.tensor(list(std), dtype=torch.float32))
        self.lstm = nn.LSTM(features, hidden, num_layers=layers)
        self.head = nn.Linear(hidden, n_classes)

    def encode(self, x: Tensor) -> Tensor:
        """[N, *input_shape] raw -> [N, E] features."""
        raise NotImplementedError

    def zero_state(self, batch: int) -> tuple[Tensor, Tensor]:
        """(h0, c0) [L, B, Hd] zeros on the module's device."""
        z = torch.zeros(self.num_layers, batch, self.hidden_size, device=self.norm_mean.device)
        return z, z.clone()

    def forward(self, x: Tensor, h0: Tensor, c0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        feats = self.encode(x).unsqueeze(0)  # [1, B, E]
        out, (hn, cn) = self.lstm(feats, (h0, c0))
        return self.head(out[0]), hn, cn

    def forward_sequence(
        self, xs: Tensor, h0: Tensor | None = None, c0: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``xs [B, T, *input_shape]`` -> (y [B, T, K], hn, cn): T hops with state carried.

        Zero state when ``h0``/``c0`` are omitted. Equal (to float rounding) to calling
        ``forward`` T times, feeding each call's state to the next.
        """
        b, t = xs.shape[0], xs.shape[1]
        if h0 is None or c0 is None:
            h0, c0 = self.zero_state(b)
        feats = self.encode(xs.reshape(b * t, *xs.shape[2:])).reshape(b, t, -1)
        out, (hn, cn) = self.lstm(feats.transpose(0, 1), (h0, c0))  # out [T, B, Hd]
        return self.head(out).transpose(0, 1), hn, cn


class SensorCNNLSTM(CNNLSTM):
    """Conv1d encoder over a [W, F] window: two conv layers, then mean+max pooling over time.

    ``dropout`` drops window features while training only (the served graph has none, and no
    weights come with it, so every artifact loads the same)."""

    input_ndim = 2

    def __init__(
        self,
        channels: int,
        n_classes: int,
        hidden: int = 64,
        layers: int = 1,
        conv_channels: int = 32,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        dropout: float = 0.0,
    ) -> None:
        c = conv_channels
        super().__init__(
            2 * 2 * c,
            hidden,
            layers,
            n_classes,
            mean if mean is not None else [0.0] * channels,
            std if std is not None else [1.0] * channels,
        )
        self.encoder = nn.Sequential(
            nn.Conv1d(channels, c, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.Conv1d(c, 2 * c, kernel_size=5, padding=2),
            nn.ReLU(),
        )
        self.feature_dropout = nn.Dropout(dropout)  # no weights: artifacts load as before

    def encode(self, x: Tensor) -> Tensor:
        z = ((x - self.norm_mean) / self.norm_std).transpose(1, 2)  # [N, F, W]
        z = self.encoder(z)  # [N, 2c, W]
        return self.feature_dropout(torch.cat([z.mean(dim=2), z.amax(dim=2)], dim=1))


class FrameCNNLSTM(CNNLSTM):
    """Conv2d encoder over one [C, H, W] frame: three conv blocks, global average pooling."""

    input_ndim = 3

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        hidden: int = 64,
        layers: int = 1,
        conv_channels: int = 16,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        c = conv_channels
        super().__init__(
            4 * c,
            hidden,
            layers,
            n_classes,
            mean if mean is not None else [0.0] * in_channels,
            std if std is not None else [255.0] * in_channels,
        )
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, c, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c, 2 * c, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * c, 4 * c, 3, padding=1),
            nn.ReLU(),
        )

    def encode(self, x: Tensor) -> Tensor:
        z = (x - self.norm_mean[:, None, None]) / self.norm_std[:, None, None]
        return self.encoder(z).mean(dim=(2, 3))


class EnsembleCNNLSTM(CNNLSTM):
    """N CNN-LSTMs served as one: the members' states stacked on the layer axis
    (``[N * L, B, Hd]``, so the graph keeps one (h, c) pair and the service, the changelog and
    every backend see a plain CNN-LSTM of N * L layers), and a head that averages the members'
    class probabilities. ``y`` is the log of that average: its softmax, which the classification
    head publishes, is the average itself."""

    def __init__(self, members: Sequence[CNNLSTM]) -> None:
        nn.Module.__init__(self)
        self.members = nn.ModuleList(members)
        first = members[0]
        self.input_ndim = first.input_ndim
        self.hidden_size = first.hidden_size
        self.member_layers = first.num_layers
        self.num_layers = first.num_layers * len(members)
        self.register_buffer("norm_mean", first.norm_mean.clone())
        self.register_buffer("norm_std", first.norm_std.clone())

    def _combine(self, outs: list[tuple[Tensor, Tensor, Tensor]], dim: int) -> tuple[Tensor, Tensor, Tensor]:
        probs = torch.stack([torch.softmax(y, dim=dim) for y, _, _ in outs]).mean(dim=0)
        y = torch.log(probs.clamp_min(1e-30))
        return y, torch.cat([h for _, h, _ in outs]), torch.cat([c for _, _, c in outs])

    def forward(self, x: Tensor, h0: Tensor, c0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n = self.member_layers
        outs = [m(x, h0[i * n : (i + 1) * n], c0[i * n : (i + 1) * n]) for i, m in enumerate(self.members)]
        return self._combine(outs, dim=1)

    def forward_sequence(
        self, xs: Tensor, h0: Tensor | None = None, c0: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        if h0 is None or c0 is None:
            h0, c0 = self.zero_state(xs.shape[0])
        n = self.member_layers
        members: list[CNNLSTM] = list(self.members)  # type: ignore[arg-type]
        outs = [
            m.forward_sequence(xs, h0[i * n : (i + 1) * n], c0[i * n : (i + 1) * n])
            for i, m in enumerate(members)
        ]
        return self._combine(outs, dim=2)


def build_model(card: ModelCard) -> CNNLSTM:
    """An untrained module shaped by ``card`` (load ``weights.pt`` into it to serve)."""
    mean = card.norm_mean or None
    std = card.norm_std or None
    if card.ensemble > 1:
        if card.kind != "sensor" or card.lstm_layers % card.ensemble:
            raise ValueError(f"an ensemble of {card.ensemble} needs a sensor model of N * L layers")
        layers = card.lstm_layers // card.ensemble
        return EnsembleCNNLSTM(
            [
                SensorCNNLSTM(
                    card.sample_shape[0],
                    len(card.labels),
                    card.hidden_size,
                    layers,
                    card.conv_channels,
                    mean,
                    std,
                )
                for _ in range(card.ensemble)
            ]
        )
    if card.kind == "sensor":
        return SensorCNNLSTM(
            card.sample_shape[0],
            len(card.labels),
            card.hidden_size,
            card.lstm_layers,
            card.conv_channels,
            mean,
            std,
        )
    return FrameCNNLSTM(
        card.sample_shape[0],
        len(card.labels),
        card.hidden_size,
        card.lstm_layers,
        card.conv_channels,
        mean,
        std,
    )


__all__ = ["CNNLSTM", "EnsembleCNNLSTM", "FrameCNNLSTM", "SensorCNNLSTM", "build_model"]
