"""A rank that stops making progress, or dies, never leaves the others waiting: the job ends promptly and non-zero.
- stopped (SIGSTOP: alive but stuck, like a rank spinning in a kernel or a lost message): the other ranks' watchdogs
  see no progress for --step-timeout seconds, say what they were waiting for, and abort the job;
- killed (SIGKILL): the launcher sees a rank die and ends the job;
- stopped while every step runs with sequence parallelism (peers waiting in reduce-scatters and all-gathers): the
  same as stopped.
Neither leaves the tp all-reduce's shared memory behind in /dev/shm (an anonymous memory file: it has no name there).
"""
import glob
import os
import signal
import subprocess
import time

from harness import Harness

h = Harness(__doc__)
model = h.init("model", "--preset", "tiny", "-tp", "2", "-pp", "2")
h.write("many.txt", "".join(f"prompt number {i}\n" for i in range(64)))


def strata_ranks(parent):
    """PIDs of the strata processes under mpiexec `parent` (its direct children)."""
    out = subprocess.run(["ps", "-o", "pid=,ppid=,comm="], stdout=subprocess.PIPE, text=True).stdout
    return [int(pid) for pid, ppid, comm in (line.split() for line in out.splitlines())
            if comm == "strata" and int(ppid) == parent]


def run_and_signal(sig, label, *flags):
    cmd = [h.args.mpiexec, "-n", "4", "--oversubscribe", h.args.strata, "generate", "--model", model, "--prompts",
           h.path("many.txt"), "--output", h.path(f"{label}.jsonl"), "--overwrite", "-tp", "2", "-pp", "2",
           "--max-tokens", "400", "--step-timeout", "3", *flags]
    start = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=h.work)
    victim = None
    while time.time() - start < 30 and victim is None:  # wait until generation is under way
        time.sleep(0.5)
        ranks = strata_ranks(p.pid)
        if len(ranks) == 4 and os.path.exists(h.path(f"{label}.jsonl")):
            victim = sorted(ranks)[-1]
    h.check(victim is not None, f"{label}: the job never started generating")
    if victim is not None:
        os.kill(victim, sig)
    try:
        out, _ = p.communicate(timeout=40)
        code = p.returncode
    except subprocess.TimeoutExpired:
        p.kill()
        out, code = p.communicate()[0], None
    elapsed = time.time() - start
    h.check(code is not None, f"{label}: the job hung after one rank was {label}\n{out}")
    h.check(code not in (None, 0), f"{label}: expected a non-zero exit, got {code}\n{out}")
    print(f"{label}: job ended with {code} after {elapsed:.1f} s")
    return out or ""


def shm_segments():
    """Named shared-memory segments of the tensor-parallel all-reduce (it uses an anonymous memory file, which has
    no name there: this guards against a named one left behind by a killed job)."""
    return set(glob.glob("/dev/shm/strata-*"))


segments_before = shm_segments()
out = run_and_signal(signal.SIGSTOP, "stopped")
h.check("no progress for" in out and "aborting the job (--step-timeout)" in out,
        f"stopped: the surviving ranks must say they saw no progress\n{out}")
h.check("waiting for" in out, f"stopped: the message must say what the rank was waiting for\n{out}")
run_and_signal(signal.SIGKILL, "killed")
# Every step with sequence parallelism: the peers of the stopped rank wait in its reduce-scatters and all-gathers.
out = run_and_signal(signal.SIGSTOP, "stopped-sp", "--sequence-parallel-tokens", "1")
h.check("no progress for" in out and "aborting the job (--step-timeout)" in out,
        f"stopped under sequence parallelism: the surviving ranks must say they saw no progress\n{out}")
left = shm_segments() - segments_before
h.check(not left, f"the jobs ended with their all-reduce segments still in /dev/shm: {sorted(left)}")
h.finish()
