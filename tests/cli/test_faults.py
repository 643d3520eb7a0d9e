"""Fault injection: whatever goes wrong mid-job, the job ends on its own within a bound, non-zero, with a message
naming the rank or the file at fault, leaves no process behind, and the results file (if any) holds only complete
records. Cases: a rank killed (a non-zero rank, rank 0), a rank stopped (in a TP group, in a later pipeline stage,
the only rank of a data-parallel replica, both ranks of a replica, a rank of an expert-parallel group), SIGTERM to the launcher, a full disk, a
corrupted and a truncated shard, --output equal to --prompts; and data parallelism with ranks not packed by node
(which must simply work). Every launch runs under `timeout -s KILL` in its own session; all its processes are
killed afterwards whatever happened. Prints a table of what each fault did (also written to
$STRATA_RELIABILITY_TABLE when set).
"""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

# A tmpfs left mounted in the work folder by an interrupted earlier run would stop the harness from clearing it.
_pre = argparse.ArgumentParser(add_help=False)
_pre.add_argument("--workdir")
_workdir = _pre.parse_known_args()[0].workdir
if _workdir:
    _root = os.path.realpath(_workdir)
    with open("/proc/mounts") as _m:
        for _point in sorted((line.split()[1] for line in _m), reverse=True):
            if _point.startswith(_root + "/"):
                subprocess.run(["umount", "-l", _point], stderr=subprocess.DEVNULL)

from harness import Harness, flip_middle  # noqa: E402

h = Harness(__doc__)
h.args.strata = os.path.abspath(h.args.strata)  # jobs run in the work folder: a relative path would not resolve
STEP_TIMEOUT = 4      # --step-timeout of every generate run
HARD_LIMIT = 25       # seconds: `timeout -s KILL` of a faulted job (a normal run takes about 5 s here)
KILL_BOUND = 10       # seconds from a kill or SIGTERM to the end of the job
STOP_BOUND = STEP_TIMEOUT + 10  # seconds from a SIGSTOP to the end of the job
WAIT_FOR_GENERATION = 30  # seconds to wait for the first result before injecting the fault anyway
UNPACKED_LIMIT = 60   # case 12
WORK = os.path.realpath(h.work)
rows = []  # the table


# ------------------------------------------------------------------------------------------------ processes

def processes():
    """{pid: (ppid, sid, state, comm)} of every process."""
    out = subprocess.run(["ps", "-eo", "pid=,ppid=,sid=,stat=,comm="], stdout=subprocess.PIPE, text=True).stdout
    table = {}
    for line in out.splitlines():
        parts = line.split(None, 4)
        if len(parts) == 5:
            table[int(parts[0])] = (int(parts[1]), int(parts[2]), parts[3], parts[4])
    return table


def descendants(root, table):
    found, frontier = [], [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _, _, _) in table.items():
            if ppid == parent and pid not in found:
                found.append(pid)
                frontier.append(pid)
    return found


def rank_of(pid):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            for item in f.read().split(b"\0"):
                if item.startswith(b"OMPI_COMM_WORLD_RANK="):
                    return int(item.split(b"=", 1)[1])
    except (OSError, ValueError):
        pass
    return None


def ancestors():
    mine, pid = set(), os.getpid()
    while pid > 1:
        mine.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return mine


def leftovers():
    """Live processes (not zombies) whose command line names the work folder, other than this script's ancestry."""
    mine, found = ancestors(), []
    for pid, (_, _, state, comm) in processes().items():
        if pid in mine or state.startswith("Z"):
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if WORK in cmdline:
            found.append(f"{pid} {comm}")
    return found


def kill_pid(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class Job:
    """One launch: timeout -s KILL limit mpiexec -n ranks strata ..., in a new session, output to a log file."""

    def __init__(self, name, argv, ranks, limit):
        self.name, self.limit, self.ranks = name, limit, ranks
        self.log_path = h.path(f"{name}.log")
        cmd = ["timeout", "-s", "KILL", str(limit), h.args.mpiexec, "-n", str(ranks), "--oversubscribe",
               h.args.strata] + [str(a) for a in argv]
        self.log = open(self.log_path, "w")
        self.start = time.time()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=h.work,
                                     start_new_session=True)
        self.seen = set()  # every descendant ever seen, killed at the end even if reparented

    def family(self):
        table = processes()
        pids = descendants(self.proc.pid, table)
        pids += [pid for pid, (_, sid, _, _) in table.items() if sid == self.proc.pid and pid not in pids]
        self.seen.update(pids)
        return pids, table

    def launcher(self):
        pids, table = self.family()
        return next((pid for pid in pids if table[pid][3] in ("mpiexec", "orterun", "mpirun", "prterun")), None)

    def rank_pids(self):
        pids, table = self.family()
        ranks = {}
        for pid in pids:
            if table.get(pid, (0, 0, "", ""))[3] == "strata":
                rank = rank_of(pid)
                if rank is not None:
                    ranks[rank] = pid
        return ranks

    def wait(self):
        """Waits for the job; returns (exit code or None if it had to be killed, seconds since launch)."""
        try:
            code = self.proc.wait(timeout=self.limit + 5)
        except subprocess.TimeoutExpired:
            code = None
        end = time.time()
        if code is not None and code < 0 and end - self.start >= self.limit - 0.5:
            code = None  # killed by our `timeout -s KILL`: it hung
        self.end = end
        return code, end - self.start

    def output(self):
        self.log.flush()
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def cleanup(self):
        try:
            self.family()
        except Exception:  # noqa: BLE001 (cleanup must go on)
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for pid in self.seen:
            kill_pid(pid)
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.log.close()


def sweep():
    """Kills whatever of this test is still running (by PID, found by the work folder on its command line)."""
    for entry in leftovers():
        kill_pid(int(entry.split()[0]))


# ------------------------------------------------------------------------------------------------ checks

PREFIX = re.compile(r"^\[[^\]]*\]\s*")
ERRORISH = re.compile(r"error|abort|no progress for|noticed that|exited on signal|killed|terminat|no space|"
                      r"cannot|corrupt|truncat|refus", re.IGNORECASE)


def error_lines(out):
    """Lines reporting a failure, with strata's "[rank N (...) host]" prefix removed (it names the reporter, not the
    culprit)."""
    return [PREFIX.sub("", line.strip()) for line in out.splitlines() if ERRORISH.search(line)]


def strata_errors(out):
    return [PREFIX.sub("", line.strip()) for line in out.splitlines() if re.match(r"^\[[^\]]*\] error: ", line)]


def first_error(out):
    """strata's own first error line, else the launcher's report (a rank that died or called MPI_Abort)."""
    launcher = [line for line in error_lines(out) if re.search(r"noticed that|MPI_ABORT", line)]
    lines = strata_errors(out) or launcher or error_lines(out)
    return lines[0] if lines else "(none)"


def output_state(path, label, check=True):
    """Checks that a results file, if present, is complete JSON lines with an id and a finish_reason."""
    if not os.path.exists(path):
        return "missing"
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        return "0 complete lines"
    lines = data.split(b"\n")
    partial = lines[-1] != b""
    complete = lines[:-1]
    bad = []
    for number, line in enumerate(complete, 1):
        try:
            record = json.loads(line)
            if not (isinstance(record, dict) and "id" in record and "finish_reason" in record):
                bad.append(number)
        except ValueError:
            bad.append(number)
    if check:
        h.check(not partial, f"{label}: {path} ends with a partial line ({len(lines[-1])} bytes: "
                             f"{lines[-1][:80]!r})")
        h.check(not bad, f"{label}: {path} lines {bad[:5]} are not JSON records with an id and a finish_reason")
    state = f"{len(complete)} complete lines"
    if partial:
        state += " + a partial line"
    if bad:
        state += f" ({len(bad)} invalid)"
    return state


def names(lines, pattern):
    return any(re.search(pattern, line) for line in lines)


def finish_case(label, job, code, seconds, out, *, expect_zero=False, fault_at=None, bound, output=None,
                needles=(), check_output=True):
    """The checks every case shares; `needles`: (regex, what, lines) that must match; adds the table row."""
    after = job.end - fault_at if fault_at is not None else seconds
    h.check(code is not None, f"{label}: the job did not end within {job.limit} s and was killed\n{out[-3000:]}")
    h.check(after <= bound, f"{label}: the job took {after:.1f} s {'after the fault ' if fault_at else ''}"
                            f"to end (bound {bound} s)")
    if expect_zero:
        h.check(code == 0, f"{label}: expected exit 0, got {code}\n{out[-3000:]}")
    else:
        h.check(code not in (None, 0), f"{label}: expected a non-zero exit, got {code}\n{out[-3000:]}")
    for pattern, what, lines in needles:
        h.check(names(lines, pattern), f"{label}: the error lines do not name {what} ({pattern!r}):\n" +
                "\n".join(lines[:12]))
    left = []
    for _ in range(20):  # the launcher has exited: its ranks must be gone too (allow 2 s for them to die)
        left = leftovers()
        if not left:
            break
        time.sleep(0.1)
    h.check(not left, f"{label}: processes left after the job ended: {left}")
    state = output_state(output, label, check_output) if output else "n/a"
    shown = f"{after:.1f}" + (" after signal" if fault_at is not None else "")
    if code is None:
        shown += f" (killed at {job.limit} s)"
    message = first_error(out)
    message = message if len(message) <= 100 else message[:97] + "..."
    rows.append((label, shown, "hung" if code is None else str(code), message, state))
    print(f"{label}: exit {code} after {seconds:.1f} s; {message}; output {state}", flush=True)


def first_result(path):
    try:
        with open(path, "rb") as f:
            return b"\n" in f.read(65536)
    except OSError:
        return False


def faulted_run(label, argv, ranks, fault, bound, output):
    """Runs a generate job, waits until it has written its first result (generation under way) and every rank is
    up, calls fault(job) -> (what it did, regex patterns naming the culprit, whether to look in strata's own error
    lines only), then waits for the end."""
    job = Job(label, argv, ranks, HARD_LIMIT)
    try:
        deadline = time.time() + WAIT_FOR_GENERATION
        while time.time() < deadline and job.proc.poll() is None:
            if first_result(output) and len(job.rank_pids()) == ranks:
                break
            time.sleep(0.1)
        under_way = first_result(output) and len(job.rank_pids()) == ranks
        h.check(under_way, f"{label}: generation never got under way (no result, or not {ranks} ranks)\n"
                           f"{job.output()[-2000:]}")
        fault_at = time.time()
        patterns, own_lines = fault(job)
        code, seconds = job.wait()
        out = job.output()
        lines = strata_errors(out) if own_lines else error_lines(out)
        finish_case(label, job, code, seconds, out, fault_at=fault_at, bound=bound, output=output,
                    needles=[(p, w, lines) for p, w in patterns])
        return out
    finally:
        job.cleanup()
        sweep()


def plain_run(label, argv, ranks, bound, output=None, expect_zero=False, needles=(), limit=HARD_LIMIT,
              check_output=True):
    job = Job(label, argv, ranks, limit)
    try:
        code, seconds = job.wait()
        out = job.output()
        finish_case(label, job, code, seconds, out, expect_zero=expect_zero, bound=bound, output=output,
                    needles=[(p, w, error_lines(out)) for p, w in needles], check_output=check_output)
        return code, out
    finally:
        job.cleanup()
        sweep()


def plan_ranks(out):
    """{rank: (dp, pp, tp)} from the plan table generate prints."""
    found = {}
    for line in out.splitlines():
        cols = line.split()
        if len(cols) >= 7 and cols[0].isdigit() and cols[3] in ("cpu", "cuda") and all(
                c.isdigit() for c in cols[4:7]):
            found[int(cols[0])] = (int(cols[4]), int(cols[5]), int(cols[6]))
    return found


def wait_for_plan(job, ranks, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        plan = plan_ranks(job.output())
        if len(plan) == ranks:
            return plan
        time.sleep(0.1)
    return plan_ranks(job.output())


# ------------------------------------------------------------------------------------------------ setup

model22 = h.init("model22", "--preset", "tiny", "-tp", "2", "-pp", "2")
model1 = h.init("model1", "--preset", "tiny")
# The first prompt finishes after 2 tokens (its result marks generation as under way); the others run long.
many = h.write("many.jsonl", json.dumps({"prompt": "first", "max_tokens": 2}) + "\n" + "".join(
    json.dumps({"prompt": f"prompt number {i}", "max_tokens": 400}) + "\n" for i in range(1, 64)))


def generate(model, output, *flags, prompts=many):
    return ["generate", "--model", model, "--prompts", prompts, "--output", output, "--overwrite",
            "--step-timeout", STEP_TIMEOUT, *flags]


def signal_rank(sig, which):
    """A fault: send `sig` to the ranks `which(job)` returns (a list of world ranks)."""
    def fault(job):
        targets = which(job)
        pids = job.rank_pids()
        for rank in targets:
            if rank in pids:
                os.kill(pids[rank], sig)
            else:
                h.check(False, f"rank {rank} not found among {pids}")
        return targets
    return fault


# ------------------------------------------------------------------------------------------------ cases

def case_kill(label, victim):
    output = h.path(f"{label}.jsonl")

    def fault(job):
        signal_rank(signal.SIGKILL, lambda j: [victim])(job)
        return [(rf"\brank {victim}\b", f"rank {victim}")], False
    faulted_run(label, generate(model22, output, "-tp", 2, "-pp", 2), 4, fault, KILL_BOUND, output)


def case_stop(label, model, flags, ranks, choose):
    """SIGSTOP the ranks choose(plan) picks; the survivors' watchdogs must end the job and name one of them."""
    output = h.path(f"{label}.jsonl")

    def fault(job):
        plan = wait_for_plan(job, ranks)
        targets = choose(plan)
        signal_rank(signal.SIGSTOP, lambda j: targets)(job)
        either = "|".join(str(t) for t in targets)
        return [(rf"\brank ({either})\b", "the stopped rank " + " or ".join(map(str, targets)))], True
    out = faulted_run(label, generate(model, output, *flags), ranks, fault, STOP_BOUND, output)
    h.check("no progress for" in out and "--step-timeout" in out,
            f"{label}: no watchdog line ('no progress for ... --step-timeout'):\n" + "\n".join(error_lines(out)[:10]))


def case1():
    case_kill("1 kill -9 rank 3 (tp2 pp2)", 3)


def case2():
    case_kill("2 kill -9 rank 0 (tp2 pp2)", 0)


def case3():
    case_stop("3 SIGSTOP rank 1 of a TP group (tp2)", model1, ["-tp", 2], 2, lambda plan: [1])


def case4():
    case_stop("4 SIGSTOP the last stage (pp2)", model1, ["-pp", 2], 2,
              lambda plan: [max(r for r, (dp, pp, tp) in plan.items() if pp == 1)] if plan else [1])


def case5():
    case_stop("5 SIGSTOP the rank of replica 2 (dp4)", model1, ["-dp", 4], 4,
              lambda plan: [r for r, (dp, pp, tp) in plan.items() if dp == 2] or [2])


def case6():
    case_stop("6 SIGSTOP both ranks of replica 1 (tp2 dp2)", model1, ["-tp", 2, "-dp", 2], 4,
              lambda plan: sorted(r for r, (dp, pp, tp) in plan.items() if dp == 1) or [2, 3])


def case7():
    label = "7 SIGTERM to mpiexec (tp2 pp2)"
    output = h.path("7.jsonl")

    def fault(job):
        launcher = job.launcher()
        h.check(launcher is not None, f"{label}: mpiexec not found")
        if launcher:
            os.kill(launcher, signal.SIGTERM)
        return [(r"\brank \d+\b|" + re.escape(output), "a rank or the output file")], False
    faulted_run(label, generate(model22, output, "-tp", 2, "-pp", 2), 4, fault, KILL_BOUND, output)


def case8():
    label = "8 disk full (tmpfs 64k)"
    full = h.path("full")
    os.makedirs(full)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", full], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    h.check(mounted.returncode == 0, f"{label}: cannot mount a tmpfs (needs root): {mounted.stdout.strip()}")
    if mounted.returncode != 0:
        return
    try:
        prompts = h.write("200.txt", "".join(f"prompt number {i} of two hundred\n" for i in range(200)))
        output = os.path.join(full, "results.jsonl")
        plain_run(label, generate(model1, output, "--max-tokens", 64, prompts=prompts), 1, HARD_LIMIT,
                  output=output, needles=[(re.escape(output), "the output file"),
                                          (r"(?i)no space", "'no space'")])
    finally:
        for _ in range(3):
            if subprocess.run(["umount", full], stderr=subprocess.DEVNULL).returncode == 0:
                break
            sweep()
            time.sleep(0.5)
        else:
            subprocess.run(["umount", "-l", full])


def damaged_shard(label, name, damage):
    model = h.path(name)
    shutil.copytree(model22, model)
    shards = sorted((os.path.getsize(os.path.join(model, f)), f) for f in os.listdir(model) if f.endswith(".h5"))
    shard = os.path.join(model, shards[-1][1])  # the largest (ties: the last by name)
    damage(shard)
    output = h.path(f"{name}.jsonl")
    plain_run(label, generate(model, output, "-tp", 2, "-pp", 2, "--max-tokens", 8), 4, HARD_LIMIT, output=output,
              needles=[(re.escape(os.path.basename(shard)), os.path.basename(shard))])


def truncate_half(shard):
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) // 2)


def case9():
    damaged_shard("9 corrupted shard (bytes flipped)", "corrupt", flip_middle)


def case10():
    damaged_shard("10 truncated shard (half)", "truncated", truncate_half)


def case11():
    label = "11 --output = --prompts"
    prompts = h.write("same.txt", "Hello\nWorld\nthird prompt\n")
    with open(prompts, "rb") as f:
        before = f.read()
    plain_run(label, ["generate", "--model", model1, "--prompts", prompts, "--output", prompts, "--overwrite",
                      "--max-tokens", 4, "--step-timeout", STEP_TIMEOUT], 1, HARD_LIMIT,
              needles=[(re.escape(os.path.basename(prompts)), "the file")])
    with open(prompts, "rb") as f:
        after = f.read()
    h.check(after == before, f"{label}: the prompt file changed: {after[:200]!r}")
    rows[-1] = rows[-1][:4] + ("prompts unchanged" if after == before else "prompts OVERWRITTEN",)


def case12():
    label = "12 tp2 dp2, ranks 0,2 | 1,3 on two nodes"
    detect = Job("12-topo", ["topo", "--json"], 4, HARD_LIMIT)
    try:
        code, _ = detect.wait()
        text = detect.output()
    finally:
        detect.cleanup()
        sweep()
    try:
        detected = json.loads(text[text.index("{"):text.rindex("}") + 1])
        node = dict(detected["nodes"][0])
    except (ValueError, KeyError, IndexError):
        h.check(False, f"{label}: strata topo --json under mpiexec -n 4 gave no description (exit {code}):\n{text}")
        return
    nodes = []
    for hostname, ranks in (("nodea", [0, 2]), ("nodeb", [1, 3])):
        n = dict(node)
        n.update(hostname=hostname, ranks=ranks)
        nodes.append(n)
    cluster = h.write("cluster.json", json.dumps({"nodes": nodes}, indent=1))
    prompts = h.write("8.txt", "".join(f"prompt {i}\n" for i in range(8)))
    output = h.path("12.jsonl")
    plain_run(label, generate(model1, output, "-tp", 2, "-dp", 2, "--topology", cluster, "--max-tokens", 16,
                              prompts=prompts), 4, UNPACKED_LIMIT, output=output, expect_zero=True,
              limit=UNPACKED_LIMIT)
    try:
        ids = sorted(r["id"] for r in h.results("12.jsonl"))
    except (OSError, ValueError):
        ids = []
    h.check(len(ids) == 8, f"{label}: expected 8 results, got {len(ids)}")


def case13():
    """A rank of an expert-parallel group stopped: its peer waits in the experts' all-to-all / all-gather."""
    moe = h.init("moe", "--preset", "tiny-moe", "-tp", "2")
    case_stop("13 SIGSTOP rank 1 of an expert-parallel group (tp2 ep2, MoE)", moe, ["-tp", 2, "-ep", 2], 2,
              lambda plan: [1])


CASES = [case1, case2, case3, case4, case5, case6, case7, case8, case9, case10, case11, case12, case13]

started = time.time()
try:
    for case in CASES:
        try:
            case()
        except Exception as e:  # noqa: BLE001 (one broken case must not hide the others)
            h.check(False, f"{case.__name__} raised {type(e).__name__}: {e}")
            sweep()
finally:
    sweep()
    table = ["| case | seconds to exit | exit code | message (first error line) | output state |",
             "|---|---|---|---|---|"]
    for row in rows:
        table.append("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |")
    text = "\n".join(table) + "\n"
    print(f"\n{text}\n(total {time.time() - started:.0f} s)")
    if os.environ.get("STRATA_RELIABILITY_TABLE"):
        with open(os.environ["STRATA_RELIABILITY_TABLE"], "w", encoding="utf-8") as f:
            f.write(text)
h.finish()
