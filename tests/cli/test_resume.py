"""--resume: an interrupted run continued into the same output ends byte-identical to an uninterrupted one, after any
number of interruptions (kill -9 of a rank, SIGTERM to the launcher) at random points, at another layout, with a
final line cut off mid-write; a resume of another run (other options, prompts or model) is refused with what
differs and touches nothing; an output without its metadata, or edited in the middle, is refused naming it.
"""
import os
import random
import signal
import subprocess
import time

from harness import Harness

h = Harness(__doc__)
h.args.strata = os.path.abspath(h.args.strata)
# A little larger than the tiny preset, so a run lasts a few seconds and the interruptions land mid-run.
SHAPE = ["--preset", "tiny", "--hidden-size", "384", "--intermediate-size", "1024", "--num-hidden-layers", "8"]
model = h.init("model", *SHAPE, "--seed", "4")
other_model = h.init("other", *SHAPE, "--seed", "5")
prompts = h.write("prompts.jsonl", "".join(
    f'{{"id": "p{i}", "prompt": "prompt number {i} says {"x" * (i % 7)}", "temperature": {0.0 if i % 3 else 0.8}}}\n'
    for i in range(36)))
COMMON = ["--max-tokens", "96", "--max-batch-size", "4", "--seed", "11", "-q", "--step-timeout", "20"]
seed = int(os.environ.get("STRATA_TEST_SEED", time.time()))
rng = random.Random(seed)
print(f"random kill points from seed {seed} (STRATA_TEST_SEED to repeat)")


def generate(output, ranks, layout, *extra, prompt_file=prompts, model_dir=model):
    return h.run(["generate", "--model", model_dir, "--prompts", prompt_file, "--output", output, *layout, *COMMON,
                  *extra], ranks=ranks, timeout=120)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def complete_lines(path):
    if not os.path.exists(path):
        return 0
    return read(path).count(b"\n")


def interrupt(output, ranks, layout, how, after_records):
    """Starts a --resume run and stops it once `after_records` records are on disk (or it ends by itself)."""
    cmd = [h.args.mpiexec, "-n", str(ranks), "--oversubscribe", h.args.strata, "generate", "--model", model,
           "--prompts", prompts, "--output", output, *layout, *COMMON, "--resume"]
    job = subprocess.Popen(["timeout", "-s", "KILL", "90"] + cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, cwd=h.work, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and job.poll() is None and complete_lines(output) < after_records:
        time.sleep(0.02)
    if job.poll() is None:
        if how == "kill a rank":
            ranks_now = subprocess.run(["pgrep", "-x", "-s", str(os.getpgid(job.pid)), "strata"],
                                       stdout=subprocess.PIPE, text=True).stdout.split()
            victims = [int(p) for p in ranks_now]  # the ranks themselves, never the launcher
            if victims:
                os.kill(rng.choice(victims), signal.SIGKILL)
        else:
            mpiexec = subprocess.run(["pgrep", "-s", str(os.getpgid(job.pid)), "-x", "mpiexec"],
                                     stdout=subprocess.PIPE, text=True).stdout.split()
            for pid in mpiexec:
                os.kill(int(pid), signal.SIGTERM)
    out = job.communicate(timeout=60)[0]
    try:
        os.killpg(job.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return job.returncode, out


# The reference: one uninterrupted run on one rank.
code, out, _ = generate(h.path("reference.jsonl"), 1, [])
h.check(code == 0, f"the reference run failed:\n{out}")
reference = read(h.path("reference.jsonl"))
total = reference.count(b"\n")
h.check(total == 36, f"the reference holds every prompt ({total})")
h.check(os.path.exists(h.path("reference.jsonl.meta.json")), "a run writes its identity beside the output")

# Interrupted twice at random points (a rank killed, then SIGTERM to the launcher), at three layouts, then finished.
out_path = h.path("resumed.jsonl")
stops = sorted(rng.sample(range(2, total - 4), 2))
code, out = interrupt(out_path, 4, ["-tp", "2", "-pp", "2"], "kill a rank", stops[0])
print(f"interrupted (kill a rank) after {complete_lines(out_path)} records (aimed at {stops[0]}), exit {code}")
h.check(code != 0 or complete_lines(out_path) == total, f"the killed run ends non-zero\n{out}")
code, out = interrupt(out_path, 2, ["-dp", "2"], "SIGTERM", stops[1])
print(f"interrupted (SIGTERM) after {complete_lines(out_path)} records (aimed at {stops[1]}), exit {code}")
h.check(read(out_path) == reference[:len(read(out_path))] or not read(out_path).endswith(b"\n"),
        "whatever an interrupted run left is a prefix of the reference (a last line may be cut off)")
code, out, _ = generate(out_path, 2, ["-pp", "2"], "--resume")
h.check(code == 0, f"the final resume succeeds\n{out}")
h.check(read(out_path) == reference, "after two interruptions and three layouts the output is byte-identical to the "
        "uninterrupted run")

# A final line cut off mid-write is dropped and rewritten.
cut = h.path("cut.jsonl")
lines = reference.split(b"\n")
with open(cut, "wb") as f:
    f.write(b"\n".join(lines[:10]) + b"\n" + lines[10][:25])
with open(h.path("cut.jsonl.meta.json"), "wb") as f:
    f.write(read(h.path("reference.jsonl.meta.json")))
code, out, _ = generate(cut, 1, [], "--resume")
h.check(code == 0 and read(cut) == reference, f"a half-written last line is dropped and the rest appended\n{out}")

# Resuming a complete output does nothing.
before = read(out_path)
code, out, _ = generate(out_path, 1, [], "--resume")
h.check(code == 0 and read(out_path) == before, f"resuming a complete output changes nothing\n{out}")

# Another run's output is refused with what differs, and left untouched.
partial = h.path("partial.jsonl")
with open(partial, "wb") as f:
    f.write(b"\n".join(lines[:5]) + b"\n")
with open(h.path("partial.jsonl.meta.json"), "wb") as f:
    f.write(read(h.path("reference.jsonl.meta.json")))
snapshot = read(partial)
code, out, _ = generate(partial, 1, [], "--resume", "--temperature", "0.5")
h.check(code not in (0, None) and "generation.temperature: 0.0 -> 0.5" in out,
        f"other options are refused naming the option and both values\n{out}")
code, out, _ = generate(partial, 1, [], "--resume", model_dir=other_model)
h.check(code not in (0, None) and "checkpoint.manifest" in out, f"another checkpoint is refused\n{out}")
other_prompts = h.write("other.jsonl", read(prompts).decode().replace("p3", "q3"))
code, out, _ = generate(partial, 1, [], "--resume", prompt_file=other_prompts)
h.check(code not in (0, None) and "prompts.content" in out, f"another prompt file is refused\n{out}")
h.check(read(partial) == snapshot, "a refused resume leaves the output as it was")

# An empty output without metadata (a run stopped before it wrote any) is a fresh start.
empty = h.path("empty.jsonl")
open(empty, "wb").close()
code, out, _ = generate(empty, 1, [], "--resume")
h.check(code == 0 and read(empty) == reference, f"an empty output without metadata resumes as a fresh start\n{out}")

# No metadata, or a record edited in the middle: refused, naming the file (and line).
bare = h.path("bare.jsonl")
with open(bare, "wb") as f:
    f.write(b"\n".join(lines[:5]) + b"\n")
code, out, _ = generate(bare, 1, [], "--resume")
h.check(code not in (0, None) and "bare.jsonl.meta.json" in out, f"an output without metadata is refused\n{out}")
edited = h.path("edited.jsonl")
with open(edited, "wb") as f:
    f.write(b"\n".join(lines[:2]) + b"\n{broken\n" + b"\n".join(lines[3:6]) + b"\n")
with open(h.path("edited.jsonl.meta.json"), "wb") as f:
    f.write(read(h.path("reference.jsonl.meta.json")))
code, out, _ = generate(edited, 1, [], "--resume")
h.check(code not in (0, None) and "edited.jsonl:3" in out, f"an edited record is refused naming file:line\n{out}")
code, out, _ = h.run(["generate", "--model", model, "--prompts", prompts, "--output", h.path("x.jsonl"), "--resume",
                      "--overwrite"], ranks=None)
h.check(code not in (0, None) and "excludes" in out, f"--resume and --overwrite together are refused\n{out}")
h.finish()
