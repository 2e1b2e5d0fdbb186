"""``python -m mt`` is the same as the ``mt`` command."""
from mt.cli import main

if __name__ == "__main__":
    main()
