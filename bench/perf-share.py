#!/usr/bin/env python3
"""Share of `perf script` samples whose call stack passes through a frame matching a regex.

    perf script -i perf.data | python3 bench/perf-share.py REGEX
"""
import re, sys
pat = re.compile(sys.argv[1])
total = hit = 0
stack = []
def flush():
    global total, hit
    if stack:
        total += 1
        if any(pat.search(f) for f in stack): hit += 1
for line in sys.stdin:
    if not line.strip():
        flush(); stack = []; continue
    if line[0] in " \t":
        stack.append(line.strip())
    else:
        flush(); stack = []
flush()
print(f"{hit}/{total} samples = {100.0*hit/max(total,1):.2f}%")
