"""The thread policy: spinning threads only on an idle CPU, and cores given back when others take them."""
import subprocess
import sys
import time

import pytest
import torch

from kdcore.cpu_load import can_watch, machine_busy_s, others_busy_now, others_cores, threads_for, usable_cpus
from kdcore.engine.cpu_watch import WINDOW_S, CpuWatch

CPU = torch.device("cpu")
needs_proc_stat = pytest.mark.skipif(not can_watch(), reason="reads Linux's /proc/stat")


def test_others_load_is_the_machines_minus_this_processs():
    assert others_cores(busy_s=3.0, own_s=1.0, elapsed_s=2.0) == 1.0
    assert others_cores(busy_s=1.0, own_s=1.2, elapsed_s=1.0) == 0.0  # tick rounding never goes negative
    assert others_cores(busy_s=1.0, own_s=0.0, elapsed_s=0.0) == 0.0


@pytest.mark.parametrize("configured, cores, others, expected", [
    (2, 2, 0.0, 2), (2, 2, 0.5, 2), (2, 2, 0.6, 1), (2, 2, 1.0, 1), (2, 2, 2.0, 1),  # at least one
    (4, 8, 3.0, 4), (8, 8, 3.0, 5), (8, 8, 2.7, 5), (8, 8, 2.5, 6),
])
def test_threads_left_for_this_process(configured, cores, others, expected):
    assert threads_for(configured, cores, others) == expected


@pytest.fixture
def busy_core():
    """A real process keeping one core busy."""
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(0.3)  # let it start spinning
    yield burner
    burner.kill()
    burner.wait()


@needs_proc_stat
def test_the_load_of_another_busy_process_is_seen(busy_core):
    assert machine_busy_s(usable_cpus()) > 0
    assert others_busy_now(0.5) >= 0.6


@needs_proc_stat
@pytest.mark.skipif(len(usable_cpus()) < 2, reason="needs two CPUs to give one back")
def test_a_spinning_process_gives_a_core_back_to_a_busy_process(busy_core, monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)  # spinning threads: the watch acts
    monkeypatch.delenv("KDCORE_CPU_WATCH", raising=False)
    cores = len(usable_cpus())
    before = torch.get_num_threads()
    torch.set_num_threads(cores)
    watch = CpuWatch(CPU)
    try:
        assert watch.active and watch.configured == cores
        deadline = time.monotonic() + 3 * WINDOW_S + 0.5
        while time.monotonic() < deadline:  # three windows of the burner at least one core busy
            time.sleep(0.05)
            watch.check()
        assert watch.threads < cores and torch.get_num_threads() == watch.threads
        assert watch.changes >= 1
        watch.close()
        assert torch.get_num_threads() == cores
    finally:
        torch.set_num_threads(before)


def test_sleeping_threads_one_thread_or_a_watch_turned_off_are_left_alone(monkeypatch):
    monkeypatch.setenv("KDCORE_CPU_WATCH", "0")
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert not CpuWatch(CPU, configured=2).active
    monkeypatch.delenv("KDCORE_CPU_WATCH")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert not CpuWatch(CPU, configured=2).active
    monkeypatch.delenv("OMP_WAIT_POLICY")
    assert not CpuWatch(CPU, configured=1).active
    assert not CpuWatch(torch.device("meta"), configured=2).active


def test_kdcore_decides_the_wait_policy_before_torch_loads_and_a_child_decides_again():
    probe = ("import os, kdcore, torch; print(os.environ.get('OMP_WAIT_POLICY', 'spin'), "
             "os.environ['KDCORE_CHOSE_OMP_WAIT_POLICY'])")
    env = {"PATH": "/usr/bin:/bin", "OMP_WAIT_POLICY": "PASSIVE", "KDCORE_CHOSE_OMP_WAIT_POLICY": "1"}
    chosen = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    policy, marker = chosen.stdout.split()
    assert policy in ("spin", "PASSIVE") and marker == "1"  # decided from the load now, not inherited
    mine = subprocess.run([sys.executable, "-c", "import os, kdcore; print(os.environ['OMP_WAIT_POLICY'])"],
                          env={"PATH": "/usr/bin:/bin", "OMP_WAIT_POLICY": "ACTIVE"}, capture_output=True,
                          text=True, check=True)
    assert mine.stdout.strip() == "ACTIVE"  # the user's own is kept


@needs_proc_stat
@pytest.mark.skipif(len(usable_cpus()) < 2, reason="needs two CPUs to give one back")
def test_a_fit_gives_a_core_back_while_another_process_is_busy_and_says_so(busy_core, monkeypatch):
    from kdcore.configure import build_config
    from kdcore.data import load_dataset
    from kdcore.engine.trainer import fit
    from kdcore.models import create_model

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("KDCORE_CPU_WATCH", raising=False)
    config = build_config({"dataset": {"name": "digits"}, "teacher": {"arch": "mlp_tiny"},
                           "student": {"arch": "mlp_tiny"}, "train": {"epochs": 1000, "batch_size": 32}})
    data = load_dataset(config.dataset)
    model = create_model("mlp_tiny", num_classes=10, in_channels=1, image_size=data.image_size)
    before = torch.get_num_threads()
    torch.set_num_threads(len(usable_cpus()))
    started = time.monotonic()
    try:  # three of the watch's windows with the other process busy, then stop
        result = fit(model, data, phase="baseline", epochs=1000, train_cfg=config.train, device=CPU,
                     callback=lambda event: None, should_stop=lambda: time.monotonic() - started > 3 * WINDOW_S + 0.5)
        assert result.cancelled and result.threads_lowered >= 1
        assert torch.get_num_threads() == len(usable_cpus())  # given back when the fit ends
    finally:
        torch.set_num_threads(before)
