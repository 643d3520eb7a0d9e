"""Several nodes on one machine: Open MPI starts its daemons through tests/cli/fake_node_agent.sh, which runs each
in its own UTS namespace named after the node, so Open MPI (and strata) see separate nodes and inter-node traffic
goes over TCP. Shows: strata topo names the nodes and their ranks, the detected description reads back unchanged
with --topology, generation across two nodes (tp 2 inside each, pp 2 across) equals the single-node run, also
when the launcher numbers ranks round-robin over nodes (placement regroups them), and a TP group that would span
nodes is refused with a working layout (or run with --force).
If the namespaces cannot be created here, the test fails saying so (it does not skip).
"""
import json
import os
import subprocess

from harness import Harness

h = Harness(__doc__)
AGENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_node_agent.sh")
probe = subprocess.run(["unshare", "--uts", "hostname", "probe"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True)
if probe.returncode != 0:
    raise SystemExit(f"cannot emulate nodes here: `unshare --uts` failed ({probe.stdout.strip()}); this test needs "
                     "root or CAP_SYS_ADMIN")


def on_fake_nodes(hosts, argv, timeout=90, mpi_flags=(), expect_ok=True):
    cmd = [h.args.mpiexec, "--mca", "plm_rsh_agent", AGENT, "--host", hosts, "-n", "4", *mpi_flags, h.args.strata]
    cmd += [str(a) for a in argv]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout, cwd=h.work)
    if not expect_ok:
        return p.returncode, p.stdout + p.stderr
    if p.returncode != 0:
        print(p.stdout, p.stderr)
        raise SystemExit(f"FAILED: {' '.join(cmd)} exited with {p.returncode}")
    return p.stdout, p.stderr


out, _ = on_fake_nodes("nodea:2,nodeb:2", ["topo", "--json"])
detected = json.loads(out)
h.check([n["hostname"] for n in detected["nodes"]] == ["nodea", "nodeb"], f"two nodes named nodea, nodeb: {out}")
h.check([n["ranks"] for n in detected["nodes"]] == [[0, 1], [2, 3]], f"ranks 0,1 on nodea and 2,3 on nodeb: {out}")
description = h.write("cluster.json", out)
code, again, _ = h.run(["topo", "--topology", description, "--json"])
h.check(code == 0 and json.loads(again) == detected, "the detected topology reads back unchanged as a description")
table, _ = on_fake_nodes("nodea:1,nodeb:2,nodec:1", ["topo"])
h.check("3 node(s), 4 rank(s)" in table and "nodec" in table, f"uneven nodes are reported as they are:\n{table}")
h.check("ranks per node differ (nodea 1, nodeb 2, nodec 1)" in table, f"and the difference is said:\n{table}")

model = h.init("model", "--preset", "tiny", "-tp", "2", "-pp", "2")
prompts = h.write("prompts.txt", "Hello world\nThe quick brown fox\nOnce upon a time\n")
flags = ["generate", "--model", model, "--prompts", prompts, "-tp", 2, "-pp", 2, "--max-tokens", 12,
         "--temperature", 0.8, "--top-k", 20, "--seed", 4, "--overwrite"]
h.run_ok(flags + ["--output", "single.jsonl", "-q"], ranks=4)
_, log = on_fake_nodes("nodea:2,nodeb:2", flags + ["--output", "multi.jsonl"])
h.check("2 node(s)" in log, f"generate reports two nodes:\n{log}")
h.check([r["token_ids"] for r in h.results("multi.jsonl")] == [r["token_ids"] for r in h.results("single.jsonl")],
        "two fake nodes give the same tokens as one node")

# Ranks numbered round-robin over the nodes (--map-by node: 0,2 on nodea, 1,3 on nodeb): the placement still
# keeps each TP group inside a node and runs the pipeline across, with the same tokens.
_, log = on_fake_nodes("nodea:2,nodeb:2", flags + ["--output", "roundrobin.jsonl"], mpi_flags=("--map-by", "node"))
plan = [line.split() for line in log.splitlines() if line[:1].isdigit()]
rows = {int(r[0]): r for r in plan}
h.check(len(rows) == 4 and rows[0][1] == "nodea" and rows[1][1] == "nodeb", f"round-robin launch order:\n{log}")
h.check(all("inter-node!" not in line for line in log.splitlines()), f"no TP group crosses nodes:\n{log}")
h.check(rows[0][5] == rows[2][5] and rows[1][5] == rows[3][5] and rows[0][5] != rows[1][5],
        f"ranks 0,2 (nodea) form one stage, 1,3 (nodeb) the other:\n{log}")
h.check("inter-node ethernet" in log, f"the pipeline send crosses the nodes:\n{log}")
h.check([r["token_ids"] for r in h.results("roundrobin.jsonl")] == [r["token_ids"] for r in h.results("single.jsonl")],
        "round-robin placement gives the same tokens")

# One rank on one node and three on the other: tp 2 would split a TP group across nodes: refused with a layout that
# works, or run anyway with --force and a warning.
code, out = on_fake_nodes("nodea:1,nodeb:3", flags + ["--output", "refused.jsonl"], expect_ok=False)
h.check(code not in (None, 0) and "node nodea has 1 rank(s), not a multiple of tensor-parallel size 2" in out
        and "-tp 1 -pp 4" in out, f"a TP group across nodes is refused with a working layout:\n{out}")
code, out = on_fake_nodes("nodea:1,nodeb:3", flags + ["--output", "forced.jsonl", "--force"], expect_ok=False)
h.check(code == 0 and "running anyway: --force" in out, f"--force runs it with a warning:\n{out}")
h.check([r["token_ids"] for r in h.results("forced.jsonl")] == [r["token_ids"] for r in h.results("single.jsonl")],
        "the forced layout still computes the same tokens")
h.finish()
