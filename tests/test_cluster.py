"""The grid on a cluster: the scheduler's retries, failures and skips driven by a fake executor (no cluster), the
Slurm settings, locks on filesystems without flock, and one chain of runs on a real one-node Slurm (slow; it skips
without one, see .ci/slurm-up.sh)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY, wbc
from wbclib import WbcError
from wbclib.core import storage
from wbclib.study import cluster, runner
from wbclib.training import runs

# -- the scheduler, with a fake executor -------------------------------------------------------------------------


class FakeExecutor:
    """Ends each job as scripted, one outcome per start: ``{"prcc-s0": ["died", "finished"]}``; unscripted jobs
    finish. A finished job leaves a metrics.json, as a real one does."""

    def __init__(self, runs_dir: Path, script: dict[str, list[str]], capacity: int = 2):
        self.runs_dir, self.script, self.capacity = runs_dir, {k: list(v) for k, v in script.items()}, capacity
        self.queue: list = []
        self.started: list[str] = []
        self.closed = False

    def submit(self, job, params):
        assert params["run_dir"] == str((self.runs_dir / job.id).resolve())
        if job.depends:  # a job is handed over only once its starting point has finished
            assert (self.runs_dir / job.depends / "metrics.json").is_file(), job.id
        self.started.append(job.id)
        self.queue.append(job)

    def wait(self):
        job = self.queue.pop(0)
        outcome = (self.script.get(job.id) or ["finished"]).pop(0)
        job.status, job.detail, job.seconds = outcome, "" if outcome == "finished" else f"it {outcome}", 1.0
        if outcome == "finished":
            storage.write_json(self.runs_dir / job.id / "metrics.json", {"accuracy": 0.5})
        return [job]

    def close(self):
        self.closed = True


def grid_of(tmp_path, pattern="cam16-*"):
    """prcc-s0, then four CAM16 runs, two of which start from prcc-s0."""
    runs_dir = tmp_path / "runs"
    jobs = runner.select(runner.grid([0]), pattern)
    configs = {j.id: runner.job_config(j, "quick", None, runs_dir, {}, "synthetic") for j in jobs}
    return jobs, configs, runs_dir


def run(tmp_path, script, retries=0, pattern="cam16-*"):
    jobs, configs, runs_dir = grid_of(tmp_path, pattern)
    fake, lines = FakeExecutor(runs_dir, script), []
    runner.run_grid(jobs, configs, runs_dir, log=lines.append, executor=fake, retries=retries)
    assert fake.closed
    return {j.id: j for j in jobs}, fake, "\n".join(lines)


def test_a_run_whose_process_died_is_started_again_and_its_dependants_run(tmp_path):
    jobs, fake, log = run(tmp_path, {"prcc-s0": ["died", "died", "finished"]}, retries=2)
    assert jobs["prcc-s0"].status == "finished" and jobs["prcc-s0"].attempts == 3
    assert fake.started.count("prcc-s0") == 3 and "starting it again (1/2)" in log and "(2/2)" in log
    assert all(j.status == "finished" for j in jobs.values()), log
    assert fake.started.index("cam16-ce-prcc-s0") > 2  # after the third start of its starting point


def test_a_run_that_keeps_dying_fails_after_its_retries_and_its_dependants_are_skipped(tmp_path):
    jobs, fake, log = run(tmp_path, {"prcc-s0": ["died", "died", "died"]}, retries=1)
    assert jobs["prcc-s0"].status == "failed" and fake.started.count("prcc-s0") == 2
    assert "starting it again (1/1)" in log and "(2/1)" not in log
    for rid in ("cam16-ce-prcc-s0", "cam16-ce-prcc-dice-s0"):
        assert jobs[rid].status == "skipped" and rid not in fake.started
    assert jobs["cam16-ce-s0"].status == jobs["cam16-ce-dice-s0"].status == "finished"
    assert "1 failed, 2 skipped" in runner.summary(list(jobs.values()))


def test_a_notebook_that_raised_is_not_retried_its_dependants_are_skipped_the_others_finish(tmp_path):
    jobs, fake, log = run(tmp_path, {"prcc-s0": ["failed"]}, retries=3)
    assert jobs["prcc-s0"].status == "failed" and fake.started.count("prcc-s0") == 1
    assert "starting it again" not in log
    assert {rid for rid, j in jobs.items() if j.status == "skipped"} == {"cam16-ce-prcc-s0", "cam16-ce-prcc-dice-s0"}
    assert "FAILED prcc-s0: it failed" in runner.summary(list(jobs.values()))


def test_without_retries_a_died_run_is_reported_failed(tmp_path):
    jobs, fake, _ = run(tmp_path, {"cam16-ce-s0": ["died"]})
    assert jobs["cam16-ce-s0"].status == "failed" and fake.started.count("cam16-ce-s0") == 1


def test_a_detached_grid_submits_dependants_behind_their_starting_point(tmp_path):
    jobs, configs, runs_dir = grid_of(tmp_path)

    class Detached(FakeExecutor):
        def submit(self, job, params):  # nothing has finished: the cluster holds dependants with afterok
            self.started.append(job.id)
            self.queue.append(job)

    fake = Detached(runs_dir, {j.id: ["submitted"] for j in jobs})
    runner.run_grid(jobs, configs, runs_dir, log=lambda line: None, executor=fake)
    assert [j.status for j in jobs] == ["submitted"] * 5 and fake.started[0] == "prcc-s0"
    assert runner.summary(jobs).startswith("study: 0 finished, 0 reused, 0 failed, 0 skipped, 5 submitted")


def test_finished_runs_are_reused_and_never_handed_to_the_executor(tmp_path):
    jobs, configs, runs_dir = grid_of(tmp_path, "cam16-ce-s0")
    job = jobs[0]
    (runs_dir / job.id).mkdir(parents=True)
    storage.write_atomic(runs_dir / job.id / "config.json", configs[job.id].to_json())
    storage.write_json(runs_dir / job.id / "metrics.json", {"accuracy": 0.5})
    (runs_dir / job.id / "train.ipynb").write_text(json.dumps({"metadata": {"papermill": {"end_time": "x"}}}))
    fake = FakeExecutor(runs_dir, {})
    runner.run_grid(jobs, configs, runs_dir, log=lambda line: None, executor=fake)
    assert job.status == "reused" and fake.started == []


def test_an_interrupted_grid_closes_its_executor_which_names_what_it_leaves_running(tmp_path):
    jobs, configs, runs_dir = grid_of(tmp_path)

    class Interrupted(FakeExecutor):
        def wait(self):
            raise KeyboardInterrupt

    fake = Interrupted(runs_dir, {})
    with pytest.raises(KeyboardInterrupt):
        runner.run_grid(jobs, configs, runs_dir, log=lambda line: None, executor=fake)
    assert fake.closed and fake.started == ["prcc-s0", "cam16-ce-s0"]  # its capacity: two at a time


# -- settings and flags -------------------------------------------------------------------------------------------


def test_slurm_settings_from_a_file_with_flags_on_top(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text("slurm:\n  partition: gpu\n  account: lab\n  time: '2:00:00'\n  cpus: 8\n"
                    "  sbatch: {qos: normal}\n  setup: ['module load cuda']\n")
    s = cluster.load_settings(str(path), partition="a100", time=None, sbatch={"constraint": "h100"})
    assert (s.partition, s.account, s.cpus, s.gpus, s.setup) == ("a100", "lab", 8, 1, ["module load cuda"])
    assert s.sbatch == {"qos": "normal", "constraint": "h100"} and s.timeout_min() == 120
    assert [cluster.parse_time(t) for t in ("90", "1:30:00", "0:00:30", "1-12", "2-00:00:00")] == [90, 90, 1, 2160,
                                                                                                     2880]
    path.write_text("partition: gpu\nqueue: long\n")
    with pytest.raises(WbcError, match=r"cluster\.yaml: unknown key\(s\) queue; expected a YAML mapping"):
        cluster.load_settings(str(path))
    with pytest.raises(WbcError, match="--time 'soon'"):
        cluster.load_settings(None, time="soon")
    assert cluster.parse_sbatch(["qos=high", "--mail-type=END"]) == {"qos": "high", "mail_type": "END"}
    with pytest.raises(WbcError, match="expected KEY=VALUE"):
        cluster.parse_sbatch(["exclusive"])


def test_cluster_flags_without_the_slurm_executor_and_slurm_missing_are_one_line_errors(tmp_path):
    p = wbc(["study", "--partition", "gpu", "--runs-dir", str(tmp_path / "runs")], tmp_path, timeout=120)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "go with --executor slurm" in p.stderr
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}  # no sbatch on it
    p = subprocess.run([sys.executable, "-m", "wbclib.cli", "study", "--executor", "slurm", "--runs-dir",
                        str(tmp_path / "runs")], capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 2 and "sbatch, sacct, scancel not found on PATH" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and not (tmp_path / "runs").exists()


# -- locks on filesystems without flock ---------------------------------------------------------------------------

NO_FLOCK = """
import errno, fcntl, sys, types
from wbclib import WbcError
from wbclib.core import storage
def no(fd, op):
    raise OSError(errno.ENOLCK, "No locks available")
storage.fcntl = types.SimpleNamespace(LOCK_EX=fcntl.LOCK_EX, LOCK_NB=fcntl.LOCK_NB, flock=no,
                                   lockf=no if sys.argv[2] == "none" else fcntl.lockf)
try:
    lock = storage.FolderLock(sys.argv[1], "runs folder").acquire()
except WbcError as exc:
    print(type(exc).__name__, exc)
    sys.exit(3)
print("locked", lock.note)
sys.stdout.flush()
sys.stdin.read()
"""


def test_without_flock_the_lock_falls_back_to_a_record_lock_that_still_tells_a_second_process(tmp_path):
    def start(mode):
        return subprocess.Popen([sys.executable, "-c", NO_FLOCK, str(tmp_path), mode], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)

    holder = start("fcntl")
    try:
        line = holder.stdout.readline()
        assert line.startswith("locked note:") and "does not support flock" in line and "POSIX record lock" in line
        second = start("fcntl")
        out, _ = second.communicate("", timeout=60)
        assert second.returncode == 3 and out.startswith("Busy runs folder") and f"pid {holder.pid}" in out, out
    finally:
        holder.communicate("", timeout=60)
    third = start("none")
    out, _ = third.communicate("", timeout=60)
    assert third.returncode == 3 and "supports neither flock nor POSIX record locks" in out and "-o flock" in out


def test_flock_held_by_another_process_is_busy_not_unsupported(tmp_path):
    first = storage.FolderLock(tmp_path, "runs folder").acquire()
    try:
        code = ("import sys\nfrom wbclib.core import storage\n"
                "try:\n storage.FolderLock(sys.argv[1], 'runs folder').acquire()\n"
                "except storage.Busy as e:\n print(e); sys.exit(3)")
        p = subprocess.run([sys.executable, "-c", code, str(tmp_path)],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 3 and f"in use by pid {os.getpid()}" in p.stdout and first.note == ""
    finally:
        first.release()
    assert errno.ENOLCK in storage._NO_FLOCK and errno.EWOULDBLOCK not in storage._NO_FLOCK


# -- a real Slurm ------------------------------------------------------------------------------------------------


def slurm_or_skip() -> None:
    """Skip unless a Slurm with accounting answers here (.ci/slurm-up.sh starts a one-node one)."""
    missing = [c for c in ("sbatch", "sacct", "scancel", "sinfo") if shutil.which(c) is None]
    if missing:
        pytest.skip(f"no Slurm here ({', '.join(missing)} not on PATH); `make slurm-up` starts a one-node one")
    for cmd, what in ((["sinfo", "-h", "-o", "%t"], "sinfo"), (["sacct", "-n", "-X", "-S", "now"], "sacct")):
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        if p.returncode != 0:
            pytest.skip(f"Slurm is not up ({what}: {(p.stderr.strip().splitlines() or ['no answer'])[-1]}); "
                        "`make slurm-up` starts a one-node one")
        if what == "sinfo" and not any(s.startswith(("idle", "mix", "alloc")) for s in p.stdout.split()):
            pytest.skip(f"Slurm has no usable node (sinfo: {p.stdout.strip() or 'none'})")


def history_and_metrics(run_dir: Path) -> tuple[str, dict]:
    m = storage.read_json(run_dir / "metrics.json")
    drop = {"timing_s", "wall_time_s", "throughput", "manifest", "environment", "images_per_s", "seconds"}
    return (run_dir / "history.csv").read_text(), {k: v for k, v in m.items() if k not in drop}


def comparable(history: str) -> list[list[str]]:
    """history.csv without its time columns."""
    rows = [r.split(",") for r in history.strip().splitlines()]
    keep = [i for i, name in enumerate(rows[0]) if name != "seconds" and "time" not in name]
    return [[r[i] for i in keep] for r in rows]


@pytest.mark.slow
def test_a_chain_on_slurm_survives_a_scancel_mid_run_and_ends_like_a_local_run(tmp_path):
    slurm_or_skip()
    chain = ["prcc-s0", "cam16-ce-prcc-dice-s0", "wbc1-pretrained-mask-s0"]  # each starts from the one before
    middle = chain[1]
    args = ["study", "--data", "synthetic", "--only", "wbc1-pretrained-mask-s0", "--no-book", "--set",
            "synthetic_scale=0.003", *TINY, "--set", "epochs=3"]
    env = {**os.environ, "WBC_CACHE": str(tmp_path / "cache")}
    local = subprocess.run([sys.executable, "-m", "wbclib.cli", *args, "--runs-dir", str(tmp_path / "local"),
                            "--jobs", "2"], capture_output=True, text=True, timeout=900, env=env)
    assert local.returncode == 0, local.stdout + local.stderr

    # The middle run stops after its second epoch's checkpoint (until killed): scancel ends it there.
    slurm_runs = tmp_path / "slurm"
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "wbclib.cli", *args, "--runs-dir", str(slurm_runs),
                               "--executor", "slurm", "--gpus", "0", "--cpus", "1", "--retries", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**env, "WBC_FAULT": "pause@after-checkpoint#2", "WBC_FAULT_RUN": middle})
    try:
        ckpt = slurm_runs / middle / runs.CHECKPOINT
        while not (ckpt.is_file() and runs.load_checkpoint(ckpt)["epoch"] == 2):
            assert proc.poll() is None and time.time() - t0 < 600, "the middle run never reached epoch 2"
            time.sleep(1)
        job_id = storage.read_json(slurm_runs / ".submitit" / "jobs.json")[middle]["job"]
        subprocess.run(["scancel", job_id], check=True, timeout=30)
        out, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    print(f"slurm chain: {time.time() - t0:.0f} s\n{out}")
    assert proc.returncode == 0, out
    assert "died" in out and f"Slurm job {job_id} ended CANCELLED" in out and "starting it again (1/1)" in out
    assert "study: 3 finished, 0 reused, 0 failed, 0 skipped" in out
    notebook = (slurm_runs / middle / "train.ipynb").read_text()
    assert "resume: continuing after epoch 2 of 3" in notebook  # the retry resumed, it did not start over
    for rid in chain:
        assert comparable(history_and_metrics(slurm_runs / rid)[0]) == \
            comparable(history_and_metrics(tmp_path / "local" / rid)[0]), rid
        assert history_and_metrics(slurm_runs / rid)[1] == history_and_metrics(tmp_path / "local" / rid)[1], rid
    assert not storage.read_json(slurm_runs / ".submitit" / "jobs.json")  # every outcome collected
