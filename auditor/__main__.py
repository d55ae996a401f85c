"""`python -m auditor`: the command-line interface."""

from auditor.cli import main

raise SystemExit(main())
