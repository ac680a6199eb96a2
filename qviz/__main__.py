"""Command line: ``python -m qviz report --out report.html``.

Writes the static report (:func:`qviz.report`) of a bundled MiniLM layer.
Settings are ``method[:key=value:...]``, e.g. ``rtn:bits=3:group_size=64``.
"""
from __future__ import annotations

import argparse
import sys

DEFAULT_LAYER = "encoder.layer.0.output.dense"
DEFAULT_METHODS = "rtn:bits=4,rtn:bits=3,gptq:bits=4,Q4_K,Q8_0"


def _value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def parse_setting(text: str):
    """``"rtn:bits=3:group_size=64"`` -> ``("rtn", {"bits": 3, "group_size": 64})``."""
    method, *pairs = text.strip().split(":")
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"{pair!r} in {text!r}: write options as key=value")
        options[key] = _value(value)
    return (method, options) if options else method


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qviz", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("report", help="write a self-contained HTML report of a bundled MiniLM layer")
    rep.add_argument("--out", default="report.html", help="output file (default report.html)")
    rep.add_argument("--layer", default=DEFAULT_LAYER, help=f"a name of qviz.demo.layers() (default {DEFAULT_LAYER})")
    rep.add_argument("--methods", default=DEFAULT_METHODS,
                     help=f"comma-separated settings method[:key=value...] (default {DEFAULT_METHODS})")
    args = parser.parse_args(argv)

    from qviz.html_report import report

    methods = [parse_setting(m) for m in args.methods.split(",") if m.strip()]
    path = report(args.layer, args.out, methods)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
