"""The one way readers see the ledger: who asks (`base.Principal`) and what they may see
(`scope_sql`), ledger reads (`reads.Query`), facility operations (`operations`), and the
signals that alert rules compare (`signals`). Every answer is scoped to its principal. It
imports the core, the store and the ledger's hour arithmetic."""
