import sys

from mito_lab.cli.main import main

sys.exit(main())
