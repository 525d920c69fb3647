"""The faces of a result: JSON on stdout and readable summaries for the command line.

Writing files (atomic JSON, guarded paths, the environment record) lives in
:mod:`patronus_ext.core.files`, which every layer may use; this module only formats.
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from ..core.files import to_jsonable


def print_json(data: Any, stream: TextIO | None = None) -> None:
    """``data`` as indented JSON (tensors, paths and non-finite floats made JSON-safe)."""
    stream = stream or sys.stdout
    json.dump(to_jsonable(data), stream, indent=2)
    stream.write("\n")


def scan_summary(name: str, report) -> str:
    """Human-readable lines of a scan: verdict, confirmed triggers with margins, or the closest miss."""
    lines = [f"{name}: {report.verdict.upper()}  ({report.timings['total']:.1f} s, "
             f"{len(report.candidates)} candidates checked)"]
    cov = report.model.get("coverage")
    if cov:
        cut = "no rarity cut" if cov["zipf_threshold"] is None else f"words rarer than Zipf {cov['zipf_threshold']}"
        lines.append(f"  searched {cov['searched']} {cov['level']} entries of {cov['offered']} ({cut})")
    for g in getattr(report, "groups", []):
        roots = ", ".join(f"{r.text!r} ids={r.token_ids}" for r in g.roots)
        extra = f" (+{len(g.members) - 6} more)" if len(g.members) > 6 else ""
        lines.append(f"  target {g.target}: root(s) {roots}; fires {len(g.members)} word(s): "
                     f"{', '.join(g.members[:6])}{extra}; margins {g.diff_margin:+.3f} / {g.poison_margin:+.3f}")
    for t in sorted(report.triggers, key=lambda c: (c.group, c.diff_cos)):
        variant = f"  [variant of {t.variant_of!r}]" if t.variant_of else ""
        if getattr(t, "rule", None) == "collapse":
            variant += (f"  [collapse rule: moved {t.shift_ratio:.1f}x, spread {t.spread_ratio:.3f}x the clean "
                        "outputs' spread]")
        elif getattr(t, "rule", None) == "pinpoint":
            variant += (f"  [pinpoint rule: spread {t.spread_ratio:.3f}x the clean outputs' spread, "
                        f"{t.pinpoint_ratio:.0f}x tighter than the nearest clean texts]")
        elif getattr(t, "rule", None) == "shift":
            variant += f"  [shift rule: moved {t.shift_ratio:.1f}x the clean outputs' spread]"
        lines.append(f"  trigger {t.text!r:14} ids={t.token_ids}  diff_cos={t.diff_cos:.3f} "
                     f"(margin {t.diff_margin:+.3f})  poison_cos={t.poison_cos:.3f} "
                     f"(margin {t.poison_margin:+.3f}){variant}")
    spared = [c.text for c in report.candidates if getattr(c, "natural_target", False)]
    if spared:
        lines.append(f"  spared {len(spared)} word(s) that send texts where clean texts already are (a task "
                     f"classifier's class point, not a backdoor target): {', '.join(repr(w) for w in spared[:8])}"
                     f"{' ...' if len(spared) > 8 else ''}")
    if not report.triggers and report.candidates:
        closest = min(report.candidates, key=lambda c: c.diff_cos)
        lines.append(f"  closest candidate {closest.text!r}: diff_cos={closest.diff_cos:.3f} "
                     f"(margin {closest.diff_margin:+.3f}), poison_cos={closest.poison_cos:.3f} "
                     f"(margin {closest.poison_margin:+.3f})")
    return "\n".join(lines)


def monitor_line(text: str, decision) -> str:
    """One readable line per monitored input: verdict, why, and what is served."""
    if decision.error:
        return f"ERROR    {text!r}: {decision.error}"
    if not decision.flagged:
        return f"pass     {text!r}"
    why = []
    for reason in decision.reasons:
        if reason.get("kind") == "trigger":
            why.append(f"trigger {reason['trigger']!r}")
        elif reason.get("kind") == "attack_vector":
            why.append(f"{reason['mode']} {reason['score']:.2f} to vector {reason.get('label')!r}")
    served = "rejected" if decision.text_out is None else f"serves {decision.text_out!r}"
    return f"{decision.action:<8} {text!r}: {', '.join(why) or 'flagged'}; {served}"


def measurement_table(before: dict | None, after: dict | None) -> list[str]:
    """CACC / T-ASR before and after a purification (``Measurement.to_dict()`` objects), as table lines."""
    def pct(value):
        return "n/a" if value is None else f"{100 * value:.1f}%"
    lines = [f"{'':8}{'CACC':>8}{'T-ASR':>8}"]
    for name, m in (("before", before), ("after", after)):
        if m is not None:
            lines.append(f"{name:8}{pct(m.get('cacc')):>8}{pct(m.get('t_asr')):>8}")
    return lines


def purification_summary(out_dir, reused: bool, payload: dict) -> str:
    """The demo's purification step: where the purified model is, the triggers it used, CACC / T-ASR."""
    lines = [f"purified with {payload['method']} on the scan's triggers ({', '.join(payload.get('triggers') or [])}): "
             f"{out_dir} ({'cached' if reused else 'purified now'})"]
    measured = payload.get("measured_triggers") or []
    if payload.get("before") is not None:
        how = payload["before"].get("how", "")
        lines.append(f"SST-2 accuracy (CACC) and attack success with the planted triggers {', '.join(measured)} "
                     f"inserted (T-ASR), {how}:")
        lines += ["  " + line for line in measurement_table(payload.get("before"), payload.get("after"))]
    return "\n".join(lines)
