"""A small renderer for the subset of Go's text/template that the Modelfiles seektune writes use.

Ollama renders a Modelfile's TEMPLATE with Go's text/template; Go is not available here, so the
export checks its template against the HF chat template with this renderer instead. Supported:
text, `{{- -}}` trimming, `.Field`/`$.Field`/`$v.Field`, string and int literals, `$v := x` and
`$v = x`, `if`/`else if`/`else`/`end`, `range $i, $m := x`, and the functions eq, ne, and, or,
not, len, slice, index. Anything else raises, so a template using more fails the test instead of
being rendered wrongly.
"""

from __future__ import annotations

import re

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_TOKEN = re.compile(r'\s*(\(|\)|"(?:[^"\\]|\\.)*"|[^\s()]+)')


class GoTemplateError(ValueError):
    pass


def _lex(src: str) -> list[tuple[str, str]]:
    """[("text", s) | ("action", s)] with trim markers applied."""
    out: list[tuple[str, str]] = []
    pos = 0
    for m in _ACTION.finditer(src):
        text = src[pos:m.start()]
        if m.group(1):
            text = text.rstrip()
        if out and out[-1][0] == "trim":
            out.pop()
            text = text.lstrip()
        out.append(("text", text))
        out.append(("action", m.group(2).strip()))
        if m.group(3):
            out.append(("trim", ""))
        pos = m.end()
    text = src[pos:]
    if out and out[-1][0] == "trim":
        out.pop()
        text = text.lstrip()
    out.append(("text", text))
    return [t for t in out if not (t[0] == "text" and not t[1])]


def _parse(items, i=0, stop=("end",)):
    """Parse until an action in `stop`; return (nodes, index of that action)."""
    nodes = []
    while i < len(items):
        kind, s = items[i]
        if kind == "text":
            nodes.append(("text", s))
            i += 1
            continue
        word = s.split(None, 1)[0] if s else ""
        if word in stop or (word == "else" and "else" in stop):
            return nodes, i
        if word == "if":
            branches = []
            cond = s[2:].strip()
            while True:
                body, j = _parse(items, i + 1, stop=("end", "else"))
                branches.append((cond, body))
                a = items[j][1]
                if a == "end":
                    i = j + 1
                    break
                if a.startswith("else if"):
                    cond = a[len("else if"):].strip()
                    i = j
                    continue
                body, k = _parse(items, j + 1, stop=("end",))
                branches.append((None, body))
                i = k + 1
                break
            nodes.append(("if", branches))
        elif word == "range":
            m = re.fullmatch(r"range\s+(?:(\$\w+)\s*,\s*)?(\$\w+)\s*:=\s*(.+)", s) or re.fullmatch(r"range\s+(.+)", s)
            if m is None:
                raise GoTemplateError(f"unsupported range: {s}")
            idx, var, expr = (m.group(1), m.group(2), m.group(3)) if m.lastindex == 3 else (None, None, m.group(1))
            body, j = _parse(items, i + 1, stop=("end",))
            nodes.append(("range", idx, var, expr, body))
            i = j + 1
        elif re.match(r"\$\w+\s*:?=", s):
            name, expr = re.match(r"(\$\w+)\s*:?=\s*(.+)", s, re.S).groups()
            nodes.append(("set", name, expr))
            i += 1
        else:
            nodes.append(("print", s))
            i += 1
    return nodes, i


def _tokens(expr: str) -> list[str]:
    toks, pos = [], 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m or not m.group(1):
            break
        toks.append(m.group(1))
        pos = m.end()
    return toks


def _field(obj, name):
    if isinstance(obj, dict):
        return obj.get(name, "")
    return getattr(obj, name)


_FUNCS = {
    "eq": lambda a, *b: any(a == x for x in b), "ne": lambda a, b: a != b,
    "and": lambda *a: next((x for x in a if not _truth(x)), a[-1]),
    "or": lambda *a: next((x for x in a if _truth(x)), a[-1]),
    "not": lambda a: not _truth(a), "len": len, "index": lambda a, *k: _index(a, k),
    "slice": lambda a, i=0, j=None: a[i:j],
}


def _index(a, keys):
    for k in keys:
        a = a[k]
    return a


def _truth(v) -> bool:
    return bool(v)


class _Ctx:
    def __init__(self, data):
        self.root = data
        self.vars = {"$": data}


def _operand(tok_list, pos, ctx, dot):
    t = tok_list[pos]
    if t == "(":
        depth, j = 1, pos + 1
        while depth:
            depth += {"(": 1, ")": -1}.get(tok_list[j], 0)
            j += 1
        return _eval_tokens(tok_list[pos + 1:j - 1], ctx, dot), j
    if t.startswith('"'):
        return bytes(t[1:-1], "utf-8").decode("unicode_escape"), pos + 1
    if re.fullmatch(r"-?\d+", t):
        return int(t), pos + 1
    if t in ("true", "false"):
        return t == "true", pos + 1
    if t.startswith("$") or t.startswith("."):
        head, _, rest = t.partition(".") if t.startswith("$") else ("", "", t[1:])
        if t.startswith("$"):
            if head not in ctx.vars:
                raise GoTemplateError(f"undefined variable {head}")
            val = ctx.vars[head]
        else:
            val = dot
        for part in filter(None, rest.split(".")):
            val = _field(val, part)
        return val, pos + 1
    raise GoTemplateError(f"unsupported operand {t!r}")


def _eval_tokens(toks, ctx, dot):
    if not toks:
        raise GoTemplateError("empty expression")
    if toks[0] in _FUNCS:
        args, pos = [], 1
        while pos < len(toks):
            v, pos = _operand(toks, pos, ctx, dot)
            args.append(v)
        return _FUNCS[toks[0]](*args)
    v, pos = _operand(toks, 0, ctx, dot)
    if pos != len(toks):
        raise GoTemplateError(f"unsupported expression {' '.join(toks)!r}")
    return v


def _run(nodes, ctx, dot, out: list[str]) -> None:
    for n in nodes:
        kind = n[0]
        if kind == "text":
            out.append(n[1])
        elif kind == "print":
            v = _eval_tokens(_tokens(n[1]), ctx, dot)
            out.append("" if v is None else str(v))
        elif kind == "set":
            ctx.vars[n[1]] = _eval_tokens(_tokens(n[2]), ctx, dot)
        elif kind == "if":
            for cond, body in n[1]:
                if cond is None or _truth(_eval_tokens(_tokens(cond), ctx, dot)):
                    _run(body, ctx, dot, out)
                    break
        elif kind == "range":
            _, idx, var, expr, body = n
            for i, item in enumerate(_eval_tokens(_tokens(expr), ctx, dot) or []):
                if idx:
                    ctx.vars[idx] = i
                if var:
                    ctx.vars[var] = item
                _run(body, ctx, item, out)


def render(template: str, data: dict) -> str:
    items = _lex(template)
    nodes, i = _parse(items)
    if i < len(items):
        raise GoTemplateError(f"unexpected {items[i][1]!r}")
    out: list[str] = []
    _run(nodes, _Ctx(data), data, out)
    return "".join(out)
