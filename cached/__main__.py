"""``python -m cached``: run the cache daemon in the foreground."""

from cached.daemon import main

main()
