"""Three nodes on one machine as network namespaces (tests/cli/netns_nodes.py): each its own hostname, its own
eth0 into a bridge, private addresses; Open MPI runs its daemons in them through netns_agent.sh and carries
inter-node traffic over TCP across the bridge. Shows: `strata topo` names the three nodes and their link as
Ethernet; generation with tp 2 inside each node and pp 2 across two nodes keeps TP groups within a node and sends
the pipeline over the inter-node link, with the same tokens as a single-node run; every namespace, veth, bridge
and /etc/netns folder is gone afterwards (removal runs on failure too).
If network namespaces cannot be created here, the test fails saying so (it does not skip).
"""
import json
import os
import subprocess

from harness import Harness
from netns_nodes import NetnsNodes

h = Harness(__doc__)
probe = subprocess.run(["ip", "netns", "list"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
if probe.returncode != 0:
    raise SystemExit(f"cannot emulate nodes here: `ip netns` failed ({probe.stdout.strip()}); this test needs iproute2 "
                     "and root (CAP_SYS_ADMIN, CAP_NET_ADMIN)")
try:
    nodes = NetnsNodes(["nodea", "nodeb", "nodec"], h.work)
except RuntimeError as e:
    raise SystemExit(f"cannot emulate nodes here: {e}")


def run_ok(hosts, ranks, argv):
    code, out = nodes.mpirun(h.args.mpiexec, hosts, ranks, [h.args.strata, *argv])
    if code != 0:
        print(out)
        raise SystemExit(f"FAILED: strata {' '.join(map(str, argv))} on {hosts} exited with {code}")
    return out


try:
    topo = json.loads(run_ok("nodea:1,nodeb:1,nodec:1", 3, ["topo", "--json"]))
    h.check([n["hostname"] for n in topo["nodes"]] == ["nodea", "nodeb", "nodec"], f"three nodes: {topo}")
    h.check(all([(l["name"], l["kind"]) for l in n["links"]] == [("eth0", "ethernet")] for n in topo["nodes"]),
            f"each node's link is its eth0, Ethernet: {topo}")
    table = run_ok("nodea:1,nodeb:1,nodec:1", 3, ["topo"])
    h.check("3 node(s), 3 rank(s); inter-node fabric: ethernet" in table and "nodec" in table, f"the table:\n{table}")

    model = h.init("model", "--preset", "tiny", "-tp", "2", "-pp", "2")
    prompts = h.write("prompts.txt", "Hello world\nThe quick brown fox\nOnce upon a time\n")
    flags = ["generate", "--model", model, "--prompts", prompts, "-tp", 2, "-pp", 2, "--max-tokens", 10,
             "--temperature", 0.8, "--top-k", 20, "--seed", 5, "--overwrite"]
    h.run_ok(flags + ["--output", "single.jsonl", "-q"], ranks=4)
    log = run_ok("nodea:2,nodeb:2", 4, flags + ["--output", h.path("multi.jsonl")])
    rows = {int(r[0]): r for r in (line.split() for line in log.splitlines() if line[:1].isdigit())}
    h.check(len(rows) == 4 and [rows[r][1] for r in range(4)] == ["nodea", "nodea", "nodeb", "nodeb"],
            f"ranks 0,1 on nodea and 2,3 on nodeb:\n{log}")
    h.check(rows[0][5] == rows[1][5] != rows[2][5] == rows[3][5], f"each node holds one pipeline stage:\n{log}")
    h.check("inter-node!" not in log and log.count("(intra-node)") >= 4, f"TP groups stay within a node:\n{log}")
    h.check("(inter-node ethernet)" in log, f"the pipeline send crosses the Ethernet link:\n{log}")
    h.check([r["token_ids"] for r in h.results("multi.jsonl")] == [r["token_ids"] for r in h.results("single.jsonl")],
            "two namespace nodes give the same tokens as one node")
finally:
    nodes.remove()
h.check(nodes.leftovers() == [], f"every namespace, veth, bridge and /etc/netns folder removed: {nodes.leftovers()}")
h.finish()
