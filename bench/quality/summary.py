"""The table of bench/quality.sh: per arm its stages' training FLOPs and wall time (from
each stage's metrics.jsonl and wall_s) and its evaluation (OUT/<eval>.eval.jsonl), printed
as a Markdown table with the issue's targets, and written as OUT/quality.jsonl.

    summary.py OUT BUDGET_TFLOP WALL_S "id|title|stage,stage|eval" ...
"""
import json
import os
import sys


def last_json(path, event=None):
    """The last JSON line of path (of that event when given), or None."""
    found = None
    if not os.path.exists(path):
        return None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            rec = json.loads(line)
            if event is None or rec.get("event") == event:
                found = rec
    return found


def stage_record(out, name):
    """Steps, batch, GFLOP/img, TFLOP and wall seconds of the stage trained in OUT/name."""
    d = os.path.join(out, name)
    start = last_json(os.path.join(d, "metrics.jsonl"), "start")
    end = last_json(os.path.join(d, "metrics.jsonl"), "end")
    if start is None or end is None:
        raise SystemExit(f"summary: {d}/metrics.jsonl has no start/end record")
    with open(os.path.join(d, "wall_s")) as f:
        wall = float(f.read())
    steps = end["step"] - start["start_step"]
    return {"name": name, "steps": steps, "batch": start["batch"],
            "gflop_per_img": start["gflop_per_img"],
            "tflop": steps * start["batch"] * start["gflop_per_img"] / 1e3, "wall_s": wall}


def pct(x):
    return "-" if x is None else f"{100 * x:.2f}%"


def main():
    out, budget, wall = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    rows = []
    for spec in sys.argv[4:]:
        arm, title, stages, ev = spec.split("|")
        st = [stage_record(out, s) for s in stages.split(",") if s]
        e = last_json(os.path.join(out, ev + ".eval.jsonl"))
        if e is None:
            raise SystemExit(f"summary: no evaluation {out}/{ev}.eval.jsonl")
        with open(os.path.join(out, ev + ".eval_s")) as f:
            eval_s = float(f.read())
        rows.append({"event": "quality", "arm": arm, "title": title, "stages": st,
                     "train_tflop": sum(s["tflop"] for s in st),
                     "train_wall_s": sum(s["wall_s"] for s in st), "eval_wall_s": eval_s,
                     "n_train": e["n_train"], "n_test": e["n_test"],
                     "probe_top1": e["probe_top1"], "knn1_top1": e.get("knn1_top1"),
                     "knn20_top1": e.get("knn20_top1"),
                     "finetune_top1": e.get("finetune_top1"), "budget_tflop": budget})
    with open(os.path.join(out, "quality.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")

    # every stage and evaluation once (the MAE prefix is shared), over all invocations
    spent = sum({s["name"]: s["wall_s"] for r in rows for s in r["stages"]}.values()) + sum(
        r["eval_wall_s"] for r in rows)
    print(f"\nLearning quality: t10k top-1 ({rows[0]['n_test']} test images), budget "
          f"{budget:g} TFLOP of training per ViT arm; training and evaluation took "
          f"{spent / 60:.1f} min, this invocation of the script {wall / 60:.1f} min\n")
    print("| arm | stages (steps x batch, TFLOP) | train TFLOP | train s | probe | k-NN k=20 "
          "| k-NN k=1 | fine-tuned head |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        st = ", ".join(f"{s['name']} {s['steps']}x{s['batch']} {s['tflop']:.1f}"
                       for s in r["stages"]) or "-"
        print(f"| {r['arm']} {r['title']} | {st} | {r['train_tflop']:.1f} | "
              f"{r['train_wall_s']:.0f} | {pct(r['probe_top1'])} (n={r['n_train']}) | "
              f"{pct(r['knn20_top1'])} | {pct(r['knn1_top1'])} | {pct(r['finetune_top1'])} |")

    by = {r["arm"]: r for r in rows}

    def target(what, got, want, strict=False):
        ok = got > want if strict else got >= want
        verdict = "met" if ok else f"MISSED by {100 * (want - got):.2f} points"
        print(f"- {what}: {100 * got:.2f}% vs {100 * want:.2f}%: {verdict}")

    print()
    if all(k in by for k in "abde") and by["e"]["finetune_top1"] is not None:
        target("MAE -> MIMIC >= 92%", by["e"]["finetune_top1"], 0.92)
        if by["b"]["finetune_top1"] is not None:
            target("MAE -> MIMIC above supervised from scratch", by["e"]["finetune_top1"],
                   by["b"]["finetune_top1"], strict=True)
        target("MAE -> MoCo v3 probe >= raw-pixel probe + 3 points", by["d"]["probe_top1"],
               by["a"]["probe_top1"] + 0.03)


if __name__ == "__main__":
    main()
