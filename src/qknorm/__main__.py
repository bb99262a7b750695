"""`python -m qknorm ...` is the same as the `qknorm` command."""
import sys

from .cli import main

sys.exit(main())
