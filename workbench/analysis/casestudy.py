"""Conflict-token case study (the paper's Appendix E) as a standalone HTML page.

Input: a few rollouts saved by the trainer as a JSON artifact (e.g. ``casestudy.json``), a
list of objects with this schema::

    [
      {
        "prompt": str,                # the prompt text
        "tokens": [str, ...],         # the response tokens as text, in order
        "token_class": [int, ...],    # per token: +1 consensus, -1 conflict, 0 neutral (docs/algorithm.md section 3)
        "advantage": [float, ...],    # per token: the routed advantage A_hat (after the gate)
        "reward": float,              # the verifier reward of the rollout (0 or 1)
        "step": int,                  # optional: the training step it was sampled at
        "run": str                    # optional: the run id
      },
      ...
    ]

``tokens``, ``token_class`` and ``advantage`` have the same length (padding removed).

``render_casestudy(rollouts, title=...) -> str`` returns the HTML: each token is a box
coloured by its class (green consensus, red conflict, grey neutral; the colour deepens with
|advantage| relative to the page's largest), its advantage printed under it and in its
tooltip, a legend, and per rollout its prompt, reward and class counts. No scripts, no
external resources. ``write_casestudy(source, out_path)`` reads the JSON (path or list)
and writes the page.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from workbench.errors import UserError

CLASSES = {1: ("consensus", (44, 160, 44)), -1: ("conflict", (214, 39, 40)), 0: ("neutral", (140, 140, 140))}

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
.legend span.tok { margin-right: 1em; }
.rollout { border: 1px solid #ddd; border-radius: 6px; padding: 0.8em; margin: 1em 0; }
.meta { font-size: 0.85em; color: #555; margin-bottom: 0.5em; }
.prompt { font-family: ui-monospace, monospace; background: #f6f6f6; padding: 0.3em 0.5em; margin-bottom: 0.6em; }
.tokens { display: flex; flex-wrap: wrap; gap: 3px; }
.tok { display: inline-flex; flex-direction: column; align-items: center; border-radius: 3px; padding: 1px 3px;
       font-family: ui-monospace, monospace; border: 1px solid rgba(0,0,0,0.15); }
.tok .t { white-space: pre; }
.tok .a { font-size: 0.65em; color: #333; }
"""


def validate_rollouts(rollouts: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Check the schema (see the module docstring); raises ValueError naming the first problem."""
    if not isinstance(rollouts, (list, tuple)):
        raise TypeError("the case study is a list of rollouts")
    for i, r in enumerate(rollouts):
        for key in ("prompt", "tokens", "token_class", "advantage", "reward"):
            if key not in r:
                raise ValueError(f"rollout {i}: missing {key!r}")
        n = len(r["tokens"])
        if len(r["token_class"]) != n or len(r["advantage"]) != n:
            raise ValueError(
                f"rollout {i}: tokens, token_class and advantage differ in length "
                f"({n}, {len(r['token_class'])}, {len(r['advantage'])})"
            )
        bad = [c for c in r["token_class"] if int(c) not in CLASSES or int(c) != c]
        if bad:
            raise ValueError(f"rollout {i}: token_class must be +1, -1 or 0, got {bad[0]!r}")
        if not all(isinstance(t, str) for t in r["tokens"]):
            raise ValueError(f"rollout {i}: tokens must be strings")
        try:
            float(r["reward"]), [float(a) for a in r["advantage"]]
        except (TypeError, ValueError):
            raise ValueError(f"rollout {i}: reward and advantage must be numbers") from None
    return list(rollouts)


def render_casestudy(rollouts: Sequence[dict[str, Any]], *, title: str = "Sign-conflict case study") -> str:
    """The standalone HTML page of ``rollouts`` (schema in the module docstring)."""
    rollouts = validate_rollouts(rollouts)
    scale = max((abs(float(a)) for r in rollouts for a in r["advantage"] if math.isfinite(float(a))), default=0.0) or 1.0
    legend = " ".join(_token_html(name, cls, None, 0.6) for cls, (name, _) in CLASSES.items())
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        '<p class="legend">Token classes (sign of the verifier advantage x sign of the OPD advantage): '
        + legend
        + f"<br>Number under a token: its routed advantage; colour depth: |advantage| / {scale:.3g} "
        "(the largest on this page). Hover a token for details.</p>",
    ]
    for i, r in enumerate(rollouts):
        counts = {name: sum(1 for c in r["token_class"] if int(c) == cls) for cls, (name, _) in CLASSES.items()}
        meta = [f"rollout {i + 1}", f"reward {float(r['reward']):g}"]
        meta += [f"{k} {r[k]}" for k in ("run", "step") if k in r]
        meta += [f"{name} {n}" for name, n in counts.items()]
        toks = "".join(
            _token_html(t, int(c), float(a), min(1.0, abs(float(a)) / scale) if math.isfinite(float(a)) else 1.0)
            for t, c, a in zip(r["tokens"], r["token_class"], r["advantage"])
        )
        parts += [
            f'<div class="rollout"><div class="meta">{html.escape(" · ".join(meta))}</div>',
            f'<div class="prompt">{html.escape(str(r["prompt"]))}</div>',
            f'<div class="tokens">{toks}</div></div>',
        ]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def load_rollouts(path: str | Path) -> list[dict[str, Any]]:
    """The rollouts of a case-study JSON file; anything wrong with the file is a ``CaseStudyError``."""
    p = Path(path)
    if not p.is_file():
        raise CaseStudyError(
            f"{p}: no such file (a run's casestudy.json)"
            if not p.exists()
            else f"{p}: is a directory, expected a run's casestudy.json"
        )
    try:
        return validate_rollouts(json.loads(p.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError, KeyError) as e:  # JSON and schema errors alike
        raise CaseStudyError(f"{p}: not a case study ({' '.join(str(e).split())[:200]})") from None


class CaseStudyError(UserError, ValueError):
    """A case-study input file that is missing or does not follow the schema."""


def write_casestudy(
    source: str | Path | Sequence[dict[str, Any]], out_path: str | Path, *, title: str = "Sign-conflict case study"
) -> Path:
    """Render the case study of ``source`` (a JSON path or the list itself) to ``out_path``."""
    rollouts = load_rollouts(source) if isinstance(source, (str, Path)) else list(source)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_casestudy(rollouts, title=title), encoding="utf-8")
    return out


def _token_html(text: str, cls: int, adv: float | None, depth: float) -> str:
    name, (r, g, b) = CLASSES[cls]
    alpha = 0.15 + 0.7 * depth
    tip = f"{name}" + ("" if adv is None else f"; advantage {adv:+.4g}")
    under = "" if adv is None else f'<span class="a">{adv:+.2f}</span>'
    shown = html.escape(text if adv is None else text.replace("\n", "\u21b5"))
    return (
        f'<span class="tok {name}" style="background: rgba({r},{g},{b},{alpha:.2f})" '
        f'title="{html.escape(tip)}"><span class="t">{shown}</span>{under}</span>'
    )
