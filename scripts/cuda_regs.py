#!/usr/bin/env python3
"""Compiles CUDA sources for sm_90a with ptxas's report and prints, per kernel instantiation, its
registers and spill bytes, and ptxas's warnings (e.g. C7514 / C7517: a wgmma serialised). Runs
wherever nvcc is, no GPU needed: the check before spending device time on a kernel change
(bench/KERNEL_NOTES.md: every spill increase of session 14 measured slower).

    scripts/cuda_regs.py [--filter REGEX] FILE.cu...      (default: kernels/cuda/*.cu)
"""
import argparse
import glob
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def nvcc():
    found = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    if not os.path.exists(found):
        sys.exit("cuda_regs: no nvcc on PATH or in /usr/local/cuda/bin")
    return found


def short_name(mangled):
    """The kernel's name and template arguments (c++filt's, without namespaces and parameters)."""
    try:
        name = subprocess.run(["c++filt", mangled], capture_output=True, text=True).stdout.strip()
    except OSError:
        return mangled
    name = re.sub(r"[\w:]*\(anonymous namespace\)::|hl::kernels::cuda::(detail::)?", "", name)
    return re.sub(r"^void |\([^()]*\)$", "", name)  # the return type and parameter list


def report(path, pattern):
    cmd = [nvcc(), "-O3", "-std=c++17", "--expt-relaxed-constexpr",
           "--generate-code=arch=compute_90a,code=[sm_90a]", "-I", ROOT, "-Xptxas", "-v",
           "-c", path, "-o", os.devnull]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        print(f"{path}: nvcc failed\n{run.stderr[-3000:]}")
        return False
    kernel = None
    for line in run.stderr.splitlines():
        entry = re.search(r"Compiling entry function '(\S+)'", line)
        if entry:
            kernel = short_name(entry.group(1))
            spills = ""
            continue
        spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if spill:
            spills = f"spills {spill.group(1)} / {spill.group(2)} B"
        used = re.search(r"Used (\d+) registers", line)
        if used and kernel and re.search(pattern, kernel):
            print(f"{os.path.basename(path):20s} {kernel:52s} {used.group(1):>4s} regs  {spills}")
        if "warning" in line.lower() and "C7519" not in line:  # C7519: wgmma setmaxnreg notes
            print(f"{os.path.basename(path):20s}   {line.strip()[:160]}")
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*")
    parser.add_argument("--filter", default=".", help="only kernels whose name matches")
    args = parser.parse_args()
    files = args.files or sorted(glob.glob(os.path.join(ROOT, "kernels", "cuda", "*.cu")))
    ok = all([report(f, args.filter) for f in files])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
