"""`python -m fp8pass explain path/to/script.py:factory [--numerics] [--json] [--full] [-o key=value]`

The factory is a callable in that file returning (model, args) or (model, args, kwargs), where
args is a tuple of example inputs; explain compiles the model with the fp8 backend, runs it once
(forward, and backward when the output requires grad) and prints the report.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import sys

from fp8pass.config import parse_option


def load_factory(target: str):
    path, sep, name = target.rpartition(":")
    if not sep or not path or not name:
        raise SystemExit(f"fp8pass explain: expected path/to/script.py:factory, got {target!r}")
    file = pathlib.Path(path)
    if not file.is_file():
        raise SystemExit(f"fp8pass explain: no such file {path!r}")
    sys.path.insert(0, str(file.resolve().parent))
    spec = importlib.util.spec_from_file_location(file.stem, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(file.stem, module)
    spec.loader.exec_module(module)
    factory = getattr(module, name, None)
    if not callable(factory):
        raise SystemExit(f"fp8pass explain: {path} has no callable {name!r}")
    return factory


def _parse_option(text: str):
    try:
        return parse_option(text)
    except ValueError as exc:
        raise SystemExit(f"fp8pass explain: {exc}") from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fp8pass", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("explain", help="report what backend='fp8' does to a model")
    p.add_argument("target", help="path/to/script.py:factory")
    p.add_argument("--numerics", action="store_true", help="also run every converted GEMM in FP8 vs float64")
    p.add_argument("--threshold-db", type=float, default=25.0, help="flag sites under this SQNR (default 25)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--full", action="store_true", help="one row per GEMM site, with full reasons")
    p.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a Config option, e.g. -o fp8_output_head=True (repeatable)")
    args = parser.parse_args(argv)

    import fp8pass

    made = load_factory(args.target)()
    if not isinstance(made, tuple) or len(made) not in (2, 3):
        raise SystemExit("fp8pass explain: the factory must return (model, args) or (model, args, kwargs)")
    model, inputs, kwargs = (*made, {}) if len(made) == 2 else made
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    config = fp8pass.Config.from_options(dict(_parse_option(o) for o in args.option))
    report = fp8pass.explain(model, *inputs, fp8_config=config, **kwargs)
    numerics = report.numerics(args.threshold_db) if args.numerics else None
    if args.json:
        print(json.dumps(report.to_dict(), indent=1, default=str))
        return 0
    print(report.table() if args.full else report)
    if numerics is not None:
        print()
        print(numerics)
    return 0
