"""Worker-side commands that the ``microscope`` CLI runs in a subprocess.

The CLI lives with the web process, which never imports torch or worker code; it runs these
with ``python -m workers.commands`` and reads one JSON object per line from stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _emit(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    """Run ``inspect SPEC [--all]`` or ``demo DEST``; the last line is the result or an error."""
    parser = argparse.ArgumentParser(prog="python -m workers.commands")
    sub = parser.add_subparsers(dest="cmd", required=True)
    inspect = sub.add_parser("inspect", help="layers and unit counts of a model spec")
    inspect.add_argument("spec")
    inspect.add_argument("--all", action="store_true", help="every candidate layer")
    demo = sub.add_parser("demo", help="assemble the offline demo photos")
    demo.add_argument("dest", type=Path)
    args = parser.parse_args(argv)

    if args.cmd == "inspect":
        from workers.ml.layers import inspect_model
        from workers.ml.models import ModelLoadError

        try:
            _emit({"result": inspect_model(args.spec, all_layers=args.all)})
        except ModelLoadError as e:
            _emit({"error": str(e)})
            return 2
        return 0

    from workers.ml.demo_data import DemoDataError, assemble_demo_dataset

    try:
        manifest = assemble_demo_dataset(
            args.dest, progress=lambda done, total: _emit({"done": done, "total": total})
        )
    except DemoDataError as e:
        _emit({"error": str(e)})
        return 2
    _emit(
        {
            "result": {
                "images": len(manifest.images),
                "checksum": manifest.checksum,
                "sources": manifest.sources,
            }
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
