"""Shared harness for the CLI tests: runs the strata binary (alone or under mpiexec) with a time bound, and
reads results files. Each test script gets --strata, --mpiexec and --workdir from CTest (cmake/StrataTesting.cmake).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time


def flip_middle(path, count=64):
    """Corrupts a file in place: `count` bytes in its middle XORed with 0x5A (a checksum must catch it)."""
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        middle = len(data) // 2
        data[middle:middle + count] = bytes(b ^ 0x5A for b in data[middle:middle + count])
        f.seek(0)
        f.write(data)


class Harness:
    def __init__(self, description):
        parser = argparse.ArgumentParser(description=description)
        parser.add_argument("--strata", required=True)
        parser.add_argument("--mpiexec", required=True)
        parser.add_argument("--workdir", required=True)
        self.args = parser.parse_args()
        self.work = self.args.workdir
        shutil.rmtree(self.work, ignore_errors=True)
        os.makedirs(self.work)
        self.failures = []
        self.checks = 0

    def path(self, name):
        return os.path.join(self.work, name)

    def write(self, name, text):
        with open(self.path(name), "w", encoding="utf-8") as f:
            f.write(text)
        return self.path(name)

    def run(self, argv, ranks=None, timeout=90):
        """Runs strata (under mpiexec -n ranks when ranks is given). Returns (returncode, output, seconds)."""
        cmd = [self.args.strata] + [str(a) for a in argv]
        if ranks is not None:
            cmd = [self.args.mpiexec, "-n", str(ranks), "--oversubscribe"] + cmd
        start = time.time()
        try:
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
                               cwd=self.work, text=True, errors="replace")
            return p.returncode, p.stdout, time.time() - start
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            return None, out + f"\n[harness] TIMED OUT after {timeout} s: {' '.join(cmd)}", time.time() - start

    def run_ok(self, argv, ranks=None, timeout=90):
        code, out, _ = self.run(argv, ranks, timeout)
        if code != 0:
            print(out)
            raise SystemExit(f"FAILED: strata {' '.join(map(str, argv))} exited with {code}")
        return out

    def rounds_bf16_activations(self):
        """Whether strata's CPU products round the activations of bf16 weights to bf16 on this machine (its
        avx512bf16 kernel, the default on CPUs with AVX512_BF16, as `strata --version` says): logits of bf16
        checkpoints then follow the reference with bf16 inputs (llama_reference.py --bf16-inputs)."""
        return "products avx512bf16" in self.run_ok(["--version"])

    def init(self, name, *flags):
        self.run_ok(["init", "--output", self.path(name), *flags])
        return self.path(name)

    def results(self, name):
        with open(self.path(name), encoding="utf-8") as f:
            return [json.loads(line) for line in f]

    def check(self, condition, message):
        self.checks += 1
        if not condition:
            self.failures.append(message)
            print("CHECK FAILED:", message)

    def finish(self):
        passed = self.checks - len(self.failures)
        print(f"{passed} passed, {len(self.failures)} failed")
        sys.exit(1 if self.failures or self.checks == 0 else 0)
