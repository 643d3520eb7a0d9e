"""Dynamic work sharing under dp 2: rank 0 hands prompts out as replicas have room. With replica 1 made slow (its
rank stopped 80% of the time), replica 0 runs most of the prompts, yet the results file is exactly that of a dp 1
run (input order, same greedy texts: a prompt's text does not depend on which replica ran it); --static-dp runs
exactly the i % dp split. Prompts sharing a start go preferably to the same replica (its prefix cache).
"""
import json
import os
import signal
import subprocess
import threading
import time

from harness import Harness

h = Harness(__doc__)
model = h.init("model", "--preset", "tiny", "--seed", "31")
system = "Always answer in one short sentence, please. "
prompts = h.write("prompts.jsonl", "".join(
    json.dumps({"id": i, "prompt": (system if i % 2 else "") + f"Item {i}: say something.", "max_tokens": 24})
    + "\n" for i in range(160)))
BASE = ["generate", "--model", model, "--prompts", prompts, "--overwrite", "--max-batch-size", 4, "-q"]

h.run_ok(BASE + ["--output", "dp1.jsonl"], ranks=1)


def ranks_of(tag):
    """World rank -> pid of the strata processes of the job whose environment carries STRATA_TEST_TAG=tag."""
    found = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(e.split(b"=", 1) for e in f.read().split(b"\0") if b"=" in e)
        except OSError:
            continue
        if env.get(b"STRATA_TEST_TAG") == tag.encode() and b"OMPI_COMM_WORLD_RANK" in env:
            found[int(env[b"OMPI_COMM_WORLD_RANK"])] = int(pid)
    return found


def run_with_slow_rank(name, extra, slow_rank):
    """dp 2 with world rank `slow_rank` stopped 80% of the time (SIGSTOP 20 ms, SIGCONT 5 ms) until the job ends.

    The period is short and the prompts many so that the generation itself, not only the load, spans many periods:
    with 40 prompts and stops of 0.2 s a faster host generated everything in ~30 ms, inside one running window of
    the slow rank, and the replicas ran 22 and 18 prompts."""
    cmd = [h.args.mpiexec, "-n", "2", "--oversubscribe", h.args.strata, *map(str, BASE), "--output", f"{name}.jsonl",
           "--metrics", f"{name}.metrics.json", "-dp", "2", *map(str, extra)]
    tag = f"dynamic-dp-{name}-{os.getpid()}"
    job = subprocess.Popen(cmd, cwd=h.work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env={**os.environ, "STRATA_TEST_TAG": tag})
    stop = threading.Event()

    def slow():
        pid = None
        while not stop.is_set() and pid is None:
            pid = ranks_of(tag).get(slow_rank)
            time.sleep(0.02)
        while not stop.is_set():
            try:
                os.kill(pid, signal.SIGSTOP)
                time.sleep(0.02)
                os.kill(pid, signal.SIGCONT)
                time.sleep(0.005)
            except ProcessLookupError:
                return

    t = threading.Thread(target=slow)
    t.start()
    try:
        out, _ = job.communicate(timeout=240)
    finally:
        stop.set()
        t.join()
        pid = ranks_of(tag).get(slow_rank)
        if pid:
            os.kill(pid, signal.SIGCONT)
    h.check(job.returncode == 0, f"{name}: exit {job.returncode}\n{out[-3000:]}")
    with open(h.path(f"{name}.metrics.json")) as f:
        return json.load(f)


dynamic = run_with_slow_rank("dynamic", ["--step-timeout", 30], 1)
static = run_with_slow_rank("static", ["--step-timeout", 30, "--static-dp"], 1)
with open(h.path("dp1.jsonl"), "rb") as f:
    reference = f.read()
for name in ("dynamic", "static"):
    with open(h.path(f"{name}.jsonl"), "rb") as f:
        h.check(f.read() == reference, f"{name}: the results file equals the dp 1 run's byte for byte")
ran = {name: [r.get("prompts_run") for r in m["ranks"]] for name, m in {"dynamic": dynamic, "static": static}.items()}
h.check(ran["static"] == [80, 80], f"--static-dp: each replica ran its i % 2 half: {ran['static']}")
h.check(sum(ran["dynamic"]) == 160 and ran["dynamic"][0] >= ran["dynamic"][1] + 32,
        f"dynamic: the fast replica 0 ran most prompts while replica 1 was slow: {ran['dynamic']}")
h.check(dynamic["wall_seconds"] < static["wall_seconds"],
        f"dynamic ends sooner than static with a slow replica ({dynamic['wall_seconds']:.1f} s vs "
        f"{static['wall_seconds']:.1f} s)")
h.finish()
