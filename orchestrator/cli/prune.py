"""`prune` and `archive show`: archive then remove old, ended commands; read an archive back.

`prune --ended-before DATE --archive FILE` writes every root command that ended,
all its tasks cleared, before DATE to FILE (JSON lines), then removes them from
the store and its read models (orchestrator/retention/, docs/retention.md).
`archive show FILE` lists what an archive holds, each command replayed from its
archived events.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from orchestrator.cli.context import JsonOpt, out, print_json
from orchestrator.errors import InputError

if TYPE_CHECKING:
    from orchestrator.retention import PruneReport

app = typer.Typer(no_args_is_help=True, help="Archives written by prune: list what they hold.")
DEFAULT_BATCH = 500  # = orchestrator.retention.DEFAULT_BATCH (not imported: help stays quick)

EndedBeforeOpt = Annotated[
    str,
    typer.Option(
        "--ended-before",
        help="the cut-off: an ISO date (midnight UTC) or date-time (UTC unless it has an offset)",
        show_default=False,
    ),
]
ArchiveOpt = Annotated[
    Path | None,
    typer.Option("--archive", help="write the commands' histories here first (a new file, JSON lines)"),
]
NoArchiveOpt = Annotated[
    bool, typer.Option("--no-archive", help="prune without keeping the histories anywhere: they are lost")
]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="say what would go; change nothing")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, max=10_000, help="commands per deletion transaction")]


def prune(
    ended_before: EndedBeforeOpt,
    archive: ArchiveOpt = None,
    no_archive: NoArchiveOpt = False,
    dry_run: DryRunOpt = False,
    batch_size: BatchOpt = DEFAULT_BATCH,
    as_json: JsonOpt = False,
) -> None:
    """Archive, then remove, every root command that ended (all its tasks cleared) before a cut-off.

    Inventory entities and their histories stay. After an interruption, run it again with the same
    --ended-before and --archive: it finishes that prune. Exit codes: 4 a bad date or archive path
    (an existing file is refused unless it holds this store's unfinished prune); 5 refused: a command
    accepted before the cut-off is still in flight or not yet cleared (nothing changed); 13 another
    prune, or a rebuild of the read models, runs.
    """
    from orchestrator.cli.stores import open_session
    from orchestrator.retention import PruneRequest, parse_cutoff
    from orchestrator.retention import prune as prune_store

    cutoff = parse_cutoff(ended_before)
    if archive is not None and no_archive:
        raise InputError("give --archive FILE or --no-archive, not both")
    if archive is None and not no_archive and not dry_run:
        raise InputError(
            "a prune removes history: give --archive FILE to keep it in an archive, or --no-archive to lose it"
        )
    request = PruneRequest(cutoff, archive.absolute() if archive else None, dry_run=dry_run, batch_size=batch_size)
    with open_session("read" if dry_run else "write") as session:
        report = prune_store(session.events, session.read_models, request)
    print_json(report) if as_json else _render_report(report)


def _render_report(r: PruneReport) -> None:
    from orchestrator.cli.render import plain

    span = ""
    if r.oldest_settled_at and r.newest_settled_at:
        span = f", settled {r.oldest_settled_at:%Y-%m-%d %H:%M:%S} to {r.newest_settled_at:%Y-%m-%d %H:%M:%S} UTC"
    what = f"{r.commands:,} command(s), {r.events:,} event(s), {_size(r.stored_bytes)} stored{span}"
    where = f"; archive {r.archive} ({_size(r.archive_bytes)})" if r.archive else "; no archive"
    if r.dry_run:
        verb = "would finish the prune of" if r.resumed else "would prune"
        out.print(plain(f"{verb} {what}{where}; nothing was changed"))
        if r.resumed:
            out.print(plain(f"{r.already_gone:,} of them are already gone from the store"))
    else:
        verb = "finished the prune of" if r.resumed else "pruned"
        out.print(plain(f"{verb} {what}{where}"))
        out.print(
            plain(
                f"deleted {r.deleted_commands:,} command(s), {r.deleted_events:,} event(s) in {r.batches} "
                f"batch(es) ({r.already_gone:,} already gone) in {r.seconds:.1f}s"
            )
        )
    if r.kept_settled_after:
        out.print(plain(f"kept {r.kept_settled_after:,} command(s) accepted before the cut-off, settled after it"))
    for ident in r.changed:
        out.print(plain(f"kept {ident}: its history grew since it was archived; prune it again later"))


def _size(n: int) -> str:
    if n < 1024:
        return f"{n:,} bytes"
    if n < 1024 * 1024:
        return f"{n / 1024:,.1f} KiB"
    return f"{n / (1024 * 1024):,.1f} MiB"


@app.callback()
def archive_group() -> None:
    """Archives written by prune --archive: list what they hold."""


@app.command("show")
def archive_show(
    file: Annotated[Path, typer.Argument(help="an archive written by prune --archive")],
    as_json: JsonOpt = False,
) -> None:
    """List the commands an archive holds (id, flow, outcome, ended at), each replayed from its events.

    Exit codes: 4 the file is not a complete, readable archive.
    """
    from orchestrator.retention import archive_listing

    listing = archive_listing(file)
    if as_json:
        print_json(listing)
        return
    from orchestrator.cli.render import plain, styled, table

    header = listing.header
    out.print(
        plain(
            f"archive {file}: {len(listing.commands):,} command(s), {listing.events:,} event(s) from "
            f"{header.store}, ended before {header.ended_before.isoformat()}, "
            f"written {header.written_at:%Y-%m-%d %H:%M:%S} UTC"
        )
    )
    shown = table("command", "flow", "outcome", "ended at", "events", title="archived commands", ids=["command"])
    for c in listing.commands:
        ended = f"{c.ended_at:%Y-%m-%d %H:%M:%S}" if c.ended_at else "-"
        shown.add_row(plain(c.command_id), plain(c.flow), styled(c.outcome), plain(ended), str(c.events))
    out.print(shown)
