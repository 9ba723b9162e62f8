"""``python -m fairsample``: the command line."""

from fairsample.cli import main

main()
