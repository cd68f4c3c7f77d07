"""``python -m pgprune_core`` = ``pgprune``."""

from pgprune_core.cli import main

if __name__ == "__main__":
    main()
