"""``medadapt descriptions import FILE --out descriptions.json`` (plugged in by medadapt.cli)."""
from __future__ import annotations

import argparse

from medadapt.helpfmt import HelpFormatter


def _cmd_import(args) -> int:
    from medadapt.data.importers import import_python_descriptions, write_descriptions
    data = import_python_descriptions(args.file, variable=args.variable)
    out = write_descriptions(data, args.out, overwrite=args.overwrite)
    m = data["meta"]
    dup = m.get("duplicate_keys_later_wins")
    print(f"descriptions: {m['n_classes']} classes, {sum(m['n_descriptions'].values())} sentences "
          f"from {m['variable']} in {args.file} -> {out}"
          + (f" (duplicate keys, later kept: {', '.join(dup)})" if dup else ""))
    print(f"use: --set texts.descriptions={out}")
    return 0


def add_parser(subparsers) -> None:
    d = subparsers.add_parser(
        "descriptions", help="import class descriptions from the anchors' own files",
        description="Class descriptions (LLM-written sentences per class) as medadapt's JSON.")
    sub = d.add_subparsers(dest="descriptions_command", metavar="ACTION")
    i = sub.add_parser(
        "import", formatter_class=HelpFormatter,
        help="convert a Python file of dict literals (BiomedCoOp's trainers/prompt_templates.py) "
             "into descriptions JSON, parsing it without running it",
        description="Parse FILE with Python's ast module and read the dict literal of class name "
                    "-> list of sentences (BiomedCoOp's BIOMEDCOOP_TEMPLATES by default); only "
                    "literals are evaluated, nothing in FILE is executed or imported. Duplicate "
                    "keys keep the later entry, as Python does.",
        epilog="example: medadapt descriptions import BiomedCoOp/trainers/prompt_templates.py "
               "--out biomedcoop-descriptions.json")
    i.add_argument("file", metavar="FILE", help="Python file with the dict literal")
    i.add_argument("--out", required=True, help="descriptions JSON to write (required)")
    i.add_argument("--variable", default=None,
                   help="name of the dict to read (default: BIOMEDCOOP_TEMPLATES or TEMPLATES "
                        "when present, else the only dict of lists of strings)")
    i.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    i.set_defaults(func=_cmd_import)
    d.set_defaults(func=lambda a: (d.print_help(), 0)[1])
