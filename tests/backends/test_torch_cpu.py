"""The GPU path's logic on torch's CPU device: the torch state slab against the numpy slab, the
torch engine's gather -> step -> scatter path against ONNX Runtime for both batch-axis layouts
(``[L, B, H]`` and batch-first), and snapshots through the changelog codec. No GPU needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from stream_infer.backends import load_engine
from stream_infer.backends.parity import random_inputs
from stream_infer.backends.torch_backend import TorchEngine
from stream_infer.config import load_settings
from stream_infer.errors import ConfigError
from stream_infer.model.card import ModelCard, load_card
from stream_infer.model.contract import StateSpec, lstm_states
from stream_infer.model.importer import export_module
from stream_infer.state import codec
from stream_infer.state.cuda_slab import CudaStateSlab, TorchStateSlab
from stream_infer.state.slab import NumpyStateSlab, StateSlab, make_state_slab

CONTRACTS = {
    "lstm [L, B, H]": lstm_states(2, 8),
    "mixed axes": (
        StateSpec("h_in", "h_out", (1, 5), batch_axis=1),
        StateSpec("m_in", "m_out", (2,), batch_axis=0),
        StateSpec("s_in", "s_out", (4, 3, 3), batch_axis=1),
        StateSpec("t_in", "t_out", (3, 2), batch_axis=2),
    ),
}


def _same(a: StateSlab, b: StateSlab, slots: np.ndarray) -> None:
    for x, y in zip(a.read(slots), b.read(slots), strict=True):
        assert isinstance(x, np.ndarray) and isinstance(y, np.ndarray)
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("contract", list(CONTRACTS))
def test_torch_slab_on_cpu_equals_numpy_slab_for_random_slot_sequences(contract: str) -> None:
    specs = CONTRACTS[contract]
    cap = 32
    rng = np.random.default_rng(7)
    ref, slab = NumpyStateSlab(cap, states=specs), TorchStateSlab("cpu", cap, states=specs)
    every = np.arange(cap)
    for step in range(300):
        b = int(rng.integers(1, cap + 1))
        slots = rng.choice(cap, size=b, replace=False)
        op = rng.integers(0, 5)
        if op == 0:  # a step's scatter: torch tensors on one side, numpy on the other
            vals = [rng.standard_normal(s.batched(b)).astype(np.float32) for s in specs]
            ref.scatter(slots, *vals)
            slab.scatter(slots, *(torch.from_numpy(v) for v in vals))
        elif op == 1:  # the engine's outputs may be numpy on the CPU: the torch slab takes them
            vals = [rng.standard_normal(s.batched(b)).astype(np.float32) for s in specs]
            ref.scatter(slots, *vals)
            slab.scatter(slots, *vals)
        elif op == 2:
            ref.zero(slots)
            slab.zero(slots)
        elif op == 3:  # a restore
            vals = [rng.standard_normal(s.batched(b)).astype(np.float32) for s in specs]
            ref.write(slots, *vals)
            slab.write(slots, *vals)
        got, want = slab.gather(slots), ref.gather(slots)
        for g, w, s in zip(got, want, specs, strict=True):
            assert isinstance(g, torch.Tensor) and g.device.type == "cpu" and g.dtype == torch.float32
            assert tuple(g.shape) == s.batched(b)
            np.testing.assert_array_equal(g.numpy(), w)
        if step % 50 == 0:
            _same(ref, slab, every)
    _same(ref, slab, every)
    _same(ref, slab, rng.permutation(cap)[:5])


def test_gathered_rows_are_copies() -> None:
    slab = TorchStateSlab("cpu", 4, 1, 3)
    h, c = slab.gather(np.array([1, 2]))
    h += 5
    assert float(slab.slabs[0].abs().sum()) == 0.0
    assert CudaStateSlab is TorchStateSlab


def test_make_state_slab_picks_the_store_the_settings_ask_for() -> None:
    specs = lstm_states(1, 4)
    assert isinstance(make_state_slab("cpu", 8, specs), NumpyStateSlab)
    assert isinstance(make_state_slab("cpu", 8, specs, "torch"), TorchStateSlab)
    with pytest.raises(ValueError, match="numpy state slab cannot serve"):
        make_state_slab("cuda:0", 8, specs, "numpy")
    assert load_settings(model={"backend": "torch", "state_slab": "torch"}).model.state_slab == "torch"
    with pytest.raises(ConfigError, match="state_slab torch on the CPU needs backend torch"):
        load_settings(model={"backend": "onnxruntime", "state_slab": "torch"})


@pytest.mark.parametrize("contract", list(CONTRACTS))
def test_snapshot_and_restore_through_the_changelog_codec_with_the_torch_slab(contract: str) -> None:
    specs = CONTRACTS[contract]
    cap, window, shape = 16, 5, (3,)
    rng = np.random.default_rng(3)
    src = TorchStateSlab("cpu", cap, states=specs)
    every = np.arange(cap)
    src.scatter(every, *(rng.standard_normal(s.batched(cap)).astype(np.float32) for s in specs))
    dirty = np.array([9, 2, 14, 0])
    n = len(dirty)
    tails = rng.standard_normal((n, window, *shape)).astype(np.float32)
    values = codec.encode_many(
        "m@1",
        np.arange(n, dtype=np.int64) + 100,
        np.full(n, 1_700_000_000_000, np.int64),
        np.full(n, window, np.int64),
        np.zeros(n, bool),
        tails,
        *src.read(dirty),
        specs=specs,
    )
    dst, ref = TorchStateSlab("cpu", cap, states=specs), NumpyStateSlab(cap, states=specs)
    into = np.array([1, 3, 5, 7])  # restored into other slots, one record at a time, as the store does
    for i, (value, slot) in enumerate(zip(values, into, strict=True)):
        st = codec.decode(value, "m@1", window, shape, specs)
        assert st.last_seq == 100 + i
        np.testing.assert_array_equal(st.tail, tails[i])
        rows = [np.expand_dims(a, s.batch_axis) for a, s in zip(st.states, specs, strict=True)]
        dst.write(np.array([slot]), *rows)
        ref.write(np.array([slot]), *rows)
    for a, b in zip(dst.read(into), src.read(dirty), strict=True):
        np.testing.assert_array_equal(a, b)
    _same(dst, ref, every)


# --- the engine: gather -> step -> scatter, torch on the CPU against ONNX Runtime -------------


class TwoLayouts(nn.Module):
    """A GRU's ``h`` ``[1, B, H]`` (batch axis 1) and a batch-first ``m`` ``[B, 2]`` carried
    beside it (the anomaly model's ``expect`` has this shape)."""

    def __init__(self, channels: int = 6, hidden: int = 16, labels: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv1d(channels, 8, kernel_size=3, padding=1)
        self.gru = nn.GRU(8, hidden, batch_first=True)
        self.out = nn.Linear(hidden + 2, labels)

    def forward(self, x: torch.Tensor, h: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, ...]:
        z = torch.relu(self.conv(x.transpose(1, 2))).mean(dim=2)
        o, hn = self.gru(z[:, None, :], h)
        y = self.out(torch.cat([o[:, 0], m], dim=1))
        mn = torch.stack([0.5 * m[:, 0] + x[:, -1, 0], m[:, 1] + 1.0], dim=1)
        return y, hn, mn


TWO_LAYOUTS_CARD: dict[str, Any] = {
    "name": "two-layouts",
    "version": "1",
    "kind": "sensor",
    "window": 10,
    "hop": 5,
    "sample_shape": [6],
    "labels": ["a", "b", "c"],
    "input": "window",
    "output": "logits",
    "state": [
        {"input": "h_in", "output": "h_out", "shape": [1, 16], "batch_axis": 1},
        {"input": "m_in", "output": "m_out", "shape": [2], "batch_axis": 0},
    ],
}


def _step_both(torch_engine: Any, ort_engine: Any, card: ModelCard, steps: int = 12) -> None:
    """The worker's path (zero fresh slots, gather, infer, scatter) on both sides, for random
    slot sequences; outputs and every slab row must agree."""
    cap = 24
    specs = card.states
    assert torch_engine.spec.states == ort_engine.spec.states == specs
    tslab, nslab = TorchStateSlab("cpu", cap, states=specs), NumpyStateSlab(cap, states=specs)
    rng = np.random.default_rng(11)
    seen = np.zeros(cap, bool)
    for step in range(steps):
        b = int(rng.integers(1, cap + 1))
        slots = rng.choice(cap, size=b, replace=False)
        fresh = slots[~seen[slots]]
        seen[slots] = True
        tslab.zero(fresh)
        nslab.zero(fresh)
        x = random_inputs(card, b, seed=step)
        ty, *tnext = torch_engine.infer(x, *tslab.gather(slots))
        ny, *nnext = ort_engine.infer(x, *nslab.gather(slots))
        assert isinstance(ty, np.ndarray) and ty.shape == (b, len(card.labels))
        np.testing.assert_allclose(ty, ny, atol=1e-4, rtol=0)
        tslab.scatter(slots, *tnext)
        nslab.scatter(slots, *nnext)
        for a, c in zip(tslab.read(np.arange(cap)), nslab.read(np.arange(cap)), strict=True):
            np.testing.assert_allclose(a, c, atol=1e-4, rtol=0)
    assert seen.sum() > cap // 2


def test_torch_engine_steps_lstm_state_l_b_h_like_onnxruntime(sensor_model: Path) -> None:
    card = load_card(sensor_model)
    assert [s.batch_axis for s in card.states] == [1, 1]  # h, c: [L, B, Hd]
    _step_both(load_engine(sensor_model, "torch"), load_engine(sensor_model, "onnxruntime"), card)


def test_torch_engine_steps_batch_first_state_like_onnxruntime(tmp_path: Path) -> None:
    module = TwoLayouts()
    card = export_module(module, TWO_LAYOUTS_CARD, tmp_path / "two")
    assert [s.batch_axis for s in card.states] == [1, 0]
    engine = TorchEngine.from_module(TwoLayouts(), card, "cpu", cuda_graphs=True)  # graphs: CUDA only
    assert engine.spec.device == "cpu" and not engine._graphs
    _step_both(engine, load_engine(tmp_path / "two", "onnxruntime"), card)


def test_torch_engine_on_the_cpu_takes_torch_tensors_and_checks_the_state_count(sensor_model: Path) -> None:
    engine = load_engine(sensor_model, "torch")
    card = load_card(sensor_model)
    x = random_inputs(card, 3)
    h = torch.zeros(1, 3, 64)
    y1, *_ = engine.infer(torch.from_numpy(x), h, h)
    y2, *_ = engine.infer(x, h.numpy(), h.numpy())
    np.testing.assert_array_equal(y1, y2)
    from stream_infer.errors import EngineError

    with pytest.raises(EngineError, match="1 state tensors given, the model takes 2"):
        engine.infer(x, h)


# --- the same path on a GPU (skipped without one) ----------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.cuda.is_available() is false: no NVIDIA GPU")
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_torch_engine_on_cuda_steps_batch_first_state_like_onnxruntime(
    tmp_path: Path, cuda_graphs: bool
) -> None:
    card = export_module(TwoLayouts(), TWO_LAYOUTS_CARD, tmp_path / "two")
    gpu = TorchEngine.from_module(TwoLayouts(), card, "cuda:0", cuda_graphs=cuda_graphs)
    ort = load_engine(tmp_path / "two", "onnxruntime")
    cap = 24
    gslab, nslab = TorchStateSlab("cuda:0", cap, states=card.states), NumpyStateSlab(cap, states=card.states)
    rng = np.random.default_rng(5)
    for step in range(8):
        b = int(rng.integers(1, cap + 1))
        slots = rng.choice(cap, size=b, replace=False)
        x = random_inputs(card, b, seed=step)
        gy, *gnext = gpu.infer(torch.from_numpy(x).to("cuda:0"), *gslab.gather(slots))
        ny, *nnext = ort.infer(x, *nslab.gather(slots))
        np.testing.assert_allclose(gy.cpu().numpy(), ny, atol=1e-4, rtol=0)
        gslab.scatter(slots, *gnext)
        nslab.scatter(slots, *nnext)
    for a, c in zip(gslab.read(np.arange(cap)), nslab.read(np.arange(cap)), strict=True):
        np.testing.assert_allclose(a, c, atol=1e-4, rtol=0)
