"""Key security (the perpetuals runbook's key compromise): the audit of orders this platform did not place."""
