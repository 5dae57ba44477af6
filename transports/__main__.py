"""`python -m transports`: the `smtpkit` command line."""

from ._cli import main

raise SystemExit(main())
