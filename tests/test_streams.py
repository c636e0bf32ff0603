"""The second CUDA stream of GPU inference (birefnet.models.streams), checked on the CPU with fake streams:
the forward computes the same logits, and every piece of side work is joined back before it is read."""

from __future__ import annotations

import contextlib

import pytest
import torch

from birefnet import BiRefNet, BiRefNetConfig
from birefnet.models import birefnet as birefnet_module
from birefnet.models import decoder as decoder_module
from birefnet.models import streams


class _Log:
    def __init__(self) -> None:
        self.current = "main"
        self.calls: list[tuple] = []


class _FakeStream:
    def __init__(self, log: _Log, name: str) -> None:
        self.log, self.name = log, name

    def wait_stream(self, other: _FakeStream) -> None:
        self.log.calls.append(("wait_stream", self.name, other.name))

    def wait_event(self, event: _FakeEvent) -> None:
        event.waited_by.append(self.name)
        self.log.calls.append(("wait_event", self.name, event.label))


class _FakeEvent:
    def __init__(self, log: _Log) -> None:
        self.log, self.label, self.waited_by = log, None, []
        log.calls.append(("event", self))

    def record(self, stream: _FakeStream) -> None:
        self.label = len([c for c in self.log.calls if c[0] == "record"])
        self.recorded_on = stream.name
        self.log.calls.append(("record", stream.name, self.label))


@pytest.fixture
def fake_cuda(monkeypatch):
    """Fake CUDA streams and events: the side stream is "used" (its work runs at once on the CPU)."""
    log = _Log()
    main, side = _FakeStream(log, "main"), _FakeStream(log, "side")

    @contextlib.contextmanager
    def on(stream):
        previous, log.current = log.current, stream.name
        log.calls.append(("enter", stream.name))
        try:
            yield
        finally:
            log.current = previous
            log.calls.append(("leave", stream.name))

    def side_stream(x):
        return side if streams.ENABLED and not torch.is_grad_enabled() else None

    monkeypatch.setattr(birefnet_module, "side_stream", side_stream)
    monkeypatch.setattr(decoder_module, "side_stream", side_stream)
    monkeypatch.setattr(
        torch.cuda, "current_stream", lambda device=None: main if log.current == "main" else side
    )
    monkeypatch.setattr(torch.cuda, "stream", on)
    monkeypatch.setattr(torch.cuda, "Event", lambda *a, **k: _FakeEvent(log))
    return log


@pytest.mark.parametrize("inward", [True, False])
def test_two_stream_forward_equals_one_stream(fake_cuda, inward, monkeypatch):
    torch.manual_seed(0)
    model = BiRefNet(BiRefNetConfig(backbone="pvt_v2_b0", inward_reference=inward)).eval()
    x = torch.randn(1, 3, 64, 64)
    # The CPU's two-scale laterals (same function, other rounding) are never taken beside a side stream:
    # both forwards concatenate the multi-scale maps here, so they compare bit for bit.
    monkeypatch.setattr(birefnet_module, "TWO_SCALE_LATERALS", False)
    with torch.inference_mode():
        monkeypatch.setattr(streams, "ENABLED", False)
        one = model(x).logits
        assert not fake_cuda.calls  # one stream: no forks, no events
        monkeypatch.setattr(streams, "ENABLED", True)
        two = model(x).logits
    assert torch.equal(one, two)
    calls = fake_cuda.calls
    # the half-size backbone pass: forked from the main stream and joined back into it
    assert calls[0] == ("wait_stream", "side", "main")
    assert ("wait_stream", "main", "side") in calls
    # the decoder's work ahead: 8 pieces, each recorded on the side stream and waited for by the main one
    events = [c[1] for c in calls if c[0] == "event"]
    assert len(events) == 8
    assert all(e.recorded_on == "side" and e.waited_by == ["main"] for e in events)
    # each piece is waited for in the order it was made, and only after it was recorded
    waits = [c[2] for c in calls if c[0] == "wait_event"]
    assert waits == sorted(waits) == list(range(8))


def test_side_stream_only_for_cuda_inference():
    x = torch.zeros(1)
    with torch.inference_mode():
        assert streams.side_stream(x) is None  # CPU tensors never get one
    with torch.enable_grad():
        assert streams.side_stream(x) is None


def test_one_side_stream_per_thread_and_device(monkeypatch):
    """Two threads' forwards (two Predictors) never share a side stream: each allocation on one must follow
    a wait on its own forward's main stream (see birefnet.models.streams). None under CUDA autocast with
    its weight-cast cache on."""
    import threading
    from types import SimpleNamespace

    made = []

    def fake_stream(device):
        made.append(device)
        return object()

    monkeypatch.setattr(torch.cuda, "Stream", fake_stream)
    cuda0 = SimpleNamespace(device=torch.device("cuda", 0))  # side_stream reads only the device
    cuda1 = SimpleNamespace(device=torch.device("cuda", 1))
    with torch.inference_mode():
        first = streams.side_stream(cuda0)
        assert streams.side_stream(cuda0) is first  # kept: a captured graph refers to it
        assert streams.side_stream(cuda1) is not first
        other = []

        def in_other_thread():
            with torch.inference_mode():  # thread-local, like the streams
                other.append(streams.side_stream(cuda0))

        thread = threading.Thread(target=in_other_thread)
        thread.start()
        thread.join()
        assert other[0] is not None and other[0] is not first
        # CUDA autocast with its weight-cast cache: the streams would share the cached casts
        monkeypatch.setattr(streams, "autocast_enabled", lambda device_type: device_type == "cuda")
        monkeypatch.setattr(torch, "is_autocast_cache_enabled", lambda: True)
        assert streams.side_stream(cuda0) is None
        monkeypatch.setattr(torch, "is_autocast_cache_enabled", lambda: False)  # graph captures
        assert streams.side_stream(cuda0) is first
        monkeypatch.setattr(streams, "ENABLED", False)
        assert streams.side_stream(cuda0) is None
    assert made == [0, 1, 0]
