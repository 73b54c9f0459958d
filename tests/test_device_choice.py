"""How ``mx.gpu`` finds a GPU: driver probes run only where a GPU device node exists, so a machine without
a GPU never loads the CPU-emulated drivers (lavapipe, PoCL) just to learn it has none."""
import mlxarm.backend as backend


def test_no_device_node_means_no_probe(monkeypatch, tmp_path):
    probed = []
    monkeypatch.setattr(backend, "_GPU_NODES", (str(tmp_path / "renderD*"),))
    monkeypatch.setattr(backend, "_GPU", [])
    monkeypatch.setattr(backend, "_probe_vulkan", lambda: probed.append("vulkan"))
    monkeypatch.setattr(backend, "_probe_opencl", lambda: probed.append("opencl"))
    monkeypatch.delenv("MLXARM_DEVICE", raising=False)
    assert backend.gpu_device_nodes() == []
    assert backend.available_gpu_backend() is None and probed == []


def test_a_device_node_lets_the_drivers_decide(monkeypatch, tmp_path):
    node = tmp_path / "renderD128"
    node.touch()
    monkeypatch.setattr(backend, "_GPU_NODES", (str(tmp_path / "renderD*"),))
    monkeypatch.setattr(backend, "_GPU", [])
    monkeypatch.setattr(backend, "_probe_vulkan", lambda: None)
    monkeypatch.setattr(backend, "_probe_opencl", lambda: ("opencl", 0))
    monkeypatch.delenv("MLXARM_DEVICE", raising=False)
    assert backend.gpu_device_nodes() == [str(node)]
    assert backend.available_gpu_backend() == "opencl"
    monkeypatch.setenv("MLXARM_DEVICE", "numpy")  # a CPU executor named: no GPU is asked for
    assert backend.available_gpu_backend() is None
