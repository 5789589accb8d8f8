"""``python -m mailshot_core.cli``: the tests and scripts run the command this way."""

from mailshot_core.cli import main

main()
