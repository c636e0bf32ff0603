import sys

from birefnet.cli import main

sys.exit(main())
