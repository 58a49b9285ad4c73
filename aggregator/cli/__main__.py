"""`python -m afmon.aggregator.cli`: the `afmon` command."""

from afmon.aggregator.cli.main import main

raise SystemExit(main())
