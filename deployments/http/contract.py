"""The generated reference part of API.md: every route of the HTTP app, rendered from its OpenAPI schema.

`python -m deployments.http.contract` prints it; `--write API.md` replaces the text between the two
marker comments in API.md. tests/http/test_contract.py fails when API.md and the served schema differ.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .app import create_app
from .auth import KeyRing, UrlSigner
from .edge import Edge

BEGIN, END = "<!-- generated: routes -->", "<!-- /generated -->"
_LIMITS = (("minLength", "min length"), ("maxLength", "max length"), ("minimum", ">="), ("exclusiveMinimum", ">"),
           ("maximum", "<="), ("exclusiveMaximum", "<"), ("minItems", "min items"), ("maxItems", "max items"))


def app_schema() -> dict:
    """The OpenAPI schema of the app `create_app` builds; routes need no service or key to be described."""

    return create_app(None, Edge(keys=KeyRing({}), signer=UrlSigner(b"schema only", 60))).openapi()


def _name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _type(s: dict) -> str:
    if "$ref" in s:
        return f"`{_name(s['$ref'])}`"
    for key in ("anyOf", "oneOf"):
        if key in s:
            return " or ".join(_type(x) for x in s[key])
    if "enum" in s:
        return " or ".join(json.dumps(v, ensure_ascii=False) for v in s["enum"])
    if "const" in s:
        return json.dumps(s["const"], ensure_ascii=False)
    if s.get("type") == "array":
        item = _type(s["items"]) if s.get("items") else ""
        return f"array of ({item})" if " or " in item else f"array of {item}" if item else "array"
    if s.get("format") == "binary" or "contentMediaType" in s:
        return "file"
    return s.get("type", "any")


def _notes(s: dict) -> str:
    parts = [s] + s.get("anyOf", []) + s.get("oneOf", [])
    notes = [f"{word} {_number(p[key])}" for p in parts for key, word in _LIMITS if key in p]
    if s.get("description"):
        notes.append(_md(s["description"]))
    return "; ".join(notes)


def _number(x):
    return int(x) if isinstance(x, float) and x.is_integer() else x


def _md(text: str) -> str:
    """Text from docstrings as Markdown shows it: no table breaks, no raw HTML tags."""
    return text.replace("|", "\\|").replace("<", "&lt;")


def _default(s: dict) -> str:
    return f"`{json.dumps(s['default'], ensure_ascii=False)}`" if "default" in s else ""


def _refs(s, found: list[str]) -> None:
    """Names of the component schemas `s` refers to, in order of first appearance."""
    if isinstance(s, dict):
        if "$ref" in s and _name(s["$ref"]) not in found:
            found.append(_name(s["$ref"]))
        for v in s.values():
            _refs(v, found)
    elif isinstance(s, list):
        for v in s:
            _refs(v, found)


def _fields(model: dict) -> list[str]:
    required = set(model.get("required", []))
    rows = ["| field | type | required | default | notes |", "|---|---|---|---|---|"]
    rows += [f"| `{k}` | {_type(v)} | {'yes' if k in required else 'no'} | {_default(v)} | {_notes(v)} |"
             for k, v in model.get("properties", {}).items()]
    return rows


def render(schema: dict) -> str:
    """The reference part of API.md for `schema` (an OpenAPI document as `GET /openapi.json` serves it)."""
    components = schema.get("components", {}).get("schemas", {})
    out, nested = [], []
    for path, methods in schema["paths"].items():
        for method, op in methods.items():
            out += [f"### `{method.upper()} {path}`", ""]
            if op.get("description"):
                out += [_md(op["description"].strip()), ""]
            if op.get("parameters"):
                out += ["| parameter | in | type | required | default | notes |", "|---|---|---|---|---|---|"]
                out += [f"| `{p['name']}` | {p['in']} | {_type(p['schema'])} | {'yes' if p.get('required') else 'no'} "
                        f"| {_default(p['schema'])} | {_notes(p['schema'])} |" for p in op["parameters"]]
                out.append("")
            for media, content in op.get("requestBody", {}).get("content", {}).items():
                name = _name(content["schema"]["$ref"])
                out += [f"Body, `{media}`:", ""] + _fields(components[name]) + [""]
                _refs(components[name], nested)
            out += ["Status codes: " + ", ".join(f"`{code}`" for code in op["responses"]) + ".", ""]
    if nested:
        out += ["### Schemas used in bodies", ""]
        for name in nested:
            out += [f"#### `{name}`", ""] + _fields(components[name]) + [""]
            _refs(components[name], nested)  # appended names are rendered by this same loop
    return "\n".join(out).rstrip() + "\n"


def generated_section(doc: str) -> str:
    """The text between the two markers of `doc`, as `render` returns it."""
    start, end = doc.index(BEGIN) + len(BEGIN), doc.index(END)
    return doc[start:end].strip() + "\n"


def replace_section(doc: str, section: str) -> str:
    start, end = doc.index(BEGIN) + len(BEGIN), doc.index(END)
    return f"{doc[:start]}\n\n{section}\n{doc[end:]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.http.contract", description=__doc__)
    parser.add_argument("--write", metavar="FILE", type=Path,
                        help="replace the generated part of FILE (API.md) instead of printing it")
    args = parser.parse_args(argv)
    section = render(app_schema())
    if args.write is None:
        sys.stdout.write(section)
    else:
        args.write.write_text(replace_section(args.write.read_text(), section))
    return 0


if __name__ == "__main__":
    sys.exit(main())
