"""python -m harness.tasks: list, validate and show the declarative task files under tasks/.

    python -m harness.tasks ls [KIND]          # names and descriptions
    python -m harness.tasks validate [NAME ..] # load and validate (all tasks when no name is given)
    python -m harness.tasks show NAME          # the effective config after includes

The generic loader lives in `harness.core.tasks`; the GEdit schema in `harness.gedit.config`.
"""
from __future__ import annotations

import argparse
import json
import sys

from harness.core.tasks import TASKS_ROOT, TaskError, discover_tasks, load_task, load_task_file
from harness.gedit.config import load_gedit_task, write_gedit_group_tasks
from harness.profile.scenarios import load_scenario_task

# kind -> loader that validates one task of that kind by name or path
VALIDATORS = {"gedit": load_gedit_task, "profile": load_scenario_task}


# --------------------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.tasks", description="List, validate and show task files.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_ls = sub.add_parser("ls", help="list task names")
    p_ls.add_argument("kind", nargs="?", default=None, help="gedit, profile, ... (all when omitted)")
    p_val = sub.add_parser("validate", help="load and validate tasks of every kind (all when no name is given)")
    p_val.add_argument("names", nargs="*")
    p_val.add_argument("--kind", choices=sorted(VALIDATORS), default=None, help="only this kind")
    p_show = sub.add_parser("show", help="print a task's effective config after includes")
    p_show.add_argument("name")
    p_show.add_argument("--kind", default=None)
    sub.add_parser("generate-gedit-groups", help="write tasks/gedit/groups/gedit-<lang>-<group>.yaml")
    args = parser.parse_args(argv)
    try:
        if args.command == "ls":
            for name, path in discover_tasks(args.kind).items():
                desc = (load_task_file(path).get("metadata") or {}).get("description", "")
                print(f"{name:28s} {path.relative_to(TASKS_ROOT)}  {' '.join(str(desc).split())[:90]}")
        elif args.command == "validate":
            for kind, validate in VALIDATORS.items():
                if args.kind not in (None, kind):
                    continue
                for name in args.names or list(discover_tasks(kind)):
                    if args.names and name not in discover_tasks(kind) and not name.endswith((".yaml", ".yml")):
                        continue
                    validate(name)
                    print(f"ok  {kind:8s} {name}")
        elif args.command == "generate-gedit-groups":
            print(f"wrote {len(write_gedit_group_tasks())} task files")
        else:
            print(json.dumps(load_task(args.name, args.kind), indent=2, ensure_ascii=False))
    except TaskError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
