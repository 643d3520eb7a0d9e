"""Fake nodes as Linux network namespaces, for tests: one namespace per node with its own hostname (a UTS
namespace at launch), a veth pair from each into a bridge inside a "switch" namespace, private addresses
10.77.0.N/24 that exist only inside these namespaces, and /etc/netns/NS/hosts naming the nodes. mpirun runs inside
the first node's namespace and reaches the others through netns_agent.sh, so Open MPI sees separate nodes and
carries inter-node traffic over TCP across the bridge. Everything is removed on exit, also when the test fails or
is interrupted.
"""
import atexit
import os
import shutil
import signal
import subprocess
import sys

AGENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "netns_agent.sh")
SUBNET = "10.77.0.0/24"


def ip(*argv):
    p = subprocess.run(["ip", *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(argv)}` failed: {p.stdout.strip()}")
    return p.stdout


class NetnsNodes:
    def __init__(self, hosts, workdir):
        self.hosts = list(hosts)
        self.tag = f"st{os.getpid() % 100000}"  # short: interface names have at most 15 characters
        self.switch = f"{self.tag}sw"
        self.namespaces = [f"{self.tag}n{i}" for i in range(len(self.hosts))]
        self.map_file = os.path.join(workdir, "netns.map")
        self.created = []
        atexit.register(self.remove)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda *_: (self.remove(), sys.exit(1)))
        try:
            self._create()
        except Exception:
            self.remove()
            raise

    def _create(self):
        for ns in [self.switch, *self.namespaces]:
            ip("netns", "add", ns)
            self.created.append(ns)
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")
        hosts = "127.0.0.1 localhost\n" + "".join(f"10.77.0.{i + 1} {h}\n" for i, h in enumerate(self.hosts))
        for i, (host, ns) in enumerate(zip(self.hosts, self.namespaces)):
            node_end, switch_end = f"{self.tag}v{i}", f"{self.tag}p{i}"
            ip("link", "add", node_end, "type", "veth", "peer", "name", switch_end)
            ip("link", "set", node_end, "netns", ns)
            ip("link", "set", switch_end, "netns", self.switch)
            ip("-n", self.switch, "link", "set", switch_end, "master", "br0", "up")
            ip("-n", ns, "link", "set", node_end, "name", "eth0")
            ip("-n", ns, "addr", "add", f"10.77.0.{i + 1}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")
            os.makedirs(f"/etc/netns/{ns}", exist_ok=True)
            with open(f"/etc/netns/{ns}/hosts", "w") as f:
                f.write(hosts)
        with open(self.map_file, "w") as f:
            f.write("".join(f"{h} {ns}\n" for h, ns in zip(self.hosts, self.namespaces)))

    def mpirun(self, mpiexec, hosts, ranks, argv, timeout=120, mpi_flags=()):
        """Runs `mpiexec` inside the first node's namespaces (network and UTS) with the agent for the others.
        Returns (exit code, stdout + stderr)."""
        launch = [mpiexec, "--mca", "plm_rsh_agent", AGENT, "--mca", "btl_tcp_if_include", SUBNET,
                  "--mca", "oob_tcp_if_include", SUBNET, "--host", hosts, "-n", str(ranks), *mpi_flags,
                  *[str(a) for a in argv]]
        cmd = ["timeout", "-s", "KILL", str(timeout), "ip", "netns", "exec", self.namespaces[0], "unshare", "--uts",
               "sh", "-c", 'hostname "$0" && exec "$@"', self.hosts[0], *launch]
        env = dict(os.environ, STRATA_NETNS_MAP=self.map_file)
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        return p.returncode, p.stdout

    def remove(self):
        """Ends what still runs in the namespaces, then deletes them (with their veths and bridge) and their /etc/netns
        folders. Safe to call twice."""
        for ns in reversed(self.created):
            pids = subprocess.run(["ip", "netns", "pids", ns], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "delete", ns], stderr=subprocess.DEVNULL)
            shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)
        self.created = []
        try:
            os.rmdir("/etc/netns")  # only when empty: another user's namespaces keep theirs
        except OSError:
            pass

    def leftovers(self):
        """Namespaces, interfaces or /etc/netns folders of this instance that still exist."""
        names = subprocess.run(["ip", "netns", "list"], stdout=subprocess.PIPE, text=True).stdout
        links = subprocess.run(["ip", "-o", "link"], stdout=subprocess.PIPE, text=True).stdout
        found = [ns for ns in [self.switch, *self.namespaces] if ns in names or os.path.exists(f"/etc/netns/{ns}")]
        return found + [line.split(":")[1].strip() for line in links.splitlines() if self.tag in line]
