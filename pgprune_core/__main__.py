"""``python -m pgprune_core`` = ``pgprune``."""

from .cli import main

if __name__ == "__main__":
    main()
