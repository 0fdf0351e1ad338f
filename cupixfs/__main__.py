import sys

from cupixfs.cli import main

sys.exit(main())
