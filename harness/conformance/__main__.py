import sys

from harness.conformance import main

sys.exit(main())
