"""The `afmon` command. `main` builds the parser from the `afmon.commands` entry points; the
aggregator's own commands (serve, demo, simulate, agent-token, db, identity, report) live here
as one module each and register like any other plug-in (the alerts' command does too)."""
