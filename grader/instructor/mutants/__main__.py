import sys

from grader.instructor.mutants.run import main

sys.exit(main())
