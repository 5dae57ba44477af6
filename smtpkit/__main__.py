"""`python -m smtpkit`: the `smtpkit` command line."""

from smtpkit.transports._cli import main

raise SystemExit(main())
