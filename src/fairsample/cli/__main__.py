"""``python -m fairsample.cli``: the command line."""

from fairsample.cli import main

main()
