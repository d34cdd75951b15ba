import sys

from central.warehouse.cli import main

sys.exit(main())
