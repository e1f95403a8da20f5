import sys

from psum.cli import main

sys.exit(main())
