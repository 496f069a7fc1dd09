"""CPU threads: the cores a process may really use (affinity, cgroup quota), shared among the ranks of one
machine, the user's own setting kept, and a warning when the machine is over-subscribed."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from segtune import threads
from segtune.threads import ThreadChoice, cgroup_cpu_quota, choose_threads, local_ranks, oversubscription


def _cgroup_v2(tmp_path: Path, cpu_max: str, own: str = "system.slice/job.scope") -> tuple[Path, Path]:
    proc, cgroup = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(f"0::/{own}\n")
    (cgroup / own).mkdir(parents=True)
    (cgroup / own / "cpu.max").write_text(cpu_max + "\n")
    return proc, cgroup


def test_a_container_quota_caps_the_cpus(tmp_path: Path) -> None:
    assert cgroup_cpu_quota(*_cgroup_v2(tmp_path / "a", "150000 100000")) == 1.5  # docker --cpus 1.5
    assert cgroup_cpu_quota(*_cgroup_v2(tmp_path / "b", "max 100000")) is None  # no limit
    v1 = tmp_path / "v1" / "cgroup" / "cpu,cpuacct"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(tmp_path / "v1" / "proc", tmp_path / "v1" / "cgroup") == 3.0
    assert cgroup_cpu_quota(tmp_path / "none", tmp_path / "none") is None
    assert threads.available_cpus(quota=1.5) <= 1.5


def test_the_ranks_of_one_machine_share_its_cpus() -> None:
    assert local_ranks({"LOCAL_WORLD_SIZE": "4"}) == 4
    assert local_ranks({"SLURM_NTASKS_PER_NODE": "2(x3)"}) == 2
    assert local_ranks({}) == 1
    assert choose_threads(cpus=8, ranks=3, environ={}).threads == 2
    assert choose_threads(cpus=2, ranks=4, environ={}).threads == 1  # never 0
    choice = choose_threads(cpus=1.5, ranks=1, environ={})
    assert choice.threads == 1 and "1.5 CPUs available" in choice.describe()


def test_the_users_own_setting_is_kept() -> None:
    assert choose_threads(cpus=8, environ={"OMP_NUM_THREADS": "3"}).describe() == "3 torch threads (OMP_NUM_THREADS=3)"
    assert choose_threads(cpus=8, environ={"OMP_NUM_THREADS": "3", "SEGTUNE_THREADS": "5"}).threads == 5


def test_over_subscription_is_named() -> None:
    assert "2 process(es) x 2 threads on 2 CPUs" in oversubscription(ThreadChoice(2, 2.0, 2, "OMP_NUM_THREADS=2"))
    assert "keeps 1.6 of its 2 CPUs busy" in oversubscription(ThreadChoice(2, 2.0, 1, "x"), busy=1.6)
    assert oversubscription(ThreadChoice(2, 2.0, 1, "x"), busy=0.2) is None


def test_busy_cpus_are_sampled_from_proc_stat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 1 2 3 4\n")
    # Between the two readings the machine spends 150 of 200 ticks busy (idle 50): 0.75 of every CPU.
    monkeypatch.setattr("time.sleep", lambda s: stat.write_text("cpu  175 0 175 850 0 0 0 0 0 0\n"))
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert threads.busy_cpus(stat=stat) == pytest.approx(1.5)


def test_configure_threads_sets_torch_and_warns_once(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_warned", False)
    monkeypatch.setattr(threads, "available_cpus", lambda: 2.0)
    try:
        with caplog.at_level(logging.WARNING, logger="segtune"):
            choice = threads.configure_threads(environ={"LOCAL_WORLD_SIZE": "2"})
            assert choice.threads == 1 and torch.get_num_threads() == 1
            assert threads.describe_threads() == "1 torch threads (2 CPUs available, shared by 2 ranks)"
            threads.configure_threads(environ={"SEGTUNE_THREADS": "4"})  # over-subscribed
            threads.configure_threads(environ={"SEGTUNE_THREADS": "4"})
        assert torch.get_num_threads() == 4
        assert caplog.text.count("1 process(es) x 4 threads on 2 CPUs") == 1
    finally:
        torch.set_num_threads(before)
