"""The README's programs run as documented."""

import os
import re
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, timeout=300):
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_quickstart():
    out = run("examples/quickstart.py")
    assert "(8, 64, 14, 14)" in out and "lowering=" in out


def test_port_from_torch():
    out = run("examples/port_from_torch.py")
    diff = float(re.search(r"max \|jconv - torch\| = (\S+)", out).group(1))
    assert diff < 1e-10


def test_train_digits_reaches_97_percent(tmp_path):
    out = run("examples/train_digits.py", "--plot", str(tmp_path / "plot.png"))
    accuracy = float(re.search(r"test accuracy: ([\d.]+)%", out).group(1))
    assert accuracy >= 97.0, out
    assert (tmp_path / "plot.png").stat().st_size > 1000


def test_train_digits_data_parallel_over_8_devices(tmp_path):
    env_flags = "--xla_force_host_platform_device_count=8"
    proc = subprocess.run([sys.executable, "examples/train_digits.py", "--data-parallel", "--plot",
                           str(tmp_path / "plot.png")], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": env_flags})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "data-parallel over 8 devices" in proc.stdout
    assert float(re.search(r"test accuracy: ([\d.]+)%", proc.stdout).group(1)) >= 97.0, proc.stdout


def test_flax_drop_in_trains_like_lax():
    out = run("examples/flax_drop_in.py", "--epochs", "1")
    assert float(re.search(r"largest relative loss difference: (\S+)", out).group(1)) < 1e-4, out
    curves = re.findall(r"loss ([\d. ]+) \|", out)
    assert len(curves) == 2 and all(float(c.split()[-1]) < float(c.split()[0]) for c in curves), out


def test_port_resnet_matches_torch_and_trains():
    """Small images keep it quick; the architectures, keys and layers are the full ones."""
    out = run("examples/port_resnet.py", "--batch", "2", "--size", "32", "--classes", "10", "--repeats", "1")
    for name, keys in (("ResNet-18", 122), ("MobileNetV2", 314)):
        assert re.search(rf"{name}: {keys} torch keys loaded \(IncompatibleKeys\(missing_keys=\[\], "
                         r"unexpected_keys=\[\]\)\)", out), out
        rel = float(re.search(rf"{name}: .*max relative error (\S+)", out).group(1))
        assert rel <= 1e-4, out
        first, second = map(float, re.search(rf"{name}: jitted training step, loss (\S+) -> (\S+)", out).groups())
        assert np.isfinite(first) and second < first, out
