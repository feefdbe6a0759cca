import sys

from memprof.cli import main

sys.exit(main())
