import sys

from dmlsynth.cli import main

sys.exit(main())
