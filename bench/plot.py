#!/usr/bin/env python3
"""Plots a purge-soak CSV: the server's RSS and the records kept (or Redis's used_memory) over time.

usage: plot.py CSV PNG TITLE
"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    path, png, title = sys.argv[1], sys.argv[2], sys.argv[3]
    rows = list(csv.DictReader(open(path)))
    t = [float(r["t_s"]) for r in rows]
    rss = [int(r["rss_kb"]) / 1024 for r in rows]
    created = [int(r["created"]) / 1000 for r in rows]
    redis = any(int(r["redis_used_memory"]) for r in rows)
    fig, left = plt.subplots(figsize=(9, 4.8), dpi=110)
    left.plot(t, rss, color="tab:red", label="purge-service RSS (MB)")
    if redis:
        used = [int(r["redis_used_memory"]) / 2**20 for r in rows]
        left.plot(t, used, color="tab:purple", label="Redis used_memory (MB)")
    left.set_xlabel("seconds")
    left.set_ylabel("MB")
    left.set_ylim(bottom=0)
    right = left.twinx()
    right.plot(t, created, color="tab:gray", linestyle=":", label="purges created (thousands)")
    if redis:
        keys = [int(r["redis_keys"]) / 1000 for r in rows]
        right.plot(t, keys, color="tab:blue", label="Redis keys (thousands)")
    else:
        kept = [(int(r["records"]) / 1000 if r["records"] else None) for r in rows]
        right.plot(t, kept, color="tab:blue", label="records kept (thousands)")
    right.set_ylabel("thousands")
    right.set_ylim(bottom=0)
    lines = left.get_lines() + right.get_lines()
    left.legend(lines, [line.get_label() for line in lines], loc="upper left", fontsize=8)
    left.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(png)


if __name__ == "__main__":
    main()
