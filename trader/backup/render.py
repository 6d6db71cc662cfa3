"""Markdown of a verified backup and of a restore test, as the backup flows publish them."""

from __future__ import annotations

from trader.backup import BackupInfo, RestoreReport
from trader.backup.models import ACCOUNT_TABLES, AccountCounts


def size_text(size_bytes: int) -> str:
    """1.5 MiB from a MiB on, bytes below."""
    return f"{size_bytes / 2**20:.1f} MiB" if size_bytes >= 2**20 else f"{size_bytes} bytes"


def backup_markdown(info: BackupInfo, pruned: list[str]) -> str:
    """The backup's result: object, sha256 read back, manifest, rows and checksums per table, retention."""
    lines = [
        f"# {info.kind} backup {'verified' if info.verified else 'NOT VERIFIED'}",
        "",
        f"- object: `{info.name}` ({size_text(info.size_bytes)}, {info.engine})",
        f"- sha256: `{info.sha256}` (read back from the cold tier and compared)",
        f"- manifest: `{info.manifest_name}`",
        f"- created at: {info.created_at.isoformat()}",
        f"- rows: {info.total_rows} in {len(info.row_counts)} tables",
        f"- tools: {', '.join(f'{k} {v}' for k, v in sorted(info.tools.items()))}",
        f"- retention: {len(pruned)} expired objects deleted",
        "",
        "| table | rows | md5 |",
        "|---|---:|---|",
    ]
    lines += [f"| {t} | {n} | `{info.table_checksums.get(t, '')[:12]}` |" for t, n in sorted(info.row_counts.items())]
    return "\n".join(lines + _accounts_table(info.account_row_counts, info.account_row_counts))


def restore_markdown(report: RestoreReport) -> str:
    """The restore test's result: timings, mismatches, manifest rows against restored rows per table."""
    lines = [
        f"# Restore test {'passed' if report.ok else 'FAILED'}",
        "",
        f"- backup: `{report.backup}` ({size_text(report.size_bytes)}, {report.engine})",
        f"- restored into: {report.restored_into}",
        f"- download {report.download_seconds:.1f} s, restore {report.restore_seconds:.1f} s, "
        f"compare {report.compare_seconds:.1f} s",
        "",
    ]
    if report.mismatches:
        lines += ["## Mismatches", ""] + [f"- {m}" for m in report.mismatches] + [""]
    lines += ["| table | manifest rows | restored rows |", "|---|---:|---:|"]
    for table in sorted(set(report.expected_counts) | set(report.restored_counts)):
        lines.append(
            f"| {table} | {report.expected_counts.get(table, '-')} | {report.restored_counts.get(table, '-')} |"
        )
    return "\n".join(lines + _accounts_table(report.expected_account_counts, report.restored_account_counts))


def _accounts_table(expected: AccountCounts, restored: AccountCounts) -> list[str]:
    """Rows per account of ACCOUNT_TABLES; a restored count that differs from the manifest's shows both."""
    if not expected and not restored:
        return []  # a manifest from before accounts
    lines = ["", "## Per account", "", "| account | " + " | ".join(ACCOUNT_TABLES) + " |"]
    lines.append("|---|" + "---:|" * len(ACCOUNT_TABLES))
    for account in sorted(set(expected) | set(restored)):
        cells = []
        for table in ACCOUNT_TABLES:
            want = expected.get(account, {}).get(table, 0)
            got = restored.get(account, {}).get(table, 0)
            cells.append(str(got) if got == want else f"**{got}** (manifest {want})")
        lines.append(f"| {account} | " + " | ".join(cells) + " |")
    return lines
