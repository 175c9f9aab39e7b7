import sys

from grader.mutants.run import main

sys.exit(main())
