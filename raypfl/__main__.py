import sys

from raypfl.cli import main

sys.exit(main())
