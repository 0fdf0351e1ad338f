import sys

from cupixfs.commands.cli import main

sys.exit(main())
