"""Run the benchmarks and write their figures into docs/benchmarks.md.

    python -m benchmarks --quick          # every benchmark, small; under 10 minutes on 2 cores
    python -m benchmarks --full           # the figures of docs/benchmarks.md (over an hour)
    python -m benchmarks --full --only overhead,scaling
    python -m benchmarks --render         # rewrite docs/benchmarks.md from benchmarks/out/full
    python -m benchmarks --render --source quick --only fleet   # one section, from benchmarks/out/quick

A --quick run prints its tables and keeps its results in benchmarks/out/quick (pass --docs to
write them into docs/benchmarks.md as well); a --full run writes benchmarks/out/full and
docs/benchmarks.md.

Needs the local PostgreSQL and Slurm (``bash scripts/local_cluster.sh up``); echo-opt 1.3.1 in
benchmarks/.venv-echo for the comparison (``--install-echo`` creates it; without it echo-opt is
left out). Each benchmark writes benchmarks/out/<mode>/<name>.json with the command, the date and the
load average; docs/benchmarks.md is regenerated between its ``<!-- BEGIN name -->`` /
``<!-- END name -->`` markers, so that the text around the tables can be edited by hand.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import shlex
import sys
import time
from typing import Any

from benchmarks import common

SECTIONS = ("overhead", "profile", "lock", "scaling", "workers", "fleet", "slurm", "sampling", "report", "search",
            "soak", "distributed")
# search: ~28 CPU-minutes even in quick mode (--only search); soak: 4 minutes quick, 30 full (--only soak)
QUICK_SECTIONS = ("overhead", "lock", "scaling", "workers", "fleet", "slurm", "sampling", "report", "distributed")
# section name -> module in benchmarks/ (where they differ)
MODULES = {"profile": "profile_worker", "slurm": "slurm_start", "search": "search_efficiency",
           "workers": "many_workers", "lock": "lock_hold", "report": "bench_report"}
DOC = common.REPO / "docs" / "benchmarks.md"
PLOT = common.BENCH / "figures" / "search_efficiency.png"


def _module(name: str) -> Any:
    import importlib

    return importlib.import_module(f"benchmarks.{MODULES.get(name, name)}")


def run_section(name: str, *, quick: bool, command: str, max_load: float | None) -> dict[str, Any]:
    if max_load is not None:
        common.wait_for_quiet(max_load, timeout_s=600)
    before = common.load_average()
    code = common.code_version()
    started = time.monotonic()
    print(f"== {name} ({'quick' if quick else 'full'}); load average {before[0]:.2f}", file=sys.stderr)
    data = _module(name).run(quick=quick)
    after = common.load_average()
    if common.code_version() != code:
        code += " (hyper_opt changed while this benchmark ran: run it again)"
    data.update(command=command, mode="quick" if quick else "full", code=code,
                date=dt.datetime.now().isoformat(timespec="minutes"), seconds=time.monotonic() - started,
                load={**data.get("load", {}), "before": round(before[0], 2), "after": round(after[0], 2)},
                machine=common.machine())
    common.save_result(name, data, mode=data["mode"])
    print(f"== {name} done in {data['seconds']:.0f} s; load average {after[0]:.2f}", file=sys.stderr)
    return data


def section_markdown(name: str, data: dict[str, Any], *, plot: bool = True) -> str:
    block = _module(name).markdown(data)
    if plot and name == "search" and not data.get("skipped"):
        from benchmarks import search_efficiency

        if search_efficiency.plot(data, PLOT):
            link = "../" + PLOT.relative_to(common.REPO).as_posix()
            block = f"![best validation MAP@R against CPU-seconds]({link})\n\n{block}"
    return block + "\n\n" + common.section_header(data) + f" Mode: {data.get('mode', '?')}, " \
        f"{data.get('seconds', 0):.0f} s."


def render(sections: tuple[str, ...] = SECTIONS, *, mode: str = "full") -> str:
    """docs/benchmarks.md with every section's generated block replaced from benchmarks/out/<mode>."""
    text = DOC.read_text() if DOC.exists() else TEMPLATE
    for name in sections:
        data = common.load_result(name, mode=mode)
        if data is None:
            block = "Not run yet: `python -m benchmarks --full --only " + name + "`."
        else:
            block = section_markdown(name, data)
        begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
        replacement = f"{begin}\n{block}\n{end}"
        if pattern.search(text):
            text = pattern.sub(lambda _: replacement, text)
        else:
            text += f"\n{replacement}\n"
    machine = None
    for name in sections:
        data = common.load_result(name, mode=mode)
        if data and data.get("machine"):
            machine = data["machine"]
            break
    if machine:
        line = (f"Machine: {machine['cpus']} cores ({machine['cpu'] or 'unknown CPU'}), Python {machine['python']}, "
                f"optuna {machine['optuna']}, PostgreSQL 15 on the same machine.")
        text = re.sub(r"<!-- BEGIN machine -->.*?<!-- END machine -->",
                      lambda _: f"<!-- BEGIN machine -->\n{line}\n<!-- END machine -->", text, flags=re.S)
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small runs, under 10 minutes (the default)")
    mode.add_argument("--full", action="store_true", help="the runs behind docs/benchmarks.md")
    mode.add_argument("--render", action="store_true", help="only rewrite docs/benchmarks.md from benchmarks/out")
    parser.add_argument("--only", help=f"comma-separated benchmarks to run, of {','.join(SECTIONS)} "
                        f"(default: all; --quick leaves out profile)")
    parser.add_argument("--docs", action="store_true",
                        help="also rewrite docs/benchmarks.md after a --quick run (a --full run always does)")
    parser.add_argument("--install-echo", action="store_true",
                        help="create benchmarks/.venv-echo with echo-opt 1.3.1 first (needs PyPI)")
    parser.add_argument("--source", choices=("full", "quick"), default="full",
                        help="with --render: the results to render (benchmarks/out/<source>)")
    parser.add_argument("--max-load", type=float, metavar="L",
                        help="before each benchmark, wait (up to 10 min) for the 1-minute load average to drop below L")
    args = parser.parse_args(argv)
    only = (tuple(s.strip() for s in args.only.split(",") if s.strip()) if args.only
            else (SECTIONS if args.full else QUICK_SECTIONS))
    unknown = [s for s in only if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; known: {', '.join(SECTIONS)}")
    if args.render:
        render(only if args.only else SECTIONS, mode=args.source)
        print(f"wrote {DOC}", file=sys.stderr)
        return 0
    import logging

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("hyper_opt").setLevel(logging.WARNING)
    if args.install_echo:
        common.install_echo()
    common.ensure_pg_env()
    quick = not args.full
    command = "python -m benchmarks " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    started = time.monotonic()
    failed = []
    done: dict[str, dict[str, Any]] = {}
    for name in only:
        try:
            done[name] = run_section(name, quick=quick, command=command.strip(), max_load=args.max_load)
        except Exception as err:  # noqa: BLE001 - one broken benchmark must not lose the others
            failed.append(name)
            import traceback

            traceback.print_exc()
            print(f"== {name} FAILED: {err}", file=sys.stderr)
    for name, data in done.items():
        print(f"\n## {name}\n\n{section_markdown(name, data, plot=False)}")
    if not quick or args.docs:
        # only the sections this run measured: the others keep the figures they have
        render(tuple(done), mode="quick" if quick else "full")
        print(f"wrote {DOC}", file=sys.stderr)
    print(f"all done in {time.monotonic() - started:.0f} s" + (f"; failed: {failed}" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


TEMPLATE = """# Benchmarks

<!-- BEGIN machine -->
<!-- END machine -->

<!-- BEGIN overhead -->
<!-- END overhead -->

<!-- BEGIN profile -->
<!-- END profile -->

<!-- BEGIN scaling -->
<!-- END scaling -->

<!-- BEGIN workers -->
<!-- END workers -->

<!-- BEGIN slurm -->
<!-- END slurm -->

<!-- BEGIN fleet -->
<!-- END fleet -->

<!-- BEGIN report -->
<!-- END report -->

<!-- BEGIN search -->
<!-- END search -->

<!-- BEGIN soak -->
<!-- END soak -->

<!-- BEGIN distributed -->
<!-- END distributed -->
"""
