"""The GPU check's results: one JSON, rewritten after every step, and its summary table. Standard library only.

    python3 .ci/gpu_results.py init     --out DIR --plan PLAN.json [--dry-run]
    python3 .ci/gpu_results.py versions --out DIR                  # torch, triton, CUDA, GPU, driver
    python3 .ci/gpu_results.py step     --out DIR --name NAME --rc RC --seconds S [--outcomes JSONL]
                                        [--selection-report JSON] [--attach KEY=JSON]
    python3 .ci/gpu_results.py finish   --out DIR                  # summary.md; exit 0 iff every step passed
    python3 .ci/gpu_results.py summary  --out DIR                  # print the summary again (results unchanged)

``DIR/results.json`` holds the plan (steps, timeouts, estimates), the versions, and one record
per finished step: status (``ok``, ``failed``, ``timeout``), return code, seconds, the test
counts and failures from the selection plugin's outcome lines, and attached JSON (the benchmark report, the
compile check). ``DIR/summary.md`` is the table a docs/RESULTS.md section is made from: dated, with the
machine's name.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import pathlib
import platform
import subprocess
import sys

RESULTS = "results.json"
SUMMARY = "summary.md"
# Return codes of `timeout`: 124 after the signal, 137 after SIGKILL; 130 is pytest stopped by SIGINT.
TIMEOUT_RCS = (124, 137)
MESSAGE_CHARS = 600


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _load(out: pathlib.Path) -> dict:
    return json.loads((out / RESULTS).read_text())


def _save(out: pathlib.Path, results: dict) -> None:
    tmp = out / (RESULTS + ".part")
    tmp.write_text(json.dumps(results, indent=1, default=str))
    tmp.replace(out / RESULTS)


def versions() -> dict:
    """Versions of what the check runs on. Every probe is optional: a missing one is recorded as its error."""
    info: dict = {"python": sys.version.split()[0], "host": platform.node()}
    try:
        import torch

        info.update(torch=torch.__version__, cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
        if torch.cuda.is_available():
            info.update(gpu=torch.cuda.get_device_name(0),
                        capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                        gpu_memory_GiB=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
    except Exception as e:          # a machine without torch still reports the rest
        info["torch_error"] = repr(e)
    from importlib import metadata

    for name, dist in (("triton", "triton"), ("transformers", "transformers"), ("gguf", "gguf"),
                       ("hypothesis", "hypothesis"), ("pytest", "pytest"), ("xdist", "pytest-xdist")):
        try:
            info[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[name] = "not installed"
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
        if smi.returncode == 0 and smi.stdout.strip():
            info["driver"] = smi.stdout.strip().splitlines()[0].split(",")[1].strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        info["nvidia_smi"] = f"unavailable ({type(e).__name__})"
    return info


def parse_outcomes(path: pathlib.Path, step: str | None = None) -> dict:
    """Counts, the failing tests (with a short message) and per-test outcomes and times from the
    selection plugin's JSON lines (one per reported test phase; a cut-off last line is ignored).
    With ``step``, only the lines after the marker line ``{"step": step}`` and before the next marker."""
    phases: dict[str, list[dict]] = {}
    inside = step is None
    for raw in path.read_text().splitlines():
        try:
            line = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if "step" in line:
            inside = step is None or line["step"] == step
            continue
        if inside:
            phases.setdefault(line["test"], []).append(line)
    counts = dict.fromkeys(("passed", "failed", "error", "skipped", "xfailed", "xpassed"), 0)
    failures, tests = [], {}
    for test, lines in phases.items():
        bad = [p for p in lines if p["outcome"] == "failed"]
        if bad:
            outcome = "failed" if bad[0]["when"] == "call" else "error"
        elif any(p["outcome"] == "skipped" for p in lines):
            outcome = "xfailed" if any(p["xfail"] for p in lines) else "skipped"
        else:
            outcome = "xpassed" if any(p["xfail"] for p in lines) else "passed"
        counts[outcome] += 1
        seconds = round(sum(p["seconds"] for p in lines), 3)
        tests[test] = {"outcome": outcome, "seconds": seconds}
        message = (bad[0]["message"] if bad else next((p["message"] for p in lines if p["message"]), ""))
        if outcome in ("failed", "error", "skipped"):
            tests[test]["message"] = message[-MESSAGE_CHARS:]
        if outcome in ("failed", "error"):
            failures.append({"test": test, "message": message[-MESSAGE_CHARS:]})
    return {"counts": counts, "failures": failures, "tests": tests}


def _status(rc: int) -> str:
    if rc == 0:
        return "ok"
    return "timeout" if rc in TIMEOUT_RCS else "failed"


def cmd_init(out: pathlib.Path, plan: pathlib.Path, dry_run: bool) -> int:
    out.mkdir(parents=True, exist_ok=True)
    _save(out, {"started": _now(), "finished": None, "dry_run": dry_run, "host": platform.node(),
                "plan": json.loads(plan.read_text()), "versions": {}, "steps": {}, "complete": False})
    return 0


def cmd_versions(out: pathlib.Path) -> int:
    results = _load(out)
    results["versions"] = versions()
    _save(out, results)
    for k, v in results["versions"].items():
        print(f"{k:<15} {v}")
    return 0


def cmd_step(out: pathlib.Path, name: str, rc: int, seconds: float, outcomes: str | None,
             selection_report: str | None, attach: list[str]) -> int:
    results = _load(out)
    record: dict = {"status": _status(rc), "rc": rc, "seconds": round(seconds, 1), "finished": _now()}
    if outcomes:
        path = pathlib.Path(outcomes)
        if path.is_file():
            record.update(parse_outcomes(path, name))
        else:
            record["outcomes_error"] = f"{path} was not written (pytest ended before it reported a test)"
        counts = record.get("counts")
        if counts and record["status"] == "ok" and (counts["failed"] or counts["error"]):
            record["status"] = "failed"
    if selection_report and pathlib.Path(selection_report).is_file():
        report = json.loads(pathlib.Path(selection_report).read_text())
        record["selected"] = report.get("selected")
        ran = set(record.get("tests", {}))
        chosen = [t for s in report.get("chosen_sections", []) for t in report["sections"].get(s, [])]
        record["not_run"] = [t for t in chosen if t not in ran] if "tests" in record else None
    for item in attach:
        key, _, path = item.partition("=")
        p = pathlib.Path(path)
        if not key or not p.is_file():
            record.setdefault("missing_attachments", []).append(item)
            continue
        try:
            record[key] = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            record.setdefault("missing_attachments", []).append(f"{item} ({e})")
    results["steps"][name] = record
    _save(out, results)
    counts = record.get("counts")
    extra = f"  {counts}" if counts else ""
    print(f"step {name}: {record['status']} (rc {rc}, {seconds:.0f} s){extra}")
    return 0


def _step_detail(name: str, record: dict) -> str:
    if "counts" in record:
        c = record["counts"]
        if not any(c.values()):
            return "no test reported" + (" before the timeout" if record["status"] == "timeout" else "")
        text = ", ".join(f"{n} {k}" for k, n in c.items() if n or k in ("passed", "failed"))
        if record.get("not_run"):
            text += f", {len(record['not_run'])} not run"
        return text
    if "compile_check" in record:
        recs = record["compile_check"].get("records", [])
        spills = sum(bool(r.get("spill_bytes")) for r in recs)
        audits = record["compile_check"].get("audit_problems", [])
        return (f"{sum(r.get('ok', False) for r in recs)}/{len(recs)} compiled and audited, {spills} spilling, "
                f"{len(audits)} audit problems")
    if "gpu_report" in record:
        return "sections: " + ", ".join(k for k, v in record["gpu_report"].items() if isinstance(v, list))
    return record.get("outcomes_error", "")


def _table(rows: list[dict], limit: int = 40) -> list[str]:
    """A markdown table of a benchmark list: the scalar columns, at most ``limit`` rows."""
    cols = [k for k in rows[0] if all(not isinstance(r.get(k), (list, dict)) for r in rows)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows[:limit]:
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in (r.get(c, "") for c in cols)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def summary(results: dict) -> str:
    v = results.get("versions", {})
    machine = v.get("gpu") or "a machine without a CUDA device"
    date = (results.get("finished") or results.get("started") or "")[:10]
    head = "Dry run (CPU, nothing measured)" if results.get("dry_run") else f"GPU check on {machine}"
    lines = [f"## {head}, {date}", ""]
    lines.append(f"torch {v.get('torch', '?')}, triton {v.get('triton', '?')}, CUDA {v.get('cuda', '?')}, "
                 f"driver {v.get('driver', '?')}, transformers {v.get('transformers', '?')}; "
                 f"host {results.get('host', '?')}.")
    lines += ["", "| step | status | seconds (planned, timeout) | result |", "|---|---|---|---|"]
    plan = {p["name"]: p for p in results.get("plan", {}).get("steps", [])}
    for name, p in plan.items():
        record = results["steps"].get(name)
        status = record["status"] if record else "not run"
        secs = f"{record['seconds']:.0f}" if record else "-"
        detail = _step_detail(name, record) if record else ""
        lines.append(f"| {name} | {status} | {secs} ({p.get('estimate_s')}, {p.get('timeout_s')}) | {detail} |")
    failures = [f for r in results["steps"].values() for f in r.get("failures", [])]
    if failures:
        lines += ["", f"Failures ({len(failures)}):", ""]
        lines += [f"- `{f['test']}`: {f['message'].splitlines()[0][:200] if f['message'] else ''}"
                  for f in failures[:30]]
    report = results["steps"].get("gpu_report", {}).get("gpu_report")
    if isinstance(report, dict):
        for key, rows in report.items():
            if isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows):
                lines += ["", f"### {key}", ""] + _table(rows)
    return "\n".join(lines) + "\n"


def cmd_finish(out: pathlib.Path) -> int:
    results = _load(out)
    results["finished"] = _now()
    planned = [p["name"] for p in results["plan"].get("steps", [])]
    results["complete"] = all(n in results["steps"] for n in planned)
    passed = results["complete"] and all(results["steps"][n]["status"] == "ok" for n in planned)
    results["passed"] = passed
    _save(out, results)
    (out / SUMMARY).write_text(summary(results))
    print((out / SUMMARY).read_text())
    return 0 if passed else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["init", "versions", "step", "finish", "summary"])
    parser.add_argument("--out", required=True, help="the results folder")
    parser.add_argument("--plan", help="init: the plan JSON")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--name")
    parser.add_argument("--rc", type=int)
    parser.add_argument("--seconds", type=float, default=0.0)
    parser.add_argument("--outcomes", help="step: the selection plugin's JSON lines")
    parser.add_argument("--selection-report")
    parser.add_argument("--attach", action="append", default=[], metavar="KEY=JSON")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    if args.command == "init":
        if not args.plan:
            parser.error("init needs --plan")
        return cmd_init(out, pathlib.Path(args.plan), args.dry_run)
    if not (out / RESULTS).is_file():
        parser.error(f"--out {str(out)!r} holds no {RESULTS}: run init first")
    if args.command == "versions":
        return cmd_versions(out)
    if args.command == "step":
        if args.name is None or args.rc is None:
            parser.error("step needs --name and --rc")
        return cmd_step(out, args.name, args.rc, args.seconds, args.outcomes, args.selection_report, args.attach)
    if args.command == "summary":
        print(summary(_load(out)), end="")
        return 0
    return cmd_finish(out)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
