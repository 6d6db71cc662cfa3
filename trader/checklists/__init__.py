"""The runbook's checklists as checks with pass/warn/fail and evidence."""
