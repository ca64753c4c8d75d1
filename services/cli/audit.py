"""`llmsuite audit verify FILE...`: checks an audit log's hash chain.

Give the files in chain order (the writer's names sort that way, so a shell glob
such as var/audit/router/audit-*.jsonl does). Prints the number of records and the
chain's head, or the first broken or missing record with its file and line; exits
1 when there is one.
"""

from pathlib import Path

from services.audit.chain import verify


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("audit", help="audit log tools")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    check = commands.add_parser("verify", help="check the hash chain of audit log files",
                                description=__doc__.split("\n\n")[1])
    check.add_argument("files", nargs="+", type=Path, help="audit files, in chain order")
    check.set_defaults(run=run)


def run(args) -> int:
    missing = [str(path) for path in args.files if not path.is_file()]
    if missing:
        print(f"error: not a file: {', '.join(missing)}")
        return 2
    result = verify(args.files)
    if result.problem is not None:
        print(f"BROKEN at {result.problem}")
        if result.records:
            print(f"the {result.records} records before it are intact (seq {result.first_seq}-{result.last_seq})")
        return 1
    if not result.records:
        print(f"ok: no records in {result.files} file(s)")
        return 0
    start = "" if result.first_seq == 1 else " (starts mid-chain: earlier files were not given)"
    print(f"ok: {result.records} records in {result.files} file(s), seq {result.first_seq}-{result.last_seq}{start}, "
          f"head {result.head}")
    return 0
