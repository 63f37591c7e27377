"""The GPU check's summary.md: the status table, and each measured figure beside the one
predicted for an H100 and an H200 (harness/roofline.py) - so the first GPU run reads at once
"as expected" or "x times off, here". Reads result files only (scripts/gpu_check.py)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load(folder: Path):
    import pandas as pd
    rows = [json.loads(line) for f in sorted(folder.rglob("*.jsonl")) if folder.is_dir()
            for line in f.read_text().splitlines() if line.strip()]
    return pd.DataFrame(rows)


def _table(df, index, columns, values, fmt="{:.3g}") -> str:
    if df.empty or values not in df:
        return "(no ok rows)\n"
    pivot = df.pivot_table(index=index, columns=columns, values=values, aggfunc="median")
    head = [str(i) for i in (index if isinstance(index, list) else [index])] + [str(c) for c in pivot.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, row in pivot.iterrows():
        key = key if isinstance(key, tuple) else (key,)
        lines.append("| " + " | ".join([*map(str, key), *("" if v != v else fmt.format(v) for v in row)]) + " |")
    return "\n".join(lines) + "\n"


def _clean(row: dict) -> dict:
    return {k: v for k, v in row.items() if not (isinstance(v, float) and v != v)}  # NaN: absent


def predicted_table(df, keys: list[str]) -> str:
    """Each ok row as a line: its keys, the measured figure, the figure predicted for an H100
    and an H200 (harness.roofline), measured time / predicted time on the device the row is
    from (1.0 = as predicted; blank off the targets), and the prediction's basis."""
    if ROOT not in map(Path, sys.path):
        sys.path.insert(0, str(ROOT))
    from harness.roofline import predict, times_off
    if df.empty:
        return "(no ok rows)\n"
    head = [*keys, "measured", "H100 predicted", "H200 predicted", "measured / predicted time", "basis"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in (_clean(r) for r in df.sort_values(keys).to_dict("records")):
        try:
            pred = predict(row)
        except Exception as exc:  # noqa: BLE001 - a row the model cannot describe keeps its line
            pred = {"unit": "", "basis": f"no prediction: {exc!r}"[:120]}
        if pred is None:
            continue
        fmt = "{:.0f}" if pred["unit"] == "tokens/s" else "{:.3g}"
        cell = lambda v: "" if v is None else fmt.format(v)  # noqa: E731
        off = times_off(pred, row.get("device")) if "H100" in pred else None
        unit = f" {pred['unit']}" if pred["unit"] else ""
        lines.append("| " + " | ".join([*(str(row.get(k, "")) for k in keys), cell(pred.get("measured")) + unit,
                                        cell(pred.get("H100")), cell(pred.get("H200")),
                                        "" if off is None else f"{off:.2f}", pred["basis"]]) + " |")
    return "\n".join(lines) + "\n"


def summary(steps: list, res: Path, meta: dict) -> str:
    """summary.md from the steps (gpu_check.Step) and the result files under ``res``."""
    out = [f"# GPU check{' (DRY RUN on the CPU, toy sizes)' if meta['dry_run'] else ''}", "",
           *(f"- {k}: {v}" for k, v in meta.items()), "",
           "| step | status | seconds | budget | rows (ok) | note |", "|---|---|---|---|---|---|"]
    for s in steps:
        out.append(f"| {s.name} | {s.status} | {s.seconds:.0f} | {s.budget_s:.0f} | {s.rows} ({s.rows_ok}) | {s.note} |")
    for s in steps:
        if s.name == "install" and s.extra:
            out += ["", f"- installed into {s.extra.get('site')}: {s.extra.get('installed')} "
                        f"({s.extra.get('method')}); already present: {s.extra.get('already_present')}; "
                        f"project `pip install .` offline: {s.extra.get('project_install')}",
                    "- imports: " + ", ".join(f"{k}={v}" for k, v in s.extra.get("imports", {}).items())]
    out += ["", "Predicted figures (harness/roofline.py): roofline = max(FLOPs / peak, bytes / HBM bandwidth) "
                "from the project's counts, anchored to FlashAttention-2 (335 TFLOP/s, H100) for attention "
                "and to the Mamba paper's ~2K crossover for the fused scan.", ""]
    try:
        k = load(res / "kernels")
        ok = k[k["status"] == "ok"] if not k.empty else k
        att = ok[ok["mode"].str.startswith("attention")] if not ok.empty else ok
        if not att.empty:
            out += ["## Attention TFLOP/s (causal)", "", predicted_table(att, ["mode", "seq_len", "arch"])]
        scan = ok[ok["mode"].str.startswith("scan")] if not ok.empty else ok
        if not scan.empty:
            out += ["## Mamba scan vs attention, fwd+bwd ms (arch = implementation)", "",
                    predicted_table(scan, ["seq_len", "arch"])]
            report = res / "kernels" / "report.md"
            if report.exists():
                out += [line for line in report.read_text().splitlines() if line.startswith("crossover")] + [""]
        bad = k[k["status"] != "ok"] if not k.empty else k
        for (arch, reason), _ in (bad.groupby(["arch", "reason"]) if not bad.empty else []):
            out.append(f"- kernels: {arch}: {reason[:160]}")
        out.append("")
        for name in ("cost", "generation"):
            df = load(res / name)
            if df.empty:
                continue
            ok = df[df["status"] == "ok"]
            if name == "cost":
                out += ["## Mixer cost, ms", "", predicted_table(ok, ["mode", "seq_len", "arch", "backend"])]
            else:
                out += ["## Generation tokens/s", "", predicted_table(ok, ["batch", "arch", "backend"])]
            for (arch, status, reason), _ in df[df["status"] != "ok"].groupby(["arch", "status", "reason"]):
                out.append(f"- {name}: {arch} {status}: {reason[:160]}")
            out.append("")
        ind = load(res / "extrapolation" / "induction")
        if not ind.empty:
            out += ["## Induction accuracy by evaluation length (trained at 256; no prediction: not a cost)", "",
                    _table(ind[ind["status"] == "ok"], "eval_seq_len", "arch", "accuracy", "{:.2f}")]
            for (arch, status), rows in ind[ind["status"] != "ok"].groupby(["arch", "status"]):
                out.append(f"- induction: {arch} {status} from L={rows['eval_seq_len'].min()}")
        tt = load(res / "benchmarks" / "train_throughput")
        if not tt.empty:
            tt = tt.assign(hours_204800_steps=204_800 / tt["steps_per_s"] / 3600,
                           pct_of_fp32_peak=100 * tt["fraction_of_peak"])
            cols = ["preset", "arch", "backend_used", "steps_per_s", "hours_204800_steps", "gflops", "pct_of_fp32_peak"]
            out += ["## Training throughput of the small presets (the Mamba paper's 204,800 steps; "
                    "fp32 matmul peak measured in the same run)", "",
                    "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols),
                    *("| " + " | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |"
                      for r in tt[cols].to_dict("records")), ""]
    except Exception as exc:  # noqa: BLE001 - the summary must never lose the status table
        out.append(f"(summary tables failed: {exc!r})")
    return "\n".join(out) + "\n"
