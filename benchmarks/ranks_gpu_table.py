"""Tables for benchmarks/results/ranks_h200.md from the run folders ``gpu_ranks.sh`` wrote.

    python benchmarks/ranks_gpu_table.py OUTDIR > benchmarks/results/ranks_h200.md

Per rank: memprof's replayed peak against ``torch.cuda.max_memory_allocated()`` on that rank
(the metadata's ``peak_allocated_bytes``, reset at the recorded window's start); FSDP against DDP
per rank by category: the most bytes each category holds at once during the recorded steps
(``max_by_category`` of the rank's summary) and what each category holds at the peak.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from memprof.units import fmt_bytes
from memprof.snapshot.meta import read_meta
from memprof.analysis.ranks import load_summaries
from memprof.snapshot.runs import rank_files

HELD = (("parameters", "parameter_addrs"), ("gradients", "gradient_addrs"), ("optimizer state", "optimizer_state_addrs"))


def main(root: Path) -> None:
    runs = sorted(p for p in root.iterdir() if p.is_dir() and rank_files(p))
    print("## Per-rank peak: memprof's replay vs torch.cuda.max_memory_allocated()\n")
    print("| run | rank | status | replayed peak | max_memory_allocated | difference |")
    print("| --- | ---: | --- | ---: | ---: | ---: |")
    data: dict[tuple[str, int], list[dict]] = {}
    for run in runs:
        sums = load_summaries(run, workers=1)
        files = rank_files(run)
        for s in sums:
            meta = read_meta(files[s["rank"]]) if s["rank"] in files else {}
            rp, ap = s.get("peak_allocated_bytes"), meta.get("peak_allocated_bytes")
            diff = f"{(rp - ap) / ap:+.3%}" if rp is not None and ap else "-"
            print(f"| {run.name} | {s['rank']} | {s['status']} | {fmt_bytes(rp) if rp is not None else '-'} "
                  f"({rp if rp is not None else '-'} B) | {fmt_bytes(ap) if ap else '-'} ({ap or '-'} B) | {diff} |")
            m = re.match(r"transformer-.*-(ddp|fsdp)-n(\d+)$", run.name)
            if m:
                data.setdefault((m.group(1), int(m.group(2))), []).append({"summary": s, "meta": meta})
    print("\n## FSDP2 vs DDP per rank, by category (mean over ranks)\n")
    print("Held: the most bytes of the category alive at once on the rank during the recorded steps (memprof's replay).")
    print("At peak: what memprof's categories hold at the rank's peak.\n")
    print("| GPUs | category | DDP held | FSDP held | FSDP/DDP | ideal 1/N | DDP at peak | FSDP at peak |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in sorted({k[1] for k in data}):
        ddp, fsdp = data.get(("ddp", n), []), data.get(("fsdp", n), [])
        if not ddp or not fsdp:
            continue
        for label, key in HELD:
            cat = {"parameters": "parameter", "gradients": "gradient", "optimizer state": "optimizer_state"}[label]
            hd = sum((r["summary"].get("max_by_category") or {}).get(cat, 0) for r in ddp) / len(ddp)
            hf = sum((r["summary"].get("max_by_category") or {}).get(cat, 0) for r in fsdp) / len(fsdp)
            pd_ = sum((r["summary"].get("by_category") or {}).get(cat, 0) for r in ddp) / len(ddp)
            pf = sum((r["summary"].get("by_category") or {}).get(cat, 0) for r in fsdp) / len(fsdp)
            ratio = f"{hf / hd:.3f}" if hd else "-"
            print(f"| {n} | {label} | {fmt_bytes(hd)} | {fmt_bytes(hf)} | {ratio} | {1 / n:.3f} | {fmt_bytes(pd_)} | {fmt_bytes(pf)} |")
        pkd = sum(r["summary"].get("peak_allocated_bytes") or 0 for r in ddp) / len(ddp)
        pkf = sum(r["summary"].get("peak_allocated_bytes") or 0 for r in fsdp) / len(fsdp)
        print(f"| {n} | **peak allocated** | {fmt_bytes(pkd)} | {fmt_bytes(pkf)} | {pkf / pkd:.3f} | | | |")
    print("\n## Peak by category per rank (transformer runs)\n")
    for (mode, n), rows in sorted(data.items()):
        for r in rows:
            s = r["summary"]
            cats = ", ".join(f"{k} {fmt_bytes(v)}" for k, v in (s.get("by_category") or {}).items())
            print(f"- {mode} n{n} rank {s['rank']}: peak {fmt_bytes(s.get('peak_allocated_bytes') or 0)}: {cats}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
