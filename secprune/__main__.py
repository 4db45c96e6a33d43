import sys

from secprune.cli import main

sys.exit(main())
