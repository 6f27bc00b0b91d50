"""Memory readings (real CPU path, faked CUDA/NVML paths) and the MemoryMonitor widget."""

from __future__ import annotations

import gc
import math
import subprocess
import sys
import textwrap
import threading
import time
from types import SimpleNamespace

import psutil
import pytest
import torch

from hfllm_nb import GenerationStats, MemoryMonitor
from hfllm_nb.core import memory
from hfllm_nb.core.memory import PeakTracker, format_bytes, read_memory

GiB, MiB = 2**30, 2**20


class FakeNvml:
    """Stands in for pynvml: two physical GPUs, 80 GiB each, and a call log."""

    def __init__(self, used=(10 * GiB, 20 * GiB), fail_init=False, fail_read=()):
        self.used, self.fail_init, self.fail_read = list(used), fail_init, set(fail_read)
        self.calls: list[tuple] = []

    def nvmlInit(self):
        self.calls.append(("init",))
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlDeviceGetHandleByIndex(self, index):
        self.calls.append(("index", index))
        return index

    def nvmlDeviceGetHandleByUUID(self, uuid):
        self.calls.append(("uuid", uuid))
        return 1

    def nvmlDeviceGetMemoryInfo(self, handle):
        if handle in self.fail_read:
            raise RuntimeError("GPU is lost")
        return SimpleNamespace(used=self.used[handle], total=80 * GiB, free=80 * GiB - self.used[handle])

    def nvmlDeviceGetName(self, handle):
        return f"Fake H100 #{handle}".encode()  # older pynvml returns bytes


@pytest.fixture
def fake_gpus(monkeypatch):
    """Two fake CUDA devices as torch sees them; returns a dict to change their numbers."""
    state = {"allocated": [1 * GiB, 2 * GiB], "reserved": [3 * GiB, 4 * GiB], "initialized": False}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda i: state["allocated"][i])
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda i: state["reserved"][i])
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: state["initialized"])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return state


def use_nvml(monkeypatch, fake):
    monkeypatch.setattr(memory, "_nvml", memory._Nvml(fake))
    return fake


# ---------------------------------------------------------------- format_bytes


def test_format_bytes_uses_binary_units():
    assert format_bytes(0) == "0 B"
    assert format_bytes(1023) == "1023 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(5 * MiB) == "5.0 MiB"
    assert format_bytes(3 * GiB) == "3.00 GiB"
    assert format_bytes(int(79.6 * GiB)) == "79.60 GiB"
    assert format_bytes(2 * 2**40) == "2.00 TiB"


def test_format_bytes_rejects_negatives_and_non_integers():
    with pytest.raises(ValueError, match="≥ 0"):
        format_bytes(-1)
    with pytest.raises(TypeError, match="int number of bytes"):
        format_bytes(1.5)
    with pytest.raises(TypeError):
        format_bytes(True)


# ---------------------------------------------------------------- real CPU path


def test_read_memory_on_cpu_reports_this_process_and_system_ram(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    snapshot = read_memory()
    assert snapshot.gpus == ()
    host = snapshot.host
    assert host.total == psutil.virtual_memory().total
    assert 0 < host.used <= host.total
    assert math.isclose(host.rss, psutil.Process().memory_info().rss, rel_tol=0.2)
    text = str(snapshot)
    assert "Process RSS: " in text and "System RAM: " in text
    assert "MiB" in text or "GiB" in text


def run_in_fresh_python(code: str) -> None:
    """Run ``code`` in a new interpreter: a long test session's heap can hide a new allocation from RSS
    (seen in the full suite, where RSS stayed flat while 64 MiB were written), so RSS peaks are measured
    in a process whose only history is the check itself."""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]


def test_peak_tracker_sees_a_short_lived_allocation():
    run_in_fresh_python(
        """
        import time
        from hfllm_nb.core.memory import PeakTracker
        MiB = 2**20
        with PeakTracker(interval=0.005) as tracker:
            block = b"\\x01" * (96 * MiB)  # written, so resident (unlike a fresh bytearray)
            time.sleep(0.1)
            del block
        peak = tracker.peak
        assert peak.rss - peak.rss_start >= 64 * MiB, peak
        assert peak.samples >= 3, peak
        assert not tracker.running
        assert "RSS" in str(peak) and "MiB" in str(peak)
        """
    )


def test_peak_tracker_thread_ends_on_stop():
    before = threading.active_count()
    tracker = PeakTracker(interval=0.01).start()
    assert tracker.running and threading.active_count() == before + 1
    tracker.stop()
    assert not tracker.running and threading.active_count() == before


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (0, ValueError),
        (-1.0, ValueError),
        (math.nan, ValueError),
        (math.inf, ValueError),
        ("1", TypeError),
        (True, TypeError),
        (None, TypeError),
    ],
)
def test_sampling_interval_must_be_a_positive_number(bad, error):
    with pytest.raises(error, match="interval"):
        PeakTracker(interval=bad)
    with pytest.raises(error, match="interval"):
        MemoryMonitor(interval=bad)


# ---------------------------------------------------------------- fake CUDA / NVML paths


def test_gpu_readings_combine_torch_and_nvml(fake_gpus, monkeypatch):
    fake = use_nvml(monkeypatch, FakeNvml())
    gpus = read_memory().gpus
    assert [g.index for g in gpus] == [0, 1]
    assert gpus[0].name == "Fake H100 #0"
    assert (gpus[0].allocated, gpus[0].reserved) == (1 * GiB, 3 * GiB)
    assert (gpus[1].used, gpus[1].total) == (20 * GiB, 80 * GiB)
    assert gpus[1].fraction == 0.25
    assert str(gpus[0]) == ("GPU 0 (Fake H100 #0): used 10.00 GiB / 80.00 GiB, allocated 1.00 GiB, reserved 3.00 GiB")
    read_memory()
    assert fake.calls.count(("init",)) == 1  # NVML starts once per process


def test_gpu_readings_without_nvml_keep_torch_numbers_and_never_start_cuda(fake_gpus, monkeypatch):
    fake = use_nvml(monkeypatch, FakeNvml(fail_init=True))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: pytest.fail("would create a CUDA context"))
    gpus = read_memory().gpus
    read_memory()
    assert fake.calls == [("init",)]  # a failed init is not retried on every refresh
    assert gpus[1].name == "cuda:1"
    assert (gpus[1].allocated, gpus[1].reserved, gpus[1].used, gpus[1].total) == (
        2 * GiB,
        4 * GiB,
        None,
        None,
    )
    assert gpus[1].fraction is None
    assert "used" not in str(gpus[1]) and "reserved 4.00 GiB" in str(gpus[1])


def test_gpu_readings_without_nvml_ask_cuda_once_it_is_running(fake_gpus, monkeypatch):
    use_nvml(monkeypatch, None)  # nvidia-ml-py not installed
    fake_gpus["initialized"] = True
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (70 * GiB, 80 * GiB))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "CUDA says H100")
    gpu = read_memory().gpus[0]
    assert (gpu.name, gpu.used, gpu.total) == ("CUDA says H100", 10 * GiB, 80 * GiB)


def test_nvml_error_on_one_gpu_only_blanks_that_gpu(fake_gpus, monkeypatch):
    use_nvml(monkeypatch, FakeNvml(fail_read={0}))
    gpus = read_memory().gpus
    assert gpus[0].used is None and gpus[0].allocated == 1 * GiB
    assert gpus[1].used == 20 * GiB


def test_nvml_follows_cuda_visible_devices(fake_gpus, monkeypatch):
    fake = use_nvml(monkeypatch, FakeNvml())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    assert read_memory().gpus[0].used == 20 * GiB  # torch's cuda:0 is physical GPU 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-1234-abcd")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    read_memory()
    assert ("uuid", "GPU-1234-abcd") in fake.calls


def test_peak_tracker_records_the_highest_gpu_allocation(fake_gpus, monkeypatch):
    use_nvml(monkeypatch, FakeNvml())
    tracker = PeakTracker(interval=0.002).start()
    fake_gpus["allocated"] = [5 * GiB, 2 * GiB]
    deadline = time.monotonic() + 5
    while tracker.peak.gpu_allocated[0] < 5 * GiB and time.monotonic() < deadline:
        time.sleep(0.005)
    fake_gpus["allocated"] = [1 * GiB, 2 * GiB]
    peak = tracker.stop()
    assert peak.gpu_allocated == (5 * GiB, 2 * GiB)
    assert peak.gpu_allocated_start == (1 * GiB, 2 * GiB)
    assert "GPU 0 allocated 5.00 GiB" in str(peak)


# ---------------------------------------------------------------- MemoryMonitor widget


@pytest.fixture
def make_monitor():
    monitors = []

    def make(*args, **kwargs):
        monitors.append(MemoryMonitor(*args, **kwargs))
        return monitors[-1]

    yield make
    for monitor in monitors:
        monitor.close()


def test_monitor_readout_has_units_without_gpu(make_monitor, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monitor = make_monitor()
    lines = monitor.text.splitlines()
    assert [line.split(":")[0] for line in lines] == ["Process RSS", "System RAM"]
    assert all(line.endswith(("MiB", "GiB", "used")) for line in lines)
    assert "GiB" in lines[1]
    assert 0 < monitor._ram_row.bar.value <= 1


def test_monitor_shows_each_gpu_with_a_bar(fake_gpus, make_monitor, monkeypatch):
    use_nvml(monkeypatch, FakeNvml(used=(72 * GiB, 20 * GiB)))
    monitor = make_monitor()
    assert monitor.text.splitlines()[:2] == [
        "GPU 0 (Fake H100 #0): used 72.00 GiB / 80.00 GiB, allocated 1.00 GiB, reserved 3.00 GiB",
        "GPU 1 (Fake H100 #1): used 20.00 GiB / 80.00 GiB, allocated 2.00 GiB, reserved 4.00 GiB",
    ]
    bars = [row.bar for row in monitor._gpu_rows]
    assert [b.value for b in bars] == [0.9, 0.25]
    assert [b.bar_style for b in bars] == ["danger", "success"]


def test_monitor_refreshes_in_the_background_until_closed(make_monitor, monkeypatch):
    reads = []
    real_read = memory.read_memory

    def counting_read():
        reads.append(threading.current_thread().name)
        return real_read()

    monkeypatch.setattr("hfllm_nb.widgets.monitor.read_memory", counting_read)
    monitor = make_monitor(interval=0.01)
    deadline = time.monotonic() + 5
    while reads.count("hfllm_nb-memory") < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert reads.count("hfllm_nb-memory") >= 3
    monitor.close()
    assert not monitor.running
    after_close = len(reads)
    time.sleep(0.1)
    assert len(reads) == after_close


def test_monitor_interval_can_change_but_stays_validated(make_monitor):
    monitor = make_monitor(interval=2)
    monitor.interval = 0.5
    assert monitor.interval == 0.5
    with pytest.raises(ValueError, match="positive"):
        monitor.interval = -3


def test_monitor_track_shows_the_peak_of_the_block():
    run_in_fresh_python(
        """
        import time
        from hfllm_nb.widgets.monitor import MemoryMonitor
        MiB = 2**20
        monitor = MemoryMonitor()
        try:
            with monitor.track() as tracking:
                block = b"\\x01" * (64 * MiB)
                time.sleep(0.3)  # several 0.05 s samples, even on a busy machine
                del block
            assert tracking.peak is monitor.last_peak
            assert tracking.peak.rss - tracking.peak.rss_start >= 48 * MiB, tracking.peak
            assert monitor.text.splitlines()[-1].startswith("Peak during last generation: RSS ")
        finally:
            monitor.close()
        """
    )


class FakeLLM:
    """What a MemoryMonitor reads from a model: its device, engine line and last stats (weakly referenced)."""

    def __init__(self, device: torch.device, engine_description: str) -> None:
        self.device, self.engine_description, self.last_stats = device, engine_description, None


def stats_with_peak(peak: int | None) -> GenerationStats:
    return GenerationStats(5, 10, 1.0, 0.1, ("length",), "max_new_tokens=10", peak_gpu_memory=peak)


def test_monitor_prefers_the_exact_cuda_peak_from_the_model(fake_gpus, make_monitor, monkeypatch):
    use_nvml(monkeypatch, FakeNvml())
    model = FakeLLM(torch.device("cuda", 1), "cuda:1 · bfloat16")
    monitor = make_monitor(llm=model)
    monitor.generation_started()
    # torch's own counter saw a spike the sampler missed
    model.last_stats = stats_with_peak(7 * GiB)
    peak = monitor.generation_finished()
    assert peak.gpu_allocated == (1 * GiB, 7 * GiB)
    assert "GPU 1 allocated 7.00 GiB" in monitor.text
    # stats left over from an earlier run are not mistaken for this one's
    monitor.generation_started()
    assert monitor.generation_finished().gpu_allocated == (1 * GiB, 2 * GiB)


def test_monitor_names_where_the_model_runs(make_monitor):
    monitor = make_monitor(llm=FakeLLM(torch.device("cpu"), "remote · http://127.0.0.1:8000/v1 · some-model"))
    assert "Model: remote · http://127.0.0.1:8000/v1 · some-model" in monitor.text.splitlines()
    assert "Model:" not in make_monitor().text  # no model, no line


def test_monitor_does_not_keep_its_model_alive(make_monitor):
    model = FakeLLM(torch.device("cpu"), "cpu · float32")
    monitor = make_monitor(llm=model)
    assert monitor.llm is model
    monitor.generation_started()
    del model
    gc.collect()
    assert monitor.llm is None  # a readout left on screen must not hold a model's weights
    assert monitor.generation_finished() is not None  # and it keeps working without one
    assert monitor.running
