"""One ``--help`` formatter for every sub-command: each option ends with its default.

An option whose help already says ``default`` keeps its own wording; a flag reads
``(default: off)``; a required option or positional gets no default; an option whose default is
``None`` must explain it in its help text (the test in tests/test_safety_audit.py checks that).
Descriptions and epilogs keep their line breaks (examples, grid layouts).
"""
from __future__ import annotations

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    def _get_help_string(self, action):
        h = action.help or ""
        if (action.default is argparse.SUPPRESS or "(default" in h or "; default" in h
                or action.required or not action.option_strings):
            return h
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return f"{h} (default: {'on' if action.default else 'off'})"
        if action.default is None or action.default == []:
            return h
        return f"{h} (default: %(default)s)"
